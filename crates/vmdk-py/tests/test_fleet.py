"""Object storage from Python (`s3://` names, `vmdk.files`) and the Ray fleet example
(`examples/ray_fleet.py`) on a local Ray cluster against moto: every subformat, a split
image, a qcow2 and a raw source, a corrupt image; outputs checked with qemu-img; a rerun
skips what is finished."""

import json
import os
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import vmdk
import vmdk.files
from conftest import MIB, REPO, make_image, qemu_img, run

EXAMPLE = REPO / "crates" / "vmdk-py" / "examples" / "ray_fleet.py"


def corrupt(path: Path) -> None:
    """Overwrite the start of the first compressed grain of a streamOptimized file (its
    data region starts at the header's overHead sector): the image opens, and reading it
    fails half way, as in qemu-img."""
    with open(path, "r+b") as f:
        overhead = struct.unpack_from("<Q", f.read(512), 64)[0]
        f.seek(overhead * 512 + 12)  # past the grain marker (LBA, size)
        f.write(b"\xff" * 64)


def test_s3_names_and_files(workdir, moto):
    bucket = "py-" + uuid.uuid4().hex[:8]
    moto.create_bucket(bucket)
    src = make_image(workdir, "monolithicSparse", "d.vmdk")
    moto.put(bucket, "in/d.vmdk", src.read_bytes())
    moto.put(bucket, "in/notes.txt", b"hello")
    moto.put(bucket, "inside.txt", b"x")

    names = [f.name for f in vmdk.files.list("s3://%s/in/" % bucket)]
    assert names == ["s3://%s/in/d.vmdk" % bucket, "s3://%s/in/notes.txt" % bucket]
    assert len(vmdk.files.list("s3://%s/in" % bucket)) == 3  # a string prefix, as in S3
    info = vmdk.files.stat("s3://%s/in/d.vmdk" % bucket)
    assert info is not None and info.size == src.stat().st_size and info.version
    assert vmdk.files.stat("s3://%s/in/none" % bucket) is None
    assert vmdk.files.read("s3://%s/in/d.vmdk" % bucket, 0, 4) == b"KDMV"
    assert vmdk.files.probe("s3://%s/in/d.vmdk" % bucket) == "sparse"
    assert vmdk.files.probe("s3://%s/in/notes.txt" % bucket) is None
    assert vmdk.files.read("s3://%s/in/notes.txt" % bucket) == b"hello"
    vmdk.files.write("s3://%s/m.done" % bucket, b"{}")
    assert vmdk.files.read("s3://%s/m.done" % bucket) == b"{}"
    vmdk.files.remove("s3://%s/m.done" % bucket)
    assert vmdk.files.stat("s3://%s/m.done" % bucket) is None

    # Images open and convert by object name; qcow2 uploads too.
    with vmdk.open("s3://%s/in/d.vmdk" % bucket) as img:
        assert img.read(0, 4096) == b"\xab" * 4096
    vmdk.convert("s3://%s/in/d.vmdk" % bucket, "s3://%s/out/d.qcow2" % bucket, format="qcow2",
                 compress=True, cluster_size=65536)
    (workdir / "d.qcow2").write_bytes(vmdk.files.read("s3://%s/out/d.qcow2" % bucket))
    qemu_img("check", workdir / "d.qcow2")
    run("qemu-img", "compare", "-q", src, workdir / "d.qcow2")
    assert moto.open_uploads(bucket) == 0

    # Local files list the same way.
    (workdir / "tree" / "a").mkdir(parents=True)
    (workdir / "tree" / "a" / "x.img").write_bytes(b"1")
    (workdir / "tree" / "b.raw").write_bytes(b"22")
    listed = vmdk.files.list("tree/")
    assert [(f.name, f.size) for f in listed] == [("tree/a/x.img", 1), ("tree/b.raw", 2)]
    assert [f.name for f in vmdk.files.list("tree/b")] == ["tree/b.raw"]
    flat = make_image(workdir / "tree", "monolithicFlat", "f.vmdk")
    assert vmdk.files.probe(str(flat)) == "descriptor"
    assert vmdk.files.extent_files("tree/f.vmdk") == ["tree/f-flat.vmdk"]
    assert vmdk.files.extent_files("tree/b.raw") == []


def make_fleet(root: Path) -> dict:
    """The local images uploaded under in/: name below in/ -> local file (None: a file that
    is part of another image or no image)."""
    fleet = {}
    for sub, name in [
        ("monolithicSparse", "sparse.vmdk"),
        ("streamOptimized", "vm/stream.vmdk"),
        ("monolithicFlat", "flat.vmdk"),
    ]:
        d = root / os.path.dirname(name)
        d.mkdir(parents=True, exist_ok=True)
        fleet[name] = make_image(d, sub, os.path.basename(name))
    # A split image: 3 GiB of twoGbMaxExtentSparse is two extent files.
    split = root / "split"
    split.mkdir()
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
             split / "big.vmdk", "3G")
    run("qemu-io", "-f", "vmdk", "-c", "write -P 0x42 1M 1M", "-c", "write -P 0x43 2047M 2M",
        "-c", "write -P 0x44 2900M 64k", split / "big.vmdk")
    fleet["split/big.vmdk"] = split / "big.vmdk"
    src = make_image(root, "monolithicSparse", "for-qcow2.vmdk")
    qemu_img("convert", "-q", "-O", "qcow2", src, root / "guest.qcow2")
    fleet["guest.qcow2"] = root / "guest.qcow2"
    fleet["disk.img"] = root / "for-qcow2.vmdk.src.raw"
    bad = make_image(root, "streamOptimized", "bad.vmdk")
    corrupt(bad)
    fleet["bad.vmdk"] = bad
    return fleet


def run_fleet(moto, args):
    env = dict(os.environ, **moto.env)
    p = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, env=env,
                       timeout=600)
    lines = p.stdout.decode().splitlines()
    records = {}
    for line in lines:
        r = json.loads(line)  # stdout holds nothing but the records
        assert r["source"] not in records, r
        records[r["source"]] = r
    return p.returncode, records, p.stderr.decode()


def test_ray_fleet_converts_a_bucket_and_resumes(workdir, moto):
    moto.create_bucket("fleet")
    root = workdir / "local"
    root.mkdir()
    fleet = make_fleet(root)
    uploaded = []
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root).as_posix()
        if f.is_file() and not rel.endswith((".src.raw", ".qemu.raw")) and rel != "for-qcow2.vmdk":
            moto.put("fleet", "in/" + rel, f.read_bytes())
            uploaded.append(rel)
    moto.put("fleet", "in/disk.img", fleet["disk.img"].read_bytes())
    moto.put("fleet", "in/README.txt", b"not an image")
    # The split image's extents and the flat image's data file are parts, not images.
    assert {"split/big-s001.vmdk", "split/big-s002.vmdk", "flat-flat.vmdk"} <= set(uploaded)

    args = ["s3://fleet/in/", "s3://fleet/out/", "-O", "qcow2", "--workers", "2"]
    code, records, err = run_fleet(moto, args)
    assert code == 1, err
    expected = {"s3://fleet/in/" + n for n in fleet}
    assert set(records) == expected, err
    assert "README.txt: ignored" in err, err
    for name, local in fleet.items():
        r = records["s3://fleet/in/" + name]
        stem = name.rsplit(".", 1)[0]
        assert r["target"] == "s3://fleet/out/%s.qcow2" % stem, r
        assert isinstance(r["seconds"], float), r
        if name == "bad.vmdk":
            assert r["status"] == "failed" and "corrupt" in r["error"], r
            assert r["bytes"] == 0, r
            continue
        assert r["status"] == "ok", r
        out = workdir / ("out-" + stem.replace("/", "_") + ".qcow2")
        data = vmdk.files.read("s3://fleet/out/%s.qcow2" % stem)
        assert r["bytes"] == len(data), r
        out.write_bytes(data)
        qemu_img("check", out)
        fmt = ["-f", "raw"] if name == "disk.img" else []
        run("qemu-img", "compare", "-q", *fmt, local, out)
    assert moto.open_uploads("fleet") == 0

    # A rerun converts nothing that is finished and reports the corrupt image again.
    code, again, err = run_fleet(moto, args)
    assert code == 1, err
    assert set(again) == expected, err
    for source, r in again.items():
        if source.endswith("bad.vmdk"):
            assert r["status"] == "failed", r
        else:
            assert r["status"] == "skipped", r
            assert r["bytes"] == records[source]["bytes"], r
    assert "0 ok, 6 skipped, 1 failed" in err, err
