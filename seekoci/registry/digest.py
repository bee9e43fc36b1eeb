"""Content digests (``algorithm:hex``): validation and verification.

Only algorithms we can verify are accepted: a digest we cannot check is no better than none,
and every byte seekoci returns must match the digest it was promised to have.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ..errors import IntegrityError

#: Hex length of each supported algorithm (lowercase hex only, as the OCI spec requires).
_HEX_LENGTH = {"sha256": 64, "sha512": 128}

# OCI image-spec descriptor grammar: algorithm ":" encoded.
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def digest_problem(digest: str) -> str | None:
    """Say what is wrong with ``digest``, or return None if it is a digest we can verify."""
    match = _DIGEST_RE.match(digest)
    if match is None:
        return "not of the form algorithm:hex"
    algorithm, encoded = match.groups()
    length = _HEX_LENGTH.get(algorithm)
    if length is None:
        return f"unsupported digest algorithm {algorithm!r}"
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        return f"{algorithm} digest must be {length} lowercase hex digits"
    return None


def is_valid_digest(digest: str) -> bool:
    """True if ``digest`` is a well-formed sha256/sha512 digest."""
    return digest_problem(digest) is None


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """Digest of ``data`` as ``algorithm:hex``."""
    if algorithm not in _HEX_LENGTH:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_digest(data: bytes, digest: str, *, what: str, hashed: Any = None) -> None:
    """Raise IntegrityError unless ``data`` hashes to ``digest``.

    ``what`` names the object in the message (a reference or a layer digest); the data itself
    is never quoted, it could be anything. ``hashed``: a hashlib object of the digest's
    algorithm that has already been fed exactly ``data`` (as it arrived), used instead of
    hashing it again.
    """
    problem = digest_problem(digest)
    if problem is not None:
        raise IntegrityError(f"{what}: cannot verify against digest {digest!r}: {problem}")
    algorithm = digest.split(":", 1)[0]
    if hashed is not None and hashed.name == algorithm:
        actual = f"{algorithm}:{hashed.hexdigest()}"
    else:
        actual = compute_digest(data, algorithm)
    if actual != digest:
        raise IntegrityError(f"{what}: content has digest {actual}, expected {digest}")
