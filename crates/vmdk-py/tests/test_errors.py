"""Bad input raises the exception of the library's error kind, with its message."""

import errno

import pytest

import vmdk
from conftest import make_image, qemu_img


def test_missing_file(workdir):
    with pytest.raises(vmdk.MissingFileError) as e:
        vmdk.open("nope.vmdk")
    err = e.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, OSError)
    assert isinstance(err, vmdk.IoError) and isinstance(err, vmdk.Error)
    assert err.errno == errno.ENOENT
    assert err.kind == "io" and err.path == "nope.vmdk"
    assert str(err).startswith("'nope.vmdk': ")


def test_extent_outside_the_directory(workdir):
    (workdir / "sub").mkdir()
    (workdir / "sub" / "evil.vmdk").write_text(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\nRW 8 FLAT "%s/etc/passwd" 0\n'
        % ("/".join([".."] * 20))
    )
    with pytest.raises(vmdk.UnsafePathError) as e:
        vmdk.open("sub/evil.vmdk")
    assert e.value.kind == "unsafe-path"
    assert "passwd" in str(e.value)
    assert e.value.path is not None


def test_extent_allowed_by_allow_paths(workdir):
    (workdir / "data").mkdir()
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "data/d.vmdk", "1M")
    (workdir / "img").mkdir()
    text = (workdir / "data" / "d.vmdk").read_text().replace('"d-flat.vmdk"', '"../data/d-flat.vmdk"')
    (workdir / "img" / "d.vmdk").write_text(text)
    with pytest.raises(vmdk.UnsafePathError):
        vmdk.open("img/d.vmdk")
    with vmdk.open("img/d.vmdk", allow_paths=[workdir / "data"]) as img:
        assert img.read(0, 4) == bytes(4)


def test_not_vmdk_and_foreign(workdir):
    (workdir / "text.vmdk").write_text("hello, this is not a disk\n" * 40)
    with pytest.raises(vmdk.NotVmdkError) as e:
        vmdk.open("text.vmdk")
    assert e.value.kind == "not-vmdk"
    qemu_img("create", "-q", "-f", "qcow2", "q.vmdk", "1M")
    with pytest.raises(vmdk.ForeignFormatError) as e:
        vmdk.open("q.vmdk")
    assert isinstance(e.value, vmdk.NotVmdkError)
    assert "qcow2" in str(e.value)


def test_corrupt_header(workdir):
    make_image(workdir, "monolithicSparse")
    with open("disk.vmdk", "r+b") as f:
        f.seek(20)
        f.write(b"\x00" * 8)  # grain size 0
    with pytest.raises(vmdk.CorruptImageError) as e:
        vmdk.open("disk.vmdk")
    assert e.value.kind == "corrupt"
    assert "disk.vmdk" in str(e.value)


def test_missing_backing_file(workdir):
    make_image(workdir, "monolithicSparse", "base.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk")
    (workdir / "base.vmdk").unlink()
    with pytest.raises(vmdk.Error) as e:
        vmdk.open("child.vmdk")
    assert "base.vmdk" in str(e.value)


def test_cid_mismatch(workdir):
    make_image(workdir, "monolithicSparse", "base.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk")
    text = (workdir / "child.vmdk").read_bytes()
    start = text.index(b"parentCID=") + len(b"parentCID=")
    # The value up to its line's end: qemu writes it without leading zeros (a random CID
    # below 0x10000000 has fewer than 8 digits).
    end = text.index(b"\n", start)
    (workdir / "child.vmdk").write_bytes(text[:start] + b"12345678" + text[end:])
    with pytest.raises(vmdk.CidMismatchError):
        vmdk.open("child.vmdk")
    with vmdk.open("child.vmdk", ignore_cid_mismatch=True) as img:
        assert img.size > 0


def test_writer_excludes_writer(workdir):
    make_image(workdir, "monolithicSparse")
    with vmdk.open("disk.vmdk", writable=True):
        with pytest.raises(vmdk.LockedError) as e:
            vmdk.open("disk.vmdk", writable=True)
    assert e.value.kind == "locked"
    # Closed, the lock is gone.
    vmdk.open("disk.vmdk", writable=True).close()


def test_closed_image(workdir):
    make_image(workdir, "monolithicSparse")
    img = vmdk.open("disk.vmdk")
    img.close()
    img.close()
    assert img.closed
    for call in (lambda: img.read(0, 1), lambda: img.map(), lambda: img.info(), lambda: img.size):
        with pytest.raises(ValueError, match="closed"):
            call()
