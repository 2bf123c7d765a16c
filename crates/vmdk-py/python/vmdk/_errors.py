"""Exceptions raised by the vmdk package.

Every exception carries the library's error kind and message. The native module builds them
as ``Class(text, kind, path, errno, message)``; see ``src/errors.rs``.
"""

from typing import Optional


class Error(Exception):
    """Base class of every error the vmdk library reports.

    Attributes: ``kind`` (a short name such as ``"corrupt"`` or ``"unsafe-path"``),
    ``path`` (the file concerned, or None), ``message`` (the text without the file name).
    ``str(error)`` is the library's full message, ``'<file>': <what is wrong>``.
    """

    def __init__(
        self,
        text: str,
        kind: str = "other",
        path: Optional[str] = None,
        errno: Optional[int] = None,
        message: Optional[str] = None,
    ) -> None:
        super().__init__(text)
        self.kind = kind
        self.path = path
        self.message = message if message is not None else text

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class IoError(Error, OSError):
    """The operating system failed an I/O operation; ``errno`` is kept when known."""

    def __init__(
        self,
        text: str,
        kind: str = "io",
        path: Optional[str] = None,
        errno: Optional[int] = None,
        message: Optional[str] = None,
    ) -> None:
        # OSError(errno, strerror, filename) fills errno/strerror/filename.
        if errno is not None:
            OSError.__init__(self, errno, text, path)
        else:
            OSError.__init__(self, text)
        self.kind = kind
        self.path = path
        self.message = message if message is not None else text
        self._text = text

    def __str__(self) -> str:
        # The library's text already names the file and the OS error.
        return self._text


class MissingFileError(IoError, FileNotFoundError):
    """A file the image needs does not exist (ENOENT)."""


class PermissionDeniedError(IoError, PermissionError):
    """The operating system refused access to a file (EACCES, EPERM)."""


class NotVmdkError(Error):
    """The file is not a VMDK image."""


class ForeignFormatError(NotVmdkError):
    """The file is an image of another format (qcow2, VHD, ...)."""


class CorruptImageError(Error):
    """The image's metadata is malformed, truncated or inconsistent."""


class DecompressError(CorruptImageError):
    """A compressed grain could not be decompressed."""


class UnsupportedError(Error):
    """The image uses a feature or variant the library does not handle."""


class UnsafePathError(Error):
    """An extent or backing path leaves the image's directory (pass ``allow_paths``)."""


class CidMismatchError(Error):
    """A child's parentCID does not match its parent's CID."""


class BackingChainError(Error):
    """The backing chain is cyclic, too deep, or a backing file is missing."""


class InvalidArgumentError(Error, ValueError):
    """An access outside the virtual disk, or an invalid argument."""


class ReadOnlyError(Error):
    """A write to an image or extent that cannot be written."""


class LockedError(Error):
    """Another process holds the image (QEMU-compatible image locking)."""


__all__ = [
    "Error",
    "IoError",
    "MissingFileError",
    "PermissionDeniedError",
    "NotVmdkError",
    "ForeignFormatError",
    "CorruptImageError",
    "DecompressError",
    "UnsupportedError",
    "UnsafePathError",
    "CidMismatchError",
    "BackingChainError",
    "InvalidArgumentError",
    "ReadOnlyError",
    "LockedError",
]
