"""Read, write, create, convert and check VMware VMDK images.

Python bindings of the Rust ``vmdk`` library::

    import vmdk

    with vmdk.open("disk.vmdk") as img:
        head = img.read(0, 512)
        for entry in img.map():
            print(entry)

``s3://bucket/key`` and ``http(s)://host/path`` names open like files; ``vmdk.files``
lists, looks up, reads and writes files and objects by name (for programs that handle many
images). ``vmdk.pyvmdk`` is a drop-in for libyal's ``pyvmdk`` module (``import
vmdk.pyvmdk as pyvmdk``).
"""

import io
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from . import _errors, _vmdk, files
from ._errors import (
    BackingChainError,
    CidMismatchError,
    CorruptImageError,
    DecompressError,
    Error,
    ForeignFormatError,
    InvalidArgumentError,
    IoError,
    LockedError,
    MissingFileError,
    NotVmdkError,
    PermissionDeniedError,
    ReadOnlyError,
    UnsafePathError,
    UnsupportedError,
)

__version__ = _vmdk.__version__

PathLike = Union[str, "os.PathLike[str]"]


class Image(_vmdk.Image):
    """An open VMDK image (with its backing chain). Use :func:`open` to get one.

    Safe to share between threads: reads (and writes) release the GIL and run in parallel.
    """

    def readinto(self, offset: int, buffer: Any) -> int:
        """Fill the writable buffer ``buffer`` with the disk's bytes at ``offset``; returns
        how many bytes were read (fewer only where the disk ends)."""
        with memoryview(buffer) as view, view.cast("B") as out:
            data = self.read(offset, len(out))
            out[: len(data)] = data
            return len(data)

    def write(self, offset: int, data: Any) -> None:  # type: ignore[override]
        """Write ``data`` (bytes or any buffer) at ``offset``."""
        if not isinstance(data, bytes):
            data = bytes(memoryview(data).cast("B"))
        super().write(offset, data)

    def reader(self) -> "ImageReader":
        """A read-only, seekable :class:`io.RawIOBase` over the virtual disk, for
        ``shutil.copyfileobj``, ``tarfile`` and other file-object consumers. Wrap it in
        :class:`io.BufferedReader` for small reads."""
        return ImageReader(self)

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ImageReader(io.RawIOBase):
    """A file-object view of an :class:`Image` (see :meth:`Image.reader`). Each reader has
    its own position; closing it leaves the image open."""

    def __init__(self, image: Image) -> None:
        super().__init__()
        self._image = image
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        n = self._image.readinto(self._pos, b)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._image.size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        self._checkClosed()  # type: ignore[attr-defined]
        return self._pos

    @property
    def name(self) -> str:
        return self._image.path


def open(  # noqa: A001 - the natural name, as for io.open
    path: PathLike,
    *,
    writable: bool = False,
    allow_paths: Iterable[PathLike] = (),
    ignore_cid_mismatch: bool = False,
    allow_unsafe_paths: bool = False,
    force_share: bool = False,
) -> Image:
    """Open the VMDK image at ``path`` (its extents and backing chain too).

    Extent and backing files must lie in the image's directory (or below it) unless their
    directories are listed in ``allow_paths``; ``allow_unsafe_paths`` lifts the check (only
    for images you trust). ``force_share`` opens read-only without excluding a writer (as
    qemu-img's ``-U``). Raises a :class:`vmdk.Error` subclass.
    """
    return Image(
        os.fspath(path),
        writable=writable,
        allow_paths=[os.fspath(p) for p in allow_paths],
        allow_unsafe_paths=allow_unsafe_paths,
        ignore_cid_mismatch=ignore_cid_mismatch,
        force_share=force_share,
    )


def create(
    path: PathLike,
    size: Optional[int] = None,
    *,
    subformat: str = "monolithicSparse",
    adapter_type: str = "ide",
    backing: Optional[str] = None,
    hwversion: Optional[str] = None,
    toolsversion: Optional[str] = None,
    compat6: bool = False,
    zeroed_grain: bool = False,
    allow_paths: Iterable[PathLike] = (),
    options: Optional[str] = None,
) -> None:
    """Create an empty image of ``size`` bytes, as ``qemu-img create -f vmdk`` does.

    ``subformat``: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
    twoGbMaxExtentFlat, streamOptimized or vmfs. ``adapter_type``: ide, buslogic, lsilogic
    or legacyESX. ``backing`` names a parent image (relative to the new one).
    ``options`` takes qemu-img's ``-o`` text as well (``"subformat=streamOptimized,
    zeroed_grain=on"``), applied after the keywords. Without a size (here or as ``size=``
    in ``options``) the backing file's is taken, as qemu-img does.
    """
    _vmdk.create(
        os.fspath(path),
        size,
        subformat=subformat,
        adapter_type=adapter_type,
        backing=backing,
        hwversion=hwversion,
        toolsversion=toolsversion,
        compat6=compat6,
        zeroed_grain=zeroed_grain,
        allow_paths=[os.fspath(p) for p in allow_paths],
        options=options,
    )


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    format: str = "vmdk",
    subformat: str = "monolithicSparse",
    compress: bool = False,
    progress: Optional[Callable[[int, int], Any]] = None,
    src_format: Optional[str] = None,
    adapter_type: str = "ide",
    threads: int = 0,
    allow_paths: Iterable[PathLike] = (),
    ignore_cid_mismatch: bool = False,
    cluster_size: Optional[int] = None,
    compat: Optional[str] = None,
    lazy_refcounts: bool = False,
    options: Optional[str] = None,
    durable: bool = False,
) -> None:
    """Copy ``src`` (VMDK, qcow2 or raw) to a new image ``dst`` (``format`` "vmdk",
    "qcow2" or "raw"), as ``qemu-img convert`` does. ``s3://`` and ``http(s)://`` names
    work on either side (uploads: raw, streamOptimized VMDK and qcow2 outputs).

    ``subformat`` and ``adapter_type`` shape a VMDK; ``cluster_size``, ``compat`` ("0.10"
    or "1.1") and ``lazy_refcounts`` a qcow2; ``compress`` compresses qcow2 clusters.
    ``options`` takes qemu-img's ``-o`` text for the output format as well.
    ``durable`` makes the output durable before returning (qemu-img's ``-t none``).
    ``threads`` bounds the converting threads (0: one per core).
    ``progress(done, total)`` is called with byte counts as the copy goes on (from worker
    threads, holding the GIL); an exception it raises is re-raised when the copy ends.
    """
    _vmdk.convert(
        os.fspath(src),
        os.fspath(dst),
        format=format,
        subformat=subformat,
        compress=compress,
        progress=progress,
        src_format=src_format,
        adapter_type=adapter_type,
        threads=threads,
        allow_paths=[os.fspath(p) for p in allow_paths],
        ignore_cid_mismatch=ignore_cid_mismatch,
        cluster_size=cluster_size,
        compat=compat,
        lazy_refcounts=lazy_refcounts,
        options=options,
        durable=durable,
    )


def inspect(
    path: PathLike, *, policy: str = "default", max_size: Optional[int] = None
) -> Dict[str, Any]:
    """Decide whether ``path`` is a safe, self-contained VMDK without opening anything
    it names: the dict ``vmdk inspect --output=json`` prints. ``verdict`` is "safe" or
    "unsafe"; ``reasons`` lists every problem (``code`` and ``message``). ``policy`` is
    "default" (OpenStack's: monolithicSparse and streamOptimized only) or "strict";
    ``max_size`` refuses larger virtual disks.
    """
    return _vmdk.inspect(os.fspath(path), policy=policy, max_size=max_size)


def ova_info(path: PathLike, *, threads: int = 0) -> Dict[str, Any]:
    """What the OVA at ``path`` is: the dict ``vmdk ova info --output=json`` prints (the
    OVF's virtual system, ``disks`` and ``networks``, each manifest digest checked on
    ``threads`` threads (0: one per core) in ``digests``, the ``members``, and
    ``findings``, empty for an archive fit to import as it is)."""
    return _vmdk.ova_info(os.fspath(path), threads=threads)


__all__ = [
    "Image",
    "ImageReader",
    "open",
    "create",
    "convert",
    "inspect",
    "ova_info",
    "files",
    *_errors.__all__,
]
