"""vmdk.pyvmdk side by side with libyal's pyvmdk (Debian's python3-libvmdk): the same
images give the same answers. A machine without python3-libvmdk fails these tests unless
VMDK_TEST_NO_LIBVMDK=1 says it has none."""

import io
import os

import pytest

import vmdk
import vmdk.pyvmdk as ours
from conftest import MIB, SUBFORMATS, make_image, qemu_img, qemu_raw

try:
    import pyvmdk as libyal
except ImportError:  # pragma: no cover - depends on the machine
    libyal = None
    if os.environ.get("VMDK_TEST_NO_LIBVMDK") != "1":
        raise ImportError(
            "python3-libvmdk (module pyvmdk) is not importable: install it "
            "(apt-get install python3-libvmdk, and a venv with --system-site-packages) "
            "or set VMDK_TEST_NO_LIBVMDK=1 to run without the comparisons"
        )

needs_libyal = pytest.mark.skipif(
    libyal is None, reason="VMDK_TEST_NO_LIBVMDK=1: no python3-libvmdk on this machine"
)


def metadata(h):
    """Everything a handle says before its extent data files are opened."""
    return {
        "media_size": h.get_media_size(),
        "media_size_prop": h.media_size,
        "cid": h.get_content_identifier(),
        "parent_cid": h.get_parent_content_identifier(),
        "parent_filename": h.get_parent_filename(),
        "disk_type": h.get_disk_type(),
        "disk_type_prop": h.disk_type,
        "extents": h.get_number_of_extents(),
        "extents_prop": h.number_of_extents,
        "descriptors": [
            (d.get_filename(), d.get_type(), d.get_offset(), d.get_size(), d.filename, d.type, d.offset, d.size)
            for d in h.extent_descriptors
        ],
        "descriptor0": h.get_extent_descriptor(0).get_filename(),
    }


def read_all(h):
    h.seek_offset(0, os.SEEK_SET)
    out = []
    while True:
        data = h.read_buffer(1000003)
        if not data:
            return b"".join(out)
        out.append(data)


def cursor_trace(h):
    """Reads and seeks whose results and offsets must agree."""
    size = h.get_media_size()
    trace = [h.read_buffer_at_offset(100, MIB - 50), h.get_offset()]
    h.seek_offset(-16, os.SEEK_END)
    trace += [h.get_offset(), h.read_buffer(4096), h.get_offset()]
    h.seek_offset(16, os.SEEK_END)
    trace += [h.get_offset(), h.read_buffer(10)]
    h.seek_offset(3 * MIB, os.SEEK_SET)
    h.seek_offset(-7, os.SEEK_CUR)
    trace += [h.get_offset(), h.read(20), h.tell()]
    for bad in ((-1, os.SEEK_SET), (-size - 32, os.SEEK_END), (0, 7)):
        with pytest.raises(IOError):
            h.seek_offset(*bad)
    with pytest.raises(ValueError):
        h.read_buffer(-1)
    with pytest.raises(ValueError):
        h.read_buffer_at_offset(4, -1)
    return trace


@needs_libyal
@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_by_path_same_as_libvmdk(workdir, subformat):
    path = str(make_image(workdir, subformat))
    mine, theirs = ours.handle(), libyal.handle()
    mine.open(path)
    theirs.open(path)
    assert metadata(mine) == metadata(theirs)
    for h in (mine, theirs):
        with pytest.raises(IOError):
            h.read_buffer(4)  # before the extent data files
        with pytest.raises(IOError):
            h.open(path)  # already open
        h.open_extent_data_files()
    data = read_all(mine)
    assert data == read_all(theirs) == qemu_raw(workdir / "disk.vmdk")
    assert cursor_trace(mine) == cursor_trace(theirs)
    mine.close()
    theirs.close()
    for h in (mine, theirs):
        with pytest.raises(IOError):
            h.close()
        with pytest.raises(IOError):
            h.get_media_size()


@needs_libyal
@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_file_objects_as_dfvfs_passes_them(workdir, subformat):
    """dfvfs's VMDKFile: open_file_object on the descriptor, then one file object per
    extent descriptor (named by its base name next to the descriptor)."""
    make_image(workdir, subformat)
    results = []
    for mod in (ours, libyal):
        h = mod.handle()
        h.open_file_object(open("disk.vmdk", "rb"))
        files = []
        for d in iter(h.extent_descriptors):
            name = d.filename.rpartition("/")[2]
            files.append(open(name, "rb"))
        assert len(files) == h.number_of_extents
        h.open_extent_data_files_file_objects(files)
        results.append((metadata(h), read_all(h), cursor_trace(h)))
        h.close()
    assert results[0] == results[1]
    # In-memory file objects work too (nothing on disk).
    h = ours.open_file_object(io.BytesIO(open("disk.vmdk", "rb").read()))
    h.open_extent_data_files_as_file_objects(
        [io.BytesIO(open(d.filename, "rb").read()) for d in h.extent_descriptors]
    )
    assert read_all(h) == results[0][1]


@needs_libyal
def test_child_with_parent(workdir):
    make_image(workdir, "monolithicSparse", "base.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk")
    with vmdk.open("child.vmdk", writable=True) as img:
        img.write(0, b"\x99" * 4096)
    handles = []
    for mod in (ours, libyal):
        parent = mod.open("base.vmdk")
        parent.open_extent_data_files()
        child = mod.open("child.vmdk")
        child.open_extent_data_files()
        child.set_parent(parent)
        handles.append((child, parent))
    (mine, _), (theirs, _) = handles
    assert metadata(mine) == metadata(theirs)
    assert mine.parent_filename == "base.vmdk"
    assert mine.parent_content_identifier != 0xFFFFFFFF
    assert read_all(mine) == read_all(theirs) == qemu_raw(workdir / "child.vmdk")


@needs_libyal
def test_module_functions(workdir):
    make_image(workdir, "twoGbMaxExtentFlat")
    make_image(workdir, "monolithicSparse", "sparse.vmdk")
    (workdir / "text.txt").write_text("not a disk\n" * 100)
    for name in ("disk.vmdk", "disk-f001.vmdk", "sparse.vmdk", "text.txt"):
        assert ours.check_file_signature(name) == libyal.check_file_signature(name), name
        with open(name, "rb") as f, open(name, "rb") as g:
            assert ours.check_file_signature_file_object(
                f
            ) == libyal.check_file_signature_file_object(g)
    assert ours.get_version() >= "20140421"  # dfvfs's minimum, compared as a string
    for cls in ("disk_types", "extent_types"):
        theirs = getattr(libyal, cls)
        for k in dir(theirs):
            if k.isupper() or k[0].isdigit():
                assert getattr(getattr(ours, cls), k) == getattr(theirs, k), (cls, k)
    h = ours.open("sparse.vmdk")
    assert h.get_disk_type() == ours.disk_types.MONOLITHIC_SPARSE
    with pytest.raises(IOError):
        h.get_extent_descriptor(5)
    with pytest.raises(ValueError):
        ours.open("sparse.vmdk", mode="w")
    with pytest.raises(TypeError):
        ours.handle().open(None)
    with pytest.raises(IOError):
        ours.open("missing.vmdk")
    with pytest.raises(IOError):
        ours.handle().read_buffer(1)
