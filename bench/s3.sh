#!/usr/bin/env bash
# bench/s3.sh — `vmdk convert` reading from and writing to object storage, against
# `qemu-img convert` reading the same image over HTTP with its curl driver, and against our
# own local-file convert.
#
# Usage: bench/s3.sh [WORKDIR]        (default WORKDIR: /tmp/vmdk-bench-s3; needs ~5 GB free)
# Environment:
#   DISK=1G        virtual size of the test disk
#   DATA_MB=600    how much real data to put in it (hard-linked copies of /usr trees)
#   RUNS=1         timed runs per command (the best is reported)
#   SLOWLINK=      the link emulator (default ../shared/tools/slowlink.py beside the repo; 10 ms
#                  per request, 50 MiB/s per connection), put in front of nginx for the
#                  "over slowlink" rows; those rows are skipped when it is missing
#   SLOW_ROUNDS=   rounds of the slowlink rows (default RUNS): each round times ours from
#                  s3:// and http://, the link's floor, and our local conversion again, one
#                  after the other, so that all see the same load; the best of each is kept
#   QEMU_SLOW_ROUNDS=first  qemu-img's curl driver over slowlink in the first round only
#                  (it takes ~30 s a GiB); `all` for every round
#   SERVER_READ=1  0 skips the read from the S3 server itself (moto copies the whole object
#                  for every ranged GET: minutes for the 4 GiB disk; the static-GET and
#                  slowlink rows measure our client)
#   S3_SERVER=     moto (default) or s3s-fs (`cargo install s3s-fs --version 0.14.1
#                  --features binary`, binary on PATH or named by S3S_FS), which serves a
#                  directory. moto copies the whole object on every GET, so its s3:// row
#                  measures moto; s3s-fs reads the range from a file and measures the client.
#
# The issue's 4 GiB disk of bench/convert.sh: `DISK=4G DATA_MB=1600 bench/s3.sh /tmp/vmdk-bench`
# (reuses its img.raw and sparse.vmdk).
#
# What it does:
#   1. builds an ext4 image (mke2fs -d) of DISK holding ~DATA_MB of files, and converts it
#      with qemu-img to monolithicSparse (sparse.vmdk);
#   2. starts moto's S3 server (moto_server, or VMDK_TEST_MOTO) and nginx on loopback
#      ports, uploads sparse.vmdk to s3://bench/ and serves WORKDIR over HTTP;
#   3. times, back to back:
#        sparse.vmdk -> raw from a local file, from s3:// (the S3 server, then nginx serving
#        the bucket directory as static files) and from http:// (ours),
#        the same from http:// through qemu-img's curl driver,
#        img.raw -> streamOptimized into a local file and into s3:// (multipart upload);
#      every output is checked against the local reference (cmp, or qemu-img compare);
#   4. over slowlink (cloud-like latency in front of nginx): sparse.vmdk -> raw from http://
#      (ours, and qemu-img's curl driver) and from s3:// (nginx serving the bucket directory),
#      plus the link's own floor: the whole object fetched by 64 parallel ranged curls;
#   5. prints wall seconds (with the 1-minute load average as each row started), the ratios
#      the issue asks about, and our request summary.
#
# The servers share the 2 cores with the client, and their own costs show in the s3:// rows:
# moto copies the whole object for every ranged GET; s3s-fs streams a ranged GET in 4 KiB
# reads (measured: 12 s of its CPU to serve the 1.7 GB image) and spends ~7 s of CPU taking
# the 655 MB stream upload. The "static GETs" row (nginx serving the bucket directory, which
# ignores the signature) and the http:// row measure our client. The stream-upload row also
# prints the server's CPU seconds during the upload. qemu's curl driver is in
# qemu-block-extra, which must match the installed qemu-utils (bookworm-backports); without
# it that row is skipped and said so.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-bench-s3}
DISK=${DISK:-1G}
DATA_MB=${DATA_MB:-600}
RUNS=${RUNS:-1}
SERVER_READ=${SERVER_READ:-1}
SLOW_ROUNDS=${SLOW_ROUNDS:-$RUNS}
QEMU_SLOW_ROUNDS=${QEMU_SLOW_ROUNDS:-first}
MOTO=${VMDK_TEST_MOTO:-moto_server}
S3S_FS=${S3S_FS:-$(command -v s3s-fs || true)}
S3_SERVER=${S3_SERVER:-moto}
SLOWLINK=${SLOWLINK:-$ROOT/../shared/tools/slowlink.py}

command -v qemu-img >/dev/null || { echo "qemu-img is required" >&2; exit 1; }
if [ "$S3_SERVER" = moto ]; then
    command -v "$MOTO" >/dev/null || { echo "moto_server is required (pip install 'moto[server]')" >&2; exit 1; }
else
    [ -x "$S3S_FS" ] || { echo "s3s-fs is required (cargo install s3s-fs --features binary)" >&2; exit 1; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is required (apt-get install nginx)" >&2; exit 1; }

if [ -z "${VMDK:-}" ]; then   # VMDK=path/to/vmdk uses a binary built already
    (cd "$ROOT" && cargo build --release -q -p vmdk-cli)
    VMDK="$ROOT/target/release/vmdk"
fi

mkdir -p "$WORK"
cd "$WORK"

# ---- 1. the test disk -------------------------------------------------------------------
make_test_disk sparse.vmdk
[ -s sparse.vmdk ] || qemu-img convert -f raw -O vmdk img.raw sparse.vmdk
[ -s ref.raw ] || qemu-img convert -O raw sparse.vmdk ref.raw

# ---- 2. the servers ---------------------------------------------------------------------
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3_PORT=$(port)
HTTP_PORT=$(port)
STATIC_PORT=$(port)
# A bucket directory nginx serves as static files: path-style S3 GETs (/bucket/key, with a
# Range header and SigV4 signature, which nginx ignores) of an object on disk. It measures
# our s3:// client with a server that costs next to nothing (s3s-fs streams a ranged GET in
# 4 KiB reads, and moto copies the object for every GET).
mkdir -p s3static/bench
ln -f sparse.vmdk s3static/bench/sparse.vmdk 2>/dev/null || cp sparse.vmdk s3static/bench/
mkdir -p nginx
cat > nginx/nginx.conf <<CONF
daemon off; master_process off; pid $WORK/nginx/pid; error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http { access_log off; client_body_temp_path $WORK/nginx/b; proxy_temp_path $WORK/nginx/p;
  fastcgi_temp_path $WORK/nginx/f; uwsgi_temp_path $WORK/nginx/u; scgi_temp_path $WORK/nginx/s;
  server { listen 127.0.0.1:$HTTP_PORT; root $WORK; }
  server { listen 127.0.0.1:$STATIC_PORT; root $WORK/s3static; } }
CONF
if [ "$S3_SERVER" = moto ]; then
    "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >/dev/null 2>nginx/moto.log &
else
    # The bucket is a directory of s3root. The image is uploaded, not linked in: s3s-fs
    # keeps an object's ETag beside it only for objects it received, and for any other file
    # computes the MD5 of the whole file on every GET (which made the 4 GiB disk's ranged
    # reads take minutes).
    rm -rf s3root; mkdir -p s3root/bench
    "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key bench --secret-key bench \
        s3root >/dev/null 2>nginx/s3s.log &
fi
MOTO_PID=$!
"$NGINX" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
SLOW_PIDS=
if [ -f "$SLOWLINK" ]; then
    SLOW_HTTP_PORT=$(port)
    SLOW_STATIC_PORT=$(port)
    python3 "$SLOWLINK" --listen "127.0.0.1:$SLOW_HTTP_PORT" --to "127.0.0.1:$HTTP_PORT" \
        --max-seconds 3600 2>nginx/slowlink-http.log &
    SLOW_PIDS="$!"
    python3 "$SLOWLINK" --listen "127.0.0.1:$SLOW_STATIC_PORT" --to "127.0.0.1:$STATIC_PORT" \
        --max-seconds 3600 2>nginx/slowlink-static.log &
    SLOW_PIDS="$SLOW_PIDS $!"
fi
trap 'kill $MOTO_PID $NGINX_PID $SLOW_PIDS 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && break
    sleep 0.2
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=bench \
    AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
echo "uploading sparse.vmdk ($(du -h --apparent-size sparse.vmdk | cut -f1)) to $S3_SERVER..." >&2
if [ "$S3_SERVER" = moto ]; then
    curl -sf -X PUT "http://127.0.0.1:$S3_PORT/bench" -o /dev/null
    curl -sf -T sparse.vmdk "http://127.0.0.1:$S3_PORT/bench/sparse.vmdk" -o /dev/null
else
    # A signed PUT (curl's SigV4): s3s-fs checks signatures.
    curl -sf --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:bench \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -T sparse.vmdk \
        "http://127.0.0.1:$S3_PORT/bench/sparse.vmdk" -o /dev/null
fi

# ---- 3. the runs --------------------------------------------------------------------------
# The 1-minute load average as each timed row starts, one "LABEL LOAD" line each.
: > loads.txt
best() { # best wall seconds of RUNS runs of "$@" (output removed and synced before each)
    local b="" s e t
    echo "${ROW:-?} $(cut -d' ' -f1 /proc/loadavg)" >> loads.txt
    for _ in $(seq "$RUNS"); do
        rm -f out.raw out.vmdk; sync
        s=$(date +%s.%N); "$@" >/dev/null 2>>runs.log; e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc)
        if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi
    done
    echo "$b"
}
: > runs.log
S3=s3://bench/sparse.vmdk
HTTP=http://127.0.0.1:$HTTP_PORT/sparse.vmdk

local_raw=$(ROW=local_raw best "$VMDK" convert -O raw sparse.vmdk out.raw); cmp out.raw ref.raw
s3_raw=n/a summary=
if [ "$SERVER_READ" = 1 ]; then
    s3_raw=$(ROW=s3_raw best "$VMDK" -v convert -O raw "$S3" out.raw); cmp out.raw ref.raw
    summary=$(grep 'object storage:' runs.log | tail -1 || true)
fi
static_raw=$(ROW=static_raw AWS_ENDPOINT_URL="http://127.0.0.1:$STATIC_PORT" best "$VMDK" convert -O raw "$S3" out.raw)
cmp out.raw ref.raw
http_raw=$(ROW=http_raw best "$VMDK" convert -O raw "$HTTP" out.raw); cmp out.raw ref.raw
if ls /usr/lib/*/qemu/block-curl.so >/dev/null 2>&1; then
    qemu_raw=$(ROW=qemu_raw best qemu-img convert -O raw "json:{\"file\":{\"driver\":\"http\",\"url\":\"$HTTP\"}}" out.raw)
    cmp out.raw ref.raw
else
    qemu_raw="n/a"
    echo "qemu's curl driver is missing: install qemu-block-extra from bookworm-backports," \
        "pinned to the installed qemu-utils version" >&2
fi
slow_http=n/a slow_qemu=n/a slow_s3=n/a slow_floor=n/a slow_summary=
# least A B: the smaller of two times ("n/a" or empty for none).
least() {
    if [ -z "$1" ] || [ "$1" = n/a ]; then echo "$2"
    elif [ -z "$2" ] || [ "$2" = n/a ] || [ "$(echo "$1 < $2" | bc)" = 1 ]; then echo "$1"
    else echo "$2"; fi
}
if [ -n "$SLOW_PIDS" ]; then
    SLOW_HTTP=http://127.0.0.1:$SLOW_HTTP_PORT/sparse.vmdk
    # The link's floor: the object in 64 ranged GETs at once, bytes thrown away.
    osize=$(stat -c %s sparse.vmdk)
    chunk=$(((osize + 63) / 64))
    floor() {
        seq 0 63 | xargs -P 64 -I{} sh -c "curl -sf -o /dev/null -r \$(({} * $chunk))-\$((({} + 1) * $chunk - 1)) $SLOW_HTTP"
    }
    # SLOW_ROUNDS rounds, each timing every row once (ours, then the peers, then the local
    # file again), so that every row sees the same load; the best of each is reported.
    for ((round = 0; round < SLOW_ROUNDS; round++)); do
        : > runs.log
        t=$(RUNS=1 ROW=slow_s3 AWS_ENDPOINT_URL="http://127.0.0.1:$SLOW_STATIC_PORT" best "$VMDK" -v convert -O raw "$S3" out.raw)
        cmp out.raw ref.raw
        slow_s3=$(least "$slow_s3" "$t")
        slow_summary=$(grep 'object storage:' runs.log | tail -1 || true)
        t=$(RUNS=1 ROW=slow_floor best floor); slow_floor=$(least "$slow_floor" "$t")
        t=$(RUNS=1 ROW=slow_http best "$VMDK" convert -O raw "$SLOW_HTTP" out.raw); cmp out.raw ref.raw
        slow_http=$(least "$slow_http" "$t")
        if [ "$qemu_raw" != n/a ] && { [ "$round" = 0 ] || [ "$QEMU_SLOW_ROUNDS" = all ]; }; then
            t=$(RUNS=1 ROW=slow_qemu best qemu-img convert -O raw "json:{\"file\":{\"driver\":\"http\",\"url\":\"$SLOW_HTTP\"}}" out.raw)
            cmp out.raw ref.raw
            slow_qemu=$(least "$slow_qemu" "$t")
        fi
        t=$(RUNS=1 ROW=local_raw best "$VMDK" convert -O raw sparse.vmdk out.raw); cmp out.raw ref.raw
        local_raw=$(least "$local_raw" "$t")
    done
fi
stream_local=$(ROW=stream_local best "$VMDK" convert -O vmdk -o subformat=streamOptimized img.raw out.vmdk)
qemu-img compare -q img.raw out.vmdk
server_cpu() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$MOTO_PID/stat"; }
cpu0=$(server_cpu)
stream_s3=$(ROW=stream_s3 best "$VMDK" convert -O vmdk -o subformat=streamOptimized img.raw s3://bench/out.vmdk)
cpu1=$(server_cpu)
if [ "$S3_SERVER" = moto ]; then
    curl -sf "http://127.0.0.1:$S3_PORT/bench/out.vmdk" -o out.vmdk
else
    cp s3root/bench/out.vmdk out.vmdk
fi
qemu-img compare -q img.raw out.vmdk
qemu-img check -q out.vmdk

ratio() { if [ "$1" = n/a ] || [ "$2" = n/a ]; then echo n/a; else echo "scale=3; $1 / $2" | bc; fi; }
echo
echo "disk: $DISK, $(du -h --apparent-size sparse.vmdk | cut -f1) monolithicSparse; runs: $RUNS; cores: $(nproc)"
# load ROW: the load average noted when ROW started ("-" when it did not run).
load() {
    awk -v r="$1" '$1 == r { if (!n || $2 < lo) lo = $2; if (!n || $2 > hi) hi = $2; n++ }
        END { if (!n) print "-"; else if (lo == hi) print lo; else print lo "-" hi }' loads.txt
}
printf '%-48s %10s %11s\n' "case" "seconds" "load"
printf '%-48s %10s %11s\n' "vmdk convert -O raw, local file" "$local_raw" "$(load local_raw)"
printf '%-48s %10s %11s\n' "vmdk convert -O raw, s3:// ($S3_SERVER)" "$s3_raw" "$(load s3_raw)"
printf '%-48s %10s %11s\n' "vmdk convert -O raw, s3:// (nginx, static GETs)" "$static_raw" "$(load static_raw)"
printf '%-48s %10s %11s\n' "vmdk convert -O raw, http:// (nginx)" "$http_raw" "$(load http_raw)"
printf '%-48s %10s %11s\n' "qemu-img convert -O raw, http:// (curl driver)" "$qemu_raw" "$(load qemu_raw)"
printf '%-48s %10s %11s\n' "vmdk convert -> streamOptimized, local file" "$stream_local" "$(load stream_local)"
printf '%-48s %10s %11s\n' "vmdk convert -> streamOptimized, s3:// upload" "$stream_s3" "$(load stream_s3)"
printf '%-48s %10s %11s\n' "over slowlink: vmdk convert -O raw, http://" "$slow_http" "$(load slow_http)"
printf '%-48s %10s %11s\n' "over slowlink: qemu-img convert -O raw, http://" "$slow_qemu" "$(load slow_qemu)"
printf '%-48s %10s %11s\n' "over slowlink: vmdk convert -O raw, s3:// (static)" "$slow_s3" "$(load slow_s3)"
printf '%-48s %10s %11s\n' "over slowlink: 64 parallel curls (link floor)" "$slow_floor" "$(load slow_floor)"
echo
echo "qemu curl (http) / vmdk s3:          $(ratio "$qemu_raw" "$s3_raw")   (issue: >= 5)"
echo "qemu curl (http) / vmdk http:        $(ratio "$qemu_raw" "$http_raw")"
echo "vmdk s3 / vmdk local:                $(ratio "$s3_raw" "$local_raw")   (issue: <= 1.5)"
echo "vmdk s3 (static nginx) / vmdk local: $(ratio "$static_raw" "$local_raw")"
echo "qemu curl (http) / vmdk s3 (static): $(ratio "$qemu_raw" "$static_raw")"
echo "vmdk http / vmdk local:              $(ratio "$http_raw" "$local_raw")"
echo "stream to s3 / stream to local file: $(ratio "$stream_s3" "$stream_local")   (issue: <= 1.2)"
echo "server CPU during the stream upload(s): $(echo "$cpu1 - $cpu0" | bc) s (on the same $(nproc) cores)"
echo "over slowlink: qemu curl / vmdk http: $(ratio "$slow_qemu" "$slow_http")   (issue: >= 5)"
echo "over slowlink: vmdk s3 / vmdk local:   $(ratio "$slow_s3" "$local_raw")   (issue: <= 1.5)"
echo "over slowlink: vmdk s3 / link floor:   $(ratio "$slow_s3" "$slow_floor")"
echo "load: $(uptime | sed 's/.*load average: //')"
[ -n "$summary" ] && echo "s3 read: ${summary#vmdk: }"
[ -n "$slow_summary" ] && echo "s3 read over slowlink: ${slow_summary#vmdk: }"
