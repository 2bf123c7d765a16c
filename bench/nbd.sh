#!/usr/bin/env bash
# bench/nbd.sh — `vmdk serve` against `qemu-nbd` exporting the same monolithicSparse image.
#
# Usage: bench/nbd.sh [WORKDIR]         (default WORKDIR: /tmp/vmdk-nbd-bench; needs ~6 GB free)
# Environment:
#   DISK=2G         virtual size of the test disk
#   DATA_MB=1200    how much real data to put in it (hard-linked copies of /usr trees)
#   RUNS=3          sequential-read runs per server (best run is reported)
#   SECS=8          seconds per fio workload
#   IODEPTH=16      requests in flight for the "QD16" fio rows
#   VMDK=...        our binary (default target/release/vmdk, built by this script)
#
# What it does:
#   1. builds an ext4 file system (mke2fs -d) of DISK holding ~DATA_MB of files and converts
#      it with qemu-img to monolithicSparse (base.vmdk; cached between runs);
#   2. makes two fresh copies, q.vmdk and v.vmdk, so writes through one server never affect
#      the other, and serves them at the same time on loopback TCP:
#        qemu-nbd -f vmdk -t -x '' -b 127.0.0.1 -p PORT1 q.vmdk
#            (qemu-nbd defaults: cache=writeback, aio=threads, discard=ignore,
#             detect-zeroes=off, --shared 1, so no multi-conn for a writable export)
#        vmdk serve -t -b 127.0.0.1:PORT2 v.vmdk
#            (our defaults: not --durable, --shared 1, 4 request workers per connection)
#   3. drives both with the same workloads, back to back:
#        seq read   `nbdcopy nbd://... null:` (one connection, 64 x 256 KiB requests in
#                   flight; skips what block status reports as holes), best of RUNS, MB/s of
#                   the disk's virtual size;
#        rand read / rand write  fio --ioengine=nbd (libnbd), 4 KiB, one connection, at
#                   queue depth IODEPTH and 1, SECS seconds each (same random sequence for
#                   both servers: fio's default randrepeat=1);
#   4. prints a table with the ratio ours/qemu (> 1 means we are faster), then checks both
#      images with `qemu-img check`.
#
# Warm cache throughout (base.vmdk and the copies are read once before serving). The
# machine may be shared: compare ratios from one run, not absolute numbers across runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/vmdk-nbd-bench}
DISK=${DISK:-2G}
DATA_MB=${DATA_MB:-1200}
RUNS=${RUNS:-3}
SECS=${SECS:-8}
IODEPTH=${IODEPTH:-16}

for t in qemu-img qemu-nbd nbdcopy nbdinfo mke2fs jq; do
    command -v "$t" >/dev/null || { echo "$t is required" >&2; exit 1; }
done
if ! command -v fio >/dev/null; then
    (apt-get install -y fio >/dev/null 2>&1 || true)
fi
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio with the nbd engine is required" >&2; exit 1; }

if [ -z "${VMDK:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p vmdk-cli)
    VMDK="$ROOT/target/release/vmdk"
fi

mkdir -p "$WORK"
cd "$WORK"

# ---- 1. the test disk -------------------------------------------------------------------
if [ ! -s base.vmdk ] || [ "$(cat base.stamp 2>/dev/null)" != "$DISK $DATA_MB" ]; then
    echo "building a $DISK ext4 disk with ~$DATA_MB MiB of files..." >&2
    rm -rf stage img.raw base.vmdk
    mkdir stage
    have=0
    for d in /usr/lib/x86_64-linux-gnu /usr/share/doc /usr/lib/gcc /usr/bin /usr/share \
        /usr/lib /usr/include /usr/libexec /usr/sbin /opt; do
        [ -d "$d" ] || continue
        [ "$have" -ge "$DATA_MB" ] && break
        dst="stage/$(echo "$d" | tr / _)"
        cp -al "$d" "$dst" 2>/dev/null || cp -a "$d" "$dst" 2>/dev/null || true
        have=$(du -sm stage | cut -f1)
    done
    # mke2fs -d fails if the files do not fit; trim the stage until they do.
    while ! mke2fs -q -t ext4 -d stage -F img.raw "$DISK" 2>/dev/null; do
        victim=$(ls -d stage/* | tail -1)
        [ -n "$victim" ] || { echo "mke2fs failed" >&2; exit 1; }
        rm -rf "$victim"
    done
    rm -rf stage
    qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse img.raw base.vmdk
    rm -f img.raw
    echo "$DISK $DATA_MB" > base.stamp
fi

rm -f q.vmdk v.vmdk
cp --sparse=always base.vmdk q.vmdk
cp --sparse=always base.vmdk v.vmdk
cat q.vmdk v.vmdk >/dev/null
SIZE=$(qemu-img info --output=json base.vmdk | jq '."virtual-size"')
DATA=$(qemu-img map --output=json base.vmdk | jq '[.[] | select(.data) | .length] | add')

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

QPID= VPID=
# Stop both servers (SIGTERM: each flushes its image) and wait for them.
cleanup() {
    local p
    for p in $QPID $VPID; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

QPORT=$(free_port)
qemu-nbd -f vmdk -t -x '' -b 127.0.0.1 -p "$QPORT" q.vmdk 2>qemu-nbd.log &
QPID=$!
VPORT=$(free_port)
"$VMDK" serve -t -b "127.0.0.1:$VPORT" v.vmdk 2>vmdk-serve.log &
VPID=$!
QURL="nbd://127.0.0.1:$QPORT"
VURL="nbd://127.0.0.1:$VPORT"

wait_up() {
    local url=$1 pid=$2 i
    for i in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || { echo "server for $url died" >&2; exit 1; }
        nbdinfo --size "$url" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server for $url did not come up" >&2
    exit 1
}
wait_up "$QURL" "$QPID"
wait_up "$VURL" "$VPID"

# ---- 2. workloads ------------------------------------------------------------------------
now() { date +%s.%N; }

# Best-of-RUNS seconds for `nbdcopy URL null:`, servers alternating run by run.
declare -A BEST
for ((i = 0; i < RUNS; i++)); do
    for who in qemu ours; do
        url=$QURL; [ "$who" = ours ] && url=$VURL
        t0=$(now)
        nbdcopy "$url" null:
        t=$(echo "$(now) - $t0" | bc -l)
        b=${BEST[$who]:-}
        if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then BEST[$who]=$t; fi
    done
done

# fio IOPS: fio_iops URL rw depth
fio_iops() {
    local url=$1 rw=$2 qd=$3 out
    out=$(mktemp)
    fio --name=bench --ioengine=nbd --uri="$url" --rw="$rw" --bs=4k --iodepth="$qd" \
        --time_based --runtime="$SECS" --output-format=json --output="$out" >/dev/null
    local dir=read
    [ "$rw" = randwrite ] && dir=write
    jq ".jobs[0].$dir.iops" "$out"
    rm -f "$out"
}

declare -A IOPS
for rw in randread randwrite; do
    for qd in "$IODEPTH" 1; do
        for who in qemu ours; do
            url=$QURL; [ "$who" = ours ] && url=$VURL
            IOPS[$who,$rw,$qd]=$(fio_iops "$url" "$rw" "$qd")
        done
    done
done

# ---- 3. report -----------------------------------------------------------------------------
mbs() { echo "scale=1; $SIZE / $1 / 1000000" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }

echo
echo "disk: $DISK virtual ($SIZE bytes), $((DATA / 1048576)) MiB allocated, monolithicSparse"
printf '%-28s %14s %14s %10s\n' workload qemu-nbd "vmdk serve" ours/qemu
q=$(mbs "${BEST[qemu]}"); o=$(mbs "${BEST[ours]}")
printf '%-28s %11s MB/s %9s MB/s %10s\n' "seq read (nbdcopy, best/$RUNS)" "$q" "$o" "$(ratio "$o" "$q")"
for rw in randread randwrite; do
    for qd in "$IODEPTH" 1; do
        q=$(printf '%.0f' "${IOPS[qemu,$rw,$qd]}"); o=$(printf '%.0f' "${IOPS[ours,$rw,$qd]}")
        printf '%-28s %9s IOPS %9s IOPS %10s\n' "$rw 4k QD$qd (fio ${SECS}s)" "$q" "$o" "$(ratio "$o" "$q")"
    done
done

cleanup
QPID= VPID=
echo
for f in q.vmdk v.vmdk; do
    printf '%s: %s\n' "$f" "$(qemu-img check -f vmdk "$f" 2>&1 | tail -1)"
done
