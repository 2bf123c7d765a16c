"""A drop-in for libyal's ``pyvmdk`` (libvmdk's Python bindings), backed by the Rust
``vmdk`` library: ``import vmdk.pyvmdk as pyvmdk`` and code written for pyvmdk (dfvfs,
plaso, ...) reads images the same way.

What follows libvmdk: ``open()`` reads only the descriptor (media size, content
identifiers, parent file name, extent descriptors); data needs
``open_extent_data_files()`` (by path) or ``open_extent_data_files_file_objects()`` (one
file object per extent descriptor, as dfvfs passes them); errors are ``IOError`` (here
subclasses that also are ``vmdk.Error``), bad arguments ``ValueError``/``TypeError``.

Where it differs:

* an image opened by path reads its backing chain by itself (with the library's path
  rules), so ``set_parent()`` only confirms the parent; libvmdk fails reads of a child's
  unallocated grains until a parent is set. Children read through file objects cannot have
  their parent attached, and fail such reads as libvmdk does without a parent;
* ``read_buffer()`` without a size reads to the end of the media (as newer libvmdk does;
  the 2020 release refuses);
* the images are read-only, as with libvmdk.
"""

import builtins
import os
from typing import Any, Dict, Iterator, List, Optional

from . import _vmdk
from ._errors import Error, IoError

# dfvfs compares this string with libvmdk release dates (``get_version() < '20140421'``),
# so it is a date: the libvmdk release whose Python API this module follows.
_VERSION = "20240510"

_NO_CID = 0xFFFFFFFF


def get_version() -> str:
    """The libvmdk API version this module implements (a date, as libvmdk's)."""
    return _VERSION


class disk_types(object):  # noqa: N801 - pyvmdk's names
    """The disk types (``createType``) libvmdk distinguishes."""

    UNKNOWN = 0
    # The names start with a digit, so they are set below.
    CUSTOM = 3
    DEVICE = 4
    DEVICE_PARITIONED = 5
    MONOLITHIC_FLAT = 6
    MONOLITHIC_SPARSE = 7
    STREAM_OPTIMIZED = 8
    VMFS_FLAT = 9
    VMFS_FLAT_PRE_ALLOCATED = 10
    VMFS_FLAT_ZEROED = 11
    VMFS_RAW = 12
    VMFS_RDM = 13
    VMFS_RDMP = 14
    VMFS_SPARSE = 15
    VMFS_SPARSE_THIN = 16


setattr(disk_types, "2GB_EXTENT_FLAT", 1)
setattr(disk_types, "2GB_EXTENT_SPARSE", 2)


class extent_types(object):  # noqa: N801
    """The extent types libvmdk distinguishes."""

    UNKNOWN = 0
    FLAT = 1
    SPARSE = 2
    VMFS_FLAT = 3
    VMFS_SPARSE = 4
    VMFS_RAW = 5
    VMFS_RDM = 6
    ZERO = 7


_DISK_TYPES = {
    "twogbmaxextentflat": 1,
    "twogbmaxextentsparse": 2,
    "custom": 3,
    "fulldevice": 4,
    "partitioneddevice": 5,
    "monolithicflat": 6,
    "monolithicsparse": 7,
    "streamoptimized": 8,
    "vmfs": 9,
    "vmfspreallocated": 10,
    "vmfseagerzeroedthick": 11,
    "vmfsraw": 12,
    "vmfsrawdevicemap": 13,
    "vmfspassthroughrawdevicemap": 14,
    "vmfssparse": 15,
    "vmfsthin": 16,
}

_EXTENT_TYPES = {
    "FLAT": 1,
    "SPARSE": 2,
    "VMFS": 3,
    "VMFSSPARSE": 4,
    "VMFSRAW": 5,
    "VMFSRDM": 6,
    "ZERO": 7,
}


class extent_descriptor(object):  # noqa: N801
    """One extent line of the descriptor."""

    def __init__(self, line: Dict[str, Any]) -> None:
        self._line = line

    def get_filename(self) -> Optional[str]:
        """The extent's file name as the descriptor writes it (None for ZERO extents)."""
        return self._line.get("file")

    def get_offset(self) -> int:
        """The extent's data offset in its file, in bytes."""
        return int(self._line["offset"]) * 512

    def get_size(self) -> int:
        """The extent's size in bytes."""
        return int(self._line["sectors"]) * 512

    def get_type(self) -> int:
        """The extent's type, one of :class:`extent_types`."""
        return _EXTENT_TYPES.get(self._line["type"], extent_types.UNKNOWN)

    filename = property(get_filename, doc="The filename.")
    offset = property(get_offset, doc="The offset.")
    size = property(get_size, doc="The size.")
    type = property(get_type, doc="The type.")


class extent_descriptors(object):  # noqa: N801
    """The sequence of a handle's extent descriptors."""

    def __init__(self, items: List[extent_descriptor]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> extent_descriptor:
        return self._items[index]

    def __iter__(self) -> Iterator[extent_descriptor]:
        return iter(self._items)


def _io_error(text: str) -> IoError:
    return IoError(text, "io", None, None, text)


def _read_at(file_object: Any, offset: int, size: int) -> bytes:
    file_object.seek(offset, os.SEEK_SET)
    data = file_object.read(size)
    return bytes(data) if data is not None else b""


def _descriptor_of(file_object: Any) -> Dict[str, Any]:
    """The descriptor of a descriptor file or of a sparse file with one embedded."""
    head = _read_at(file_object, 0, 4096)
    kind = _vmdk.probe(head)
    if kind == "descriptor":
        text = _read_at(file_object, 0, _vmdk.MAX_DESCRIPTOR_SIZE + 1)
        if len(text) > _vmdk.MAX_DESCRIPTOR_SIZE:
            raise _io_error("descriptor file is larger than 1 MiB")
        return _vmdk.parse_descriptor(text)
    if kind == "sparse":
        where = _vmdk.embedded_descriptor_range(head[:512])
        if where is None:
            raise _io_error("sparse extent file without an embedded descriptor")
        return _vmdk.parse_descriptor(_read_at(file_object, where[0], where[1]))
    if kind is None:
        raise _io_error("not a VMDK descriptor or sparse extent file")
    raise _io_error("unsupported file type: %s (no descriptor)" % kind)


def _check_mode(mode: str) -> None:
    if mode != "r":
        raise ValueError("unsupported mode: %r (only 'r')" % (mode,))


class handle(object):  # noqa: N801
    """A VMDK image handle, as libvmdk's."""

    def __init__(self) -> None:
        self._descriptor: Optional[Dict[str, Any]] = None
        self._path: Optional[str] = None
        self._file_object: Any = None
        self._own_files: List[Any] = []
        self._image: Any = None
        self._offset = 0

    # Opening and closing.

    def signal_abort(self) -> None:
        """Signals the handle to abort the current activity (nothing runs in the
        background here, so there is nothing to abort)."""

    def open(self, filename: Any, mode: str = "r") -> None:
        """Opens a handle using the descriptor file (or a monolithic sparse file)."""
        if filename is None or not isinstance(filename, (str, bytes, os.PathLike)):
            raise TypeError("unsupported string object type")
        _check_mode(mode)
        if self._descriptor is not None:
            raise _io_error("handle already open")
        path = os.fsdecode(os.fspath(filename))
        try:
            with builtins.open(path, "rb") as f:
                self._descriptor = _descriptor_of(f)
        except Error:
            raise
        except OSError as e:
            raise IoError(
                "'%s': cannot open: %s" % (path, e.strerror or e), "io", path, e.errno
            ) from e
        self._path = path
        self._offset = 0

    def open_file_object(self, file_object: Any, mode: str = "r") -> None:
        """Opens a handle using a file-like object of the descriptor file."""
        _check_mode(mode)
        if self._descriptor is not None:
            raise _io_error("handle already open")
        if file_object is None or not hasattr(file_object, "read"):
            raise _io_error("unsupported file object")
        self._descriptor = _descriptor_of(file_object)
        self._file_object = file_object
        self._offset = 0

    def _require_descriptor(self) -> Dict[str, Any]:
        if self._descriptor is None:
            raise _io_error("handle not open")
        return self._descriptor

    def _extent_names(self) -> List[Optional[str]]:
        return [e.get("file") for e in self._require_descriptor()["extents"]]

    def open_extent_data_files(self) -> None:
        """Opens the extent data files, named relative to the descriptor's directory (or,
        for a handle opened from a file object without a usable ``name``, the current
        directory)."""
        self._require_descriptor()
        if self._image is not None:
            raise _io_error("extent data files already open")
        if self._path is not None:
            # By path: the library opens everything, with its rules for where extent and
            # backing files may lie.
            self._image = _vmdk.Image(self._path)
            return
        base = getattr(self._file_object, "name", None)
        directory = (
            os.path.dirname(os.fsdecode(base))
            if isinstance(base, (str, bytes)) and os.path.isfile(base)
            else os.getcwd()
        )
        files = []
        for name in self._extent_names():
            if name is None:
                files.append(None)
                continue
            f = builtins.open(os.path.join(directory, name), "rb")
            self._own_files.append(f)
            files.append(f)
        self._open_from_file_objects(files)

    def open_extent_data_files_file_objects(self, file_objects: Any) -> None:
        """Opens the extent data files using a list of file-like objects, one per extent
        descriptor, in order (ZERO extents included, their entry unused)."""
        self._require_descriptor()
        if self._image is not None:
            raise _io_error("extent data files already open")
        self._open_from_file_objects(list(file_objects))

    # Both spellings exist in libvmdk's bindings.
    open_extent_data_files_as_file_objects = open_extent_data_files_file_objects

    def _open_from_file_objects(self, file_objects: List[Any]) -> None:
        names = self._extent_names()
        if len(file_objects) != len(names):
            raise _io_error(
                "%d file objects given for %d extents" % (len(file_objects), len(names))
            )
        main_fo = self._file_object
        if main_fo is None:
            main_fo = builtins.open(self._path, "rb")  # type: ignore[arg-type]
            self._own_files.append(main_fo)
        pairs = []
        for name, f in zip(names, file_objects):
            if name is not None and f is not None:
                pairs.append((name, f))
        # The main file's stand-in name must not be an extent's, unless it is that extent
        # (a sparse file carrying its own descriptor names itself).
        taken = {n for n, _ in pairs}
        if _vmdk.probe(_read_at(main_fo, 0, 512)) == "sparse" and len(names) == 1:
            main = "image.vmdk"
            pairs = []
        else:
            main = "descriptor.vmdk"
            while main in taken:
                main = "_" + main
        pairs.append((main, main_fo))
        self._image = _vmdk.open_file_objects(main, pairs)

    def close(self) -> None:
        """Closes the handle."""
        if self._descriptor is None:
            raise _io_error("handle not open")
        if self._image is not None:
            self._image.close()
        for f in self._own_files:
            f.close()
        self.__init__()  # type: ignore[misc]

    def set_parent(self, parent_handle: "handle") -> None:
        """Sets the parent handle. An image opened by path has read its backing chain
        already; this checks that ``parent_handle`` is open."""
        if parent_handle is None or parent_handle._descriptor is None:
            raise _io_error("parent handle not open")
        if self._image is None:
            raise _io_error("extent data files not open")
        if self._path is None and self._has_parent():
            raise _io_error(
                "parent images of images read through file objects are not supported"
            )

    def _has_parent(self) -> bool:
        d = self._require_descriptor()
        return d["parent_cid"] != _NO_CID or d.get("parent_file_name_hint") is not None

    # Reading.

    def _data(self) -> Any:
        self._require_descriptor()
        if self._image is None:
            raise _io_error("extent data files not open: call open_extent_data_files()")
        if self._path is None and self._has_parent():
            raise _io_error("missing parent handle (child image read through file objects)")
        return self._image

    def read_buffer(self, size: Optional[int] = None) -> bytes:
        """Reads a buffer of data at the current offset; ``size`` None reads to the end."""
        image = self._data()
        if size is None:
            size = max(image.size - self._offset, 0)
        if size < 0:
            raise ValueError("invalid argument read size value less than zero")
        data = image.read(self._offset, size) if self._offset < image.size else b""
        self._offset += len(data)
        return data

    read = read_buffer

    def read_buffer_at_offset(self, size: int, offset: int) -> bytes:
        """Reads a buffer of data at a specific offset (and moves the offset past it)."""
        if size < 0:
            raise ValueError("invalid argument read size value less than zero")
        if offset < 0:
            raise ValueError("invalid argument read offset value less than zero")
        image = self._data()
        data = image.read(offset, size) if offset < image.size else b""
        self._offset = offset + len(data)
        return data

    def seek_offset(self, offset: int, whence: int = os.SEEK_SET) -> None:
        """Seeks an offset within the data (past the end is allowed)."""
        size = self.get_media_size()
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._offset + offset
        elif whence == os.SEEK_END:
            target = size + offset
        else:
            raise _io_error("unsupported whence: %r" % (whence,))
        if target < 0:
            raise _io_error("invalid offset value out of bounds")
        self._offset = target

    seek = seek_offset

    def get_offset(self) -> int:
        """Retrieves the current offset within the data."""
        self._require_descriptor()
        return self._offset

    tell = get_offset

    # Metadata.

    def get_media_size(self) -> int:
        """Retrieves the size of the media data."""
        return int(self._require_descriptor()["total_sectors"]) * 512

    get_size = get_media_size

    def get_content_identifier(self) -> int:
        """Retrieves the content identifier (CID)."""
        return int(self._require_descriptor()["cid"])

    def get_parent_content_identifier(self) -> int:
        """Retrieves the parent content identifier (0xffffffff: no parent)."""
        return int(self._require_descriptor()["parent_cid"])

    def get_parent_filename(self) -> Optional[str]:
        """Retrieves the parent filename (``parentFileNameHint``), or None."""
        return self._require_descriptor().get("parent_file_name_hint")

    def get_disk_type(self) -> int:
        """Retrieves the disk type, one of :class:`disk_types`."""
        create_type = self._require_descriptor()["create_type"]
        return _DISK_TYPES.get(create_type.lower(), disk_types.UNKNOWN)

    def get_number_of_extents(self) -> int:
        """Retrieves the number of extents."""
        return len(self._require_descriptor()["extents"])

    def get_extent_descriptor(self, extent_index: int) -> extent_descriptor:
        """Retrieves a specific extent descriptor."""
        extents = self._require_descriptor()["extents"]
        if not 0 <= extent_index < len(extents):
            raise _io_error("unable to retrieve extent: %d descriptor" % extent_index)
        return extent_descriptor(extents[extent_index])

    def _get_extent_descriptors(self) -> extent_descriptors:
        extents = self._require_descriptor()["extents"]
        return extent_descriptors([extent_descriptor(e) for e in extents])

    media_size = property(get_media_size, doc="The media size.")
    content_identifier = property(get_content_identifier, doc="The content identifier.")
    parent_content_identifier = property(
        get_parent_content_identifier, doc="The parent content identifier."
    )
    parent_filename = property(get_parent_filename, doc="The parent filename.")
    disk_type = property(get_disk_type, doc="The disk type.")
    number_of_extents = property(get_number_of_extents, doc="The number of extents")
    extent_descriptors = property(_get_extent_descriptors, doc="The extent descriptors")


def open(filename: Any, mode: str = "r") -> handle:  # noqa: A001 - pyvmdk's name
    """Opens a VMDK image handle using the descriptor file."""
    h = handle()
    h.open(filename, mode)
    return h


def open_file_object(file_object: Any, mode: str = "r") -> handle:
    """Opens a VMDK image handle using a file-like object of the descriptor file."""
    h = handle()
    h.open_file_object(file_object, mode)
    return h


def check_file_signature(filename: Any) -> bool:
    """Checks if a file has a VMDK file signature (descriptor, KDMV, COWD or seSparse)."""
    with builtins.open(os.fspath(filename), "rb") as f:
        return check_file_signature_file_object(f)


def check_file_signature_file_object(file_object: Any) -> bool:
    """Checks if a file has a VMDK file signature using a file-like object."""
    return _vmdk.probe(_read_at(file_object, 0, 4096)) in (
        "descriptor",
        "sparse",
        "cowd",
        "sesparse",
    )


__all__ = [
    "get_version",
    "open",
    "open_file_object",
    "check_file_signature",
    "check_file_signature_file_object",
    "handle",
    "extent_descriptor",
    "extent_descriptors",
    "disk_types",
    "extent_types",
]
