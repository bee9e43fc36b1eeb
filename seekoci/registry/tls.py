"""One verifying TLS context per CA bundle, shared by every HTTPS connection of the process.

Left to itself, urllib3 makes a new TLS context for each connection it opens and loads the CA
bundle into it: certifi's ~150 certificates cost ~21 ms of CPU each time on a 2-vCPU host,
and a cold read opens several connections at once (reader threads, the token service, the
object storage a blob redirects to). :class:`SharedTlsAdapter` gives every pool that verifies
with a bundle the one context made for that bundle, loaded once.

A context that threads open connections with must not change: OpenSSL gives no
serialisation there, and CPython releases the GIL while it makes a connection's SSL object
from the context (setting ALPN on a context while another thread opens a connection with it
is a use-after-free: CPython issue 141012). urllib3 sets the ALPN protocols and the verify
mode on the context of every connection it opens; on a :class:`_SharedContext` those calls
change nothing, and nothing can make it verify less.

Pools that do not verify (``verify=False``: insecure registries) or that present a client
certificate keep urllib3's own context per connection.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

import requests.adapters
import requests.utils
from urllib3.util.ssl_ import ALPN_PROTOCOLS, create_urllib3_context

__all__ = ["SharedTlsAdapter", "shared_context"]


class _SharedContext(ssl.SSLContext):
    """A verifying client context that does not change once it is in use."""

    _sealed = False

    def seal(self) -> None:
        self._sealed = True

    def set_alpn_protocols(self, alpn_protocols: Any) -> None:
        # requests speaks HTTP/1.1 only: the protocols set when the context was made stay
        if not self._sealed:
            super().set_alpn_protocols(alpn_protocols)

    @property  # type: ignore[override]
    def verify_mode(self) -> ssl.VerifyMode:
        return super().verify_mode

    @verify_mode.setter
    def verify_mode(self, value: ssl.VerifyMode) -> None:
        if self._sealed:
            if value != ssl.CERT_REQUIRED:
                raise ValueError("a shared verifying TLS context always verifies")
            return
        ssl.SSLContext.verify_mode.__set__(self, value)  # type: ignore[attr-defined]

    @property
    def check_hostname(self) -> bool:
        return super().check_hostname

    @check_hostname.setter
    def check_hostname(self, value: bool) -> None:
        if self._sealed:
            if not value:
                raise ValueError("a shared verifying TLS context always checks host names")
            return
        ssl.SSLContext.check_hostname.__set__(self, value)  # type: ignore[attr-defined]


#: (the bundle's absolute path, its inode, mtime and size, SSLKEYLOGFILE) -> its context
_contexts: dict[tuple[str, int, int, int, str], _SharedContext] = {}
_contexts_lock = threading.Lock()  # guards _contexts (making one reads a local file only)


def shared_context(bundle: str) -> ssl.SSLContext | None:
    """The verifying context for the CA bundle at ``bundle`` (a file or a directory of
    certificates), made the first time it is asked for: set up as urllib3 sets up its own
    (TLS 1.2 or later, no session tickets, host names checked against subjectAltName only,
    ``SSLKEYLOGFILE`` honoured), with urllib3's ALPN protocols. A bundle that changes on
    disk (a CA added or removed) gets a new context from then on, as urllib3 would load it
    again for its next connection. None when the bundle cannot be loaded: the request then
    goes the usual way and says what is wrong with it."""
    bundle = os.path.abspath(bundle)
    try:
        st = os.stat(bundle)
    except OSError:
        return None
    key = (bundle, st.st_ino, st.st_mtime_ns, st.st_size, os.environ.get("SSLKEYLOGFILE", ""))
    with _contexts_lock:
        found = _contexts.get(key)
        if found is not None:
            return found
        template = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        context = _SharedContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = template.minimum_version
        context.maximum_version = template.maximum_version
        context.options = template.options
        context.post_handshake_auth = template.post_handshake_auth
        context.hostname_checks_common_name = template.hostname_checks_common_name
        context.verify_flags = template.verify_flags
        if template.keylog_filename:
            context.keylog_filename = template.keylog_filename
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if os.path.isdir(bundle):
                context.load_verify_locations(capath=bundle)
            else:
                context.load_verify_locations(cafile=bundle)
        except (OSError, ssl.SSLError):
            return None
        context.set_alpn_protocols(ALPN_PROTOCOLS)
        context.seal()
        _contexts[key] = context
        return context


def _bundle(verify: Any) -> str | None:
    """The CA bundle a request verifies with (``verify`` as requests resolved it: True for
    its default bundle, a path from ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``), or None."""
    if verify is True:
        return str(requests.utils.DEFAULT_CA_BUNDLE_PATH)
    if isinstance(verify, str) and verify:
        return verify
    return None


#: ``own``: the pool being chosen on this thread is left to urllib3 (see below)
_choosing = threading.local()


class SharedTlsAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose HTTPS pools that verify with a CA bundle use :func:`shared_context`.

    Not through an ``https://`` proxy: urllib3 verifies such a proxy with the pool's CA
    bundle, which a pool with a shared context no longer names (the proxy would be checked
    against the system's store instead); those pools keep urllib3's own context.

    (requests 2.32.2 and later ask :meth:`build_connection_pool_key_attributes` for a pool's
    TLS settings; with an older requests this adapter behaves as its base does.)"""

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
    ) -> Any:
        proxy = requests.utils.select_proxy(request.url or "", proxies)
        # (a proxy named without a scheme is an http:// one, as requests takes it)
        own = isinstance(proxy, str) and proxy.strip().lower().startswith("https://")
        _choosing.own = own
        try:
            return super().get_connection_with_tls_context(request, verify, proxies, cert)
        finally:
            _choosing.own = False

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> Any:  # (host parameters, pool keywords): typed apart by requests and its stubs
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        bundle = _bundle(verify)
        if getattr(_choosing, "own", False):
            return host_params, pool_kwargs
        if host_params.get("scheme") == "https" and bundle is not None and cert is None:
            context = shared_context(bundle)
            if context is not None:
                pool_kwargs.pop("ca_certs", None)
                pool_kwargs.pop("ca_cert_dir", None)
                pool_kwargs["ssl_context"] = context
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        # the base names the bundle on the pool, and urllib3 would load it into the
        # context again for every connection: a shared context holds it already
        context = getattr(conn, "conn_kw", {}).get("ssl_context")
        if isinstance(context, _SharedContext) and cert is None and _bundle(verify) is not None:
            conn.cert_reqs = "CERT_REQUIRED"
            conn.ca_certs = None
            conn.ca_cert_dir = None
            return
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call,unused-ignore]
