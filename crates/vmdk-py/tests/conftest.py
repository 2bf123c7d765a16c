"""Shared helpers: images made by the real qemu-img/qemu-io, and the `vmdk` CLI binary
the outputs of map/info/check are compared with."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SUBFORMATS = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
]

MIB = 1 << 20


def run(*args, **kw):
    """Run a command; fail the test with its output if it fails."""
    p = subprocess.run([str(a) for a in args], capture_output=True, **kw)
    if p.returncode != 0:
        raise AssertionError(
            "%s failed (%d):\n%s%s"
            % (" ".join(map(str, args)), p.returncode, p.stdout.decode(), p.stderr.decode())
        )
    return p.stdout


def vmdk_bin() -> Path:
    """The CLI built by `cargo build`/`cargo test` (VMDK_BIN overrides). Missing is a
    failure, not a skip: the comparisons are the point of those tests."""
    p = Path(os.environ.get("VMDK_BIN", REPO / "target" / "debug" / "vmdk"))
    if not p.is_file():
        pytest.fail("%s not found: run `cargo build -p vmdk-cli` first (or set VMDK_BIN)" % p)
    return p


def cli_json(*args, cwd=None):
    return json.loads(run(vmdk_bin(), *args, "--output=json", cwd=cwd))


def qemu_img(*args, cwd=None):
    return run("qemu-img", *args, cwd=cwd)


def pattern_raw(path: Path, size: int = 8 * MIB) -> Path:
    """A raw disk with recognisable data at a few places and holes elsewhere."""
    qemu_img("create", "-q", "-f", "raw", path, str(size))
    run(
        "qemu-io", "-f", "raw",
        "-c", "write -P 0xab 0 1M",
        "-c", "write -P 0x5c 3M 64k",
        "-c", "write -P 0x01 %d 4k" % (size - 4096),
        path,
    )
    return path


def make_image(directory: Path, subformat: str, name: str = "disk.vmdk") -> Path:
    """A qemu-made VMDK of `subformat` holding pattern_raw's content."""
    raw = pattern_raw(directory / (name + ".src.raw"))
    out = directory / name
    qemu_img("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=" + subformat, raw, out)
    return out


def qemu_raw(image: Path) -> bytes:
    """What qemu reads from `image`."""
    out = image.with_name(image.name + ".qemu.raw")
    qemu_img("convert", "-q", "-O", "raw", image, out)
    return out.read_bytes()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory that is also the current one (names stay relative, as the CLI
    shows them)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def have(tool: str) -> bool:
    return shutil.which(tool) is not None
