#!/usr/bin/env bash
# bench/nbd.sh — `vmdk serve` against nbdkit and qemu-nbd serving the same bytes, in one run.
#
# Usage: bench/nbd.sh [WORKDIR]         (default WORKDIR: /tmp/vmdk-nbd-bench; needs ~7 GB free, ~2.5 GB with DISK=1G DATA_MB=500)
# Environment:
#   DISK=4G         virtual size of the test disk (the 4 GiB disk of bench/convert.sh)
#   DATA_MB=1600    how much real data to put in it (hard-linked copies of /usr trees)
#   RUNS=3          nbdcopy runs per server, servers alternating run by run (best is reported)
#   SECS=8          seconds per fio workload
#   FIO_RUNS=2      rounds of the read fio rows, servers alternating (best is reported)
#   WRITE_RUNS=2   rounds of the random-write rows, servers alternating, each on a fresh copy
#                  (best is reported)
#   IODEPTH=16      requests in flight for the "QD16" fio rows
#   VMDK=...        our binary (default target/release/vmdk, built by this script)
#
# The issue's disk, reusing bench/convert.sh's img.raw: `bench/nbd.sh /tmp/vmdk-bench`.
#
# What it does:
#   1. builds an ext4 file system (mke2fs -d, bench/lib.sh) of DISK holding ~DATA_MB of files
#      (img.raw) and converts it with qemu-img to monolithicFlat (flat.vmdk + flat-flat.vmdk,
#      a sparse host file with the disk's holes) and monolithicSparse (sparse.vmdk);
#   2. read-only, the same bytes from three servers at once on loopback TCP:
#        vmdk serve -r -t flat.vmdk              (ours: read-only exports take several
#                                                 connections and advertise multi-conn)
#        nbdkit -r file flat-flat.vmdk           (the extent file itself, no VMDK at all;
#                                                 nbdkit's defaults: any number of
#                                                 connections, multi-conn, 16 threads)
#        qemu-nbd -r -f vmdk -t flat.vmdk        (qemu-nbd's defaults: --shared 1)
#      and drives them with
#        seq read   `nbdcopy URL null:` of the whole disk (multi-conn where advertised,
#                   64 x 256 KiB requests in flight; skips what block status calls zero),
#                   best of RUNS, servers alternating; also the server's CPU seconds for
#                   the copy (user + system, best run), steadier than wall time on a
#                   shared machine;
#        rand read  fio --ioengine=nbd (libnbd, one connection), 4 KiB, QD IODEPTH and 1,
#                   best of FIO_RUNS rounds, servers alternating;
#        map        `nbdinfo --map` extents (data / zero), which is what lets nbdcopy skip;
#   3. writable, random 4 KiB writes (fio, QD IODEPTH, SECS s) on fresh copies, best of
#      WRITE_RUNS rounds, servers alternating:
#        the flat image: ours and qemu-nbd on flat.vmdk, nbdkit file on its -flat file;
#        the sparse image: ours and qemu-nbd on sparse.vmdk (nbdkit reads no VMDK: n/a);
#   4. prints a table with ours/nbdkit and ours/qemu-nbd (> 1 means we are faster; for
#      nbdcopy the ratio of speeds, i.e. their time / ours), the machine's 1-minute load
#      average as each row was measured (lowest-highest over its rounds), and checks every
#      written image with `qemu-img check`.
#
# Warm cache throughout. The machine may be shared: compare ratios from one run, not
# absolute numbers across runs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-nbd-bench}
DISK=${DISK:-4G}
DATA_MB=${DATA_MB:-1600}
RUNS=${RUNS:-3}
SECS=${SECS:-8}
IODEPTH=${IODEPTH:-16}
FIO_RUNS=${FIO_RUNS:-2}
WRITE_RUNS=${WRITE_RUNS:-2}

for t in qemu-img qemu-nbd nbdcopy nbdinfo nbdkit mke2fs jq; do
    command -v "$t" >/dev/null || {
        echo "$t is required (apt-get install qemu-utils libnbd-bin nbdkit e2fsprogs jq)" >&2
        exit 1
    }
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
make_test_disk sparse.vmdk stream.vmdk flat.vmdk flat-flat.vmdk
[ -s sparse.vmdk ] || qemu-img convert -f raw -O vmdk img.raw sparse.vmdk
[ -s flat-flat.vmdk ] || qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat img.raw flat.vmdk
warm flat-flat.vmdk sparse.vmdk
SIZE=$(qemu-img info --output=json flat.vmdk | jq '."virtual-size"')

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

PIDS=()
# Stop every server (SIGTERM: each flushes its image) and wait for them.
stop_servers() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
trap stop_servers EXIT

wait_up() {
    local url=$1 pid=$2
    for _ in $(seq 200); do
        kill -0 "$pid" 2>/dev/null || { echo "server for $url died" >&2; exit 1; }
        nbdinfo --size "$url" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "server for $url did not come up" >&2
    exit 1
}

# start WHO WRITABLE FILE: start server WHO (ours, nbdkit, qemu) on FILE, sets URL and SPID.
start() {
    local who=$1 rw=$2 file=$3 port pid ro=()
    port=$(free_port)
    [ "$rw" = rw ] || ro=(-r)
    case $who in
        ours) "$VMDK" serve "${ro[@]}" -t -b "127.0.0.1:$port" "$file" 2>>vmdk-serve.log & ;;
        nbdkit) nbdkit -f "${ro[@]}" -i 127.0.0.1 -p "$port" file "$file" 2>>nbdkit.log & ;;
        qemu) qemu-nbd "${ro[@]}" -f vmdk -t -x '' -b 127.0.0.1 -p "$port" "$file" 2>>qemu-nbd.log & ;;
    esac
    pid=$!
    PIDS+=("$pid")
    SPID=$pid
    URL="nbd://127.0.0.1:$port"
    wait_up "$URL" "$pid"
}

now() { date +%s.%N; }

# fio IOPS: fio_iops URL rw depth
fio_iops() {
    local url=$1 rw=$2 qd=$3 out dir=read
    out=$(mktemp)
    fio --name=bench --ioengine=nbd --uri="$url" --rw="$rw" --bs=4k --iodepth="$qd" \
        --size="$SIZE" --time_based --runtime="$SECS" --output-format=json \
        --output="$out" >/dev/null
    [ "$rw" = randwrite ] && dir=write
    jq ".jobs[0].$dir.iops" "$out"
    rm -f "$out"
}

# Extents of `nbdinfo --map` as "DATA/ZERO" counts.
map_counts() {
    nbdinfo --map "$1" | awk '$3 == 0 {d++} $3 != 0 {z++} END {printf "%d/%d", d, z}'
}

WHO=(ours nbdkit qemu)
declare -A URLS SPIDS BEST CPU IOPS MAPS
declare -A LOADS
# note_load ROW: widen ROW's "lowest-highest" 1-minute load average with the current one.
note_load() {
    local l lo hi
    l=$(cut -d' ' -f1 /proc/loadavg)
    if [ -z "${LOADS[$1]:-}" ]; then LOADS[$1]="$l-$l"; return; fi
    lo=${LOADS[$1]%-*} hi=${LOADS[$1]#*-}
    if awk "BEGIN{exit !($l < $lo)}"; then lo=$l; fi
    if awk "BEGIN{exit !($l > $hi)}"; then hi=$l; fi
    LOADS[$1]="$lo-$hi"
}
# CPU seconds (user + system) process PID has used so far.
cpu_of() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }

# ---- 2. read-only, the same bytes ---------------------------------------------------------
start ours ro flat.vmdk; URLS[ours]=$URL; SPIDS[ours]=$SPID
start nbdkit ro flat-flat.vmdk; URLS[nbdkit]=$URL; SPIDS[nbdkit]=$SPID
start qemu ro flat.vmdk; URLS[qemu]=$URL; SPIDS[qemu]=$SPID
for who in "${WHO[@]}"; do MAPS[$who]=$(map_counts "${URLS[$who]}"); done
for ((i = 0; i < RUNS; i++)); do
    for who in "${WHO[@]}"; do
        note_load nbdcopy
        c0=$(cpu_of "${SPIDS[$who]}")
        t0=$(now)
        nbdcopy "${URLS[$who]}" null:
        t=$(echo "$(now) - $t0" | bc -l)
        c=$(echo "$(cpu_of "${SPIDS[$who]}") - $c0" | bc -l)
        if faster "$t" "${BEST[$who]:-}"; then BEST[$who]=$t; fi
        if faster "$c" "${CPU[$who]:-}"; then CPU[$who]=$c; fi
    done
done
for ((i = 0; i < FIO_RUNS; i++)); do
    for qd in "$IODEPTH" 1; do
        for who in "${WHO[@]}"; do
            note_load "randread$qd"
            v=$(fio_iops "${URLS[$who]}" randread "$qd")
            b=${IOPS[$who,randread,$qd]:-0}
            if awk "BEGIN{exit !($v > $b)}"; then IOPS[$who,randread,$qd]=$v; fi
        done
    done
done
stop_servers

# ---- 3. writable: random writes on fresh copies -----------------------------------------
# Each copy is removed once checked, so that one at a time lies on disk (KEEP_COPIES=1 keeps
# them all until everything is timed: removing a file that random writes fragmented can take
# minutes on a file system mounted with online discard, and slows the device meanwhile).
declare -A CHECKS
# write_run WHO KIND: random writes through server WHO on a fresh copy of the KIND image.
write_run() {
    local who=$1 kind=$2 img
    if [ "$kind" = flat ]; then
        cp --sparse=always flat-flat.vmdk "w-$who-flat-flat.vmdk"
        sed "s/flat-flat.vmdk/w-$who-flat-flat.vmdk/" flat.vmdk > "w-$who-flat.vmdk"
        img=w-$who-flat.vmdk
        [ "$who" = nbdkit ] && img=w-$who-flat-flat.vmdk
    else
        cp --sparse=always sparse.vmdk "w-$who-sparse.vmdk"
        img=w-$who-sparse.vmdk
    fi
    warm "$img"
    note_load "${kind}write"
    start "$who" rw "$img"
    v=$(fio_iops "$URL" randwrite "$IODEPTH")
    b=${IOPS[$who,${kind}write]:-0}
    if awk "BEGIN{exit !($v > $b)}"; then IOPS[$who,${kind}write]=$v; fi
    stop_servers
    if [ "$who" != nbdkit ]; then
        CHECKS[$who,$kind]=$(qemu-img check -f vmdk "$img" 2>&1 | tail -1)
    fi
    [ "${KEEP_COPIES:-0}" = 1 ] || rm -f "w-$who-"*.vmdk
}
rm -f w-*.vmdk
for ((i = 0; i < WRITE_RUNS; i++)); do
    for who in "${WHO[@]}"; do write_run "$who" flat; done
    for who in ours qemu; do write_run "$who" sparse; done
done
IOPS[nbdkit,sparsewrite]=n/a

# ---- 4. report -----------------------------------------------------------------------------
ratio() { if [ "$1" = n/a ] || [ "$2" = n/a ]; then echo n/a; else echo "scale=2; $1 / $2" | bc -l; fi; }
int() { if [ "$1" = n/a ]; then echo n/a; else printf '%.0f' "$1"; fi; }
echo
echo "disk: $DISK virtual ($SIZE bytes), monolithicFlat (flat.vmdk) and monolithicSparse;" \
    "$(nproc) cores; load: $(uptime | sed 's/.*load average: //')"
printf '%-38s %11s %11s %11s %9s %9s  %s\n' workload "vmdk serve" nbdkit qemu-nbd ours/nbdkit ours/qemu load
printf '%-38s %9ss %9ss %9ss %9s %9s  %s\n' "nbdcopy whole disk (best/$RUNS)" \
    "$(printf %.2f "${BEST[ours]}")" "$(printf %.2f "${BEST[nbdkit]}")" "$(printf %.2f "${BEST[qemu]}")" \
    "$(ratio "${BEST[nbdkit]}" "${BEST[ours]}")" "$(ratio "${BEST[qemu]}" "${BEST[ours]}")" "${LOADS[nbdcopy]}"
printf '%-38s %9ss %9ss %9ss %9s %9s\n' "  server CPU for it (best/$RUNS)" \
    "$(printf %.2f "${CPU[ours]}")" "$(printf %.2f "${CPU[nbdkit]}")" "$(printf %.2f "${CPU[qemu]}")" \
    "$(ratio "${CPU[nbdkit]}" "${CPU[ours]}")" "$(ratio "${CPU[qemu]}" "${CPU[ours]}")"
for qd in "$IODEPTH" 1; do
    o=${IOPS[ours,randread,$qd]} k=${IOPS[nbdkit,randread,$qd]} q=${IOPS[qemu,randread,$qd]}
    printf '%-38s %11s %11s %11s %9s %9s  %s\n' "randread 4k QD$qd IOPS (best/$FIO_RUNS)" \
        "$(int "$o")" "$(int "$k")" "$(int "$q")" "$(ratio "$o" "$k")" "$(ratio "$o" "$q")" \
        "${LOADS[randread$qd]}"
done
for w in flatwrite sparsewrite; do
    o=${IOPS[ours,$w]} k=${IOPS[nbdkit,$w]} q=${IOPS[qemu,$w]}
    label="randwrite 4k QD$IODEPTH, flat (best/$WRITE_RUNS)"
    [ "$w" = sparsewrite ] && label="randwrite 4k QD$IODEPTH, sparse (best/$WRITE_RUNS)"
    printf '%-38s %11s %11s %11s %9s %9s  %s\n' "$label" \
        "$(int "$o")" "$(int "$k")" "$(int "$q")" "$(ratio "$o" "$k")" "$(ratio "$o" "$q")" \
        "${LOADS[$w]}"
done
printf '%-38s %11s %11s %11s\n' "nbdinfo --map extents (data/zero)" "${MAPS[ours]}" "${MAPS[nbdkit]}" "${MAPS[qemu]}"
echo
for who in ours qemu; do
    for kind in flat sparse; do
        printf 'qemu-img check of the %s image written through %s: %s\n' "$kind" "$who" \
            "${CHECKS[$who,$kind]}"
    done
done
rm -f w-*.vmdk
