"""Writes, creation and conversion: the results pass `qemu-img check` and read back in
qemu as written."""

import json

import pytest

import vmdk
from conftest import MIB, SUBFORMATS, make_image, qemu_img, qemu_raw, run, vmdk_bin

WRITABLE = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat", "vmfs"]


@pytest.mark.parametrize("subformat", WRITABLE)
def test_create_write_check(workdir, subformat):
    vmdk.create("w.vmdk", 8 * MIB, subformat=subformat, adapter_type="lsilogic")
    expected = bytearray(8 * MIB)
    with vmdk.open("w.vmdk", writable=True) as img:
        assert img.writable
        img.write(0, b"\x11" * 4096)
        expected[0:4096] = b"\x11" * 4096
        img.write(MIB + 7, bytearray(b"\x22" * 100000))
        expected[MIB + 7 : MIB + 100007] = b"\x22" * 100000
        img.write(8 * MIB - 512, memoryview(b"\x33" * 512))
        expected[-512:] = b"\x33" * 512
        img.write_zeroes(MIB + 1000, 5000)
        expected[MIB + 1000 : MIB + 6000] = bytes(5000)
        img.flush()
        assert img.read(0, img.size) == bytes(expected)
        with pytest.raises(vmdk.InvalidArgumentError):
            img.write(8 * MIB - 1, b"xx")
    qemu_img("check", "w.vmdk")
    assert qemu_raw(workdir / "w.vmdk") == bytes(expected)
    info = vmdk.open("w.vmdk").info()
    assert info["format-specific"]["data"]["adapter-type"] == "lsilogic"


def test_writes_from_qemu_images(workdir):
    make_image(workdir, "monolithicSparse")
    before = qemu_raw(workdir / "disk.vmdk")
    with vmdk.open("disk.vmdk", writable=True) as img:
        img.write(2 * MIB, b"\x44" * 65536)
        img.write_zeroes(0, 65536, may_unmap=True)
    qemu_img("check", "disk.vmdk")
    after = qemu_raw(workdir / "disk.vmdk")
    assert after[:65536] == bytes(65536)
    assert after[2 * MIB : 2 * MIB + 65536] == b"\x44" * 65536
    assert after[65536 : 2 * MIB] == before[65536 : 2 * MIB]


def test_read_only_image_refuses_writes(workdir):
    make_image(workdir, "monolithicSparse")
    with vmdk.open("disk.vmdk") as img:
        with pytest.raises(vmdk.ReadOnlyError) as e:
            img.write(0, b"x")
    assert e.value.kind == "read-only"


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "twoGbMaxExtentFlat"])
def test_convert_with_progress(workdir, subformat):
    src = make_image(workdir, "monolithicSparse", "src.vmdk")
    calls = []
    vmdk.convert(src, "out.vmdk", subformat=subformat, progress=lambda d, t: calls.append((d, t)))
    qemu_img("check", "out.vmdk")
    run("qemu-img", "compare", "-q", src, "out.vmdk")
    assert calls, "progress was never called"
    assert all(t == 8 * MIB and 0 <= d <= t for d, t in calls)
    assert calls[-1][0] == 8 * MIB
    with vmdk.open("out.vmdk") as img:
        assert img.create_type == subformat


def test_convert_to_raw_and_back(workdir):
    src = make_image(workdir, "twoGbMaxExtentSparse", "src.vmdk")
    vmdk.convert(src, "out.raw", format="raw")
    assert (workdir / "out.raw").read_bytes() == qemu_raw(src)
    vmdk.convert("out.raw", "again.vmdk", src_format="raw", compress=True, subformat="streamOptimized")
    run("qemu-img", "compare", "-q", src, "again.vmdk")


def test_progress_exception_is_raised(workdir):
    src = make_image(workdir, "monolithicSparse", "src.vmdk")

    def boom(done, total):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        vmdk.convert(src, "out.vmdk", progress=boom)


def test_create_refuses_bad_options(workdir):
    with pytest.raises(vmdk.InvalidArgumentError, match="subformat"):
        vmdk.create("x.vmdk", MIB, subformat="nonsense")
    with pytest.raises(ValueError):
        vmdk.create("x.vmdk", MIB, adapter_type="scsi")


def test_discard_gives_space_back(workdir):
    """discard and write_zeroes(may_unmap=True) give the grains' space back to the host;
    later writes take it instead of growing the file; both checkers stay clean."""
    qemu_img("create", "-q", "-f", "vmdk", "d.vmdk", "64M")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x11 0 32M", "d.vmdk")
    path = workdir / "d.vmdk"
    full, length = path.stat().st_blocks * 512, path.stat().st_size
    with vmdk.open("d.vmdk", writable=True) as img:
        assert img.discard(0, 8 * MIB) is None
        img.write_zeroes(8 * MIB, 8 * MIB, may_unmap=True)
        # Without may_unmap the grains stay allocated (as zeros).
        img.write_zeroes(16 * MIB, 4 * MIB)
        freed = path.stat().st_blocks * 512
        assert freed + 15 * MIB < full < freed + 17 * MIB, (full, freed)
        img.write(48 * MIB, b"\x22" * (16 * MIB))
    assert path.stat().st_size == length
    assert path.stat().st_blocks * 512 < full + MIB
    run(vmdk_bin(), "check", "d.vmdk")
    assert b"No errors" in qemu_img("check", "d.vmdk")
    raw = qemu_raw(path)
    assert raw[: 20 * MIB] == bytes(20 * MIB)
    assert raw[20 * MIB : 32 * MIB] == b"\x11" * (12 * MIB)
    assert raw[48 * MIB :] == b"\x22" * (16 * MIB)


def test_discard_refused_where_nothing_can_be_deallocated(workdir):
    """A streamOptimized image's grains are compressed: discard says it cannot."""
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", "s.vmdk", "8M")
    with vmdk.open("s.vmdk", writable=True) as img:
        with pytest.raises(vmdk.UnsupportedError) as e:
            img.discard(0, MIB)
    assert "compressed (streamOptimized)" in str(e.value)


def test_force_share_is_for_readers(workdir):
    """force_share (qemu-img's -U) opens read-only; asked of a writable open it is refused
    with qemu's message, as every writer in the library refuses it."""
    qemu_img("create", "-q", "-f", "vmdk", "a.vmdk", "1M")
    with pytest.raises(vmdk.InvalidArgumentError) as e:
        vmdk.open("a.vmdk", writable=True, force_share=True)
    assert str(e.value).endswith("force-share=on can only be used with read-only images")
    with vmdk.open("a.vmdk", force_share=True) as img:
        assert not img.writable


@pytest.mark.parametrize("kw", [{}, {"compress": True}, {"compat": "0.10", "cluster_size": 4096}])
def test_convert_to_qcow2(workdir, kw):
    src = make_image(workdir, "streamOptimized", "src.vmdk")
    vmdk.convert(src, "out.qcow2", format="qcow2", **kw)
    qemu_img("check", "out.qcow2")
    run("qemu-img", "compare", "-q", src, "out.qcow2")
    info = qemu_img("info", "--output=json", "out.qcow2").decode()
    assert '"cluster-size": %d' % kw.get("cluster_size", 65536) in info
    with pytest.raises(vmdk.InvalidArgumentError, match="qcow2 options"):
        vmdk.convert(src, "x.vmdk", cluster_size=4096)
    with pytest.raises(vmdk.InvalidArgumentError, match="compat"):
        vmdk.convert(src, "x.qcow2", format="qcow2", compat="2")


def test_qemu_option_text_as_qemu_img_takes_it(workdir):
    """`options=` takes qemu-img's `-o` text, with the library's rules (the CLI's own)."""
    vmdk.create("o.vmdk", 4 * MIB, options="subformat=twoGbMaxExtentSparse,zeroed_grain=y,adapter_type=buslogic")
    info = vmdk.open("o.vmdk").info()
    assert info["format-specific"]["data"]["create-type"] == "twoGbMaxExtentSparse"
    assert info["format-specific"]["data"]["adapter-type"] == "buslogic"
    qemu_img("check", "o.vmdk")
    # No size: the backing file's, as `qemu-img create -b base.vmdk -F vmdk top.vmdk` takes it.
    vmdk.create("top.vmdk", backing="o.vmdk", options="backing_fmt=vmdk")
    assert vmdk.open("top.vmdk").size == 4 * MIB
    with pytest.raises(vmdk.InvalidArgumentError, match="needs a size"):
        vmdk.create("nosize.vmdk")
    for bad in ["compat6=maybe", "bogus=1", "compression_level=10", "subformat=nope"]:
        with pytest.raises(vmdk.Error):
            vmdk.create("bad.vmdk", MIB, options=bad)
    with pytest.raises(vmdk.UnsupportedError):
        vmdk.create("bad.vmdk", MIB, backing="o.vmdk", options="backing_fmt=qcow2")
    # convert: the output format's options, durable output.
    vmdk.convert("o.vmdk", "o.qcow2", format="qcow2", options="cluster_size=4k,compat=0.10", durable=True)
    out = json.loads(qemu_img("info", "--output=json", "o.qcow2"))
    assert out["cluster-size"] == 4096
    assert out["format-specific"]["data"]["compat"] == "0.10"
    vmdk.convert("o.vmdk", "s.vmdk", options="subformat=streamOptimized,compression_level=1", durable=True)
    assert vmdk.open("s.vmdk").create_type == "streamOptimized"
    with pytest.raises(vmdk.Error):
        vmdk.convert("o.vmdk", "x.vmdk", options="backing_file=o.vmdk")
    with pytest.raises(vmdk.Error):
        vmdk.convert("o.vmdk", "x.raw", format="raw", options="subformat=monolithicFlat")
