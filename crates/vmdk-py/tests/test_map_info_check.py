"""map(), info() and check() return what the `vmdk` CLI prints as JSON (and map what
qemu-img map prints), for the same image."""

import json

import pytest

import vmdk
from conftest import MIB, SUBFORMATS, cli_json, make_image, qemu_img


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_map_equals_cli_and_qemu(workdir, subformat):
    make_image(workdir, subformat)
    with vmdk.open("disk.vmdk") as img:
        ours = img.map()
        assert ours == cli_json("map", "disk.vmdk")
        assert ours == json.loads(qemu_img("map", "--output=json", "disk.vmdk"))
        # A window, as --start-offset/--max-length give it.
        window = img.map(MIB // 2, 3 * MIB)
        assert window == cli_json(
            "map", "--start-offset", str(MIB // 2), "--max-length", str(3 * MIB), "disk.vmdk"
        )
        assert window[0]["start"] == MIB // 2
        assert sum(e["length"] for e in window) == 3 * MIB
        # Past the end: one empty entry, as qemu-img prints.
        assert img.map(img.size, 10) == cli_json(
            "map", "--start-offset", str(img.size), "disk.vmdk"
        )


def test_map_of_a_chain_has_depths(workdir):
    make_image(workdir, "monolithicSparse", "base.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk")
    with vmdk.open("child.vmdk") as img:
        ours = img.map()
    assert ours == json.loads(qemu_img("map", "--output=json", "child.vmdk"))
    assert {e["depth"] for e in ours} == {1}


@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_info_equals_cli(workdir, subformat):
    make_image(workdir, subformat)
    with vmdk.open("disk.vmdk") as img:
        assert img.info() == cli_json("info", "disk.vmdk")
    # Given as an absolute path, names follow it, as on the command line.
    with vmdk.open(workdir / "disk.vmdk") as img:
        info = img.info()
    assert info == cli_json("info", str(workdir / "disk.vmdk"))
    assert info["format-specific"]["data"]["create-type"] == subformat


def test_info_of_a_child_names_its_backing_file(workdir):
    make_image(workdir, "monolithicSparse", "base.vmdk")
    qemu_img("create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "child.vmdk")
    with vmdk.open("child.vmdk") as img:
        info = img.info()
    assert info == cli_json("info", "child.vmdk")
    assert info["backing-filename"] == "base.vmdk"


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "monolithicFlat"])
def test_check_equals_cli(workdir, subformat):
    make_image(workdir, subformat)
    with vmdk.open("disk.vmdk") as img:
        report = img.check()
    extra = {k: report.pop(k) for k in ("messages", "clean", "exit-code")}
    assert report == cli_json("check", "disk.vmdk")
    assert extra == {
        "messages": {"corruptions": [], "leaks": [], "warnings": [], "errors": []},
        "clean": True,
        "exit-code": 0,
    }


def test_check_reports_corruption(workdir):
    make_image(workdir, "monolithicSparse")
    # Point the first grain-table entry past the end of the file.
    with open("disk.vmdk", "r+b") as f:
        head = f.read(512)
        gd_offset = int.from_bytes(head[56:64], "little") * 512
        f.seek(gd_offset)
        gt_sector = int.from_bytes(f.read(4), "little")
        f.seek(gt_sector * 512)
        f.write((10**8).to_bytes(4, "little"))
    with vmdk.open("disk.vmdk") as img:
        report = img.check()
    assert report["corruptions"] >= 1
    assert report["clean"] is False and report["exit-code"] == 2
    assert report["messages"]["corruptions"]
    p = __import__("subprocess").run(
        [str(__import__("conftest").vmdk_bin()), "check", "--output=json", "disk.vmdk"],
        capture_output=True,
    )
    assert p.returncode == 2
    extra = ("messages", "clean", "exit-code")
    assert {k: v for k, v in report.items() if k not in extra} == json.loads(p.stdout)
