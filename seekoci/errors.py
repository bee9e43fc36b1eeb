"""The exception tree of seekoci.

::

    SeekociError
    ├── RegistryError                (.status: HTTP status or None)
    │   ├── AuthenticationError
    │   └── ImageNotFoundError       (also LookupError)
    ├── PlatformNotFoundError        (also LookupError)
    ├── IntegrityError               (bytes that do not match their digest)
    ├── FormatError                  (also ValueError: corrupt/unsupported blob, index, manifest)
    ├── InvalidReferenceError        (also ValueError: a reference that does not parse)
    └── TensorNotFoundError          (also KeyError: a model file has no tensor of that name)

Missing paths, directories opened as files and symlink loops raise the built-in
``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError`` and ``OSError(ELOOP)``.

Messages say what failed and where (reference, layer digest, path); they never carry a
credential.
"""

from __future__ import annotations


class SeekociError(Exception):
    """Root of every error seekoci raises (besides the built-in OSError family)."""


class RegistryError(SeekociError):
    """A registry (or blob server) answered with an error or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthenticationError(RegistryError):
    """Credentials were refused, or the registry demanded ones we do not have."""


class ImageNotFoundError(RegistryError, LookupError):
    """The repository, tag, manifest or blob does not exist."""


class PlatformNotFoundError(SeekociError, LookupError):
    """The image has no manifest for the requested platform."""

    def __init__(self, message: str, *, available: list[str] | None = None) -> None:
        super().__init__(message)
        self.available = list(available or [])


class IntegrityError(SeekociError):
    """Bytes did not match the digest they were promised to have."""


class FormatError(SeekociError, ValueError):
    """A blob, index or manifest is corrupt or of a kind seekoci does not support."""


class InvalidReferenceError(SeekociError, ValueError):
    """An image reference string could not be parsed."""


class TensorNotFoundError(SeekociError, KeyError):
    """A model file has no tensor of that name (a ``KeyError`` too)."""

    def __str__(self) -> str:  # the message as it is, not quoted as KeyError's
        return str(self.args[0]) if self.args else ""


__all__ = [
    "AuthenticationError",
    "FormatError",
    "ImageNotFoundError",
    "IntegrityError",
    "InvalidReferenceError",
    "PlatformNotFoundError",
    "RegistryError",
    "SeekociError",
    "TensorNotFoundError",
]
