#!/usr/bin/env bash
# bench/fleet.sh — the Ray fleet example (crates/vmdk-py/examples/ray_fleet.py) converting a
# set of images with one worker, then two: how well conversions scale across workers.
#
# Usage: bench/fleet.sh [WORKDIR]        (default WORKDIR: /tmp/vmdk-bench-fleet)
# Environment:
#   IMAGES=4       images in the set (hard links to one raw ext4 disk, named diskN.img: the
#                  page cache holds one, so the conversions, not the disk, set the pace)
#   DISK=1G        virtual size of the disk
#   DATA_MB=300    real data in it, at least (hard-linked copies of whole /usr trees, the
#                  first of which may be larger; see bench/lib.sh)
#   RUNS=2         runs per worker count, alternating (the best one is reported)
#   PY=...         a Python with `vmdk` and `ray` installed (default: target/py-venv/bin/python,
#                  as .ci/run makes it)
#
# Each image is converted to a streamOptimized VMDK (deflate: CPU-bound) by a Ray task with
# one thread (`--threads 1`), on a local Ray cluster of N CPUs (`--workers N`). The time is
# the script's own "conversions" figure: from the first task submitted to the last result,
# without Ray's start. Target: two workers at least 1.6x as fast as one on 2 free cores.
# Outputs are checked with qemu-img compare. The machine's load (uptime) is printed with
# the figures: on a shared machine they are only as good as the cores left free.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-bench-fleet}
IMAGES=${IMAGES:-4}
DISK=${DISK:-1G}
DATA_MB=${DATA_MB:-300}
RUNS=${RUNS:-2}
PY=${PY:-$ROOT/target/py-venv/bin/python}
EXAMPLE=$ROOT/crates/vmdk-py/examples/ray_fleet.py

command -v qemu-img >/dev/null || { echo "qemu-img is required" >&2; exit 1; }
command -v mke2fs >/dev/null || { echo "mke2fs (e2fsprogs) is required" >&2; exit 1; }
"$PY" -c 'import ray, vmdk' || { echo "$PY cannot import ray and vmdk (see .ci/run)" >&2; exit 1; }

mkdir -p "$WORK"
cd "$WORK"
make_test_disk
rm -rf in out-*
mkdir in
for i in $(seq "$IMAGES"); do ln img.raw "in/disk$i.img"; done
warm in/*.img
echo "$IMAGES images of $(hsize "$(stat -c %s img.raw)") (ext4, ~$DATA_MB MiB of files) -> streamOptimized"

# "SECONDS" of the conversions of one run with N workers.
run_fleet() {
    local n=$1 out=out-$1
    rm -rf out-*  # one run's outputs on disk at a time
    "$PY" "$EXAMPLE" in/ "$out/" -O vmdk --workers "$n" --threads 1 >"$out.jsonl" 2>"$out.err" ||
        { cat "$out.err" >&2; echo "FAILED: $n workers" >&2; exit 1; }
    sed -n 's/.*(conversions: \([0-9.]*\) s).*/\1/p' "$out.err"
}

# How many conversions ran at once, on average, in the last run with N workers: the tasks'
# own seconds added up, over the conversions' wall time. 2 with two workers means Ray kept
# both busy; a speedup below it means each conversion ran slower (cores shared with others).
overlap() {
    "$PY" -c 'import json, sys
s = sum(json.loads(l)["seconds"] for l in open(sys.argv[1]))
print("%.2f" % (s / float(sys.argv[2])))' "out-$1.jsonl" "$2"
}

echo "load before: $(uptime)"
best1= best2=
for _ in $(seq "$RUNS"); do
    for n in 1 2; do
        t=$(run_fleet "$n")
        echo "  $n worker(s): $t s ($(overlap "$n" "$t") conversions at once; load: $(cut -d' ' -f1-3 /proc/loadavg))"
        if [ "$n" = 1 ]; then
            if [ -z "$best1" ] || awk "BEGIN{exit !($t < $best1)}"; then best1=$t; fi
        else
            if [ -z "$best2" ] || awk "BEGIN{exit !($t < $best2)}"; then best2=$t; fi
        fi
    done
done
echo "load after:  $(uptime)"
for i in $(seq "$IMAGES"); do qemu-img compare -q img.raw "out-2/disk$i.vmdk"; done  # the last run
echo "outputs match (qemu-img compare)"
printf '1 worker: %s s   2 workers: %s s   speedup: %.2fx (target >= 1.6x)\n' \
    "$best1" "$best2" "$(awk "BEGIN{print $best1 / $best2}")"
