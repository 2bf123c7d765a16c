import io
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from . import files as files

from ._errors import (
    BackingChainError as BackingChainError,
    CidMismatchError as CidMismatchError,
    CorruptImageError as CorruptImageError,
    DecompressError as DecompressError,
    Error as Error,
    ForeignFormatError as ForeignFormatError,
    InvalidArgumentError as InvalidArgumentError,
    IoError as IoError,
    LockedError as LockedError,
    MissingFileError as MissingFileError,
    NotVmdkError as NotVmdkError,
    PermissionDeniedError as PermissionDeniedError,
    ReadOnlyError as ReadOnlyError,
    UnsafePathError as UnsafePathError,
    UnsupportedError as UnsupportedError,
)

__version__: str

PathLike = Union[str, os.PathLike[str]]
Buffer = Any  # anything supporting the buffer protocol

class Image:
    """An open VMDK image (with its backing chain)."""

    def __init__(
        self,
        path: PathLike,
        *,
        writable: bool = ...,
        allow_paths: List[PathLike] = ...,
        allow_unsafe_paths: bool = ...,
        ignore_cid_mismatch: bool = ...,
        force_share: bool = ...,
        open_backing: bool = ...,
    ) -> None: ...
    @property
    def size(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def writable(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def create_type(self) -> str: ...
    def read(self, offset: int, length: int) -> bytes: ...
    def readinto(self, offset: int, buffer: Buffer) -> int: ...
    def write(self, offset: int, data: Buffer) -> None: ...
    def write_zeroes(self, offset: int, length: int, *, may_unmap: bool = ...) -> None: ...
    def discard(self, offset: int, length: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...
    def map(self, offset: int = ..., length: Optional[int] = ...) -> List[Dict[str, Any]]: ...
    def info(self) -> Dict[str, Any]: ...
    def check(self) -> Dict[str, Any]: ...
    def descriptor(self) -> Dict[str, Any]: ...
    def reader(self) -> ImageReader: ...
    def __enter__(self) -> Image: ...
    def __exit__(self, *exc: Any) -> None: ...

class ImageReader(io.RawIOBase):
    def __init__(self, image: Image) -> None: ...
    @property
    def name(self) -> str: ...

def open(
    path: PathLike,
    *,
    writable: bool = ...,
    allow_paths: Iterable[PathLike] = ...,
    ignore_cid_mismatch: bool = ...,
    allow_unsafe_paths: bool = ...,
    force_share: bool = ...,
) -> Image: ...
def create(
    path: PathLike,
    size: Optional[int] = ...,
    *,
    subformat: str = ...,
    adapter_type: str = ...,
    backing: Optional[str] = ...,
    hwversion: Optional[str] = ...,
    toolsversion: Optional[str] = ...,
    compat6: bool = ...,
    zeroed_grain: bool = ...,
    allow_paths: Iterable[PathLike] = ...,
    options: Optional[str] = ...,
) -> None: ...
def convert(
    src: PathLike,
    dst: PathLike,
    *,
    format: str = ...,
    subformat: str = ...,
    compress: bool = ...,
    progress: Optional[Callable[[int, int], Any]] = ...,
    src_format: Optional[str] = ...,
    adapter_type: str = ...,
    threads: int = ...,
    allow_paths: Iterable[PathLike] = ...,
    ignore_cid_mismatch: bool = ...,
    cluster_size: Optional[int] = ...,
    compat: Optional[str] = ...,
    lazy_refcounts: bool = ...,
    options: Optional[str] = ...,
    durable: bool = ...,
) -> None: ...
def inspect(
    path: PathLike, *, policy: str = ..., max_size: Optional[int] = ...
) -> Dict[str, Any]: ...
def ova_info(path: PathLike, *, threads: int = ...) -> Dict[str, Any]: ...
