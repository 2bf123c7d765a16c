#!/usr/bin/env bash
# bench/convert.sh — `vmdk convert` against `qemu-img convert` on a multi-GiB disk of real files.
#
# Usage: bench/convert.sh [WORKDIR]        (default WORKDIR: /tmp/vmdk-bench; needs ~15 GB free)
# Environment:
#   DISK=4G        virtual size of the test disk
#   DATA_MB=1600   how much real data to put in it (hard-linked copies of /usr trees)
#   RUNS=3         timed runs per command, qemu-img's and ours alternating (best is reported)
#   VMDK=...       our binary (default: target/release/vmdk if it has `convert`, else the
#                  library example target/release/examples/convert, same flags)
#
# What it does:
#   1. builds an ext4 image (mke2fs -d) of DISK holding ~DATA_MB of files, as img.raw;
#   2. converts it with qemu-img to monolithicSparse (sparse.vmdk) and streamOptimized
#      (stream.vmdk) — the inputs of the VMDK->raw cases;
#   3. times, back to back, qemu-img and ours for:
#        sparse.vmdk -> raw,  stream.vmdk -> raw,
#        img.raw -> monolithicSparse,  img.raw -> streamOptimized;
#      every output is checked with `qemu-img compare` against its input;
#   4. prints a table: best-of-RUNS wall seconds and their ratio (qemu / ours), CPU seconds
#      (user + system) and their ratio — steadier than wall time on a shared machine — our peak RSS
#      (/usr/bin/time -v) and output sizes; plus two "floor" lines: qemu-img's raw -> raw copy
#      of img.raw (what VMDK -> raw should stay within 1.15x of) and the time `dd bs=4M` takes
#      to copy the same bytes into the page cache, which bounds any converter that writes them.
#
# Runs alternate between qemu-img and ours. All runs are warm-cache (inputs are read once before each case; page caches are not
# dropped), outputs are deleted and `sync` run before every run, and nobody fsyncs at the end
# (qemu-img convert does not either). Timings on a shared machine are noisy: compare the
# ratios of runs done back to back, not absolute times across runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-bench}
DISK=${DISK:-4G}
DATA_MB=${DATA_MB:-1600}
RUNS=${RUNS:-3}

command -v qemu-img >/dev/null || { echo "qemu-img is required" >&2; exit 1; }
command -v mke2fs >/dev/null || { echo "mke2fs (e2fsprogs) is required" >&2; exit 1; }
if ! command -v hyperfine >/dev/null; then
    (apt-get install -y hyperfine >/dev/null 2>&1 || true)
fi
[ -x /usr/bin/time ] || (apt-get install -y time >/dev/null 2>&1 || true)

(cd "$ROOT" && cargo build --release -q -p vmdk --example convert)
if [ -z "${VMDK:-}" ]; then
    if (cd "$ROOT" && cargo build --release -q -p vmdk-cli 2>/dev/null) &&
        "$ROOT/target/release/vmdk" convert --help >/dev/null 2>&1; then
        VMDK="$ROOT/target/release/vmdk convert"
    else
        VMDK="$ROOT/target/release/examples/convert"
    fi
fi

mkdir -p "$WORK"
cd "$WORK"

# ---- 1. the test disk -------------------------------------------------------------------
make_test_disk sparse.vmdk stream.vmdk
if [ ! -s sparse.vmdk ]; then
    qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse img.raw sparse.vmdk
fi
if [ ! -s stream.vmdk ]; then
    echo "making the streamOptimized input with qemu-img (about a minute)..." >&2
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized img.raw stream.vmdk
fi

BENCH_HYPERFINE=1

# rss OUT CMD... : peak RSS in MiB of one run
rss() {
    local out=$1; shift
    rm -f "$out"; sync
    /usr/bin/time -v "$@" 2>&1 >/dev/null | awk '/Maximum resident/{printf "%.0f", $6/1024}'
}

verify() {
    if qemu-img compare -q "$@" 2>/dev/null; then echo ok; else echo MISMATCH; fi
}

rows=()
# case NAME INPUT QEMU_OUT OUR_OUT "QEMU CMD" "OUR CMD" [compare args]
case_() {
    local name=$1 input=$2 qout=$3 oout=$4 qcmd=$5 ocmd=$6
    warm "$input"
    local tq to cq co r rc m v sq so
    # Interleaved (qemu, ours, qemu, ours, ...): the page cache is noisy, so both sides must
    # be timed under the same conditions.
    read -r tq cq to co < <(best_time_pair "$RUNS" "$qout" "$qcmd" "$oout" "$ocmd")
    m=$(rss "$oout" $ocmd)
    v=$(verify "$input" "$oout")
    sq=$(stat -c %s "$qout" 2>/dev/null || echo 0)
    so=$(stat -c %s "$oout" 2>/dev/null || echo 0)
    r=$(awk "BEGIN{printf \"%.2f\", $tq/$to}")
    rc=$(awk "BEGIN{printf \"%.2f\", $cq/$co}")
    rows+=("$(printf '%-26s %7s %7s %6sx %8s %8s %6sx %5s MiB %8s %8s  %s' "$name" "$tq" "$to" "$r" \
        "$cq" "$co" "$rc" "$m" "$(hsize "$sq")" "$(hsize "$so")" "$v")")
    rm -f "$qout" "$oout"
}

# The floor the VMDK -> raw rows are held to: qemu-img's own raw -> raw copy of the same
# data (same holes skipped, same zero detection), timed in the same run.
warm img.raw
read -r rawcopy _ < <(best_time "$RUNS" q.raw qemu-img convert -f raw -O raw img.raw q.raw)
rm -f q.raw
case_ "monolithicSparse -> raw" sparse.vmdk q.raw o.raw \
    "qemu-img convert -f vmdk -O raw sparse.vmdk q.raw" \
    "$VMDK -f vmdk -O raw sparse.vmdk o.raw"
case_ "streamOptimized -> raw" stream.vmdk q.raw o.raw \
    "qemu-img convert -f vmdk -O raw stream.vmdk q.raw" \
    "$VMDK -f vmdk -O raw stream.vmdk o.raw"
case_ "raw -> monolithicSparse" img.raw q.vmdk o.vmdk \
    "qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse img.raw q.vmdk" \
    "$VMDK -f raw -O vmdk -o subformat=monolithicSparse img.raw o.vmdk"
case_ "raw -> streamOptimized" img.raw q.vmdk o.vmdk \
    "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized img.raw q.vmdk" \
    "$VMDK -f raw -O vmdk -o subformat=streamOptimized img.raw o.vmdk"

# The page-cache floor: copying the data bytes once.
warm sparse.vmdk
read -r floor _ < <(best_time "$RUNS" floor.bin dd if=sparse.vmdk of=floor.bin bs=4M status=none)
rm -f floor.bin

data=$(qemu-img map --output=json -f raw img.raw | python3 -c \
    'import json,sys;print(sum(e["length"] for e in json.load(sys.stdin) if e["data"]))')
echo
echo "disk $DISK, $(hsize "$data") allocated in img.raw; $(nproc) CPUs; warm cache; best of $RUNS"
echo "ours: $VMDK"
printf '%-26s %7s %7s %7s %8s %8s %7s %9s %8s %8s  %s\n' "case" "qemu s" "ours s" "ratio" \
    "qemu cpu" "our cpu" "ratio" "our RSS" "qemu out" "our out" "check"
for r in "${rows[@]}"; do echo "$r"; done
echo "floor: qemu-img convert -f raw -O raw of img.raw (the same data): ${rawcopy} s"
echo "floor: dd bs=4M copy of sparse.vmdk ($(hsize "$(stat -c %s sparse.vmdk)")) into the page cache: ${floor} s"
