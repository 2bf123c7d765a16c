"""Reads of qemu-made images of every subformat equal what qemu reads."""

import io
import shutil
import tarfile

import pytest

import vmdk
from conftest import MIB, SUBFORMATS, make_image, qemu_raw


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_read_equals_qemu(workdir, subformat):
    path = make_image(workdir, subformat)
    expected = qemu_raw(path)
    with vmdk.open(path) as img:
        assert img.size == len(expected)
        assert img.read(0, img.size) == expected
        # Piecewise, unaligned, and across the end.
        assert img.read(MIB - 3, 7) == expected[MIB - 3 : MIB + 4]
        assert img.read(img.size - 10, 100) == expected[-10:]
        assert img.read(img.size, 10) == b""
        buf = bytearray(5000)
        assert img.readinto(3 * MIB - 100, buf) == 5000
        assert bytes(buf) == expected[3 * MIB - 100 : 3 * MIB + 4900]
        view = memoryview(bytearray(4096))
        assert img.readinto(img.size - 1000, view) == 1000
        assert bytes(view[:1000]) == expected[-1000:]


def test_reader_is_a_raw_file(workdir):
    path = make_image(workdir, "streamOptimized")
    expected = qemu_raw(path)
    with vmdk.open(path) as img:
        r = img.reader()
        assert isinstance(r, io.RawIOBase)
        assert r.readable() and r.seekable() and not r.writable()
        out = io.BytesIO()
        shutil.copyfileobj(r, out, 300 * 1024)
        assert out.getvalue() == expected
        assert r.seek(-4096, io.SEEK_END) == len(expected) - 4096
        assert r.read() == expected[-4096:]
        assert r.read(10) == b""
        buffered = io.BufferedReader(img.reader())
        buffered.seek(MIB - 2)
        assert buffered.read(4) == expected[MIB - 2 : MIB + 2]
        # A consumer that wants a file object: tarfile stores the disk as a member.
        tar_path = workdir / "disk.tar"
        with tarfile.open(tar_path, "w") as tar:
            info = tarfile.TarInfo("disk.raw")
            info.size = img.size
            r.seek(0)
            tar.addfile(info, r)
        with tarfile.open(tar_path) as tar:
            assert tar.extractfile("disk.raw").read() == expected
        r.close()
        assert not img.closed
    assert img.closed
    with pytest.raises(ValueError):
        img.read(0, 1)


def test_backing_chain_reads_through(workdir):
    base = make_image(workdir, "monolithicSparse", "base.vmdk")
    vmdk.create(workdir / "child.vmdk", 8 * MIB, backing="base.vmdk")
    with vmdk.open(workdir / "child.vmdk", writable=True) as img:
        img.write(0, b"\x77" * 512)
    with vmdk.open(workdir / "child.vmdk") as img:
        expected = qemu_raw(workdir / "child.vmdk")
        assert img.read(0, img.size) == expected
        assert expected[:512] == b"\x77" * 512
        assert expected[512:MIB] == qemu_raw(base)[512:MIB]
