"""Referrers: artifacts (SOCI indexes, signatures, SBOMs) whose manifest names an image as
``subject``.

Two ways a registry keeps them (OCI distribution spec 1.1, "Listing referrers"):

* the referrers API: ``GET /v2/R/referrers/<digest>`` answers an image index listing every
  manifest with that subject; the registry maintains it when such a manifest is pushed and
  says so with an ``OCI-Subject`` header on the PUT;
* the referrers tag schema, for registries without the API (distribution 2.8 answers the
  path with a plain-text 404): the client keeps an image index under the tag
  ``sha256-<hex>`` itself, reading it, appending and writing it back.

The tag is read-modify-write: two clients pushing referrers to the same subject at the same
moment can lose one entry (the spec accepts this; the referrer manifest itself is stored).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urljoin

from .. import _json
from ..errors import AuthenticationError, FormatError, RegistryError
from .client import RegistryClient, pull_scope, raise_for_status
from .digest import compute_digest, digest_problem
from .manifest import MAX_MANIFEST_SIZE, MEDIA_TYPE_OCI_INDEX, Descriptor, parse_manifest
from .push import (
    check_repository,
    get_manifest_optional,
    manifest_exists,
    put_manifest,
    put_manifest_response,
)
from .retry import RetryPolicy
from .transport import read_body

log = logging.getLogger("seekoci.registry")

#: Pages of a paginated referrers answer followed at most.
MAX_REFERRERS_PAGES = 64


def referrers_tag(subject_digest: str) -> str:
    """The referrers tag of a subject: ``sha256:<hex>`` -> ``sha256-<hex>``.

    The spec's truncation (algorithm to 32 characters, encoded part to 64) keeps a sha512
    digest within the 128 characters a tag may have.
    """
    problem = digest_problem(subject_digest)
    if problem is not None:
        raise ValueError(f"invalid subject digest {subject_digest!r}: {problem}")
    algorithm, encoded = subject_digest.split(":", 1)
    return f"{algorithm[:32]}-{encoded[:64]}"


def list_referrers(
    client: RegistryClient,
    repository: str,
    subject_digest: str,
    *,
    artifact_type: str | None = None,
    tag_at_once: bool = False,
) -> list[Descriptor]:
    """The manifests in ``repository`` that refer to ``subject_digest``, oldest first.

    Asks the referrers API; if the registry has none, reads the referrers tag (missing: no
    referrers). With ``artifact_type``, only descriptors whose ``artifactType`` is that (for
    a SOCI v1 index, its config media type ``application/vnd.amazon.soci.index.v1+json``).
    ``tag_at_once``: read the tag at the same time as the API is asked, not after it said
    no -- one round trip instead of two on a registry without the API, one request more
    (its answer unused) on a registry with it.
    """
    check_repository(repository)
    referrers_tag(subject_digest)  # validates the digest
    early: list[list[Descriptor] | BaseException] = []
    reader: threading.Thread | None = None
    if tag_at_once:

        def read_tag() -> None:
            try:
                early.append(_read_tag(client, repository, subject_digest)[1])
            except BaseException as exc:  # handed to the caller if the tag is needed
                early.append(exc)

        reader = threading.Thread(target=read_tag, name="seekoci-referrers-tag", daemon=True)
        reader.start()
    found = _query_api(client, repository, subject_digest, artifact_type=artifact_type)
    if found is None:
        log.debug("%s/%s: no referrers API, reading the tag", client.registry, repository)
        if reader is not None:
            reader.join()
            outcome = early[0]
            if isinstance(outcome, BaseException):
                raise outcome
            found = outcome
        else:
            found = _read_tag(client, repository, subject_digest)[1]
    if artifact_type is None:
        return found
    return [d for d in found if d.artifact_type == artifact_type]


def push_referrer(
    client: RegistryClient,
    repository: str,
    manifest_body: bytes,
    media_type: str,
    *,
    artifact_type: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """Store a manifest that has a ``subject`` and make it listed as a referrer; its digest.

    The manifest is PUT by digest. A registry with the referrers API indexes it itself (it
    answers with ``OCI-Subject``, or its referrers endpoint answers): done. Otherwise the
    referrers tag of the subject gets a descriptor (``mediaType``, ``digest``, ``size``,
    ``artifactType``, ``annotations``) appended, every other entry kept as it was.

    ``artifact_type`` defaults to what a registry would list: the manifest's ``artifactType``,
    else its config media type; a different value is a ValueError. ``annotations`` default to
    the manifest's own.
    """
    check_repository(repository)
    doc = _parse_referrer(manifest_body, media_type)
    subject = doc["subject"]["digest"]
    listed_type = _listed_artifact_type(doc)
    if artifact_type is None:
        artifact_type = listed_type
    elif listed_type is not None and artifact_type != listed_type:
        raise ValueError(
            f"artifact_type {artifact_type!r} is not what registries list for this manifest "
            f"({listed_type!r}: its artifactType, else its config media type)"
        )
    if annotations is None:
        own = doc.get("annotations")
        annotations = own if isinstance(own, Mapping) else {}
    digest = compute_digest(manifest_body)
    _, headers = put_manifest_response(client, repository, digest, manifest_body, media_type)
    if headers.get("OCI-Subject"):
        return digest
    if _query_api(client, repository, subject, first_page_only=True) is not None:
        return digest
    entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(manifest_body)}
    if artifact_type:
        entry["artifactType"] = artifact_type
    if annotations:
        entry["annotations"] = dict(annotations)
    _add_to_tag(client, repository, subject, entry)
    return digest


# -- the referrers API -------------------------------------------------------------------------


def _query_api(
    client: RegistryClient,
    repository: str,
    subject: str,
    *,
    artifact_type: str | None = None,
    first_page_only: bool = False,
) -> list[Descriptor] | None:
    """The referrers the API lists, or None if the registry has no referrers API.

    A 200 with an image index means the API exists. Anything else on the first request (a
    404, distribution's plain-text one included, a 400/405/5xx of a registry that does not
    know the path, a refused login) means it does not; a connection failure or rate limit is
    raised, as the tag would not fare better.
    """
    where = f"{client.registry}/{repository} referrers of {subject}"
    path = f"/v2/{repository}/referrers/{subject}"
    if artifact_type is not None:
        path += "?" + urlencode({"artifactType": artifact_type})
    found: list[Descriptor] = []
    url: str | None = None
    for page in range(MAX_REFERRERS_PAGES):
        try:
            # the first page by API path, the next ones by the absolute URL of their Link
            headers = {"Accept": MEDIA_TYPE_OCI_INDEX}
            if url is None:
                # a registry without the API may well answer 5xx: one retry, not the whole
                # budget, before the tag schema is tried
                policy = client.policy
                probe = RetryPolicy(policy.timeout, min(1, policy.retries)).begin(where)
                response = client.request(
                    "GET",
                    path,
                    scope=pull_scope(repository),
                    what=where,
                    headers=headers,
                    attempts=probe,
                )
            else:
                response = client.request_url(
                    "GET", url, scope=pull_scope(repository), what=where, headers=headers
                )
        except AuthenticationError:
            if page == 0:
                return None
            raise
        except RegistryError as exc:
            if page == 0 and exc.status is not None and exc.status != 429:
                return None
            raise
        if response.status_code != 200:
            if page > 0 or response.status_code == 429:
                raise_for_status(response, where=where)
            response.close()
            return None
        next_link = response.links.get("next", {}).get("url")
        base = response.url
        body = read_body(response, limit=MAX_MANIFEST_SIZE, what=where)
        entries = _index_entries(body)
        if entries is None:
            if page > 0:
                raise FormatError(f"{where}: page {page + 1} is not an image index")
            return None
        found.extend(Descriptor.from_json(item, where=where) for item in entries)
        if first_page_only or not next_link:
            return found
        url = urljoin(base, next_link)
    raise RegistryError(f"{where}: more than {MAX_REFERRERS_PAGES} pages")


def _index_entries(body: bytes) -> list[Any] | None:
    """The ``manifests`` of an OCI image index body; None if it is not one."""
    try:
        data = _json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("mediaType", MEDIA_TYPE_OCI_INDEX) != (
        MEDIA_TYPE_OCI_INDEX
    ):
        return None
    manifests = data.get("manifests")
    return manifests if isinstance(manifests, list) else None


# -- the referrers tag -------------------------------------------------------------------------


def _read_tag(
    client: RegistryClient, repository: str, subject: str
) -> tuple[dict[str, Any] | None, list[Descriptor]]:
    """The index under the subject's referrers tag (None if there is none) and its entries."""
    tag = referrers_tag(subject)
    where = f"{client.registry}/{repository}:{tag} (referrers of {subject})"
    fetched = get_manifest_optional(client, repository, tag, where=where)
    if fetched is None:
        return None, []
    doc = parse_manifest(
        fetched.body, media_type_hint=fetched.media_type, digest=fetched.digest, where=where
    )
    if doc.media_type != MEDIA_TYPE_OCI_INDEX:
        raise FormatError(f"{where}: the referrers tag holds a {doc.media_type}, not an index")
    return doc.data, doc.entries(where=where)


def _add_to_tag(
    client: RegistryClient, repository: str, subject: str, entry: dict[str, Any]
) -> None:
    """Append ``entry`` to the subject's referrers tag index unless it is listed already."""
    tag = referrers_tag(subject)
    where = f"{client.registry}/{repository}:{tag}"
    index, listed = _read_tag(client, repository, subject)
    if any(d.digest == entry["digest"] for d in listed):
        log.debug("%s: already lists %s", where, entry["digest"])
        return
    if index is None:
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}
    index.setdefault("mediaType", MEDIA_TYPE_OCI_INDEX)
    others: list[Any] = index["manifests"]
    index["manifests"] = [*others, entry]
    try:
        put_manifest(client, repository, tag, _compact(index), MEDIA_TYPE_OCI_INDEX)
    except RegistryError as exc:
        # 400: the registry refuses an index naming a manifest it lacks. An entry whose
        # manifest has been deleted since would block the tag for good: drop those, retry once.
        if exc.status != 400:
            raise
        kept = [
            item
            for item, desc in zip(others, listed, strict=True)
            if manifest_exists(client, repository, desc.digest, media_type=desc.media_type)
        ]
        if len(kept) == len(others):
            raise
        log.debug(
            "%s: dropping %d entries whose manifests are gone", where, len(others) - len(kept)
        )
        index["manifests"] = [*kept, entry]
        put_manifest(client, repository, tag, _compact(index), MEDIA_TYPE_OCI_INDEX)


def _compact(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _parse_referrer(body: bytes, media_type: str) -> dict[str, Any]:
    """The manifest as JSON, checked to have a subject and to agree with ``media_type``."""
    try:
        doc = _json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("referrer manifest is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ValueError("referrer manifest is not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and declared != media_type:
        raise ValueError(f"manifest says mediaType {declared!r}, pushed as {media_type!r}")
    subject = doc.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("digest"), str):
        raise ValueError("referrer manifest has no subject")
    problem = digest_problem(subject["digest"])
    if problem is not None:
        raise ValueError(f"referrer manifest subject digest: {problem}")
    return doc


def _listed_artifact_type(doc: Mapping[str, Any]) -> str | None:
    """What registries list as a manifest's artifactType: its own, else its config's type."""
    own = doc.get("artifactType")
    if isinstance(own, str) and own:
        return own
    config = doc.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return None


__all__ = ["MAX_REFERRERS_PAGES", "list_referrers", "push_referrer", "referrers_tag"]
