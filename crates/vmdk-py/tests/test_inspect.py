"""vmdk.inspect(): the verdict `vmdk inspect --output=json` gives, in-process."""

import json
import subprocess

import pytest

import vmdk
from conftest import cli_json, qemu_img, run, vmdk_bin


def cli_inspect(path, *extra):
    p = subprocess.run(
        [str(vmdk_bin()), "inspect", "--output=json", *extra, str(path)], capture_output=True
    )
    assert p.returncode in (0, 1), p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_single_file_images_are_safe_and_equal_the_cli(tmp_path, subformat):
    img = tmp_path / "d.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=" + subformat, img, "64M")
    got = vmdk.inspect(img)
    assert got["verdict"] == "safe", got
    assert got["reasons"] == []
    assert got["subformat"] == subformat
    assert got == cli_inspect(img)


def test_external_references_and_disguises_are_named(tmp_path):
    flat = tmp_path / "f.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", flat, "1M")
    got = vmdk.inspect(flat)
    assert got["verdict"] == "unsafe"
    assert "external-extent" in [r["code"] for r in got["reasons"]]
    assert got == cli_inspect(flat)

    q = tmp_path / "disguised.vmdk"
    qemu_img("create", "-q", "-f", "qcow2", q, "1M")
    got = vmdk.inspect(q)
    assert got["verdict"] == "unsafe"
    assert got["format"] == "qcow2"


def test_policy_and_size_limit(tmp_path):
    img = tmp_path / "big.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", img, "3T")
    assert vmdk.inspect(img)["verdict"] == "safe"
    got = vmdk.inspect(img, max_size=2 << 40)
    assert "virtual-size-limit" in [r["code"] for r in got["reasons"]]
    assert got == cli_inspect(img, "--max-size", "2T")
    with pytest.raises(ValueError):
        vmdk.inspect(img, policy="lenient")


def test_unreadable_files_raise(tmp_path):
    with pytest.raises(vmdk.Error):
        vmdk.inspect(tmp_path / "missing.vmdk")
    with pytest.raises(vmdk.Error):
        vmdk.inspect(tmp_path)


def test_ova_info_is_the_cli_report(workdir):
    """vmdk.ova_info() returns the tree `vmdk ova info --output=json` prints."""
    qemu_img("create", "-q", "-f", "vmdk", "d.vmdk", "8M")
    run(vmdk_bin(), "ova", "create", "-o", "a.ova", "--name", "web", "d.vmdk")
    info = vmdk.ova_info("a.ova")
    assert info == cli_json("ova", "info", "a.ova")
    assert info["virtual-system"]["name"] == "web"
    assert [d["capacity"] for d in info["disks"]] == [8 << 20]
    assert all(d["status"] == "ok" for d in info["digests"])
    assert info["findings"] == []
    with pytest.raises(vmdk.Error):
        vmdk.ova_info("d.vmdk")
