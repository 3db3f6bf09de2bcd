"""The exceptions layercore raises.

Every failure is a :class:`LayerError` carrying ``path`` (the file, directory or layer at fault)
and a message saying what was wrong. Where a standard exception fits, the class also derives from
it, so ``except FileNotFoundError`` and ``except ValueError`` keep working. The Rust engine raises
these same classes.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "AuthenticationError",
    "BuildError",
    "CommandNotFoundError",
    "ContainerError",
    "ContainerNotFoundError",
    "CorruptImageError",
    "CorruptLayerError",
    "DigestMismatchError",
    "DockerfileError",
    "ImageNotFoundError",
    "InvalidReferenceError",
    "LayerError",
    "LayerIOError",
    "LayerWarning",
    "NetworkError",
    "ReferenceNotFoundError",
    "RegistryError",
    "SourceChangedError",
    "SourceNotFoundError",
    "TruncatedLayerError",
    "UnsupportedEntryError",
]


class LayerError(Exception):
    """Base class of every layercore error; ``path`` names what was at fault."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path: str | None = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{self.path}: {self.message}"


class _OSLayerError(LayerError, OSError):
    """A LayerError that is also an OSError (``filename`` and ``errno`` are set)."""

    _errno: int | None = None

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        LayerError.__init__(self, message, path)
        self.errno = self._errno
        self.strerror = message
        self.filename = self.path

    def __str__(self) -> str:
        return LayerError.__str__(self)


class SourceNotFoundError(_OSLayerError, FileNotFoundError):
    """The source directory, file or layer blob does not exist."""

    _errno = _errno.ENOENT


class LayerIOError(_OSLayerError):
    """A file could not be read or written (permissions, I/O error)."""


class SourceChangedError(_OSLayerError):
    """A source file changed while the layer was written, so its entry would be wrong."""


class CorruptLayerError(LayerError, ValueError):
    """The layer is not a valid (compressed) tar stream."""


class TruncatedLayerError(CorruptLayerError):
    """The layer, or its gzip/zstd stream, ends before it should."""


class DigestMismatchError(LayerError, ValueError):
    """Recomputed bytes do not match the digest or diff_id they were recorded under."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        *,
        what: str = "digest",
        expected: str = "",
        actual: str = "",
    ) -> None:
        super().__init__(message, path)
        self.what = what
        self.expected = expected
        self.actual = actual


class UnsupportedEntryError(LayerError, ValueError):
    """A source entry or archive entry that a layer cannot carry, or that a policy rejects."""


class ImageNotFoundError(LayerError, LookupError):
    """The store has no image under that tag or digest (``path`` is the store's root)."""


class ContainerNotFoundError(LayerError, LookupError):
    """The store has no container of that name (``path`` is the name)."""


class ContainerError(LayerError):
    """A container cannot be created, started, committed or removed as asked: the name is
    taken, it is running, the image has no command, the sandbox cannot start (``path`` is the
    container's name or the image's reference)."""


class CommandNotFoundError(ContainerError):
    """The container's command is not in its image (``docker run`` exits 127 for it)."""


class CorruptImageError(LayerError, ValueError):
    """A manifest, config or image index that is not valid JSON, or that contradicts itself
    or its blobs (a layer count, digest or diff_id that does not match)."""


class LayerWarning(UserWarning):
    """Something was left out of a layer (a socket, say) without failing the build."""


class InvalidReferenceError(LayerError, ValueError):
    """An image reference that is not ``[host[:port]/]repo[:tag][@digest]``; ``path`` is the
    reference as written, and the message says which part is wrong."""


class RegistryError(LayerError):
    """A registry refused or failed a request. ``path`` is the reference or URL at fault;
    ``status`` the HTTP status and ``code`` the registry's first error code (``BLOB_UNKNOWN``,
    ``DENIED``, ...) when it answered; the message says what was being done."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, path)
        self.status = status
        self.code = code


class NetworkError(RegistryError, ConnectionError):
    """No answer: the connection was refused, reset, timed out or failed TLS. ``transferred``
    counts the body bytes the failed attempt had moved; ``retriable`` is False where another
    attempt cannot help (a TLS failure, a malformed URL)."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        *,
        transferred: int = 0,
        retriable: bool = True,
    ) -> None:
        super().__init__(message, path)
        self.transferred = transferred
        self.retriable = retriable


class AuthenticationError(RegistryError, PermissionError):
    """The registry refused the credentials, or denied the access asked for."""


class ReferenceNotFoundError(RegistryError, LookupError):
    """The registry has no such repository, tag, manifest or blob."""


class DockerfileError(LayerError, ValueError):
    """A Dockerfile that cannot be parsed or built as written. ``path`` is the Dockerfile,
    ``line`` and ``column`` (both from 1; ``column`` 0 when the whole line is at fault) where
    the fault is, and the message says what was wrong there."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        *,
        line: int = 0,
        column: int = 0,
    ) -> None:
        super().__init__(message, path)
        self.line = line
        self.column = column

    def __str__(self) -> str:
        where = self.path or "Dockerfile"
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class BuildError(LayerError):
    """A build step that failed: ``stage`` and ``line`` say where, ``command`` what ran,
    ``exit_code`` how it ended (None when it could not start) and ``output`` its last lines."""

    def __init__(
        self,
        message: str,
        path: str | os.PathLike[str] | None = None,
        *,
        stage: str = "",
        line: int = 0,
        command: str = "",
        exit_code: int | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message, path)
        self.stage = stage
        self.line = line
        self.command = command
        self.exit_code = exit_code
        self.output = output

    def __str__(self) -> str:
        where = f"{self.path or 'Dockerfile'}:{self.line}" if self.line else (self.path or "")
        text = f"{where}: {self.message}" if where else self.message
        if self.output:
            text += "\n" + self.output.rstrip("\n")
        return text
