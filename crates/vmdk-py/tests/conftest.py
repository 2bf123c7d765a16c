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


class Moto:
    """A moto S3 server on a loopback port (VMDK_TEST_MOTO, else moto_server on PATH; a
    missing server is a failure, as in the Rust object-storage tests). Requests are plain
    unsigned HTTP, which moto accepts for everything but reading objects (the tests read
    them with vmdk.files, signed)."""

    def __init__(self, tmp: Path) -> None:
        import socket
        import time

        program = os.environ.get("VMDK_TEST_MOTO") or shutil.which("moto_server")
        if not program:
            pytest.fail(
                "moto_server not found: `pip install 'moto[server]'` or set VMDK_TEST_MOTO "
                "(.ci/run does this)"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(tmp / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [program, "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("moto_server did not start:\n" + (tmp / "moto.log").read_text())
                time.sleep(0.1)
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        import urllib.request

        # Without a content type urllib sends a form, which moto never finishes reading.
        req = urllib.request.Request(self.endpoint + path, data=body or None, method=method,
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req) as r:
            return r.read()

    def create_bucket(self, bucket: str) -> None:
        self.request("PUT", "/" + bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.request("PUT", "/%s/%s" % (bucket, key), data)

    def open_uploads(self, bucket: str) -> int:
        return self.request("GET", "/%s?uploads" % bucket).decode().count("<Upload>")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def moto(tmp_path, monkeypatch):
    """A fresh moto server, with this process's environment pointing at it. The module's S3
    client for a bucket is made when the bucket is first used and kept for the process, so
    tests that use the module in-process take bucket names no other test uses."""
    m = Moto(tmp_path)
    for k, v in m.env.items():
        monkeypatch.setenv(k, v)
    yield m
    m.stop()
