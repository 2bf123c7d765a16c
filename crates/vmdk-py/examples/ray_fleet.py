#!/usr/bin/env python3
"""Convert every disk image under a prefix on a Ray cluster, one task per image.

    ray_fleet.py SRC_PREFIX DST_PREFIX [-O FORMAT] [-o OPTIONS] [-c] [--workers N]
                 [--threads T]

SRC_PREFIX and DST_PREFIX are ``s3://bucket/prefix/`` names or host paths, taken as string
prefixes (``s3://b/in/`` is everything below ``in/``; listings are recursive). Each image
under SRC_PREFIX becomes DST_PREFIX + its name below SRC_PREFIX without its extension +
``.qcow2``, ``.vmdk`` or ``.raw`` (``s3://b/in/x/d.vmdk`` -> ``s3://b/out/x/d.qcow2``).

Which files are images is decided by their content, probed with the library (the bytes
``qemu-img`` probes), and by the descriptors found:

- a VMDK descriptor file, a sparse VMDK (monolithicSparse, streamOptimized, ...) and a
  qcow2 file are images, whatever their names;
- the extent files a listed descriptor names (``d-s001.vmdk`` of a twoGbMaxExtentSparse
  ``d.vmdk``, ``d-flat.vmdk`` of a monolithicFlat one) are parts of that image, not images;
- raw disks have no signature, so they are recognised by name: ``.img`` and ``.raw`` files
  whose content is no other format;
- any other ``.vmdk`` or ``.qcow2`` file is an image too, so a damaged one is reported as
  failed rather than passed over. Other files are listed on stderr as ignored.

One JSON line per image goes to stdout, as conversions finish: ``source``, ``target``,
``status`` (``ok``, ``skipped`` or ``failed``), ``error`` (when failed), ``bytes`` (the
target's size), ``virtual_size`` and ``seconds``. A failed image does not stop the others;
the exit status is 1 when any failed, 2 on a usage error, else 0.

A finished target gets a marker beside it, TARGET + ``.done`` (JSON: the source's version,
the target's size, the format and options). A rerun skips an image whose marker matches
the source as it is now, the requested format and options, and a target of the recorded
size, so an interrupted fleet can simply be started again. Uploads to object storage are
multipart uploads that only exist once complete (an interrupted one is aborted, or never
completed), and retries of failed requests happen inside the library (``VMDK_OBJECT_RETRIES``,
``VMDK_OBJECT_RETRY_TIMEOUT_SECS``), not here.

Ray: ``ray.init()`` starts a local cluster unless ``RAY_ADDRESS`` names a running one. Each
task asks for T CPUs (``--threads``, default 1) and converts with T threads, so the cluster
runs as many conversions at once as it has CPUs (``--workers N``: at most N, and a local
cluster gets N x T CPUs). The workers import ``vmdk`` (``pip install ./crates/vmdk-py`` on
every node), read and write the names given (host paths must be shared by all nodes) and
take object-storage access from their own environment (``AWS_*``, profile files, instance
roles), as the library does everywhere.
"""

import argparse
import json
import os
import posixpath
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import vmdk
import vmdk.files as files

EXTENSIONS = {"qcow2": ".qcow2", "vmdk": ".vmdk", "raw": ".raw"}
VMDK_KINDS = {"descriptor", "sparse", "cowd", "sesparse"}
RAW_SUFFIXES = (".img", ".raw")
MARKER = ".done"

Job = Dict[str, Any]
Record = Dict[str, Any]


def parse_options(fmt: str, text: str, compress: bool) -> Dict[str, Any]:
    """``-o`` (qemu-img's ``key=value,...``) as keyword arguments of ``vmdk.convert``."""
    kw: Dict[str, Any] = {"format": fmt}
    if fmt == "vmdk":
        kw["subformat"] = "streamOptimized"  # uploadable, and what vSphere imports
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError("option '%s' has no value (expected key=value)" % item)
        if fmt == "vmdk" and key in ("subformat", "adapter_type"):
            kw[key] = value
        elif fmt == "qcow2" and key == "cluster_size":
            kw[key] = parse_size(value)
        elif fmt == "qcow2" and key == "compat":
            kw[key] = value
        elif fmt == "qcow2" and key == "lazy_refcounts":
            kw[key] = value in ("on", "true", "yes")
        else:
            raise ValueError("invalid option '%s' for -O %s" % (key, fmt))
    if compress:
        if fmt != "qcow2":
            raise ValueError("-c compresses qcow2 clusters (streamOptimized VMDKs always are)")
        kw["compress"] = True
    return kw


def parse_size(s: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = s.strip().lower()
    if s[-1:] in units:
        return int(s[:-1]) * units[s[-1]]
    return int(s)


def normalise(name: str) -> str:
    return name if files.is_object(name) else os.path.normpath(name)


def probe(info: files.FileInfo) -> Tuple[Optional[str], List[str]]:
    """What the file is (:func:`vmdk.files.probe`) and, for a descriptor, the files it
    lists as extents."""
    kind = files.probe(info.name, info.size)
    return kind, files.extent_files(info.name, info.size) if kind == "descriptor" else []


def source_format(name: str, kind: Optional[str]) -> Tuple[bool, Optional[str]]:
    """(is it an image?, the format to open it as: None lets the library probe)."""
    lower = name.lower()
    if kind in VMDK_KINDS:
        return True, "vmdk"
    if kind == "qcow2":
        return True, "qcow2"
    if lower.endswith(".vmdk"):
        return True, "vmdk"  # not a VMDK after all: the library says what is wrong
    if lower.endswith(".qcow2"):
        return True, "qcow2"
    if lower.endswith(RAW_SUFFIXES):
        return True, None  # raw, unless the library finds another format (refused by name)
    return False, None


def find_images(src: str, dst: str, pool: ThreadPoolExecutor) -> Tuple[List[Job], List[str]]:
    """The images under ``src`` (see the module docs), and notes on files passed over."""
    listing = [f for f in files.list(src) if not f.name.startswith(dst)]
    by_name = {normalise(f.name): f for f in listing}
    probed = list(zip(listing, pool.map(probe, listing)))
    extents = {normalise(e) for _, (_, ex) in probed for e in ex}
    images: List[Job] = []
    notes: List[str] = []
    for info, (kind, ex) in probed:
        if normalise(info.name) in extents:
            continue
        is_image, fmt = source_format(info.name, kind)
        if not is_image:
            notes.append("%s: ignored (%s)" % (info.name, kind or "no image format, not .img/.raw"))
            continue
        parts = [info] + [by_name[normalise(e)] for e in ex if normalise(e) in by_name]
        images.append(
            {
                "source": info.name,
                "src_format": fmt,
                # Changes when any file of the image is replaced.
                "version": ";".join("%s=%d:%s" % (p.name, p.size, p.version) for p in parts),
            }
        )
    return images, notes


def target_of(source: str, src: str, dst: str, fmt: str) -> str:
    rel = source[len(src):]
    base = posixpath.basename(rel)
    stem = rel[: len(rel) - len(base)] + (base.rsplit(".", 1)[0] if "." in base[1:] else base)
    return dst + stem + EXTENSIONS[fmt]


def already_done(job: Job) -> Optional[Record]:
    """The record of a finished conversion of this very job, from its marker, or None."""
    marker = job["target"] + MARKER
    try:
        if files.stat(marker) is None:
            return None
        done = json.loads(files.read(marker))
        target = files.stat(job["target"])
    except (vmdk.Error, OSError, ValueError):
        return None
    same = all(done.get(k) == job[k] for k in ("source", "version", "options"))
    if not same or target is None or target.size != done.get("bytes"):
        return None
    return {
        "source": job["source"],
        "target": job["target"],
        "status": "skipped",
        "bytes": target.size,
        "virtual_size": done.get("virtual_size"),
        "seconds": 0.0,
    }


def convert_one(job: Job) -> Record:
    """One image, inside a Ray task (a fresh worker process imports ``vmdk``)."""
    import vmdk as v
    import vmdk.files as f

    start = time.monotonic()
    record: Record = {"source": job["source"], "target": job["target"]}
    total = [0]

    def progress(done: int, size: int) -> None:
        total[0] = size

    created = not f.is_object(job["target"]) and not os.path.lexists(job["target"])
    try:
        # A stale marker goes first: it must never describe a target being rewritten.
        f.remove(job["target"] + MARKER)
        if not f.is_object(job["target"]):
            os.makedirs(os.path.dirname(job["target"]) or ".", exist_ok=True)
        v.convert(
            job["source"],
            job["target"],
            src_format=job["src_format"],
            threads=job["threads"],
            progress=progress,
            **job["options"],
        )
        out = f.stat(job["target"])
        size = out.size if out is not None else 0
        marker = dict(
            source=job["source"],
            version=job["version"],
            options=job["options"],
            bytes=size,
            virtual_size=total[0],
        )
        f.write(job["target"] + MARKER, json.dumps(marker).encode())
        record.update(status="ok", bytes=size, virtual_size=total[0])
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the fleet
        record.update(status="failed", error=str(e) or type(e).__name__, bytes=0)
        # What a failed conversion left of a new host file is no image (an upload is
        # aborted); a file that was there before is left alone (the library may have
        # refused to write over it).
        if created:
            try:
                f.remove(job["target"])
            except OSError:
                pass
    record["seconds"] = round(time.monotonic() - start, 3)
    return record


def run_tasks(ray: Any, task: Any, jobs: List[Job], width: int) -> Iterable[Record]:
    """Run ``task`` over ``jobs`` with at most ``width`` in flight; yield each record as
    its task ends (a task whose worker died is a failed record too)."""
    queue = iter(jobs)
    pending: Dict[Any, Job] = {}

    def submit() -> None:
        job = next(queue, None)
        if job is not None:
            pending[task.remote(job)] = job

    for _ in range(width):
        submit()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            record = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - a worker that died, a task Ray gave up on
            record = {"source": job["source"], "target": job["target"], "status": "failed",
                      "error": "task failed: %s" % e, "bytes": 0, "seconds": 0.0}
        submit()
        yield record


def run(args: argparse.Namespace) -> int:
    import ray

    try:
        options = parse_options(args.format, args.options, args.compress)
    except ValueError as e:
        print("ray_fleet.py: %s" % e, file=sys.stderr)
        return 2
    src, dst = args.src_prefix, args.dst_prefix
    if src.startswith(dst):
        print("ray_fleet.py: DST_PREFIX must not be SRC_PREFIX or hold it", file=sys.stderr)
        return 2

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        images, notes = find_images(src, dst, pool)
        for n in notes:
            print(n, file=sys.stderr)
        jobs: List[Job] = []
        targets: Dict[str, str] = {}
        records: List[Record] = []
        for img in images:
            job = dict(img, options=options, threads=args.threads)
            job["target"] = target_of(img["source"], src, dst, args.format)
            if job["target"] in targets:
                records.append(
                    {
                        "source": job["source"],
                        "target": job["target"],
                        "status": "failed",
                        "error": "the same target as %s" % targets[job["target"]],
                        "bytes": 0,
                        "seconds": 0.0,
                    }
                )
                continue
            targets[job["target"]] = job["source"]
            jobs.append(job)
        todo: List[Job] = []
        for job, done in zip(jobs, pool.map(already_done, jobs)):
            if done is not None:
                records.append(done)
            else:
                todo.append(job)

    def emit(r: Record) -> None:
        print(json.dumps(r), flush=True)

    for r in records:
        emit(r)

    converting = 0.0
    if todo:
        init: Dict[str, Any] = {"include_dashboard": False, "logging_level": "warning"}
        if not os.environ.get("RAY_ADDRESS") and args.workers:
            init["num_cpus"] = args.workers * args.threads
        ray.init(**init)
        task = ray.remote(num_cpus=args.threads)(convert_one)
        width = args.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // args.threads)
        t0 = time.monotonic()
        for r in run_tasks(ray, task, todo, width):
            records.append(r)
            emit(r)
        converting = time.monotonic() - t0
        ray.shutdown()

    counts = {s: sum(r["status"] == s for r in records) for s in ("ok", "skipped", "failed")}
    print(
        "ray_fleet.py: %d ok, %d skipped, %d failed in %.1f s (conversions: %.2f s)"
        % (counts["ok"], counts["skipped"], counts["failed"], time.monotonic() - started,
           converting),
        file=sys.stderr,
    )
    return 1 if counts["failed"] else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Convert every image under SRC_PREFIX (s3:// or a host path) to "
        "DST_PREFIX on a Ray cluster, one task per image."
    )
    p.add_argument("src_prefix", metavar="SRC_PREFIX")
    p.add_argument("dst_prefix", metavar="DST_PREFIX")
    p.add_argument("-O", dest="format", choices=sorted(EXTENSIONS), default="qcow2",
                   help="output format (default qcow2; vmdk means streamOptimized unless "
                   "-o subformat= says otherwise)")
    p.add_argument("-o", dest="options", default="",
                   help="creation options, as qemu-img's: subformat=, adapter_type= (vmdk); "
                   "cluster_size=, compat=, lazy_refcounts= (qcow2)")
    p.add_argument("-c", dest="compress", action="store_true", help="compress qcow2 clusters")
    p.add_argument("--workers", type=int, default=0,
                   help="conversions at once (default: as many as the cluster has CPUs)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads (and Ray CPUs) per conversion (default 1)")
    args = p.parse_args(argv)
    if args.workers < 0 or args.threads < 1:
        p.error("--workers must be >= 0 and --threads >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
