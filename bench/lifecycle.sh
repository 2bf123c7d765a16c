#!/usr/bin/env bash
# bench/lifecycle.sh — `vmdk commit`, `convert -B`, `rebase` and `bench` beside qemu-img on
# the same inputs, in one run.
#
# Usage: bench/lifecycle.sh [WORKDIR]      (default /tmp/vmdk-bench, shared with convert.sh)
# Environment: DISK=4G, DATA_MB=1600 (the ext4 disk of real files convert.sh builds),
#              OVERLAY_MB=1024 (data written into the overlay), RUNS=3 (best run reported)
#
# Cases (inputs are rebuilt before every run and are not timed):
#   commit      a 1 GiB overlay over the 4 GiB monolithicSparse base: `qemu-img commit`
#               vs `vmdk commit` (ours also empties the overlay, which qemu cannot do)
#   convert -B  the same overlay converted to a new overlay of the base
#   rebase      the overlay moved onto a second base that differs from the first in
#               512 MiB. qemu-img cannot rebase a VMDK at all, so its figure is for the same
#               data as qcow2 overlays over raw bases (the cheapest case for qemu)
#   bench       4 KiB random-offset reads (QD64) and writes (QD16) on the same image
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/vmdk-bench}
RUNS=${RUNS:-3}
OVERLAY_MB=${OVERLAY_MB:-1024}
export DISK=${DISK:-4G} DATA_MB=${DATA_MB:-1600}

# The disk of real files and its monolithicSparse copy come from convert.sh's first steps.
if [ ! -s "$WORK/sparse.vmdk" ]; then
    echo "run bench/convert.sh first (it builds $WORK/img.raw and sparse.vmdk)" >&2
    exit 1
fi
(cd "$ROOT" && cargo build --release -q -p vmdk-cli)
VMDK="$ROOT/target/release/vmdk"
cd "$WORK"
mkdir -p life && cd life

best() { sort -n | head -1; }
timeit() { # timeit SETUP CMD... -> seconds of CMD
    local setup=$1; shift
    eval "$setup" >/dev/null 2>&1
    sync
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }

setup_overlay() {
    rm -f base.vmdk top.vmdk out.vmdk
    cp --sparse=always ../sparse.vmdk base.vmdk
    qemu-img create -q -f vmdk -b base.vmdk -F vmdk top.vmdk
    qemu-io -f vmdk -c "write -P 0x5a 256M ${OVERLAY_MB}M" top.vmdk >/dev/null
}
prepare_once() {
    setup_overlay
    cp --sparse=always base.vmdk base2.vmdk
    qemu-io -f vmdk -c "write -P 0x33 1G 512M" base2.vmdk >/dev/null
    cp --sparse=always top.vmdk top.keep
    cp --sparse=always base.vmdk base.keep
    qemu-img convert -O raw base.vmdk base.raw
    qemu-img convert -O raw base2.vmdk base2.raw
    qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2
    qemu-io -f qcow2 -c "write -P 0x5a 256M ${OVERLAY_MB}M" top.qcow2 >/dev/null
    cp --sparse=always top.qcow2 top.qcow2.keep
}
restore() { cp --sparse=always base.keep base.vmdk; cp --sparse=always top.keep top.vmdk; rm -f out.vmdk; }

echo "preparing inputs..." >&2
prepare_once

declare -A Q V
for i in $(seq "$RUNS"); do
    Q[commit]+="$(timeit restore qemu-img commit top.vmdk) "
    V[commit]+="$(timeit restore "$VMDK" commit top.vmdk) "
    # -d: the copy and the flush only. qemu-img never empties a VMDK overlay (its driver
    # cannot); ours does unless -d, and freeing the overlay's space is a filesystem cost.
    Q[commit_d]+="$(timeit restore qemu-img commit -d top.vmdk) "
    V[commit_d]+="$(timeit restore "$VMDK" commit -d top.vmdk) "
    Q[convB]+="$(timeit restore qemu-img convert -O vmdk -B base.vmdk -F vmdk top.vmdk out.vmdk) "
    V[convB]+="$(timeit restore "$VMDK" convert -O vmdk -B base.vmdk -F vmdk top.vmdk out.vmdk) "
    Q[rebase]+="$(timeit 'cp --sparse=always top.qcow2.keep top.qcow2' qemu-img rebase -f qcow2 -b base2.raw -F raw top.qcow2) "
    V[rebase]+="$(timeit restore "$VMDK" rebase -b base2.vmdk -F vmdk top.vmdk) "
done
restore
# Correctness of the last runs: the committed base and the rebased overlay read as before.
qemu-img compare top.keep top.vmdk >/dev/null

printf '%-12s %10s %10s %8s\n' case qemu vmdk ratio
for c in commit commit_d convB rebase; do
    q=$(echo "${Q[$c]}" | tr ' ' '\n' | grep . | best)
    v=$(echo "${V[$c]}" | tr ' ' '\n' | grep . | best)
    printf '%-12s %9.2fs %9.2fs %7.2fx\n' "$c" "$q" "$v" "$(ratio "$q" "$v")"
done

echo
echo "bench (4 KiB, random offsets via step 1021 sectors; qemu-img bench vs vmdk bench):"
restore
for mode in "-c 200000 -d 64" "-w -c 50000 -d 16"; do
    args="$mode -s 4k -S 522752"
    qt=$(qemu-img bench $args top.vmdk 2>&1 | awk '/Run completed/ {print $4}')
    restore
    vt=$("$VMDK" bench $args top.vmdk 2>&1 | awk '/Run completed/ {print $4}')
    restore
    printf '%-22s qemu %8.3fs  vmdk %8.3fs  %6.2fx\n' "$mode" "$qt" "$vt" "$(ratio "$qt" "$vt")"
done
