"""The retry budget of one request: how often, how long to wait, when to give up.

A *request* here is what a caller asked for -- a manifest, a range of a blob, a stream from an
offset -- and may take several HTTP attempts: connection errors, resets and stalls mid-body,
truncated bodies, 5xx and 429 answers are retried (a partly received range resumes where it
stopped). Two numbers bound it (``open_image(timeout=, retries=)``):

- ``retries``: attempts after the first (default ``$SEEKOCI_RETRIES``, else 5), spent with
  exponential backoff and jitter, or as long as a ``Retry-After`` asks (up to
  :data:`MAX_RETRY_AFTER_SECONDS`; a longer wait gives up at once: a registry that says
  "come back in an hour" is not helped by six tries in ten seconds).
- ``timeout``: seconds the request may wait for the next byte (default ``$SEEKOCI_TIMEOUT``,
  else 30). Silence is added up across attempts and only received bytes reset it, so a
  server that accepts the connection and never answers fails after about ``timeout``, not
  ``timeout`` times the attempts. One attempt waits at most half of it before giving up on
  its connection and trying a fresh one: a request lost on a connection that died silently
  (a pooled connection a NAT forgot) is sent again in time, and the wait for the next byte
  still never exceeds ``timeout``. (The price: a server that always takes more than half of
  ``timeout`` to answer fails; raise ``timeout`` for it.)
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass

from ..errors import RegistryError

log = logging.getLogger("seekoci.registry")

TIMEOUT_ENV = "SEEKOCI_TIMEOUT"
RETRIES_ENV = "SEEKOCI_RETRIES"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RETRIES = 5
#: First backoff; doubled each retry (with jitter: between half and all of it), capped.
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
#: The longest ``Retry-After`` honoured; a server asking for more gets no retry.
MAX_RETRY_AFTER_SECONDS = 30.0
#: Statuses worth another attempt: timeouts, rate limits and server-side failures (not 501
#: Not Implemented or 505, which say the request itself will never work).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
#: Share of ``timeout`` one attempt waits for the next byte before it tries a fresh
#: connection (the rest is left for that attempt); an attempt with no retry after it waits
#: for all the silence left.
ATTEMPT_WAIT_SHARE = 0.5


def _env_number(name: str, kind: type[float] | type[int]) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0 or (kind is float and value == 0):
        log.warning("seekoci: warning: ignoring %s=%r (not a valid number)", name, raw[:40])
        return None
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """``timeout`` (seconds to the next byte) and ``retries`` (attempts after the first)."""

    timeout: float = DEFAULT_TIMEOUT_SECONDS
    retries: int = DEFAULT_RETRIES

    def __post_init__(self) -> None:
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds")
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {self.timeout!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise TypeError("retries must be an int")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries!r}")

    @classmethod
    def resolve(cls, timeout: float | None = None, retries: int | None = None) -> RetryPolicy:
        """The policy for explicit values, else ``$SEEKOCI_TIMEOUT`` / ``$SEEKOCI_RETRIES``,
        else the defaults."""
        if timeout is None:
            timeout = _env_number(TIMEOUT_ENV, float) or DEFAULT_TIMEOUT_SECONDS
        if retries is None:
            env = _env_number(RETRIES_ENV, int)
            retries = DEFAULT_RETRIES if env is None else int(env)
        policy = cls(timeout=timeout, retries=retries)  # checks the types
        return cls(timeout=float(policy.timeout), retries=policy.retries)

    def begin(self, what: str) -> Attempts:
        """The budget of one request; ``what`` names it in messages (host, blob, range)."""
        return Attempts(self, what)


class Attempts:
    """What one request has spent of its :class:`RetryPolicy` (one thread uses it)."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy = policy
        self.what = what
        self.retried = 0
        self._silent = 0.0  # seconds waited without a byte since the last byte
        self._logged = False

    @property
    def attempts(self) -> int:
        return self.retried + 1

    def can_retry(self) -> bool:
        return self.retried < self.policy.retries

    def wait(self, *, last: bool = False) -> float:
        """How long the next socket operation of an attempt (connecting, the answer's
        headers, the next piece of its body) may wait: a share of ``timeout`` while another
        attempt may follow, all the silence left when none can (``retries=0``, the last
        attempt, or ``last``: a request that is never retried, such as a POST)."""
        left = self.policy.timeout - self._silent
        retry = self.can_retry() and not last
        share = self.policy.timeout * ATTEMPT_WAIT_SHARE if retry else left
        return max(0.001, min(share, left))

    def received(self) -> None:
        """Bytes arrived: the silence is over."""
        self._silent = 0.0

    def _tries(self) -> str:
        return f"{self.attempts} attempt{'s' if self.attempts > 1 else ''}"

    def waited(self, seconds: float, reason: str, cause: BaseException | None = None) -> None:
        """An attempt gave up after ``seconds`` without a byte; raise once ``timeout`` is
        spent in silence (the overall deadline)."""
        self._silent += seconds
        if self._silent >= self.policy.timeout * 0.999:
            raise RegistryError(
                f"{self.what}: no answer for {self.policy.timeout:g} s ({reason}, {self._tries()})"
            ) from cause

    def retry(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        cause: BaseException | None = None,
    ) -> None:
        """Spend one retry (sleeping the backoff or ``retry_after``), or raise RegistryError
        saying why the request failed when the budget is spent (``from cause``)."""
        if not self.can_retry():
            raise RegistryError(
                f"{self.what}: {reason} (gave up after {self._tries()})", status=status
            ) from cause
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER_SECONDS)
        else:
            full = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**self.retried)
            delay = full / 2 + random.uniform(0, full / 2)
        self.retried += 1
        if not self._logged:  # once per request: the final error says how it ended
            self._logged = True
            log.debug(
                "%s: %s; retrying (at most %d retries)", self.what, reason, self.policy.retries
            )
        time.sleep(delay)
