#!/usr/bin/env bash
# bench/qcow2.sh — `vmdk convert` against `qemu-img convert` with qcow2 on one side.
#
# Usage: bench/qcow2.sh [WORKDIR]     (default WORKDIR: /tmp/vmdk-bench-qcow2)
# Environment: DISK=1G, DATA_MB=600, RUNS=3, VMDK=... (our binary; default target/release/vmdk)
#
# Same method as bench/convert.sh: an ext4 disk of real files; for each case qemu-img and
# ours run interleaved, the output removed and `sync` run before every run, best of RUNS;
# every output is checked with `qemu-img compare` against its input (and qcow2 outputs with
# `qemu-img check`). Cases:
#   qcow2 -> streamOptimized    (issue target: >= 6x, output no larger than qemu-img's)
#   qcow2 (compressed) -> raw   (issue target: >= 3x)
#   monolithicSparse -> qcow2   (issue target: >= 2x)
#   streamOptimized -> qcow2    (issue target: >= 3x)
#   monolithicSparse -> qcow2 -c (compressed output; sizes compared too)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-bench-qcow2}
DISK=${DISK:-1G}
DATA_MB=${DATA_MB:-600}
RUNS=${RUNS:-3}
VMDK=${VMDK:-$ROOT/target/release/vmdk}
[ -x "$VMDK" ] || (cd "$ROOT" && cargo build --release -q -p vmdk-cli)

mkdir -p "$WORK"
cd "$WORK"
make_test_disk ./*.qcow2 sparse.vmdk stream.vmdk
[ -s plain.qcow2 ] || qemu-img convert -O qcow2 img.raw plain.qcow2
[ -s comp.qcow2 ] || qemu-img convert -c -O qcow2 img.raw comp.qcow2
[ -s sparse.vmdk ] || qemu-img convert -O vmdk img.raw sparse.vmdk
[ -s stream.vmdk ] || qemu-img convert -O vmdk -o subformat=streamOptimized img.raw stream.vmdk

# one OUT CMD...: wall seconds of one run, the output removed and synced first
rows=()
# case NAME INPUT QOUT OOUT "QEMU CMD" "OUR CMD"
case_() {
    local name=$1 input=$2 qout=$3 oout=$4 qcmd=$5 ocmd=$6 tq to v sq so
    warm "$input"
    read -r tq _ to _ < <(best_time_pair "$RUNS" "$qout" "$qcmd" "$oout" "$ocmd")
    if qemu-img compare -q "$input" "$oout" 2>/dev/null; then v=ok; else v=MISMATCH; fi
    case $oout in *.qcow2) qemu-img check -q "$oout" >/dev/null 2>&1 || v="$v,CHECK-FAILED" ;; esac
    sq=$(stat -c %s "$qout"); so=$(stat -c %s "$oout")
    rows+=("$(printf '%-28s %7s %7s %6sx %12s %12s  %s' "$name" "$tq" "$to" \
        "$(awk "BEGIN{printf \"%.2f\", $tq/$to}")" "$sq" "$so" "$v")")
    rm -f "$qout" "$oout"
}

case_ "qcow2 -> streamOptimized" plain.qcow2 q.vmdk o.vmdk \
    "qemu-img convert -O vmdk -o subformat=streamOptimized plain.qcow2 q.vmdk" \
    "$VMDK convert -O vmdk -o subformat=streamOptimized plain.qcow2 o.vmdk"
case_ "qcow2 (compressed) -> raw" comp.qcow2 q.raw o.raw \
    "qemu-img convert -O raw comp.qcow2 q.raw" \
    "$VMDK convert -O raw comp.qcow2 o.raw"
case_ "monolithicSparse -> qcow2" sparse.vmdk q.qcow2 o.qcow2 \
    "qemu-img convert -O qcow2 sparse.vmdk q.qcow2" \
    "$VMDK convert -O qcow2 sparse.vmdk o.qcow2"
case_ "streamOptimized -> qcow2" stream.vmdk q.qcow2 o.qcow2 \
    "qemu-img convert -O qcow2 stream.vmdk q.qcow2" \
    "$VMDK convert -O qcow2 stream.vmdk o.qcow2"
case_ "monolithicSparse -> qcow2 -c" sparse.vmdk q.qcow2 o.qcow2 \
    "qemu-img convert -c -O qcow2 sparse.vmdk q.qcow2" \
    "$VMDK convert -c -O qcow2 sparse.vmdk o.qcow2"

echo "disk $DISK (~$DATA_MB MiB of files); $(nproc) CPUs; warm cache; best of $RUNS"
printf '%-28s %7s %7s %7s %12s %12s  %s\n' case "qemu s" "ours s" ratio "qemu out" "our out" check
for r in "${rows[@]}"; do echo "$r"; done
