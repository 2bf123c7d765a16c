"""Files by name, on the host or in object storage: what a program that handles many
images needs besides the images themselves (list a prefix, look a name up, read a file's
first bytes, leave a small marker).

Names are host paths or object names (``s3://bucket/key``; ``http(s)://`` URLs can be
looked up and read, not listed or written). Objects go through the same client as the
images ``vmdk`` opens by such names: the same credentials (the standard ``AWS_*``
environment and profile files), endpoint and retries of failed requests.

Prefixes are plain string prefixes, as in S3: ``dir/`` is everything below ``dir``,
``dir/a`` the names in ``dir`` (and below) that start with ``a``. Listings are recursive.
"""

import builtins
import os
import posixpath
import tempfile
from typing import List, NamedTuple, Optional

from . import _vmdk
from ._errors import Error

__all__ = [
    "FileInfo", "is_object", "list", "stat", "read", "write", "remove", "probe", "extent_files",
]

_SCHEMES = ("s3://", "http://", "https://")
# qemu-img probes a file's first 2 KiB.
_PROBE_BYTES = 2048


class FileInfo(NamedTuple):
    """One file or object: its ``name`` (as listed: the prefix followed by the rest of the
    name), ``size`` in bytes, and ``version``, a string that changes when the content is
    replaced (an object's ETag, a host file's modification time and inode)."""

    name: str
    size: int
    version: str


def is_object(name: str) -> bool:
    """Whether ``name`` is an object name rather than a host path."""
    return name[:8].lower().startswith(_SCHEMES)


def _object_info(d: dict) -> FileInfo:
    version = d["etag"] or "mtime:%d" % d["modified_ms"]
    return FileInfo(d["name"], d["size"], version)


def _file_info(name: str, st: os.stat_result) -> FileInfo:
    return FileInfo(name, st.st_size, "mtime:%d:ino:%d" % (st.st_mtime_ns, st.st_ino))


def list(prefix: str) -> List[FileInfo]:  # noqa: A001 - files.list reads naturally
    """Every regular file or object whose name starts with ``prefix``, sorted by name."""
    if is_object(prefix):
        return [_object_info(d) for d in _vmdk.object_list(prefix)]
    cut = prefix.rfind("/") + 1
    head = prefix[:cut]
    top = head or "."
    out: List[FileInfo] = []
    for root, dirs, names in os.walk(top):
        dirs.sort()
        rel_root = os.path.relpath(root, top)
        for n in names:
            rel = n if rel_root == "." else rel_root + "/" + n
            name = head + rel
            if not name.startswith(prefix):
                continue
            try:
                st = os.stat(name)
            except FileNotFoundError:
                continue  # removed while listing
            if os.path.isfile(name):
                out.append(_file_info(name, st))
    out.sort(key=lambda f: f.name)
    return out


def stat(name: str) -> Optional[FileInfo]:
    """``name`` as :func:`list` shows it, or ``None`` when there is no such file."""
    if is_object(name):
        d = _vmdk.object_stat(name)
        return _object_info(d) if d is not None else None
    try:
        return _file_info(name, os.stat(name))
    except FileNotFoundError:
        return None


def read(name: str, offset: int = 0, length: Optional[int] = None) -> bytes:
    """Up to ``length`` bytes of ``name`` from ``offset`` (everything to the end when
    ``length`` is None; fewer where the file ends). An object is read with one request,
    which is cheap for the first bytes of many objects."""
    if is_object(name):
        if length is None:
            info = stat(name)
            if info is None:
                raise FileNotFoundError(name)
            length = info.size - offset
        if length <= 0:
            return b""
        return _vmdk.object_read(name, offset, length)
    with builtins.open(name, "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def write(name: str, data: bytes) -> None:
    """Store ``data`` as ``name``, whole or not at all: an object with one request, a host
    file through a temporary file renamed over it (its directory is created)."""
    if is_object(name):
        _vmdk.object_write(name, bytes(data))
        return
    directory = os.path.dirname(name) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, name)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove(name: str) -> None:
    """Remove ``name``; nothing happens when it does not exist."""
    if is_object(name):
        _vmdk.object_remove(name)
        return
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def probe(name: str, size: Optional[int] = None) -> Optional[str]:
    """What ``name``'s first bytes say it is, as the library probes them: "descriptor" (a
    VMDK descriptor file), "sparse", "cowd" or "sesparse" (VMDK extents that open as
    images), another format's qemu name ("qcow2", "vpc", ...), or None (no signature: raw
    data, or anything else). ``size``, when known (from :func:`list`), saves a lookup."""
    if size is None:
        info = stat(name)
        if info is None:
            raise FileNotFoundError(name)
        size = info.size
    return _vmdk.probe(read(name, 0, min(size, _PROBE_BYTES))) if size else None


def extent_files(name: str, size: Optional[int] = None) -> List[str]:
    """The files the VMDK descriptor file ``name`` lists as extents, named as :func:`list`
    names files (beside ``name``, ``..`` resolved by the name alone); an empty list for
    anything that is not a readable descriptor file. Nothing is checked: opening the image
    applies the path rules. ``size``, when known, saves a lookup."""
    if size is None:
        info = stat(name)
        size = info.size if info is not None else 0
    if not size or size > _vmdk.MAX_DESCRIPTOR_SIZE:
        return []
    text = read(name, 0, size)
    if _vmdk.probe(text[:_PROBE_BYTES]) != "descriptor":
        return []
    try:
        extents = _vmdk.parse_descriptor(text)["extents"]
    except Error:
        return []
    return [_beside(name, e["file"]) for e in extents if e.get("file")]


def _beside(referrer: str, rel: str) -> str:
    if is_object(referrer):
        scheme, _, rest = referrer.partition("://")
        bucket, _, key = rest.partition("/")
        key = posixpath.normpath(posixpath.join(posixpath.dirname(key), rel))
        return "%s://%s/%s" % (scheme, bucket, key)
    return os.path.normpath(os.path.join(os.path.dirname(referrer), rel))
