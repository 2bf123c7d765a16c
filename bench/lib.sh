# bench/lib.sh — what the benchmarks share; sourced by compact.sh, convert.sh, ova.sh, qcow2.sh and s3.sh.
#
# make_test_disk [FILE...]: img.raw, an ext4 disk of $DISK holding ~$DATA_MB MiB of real files
#   (hard-linked copies of /usr trees), built in the current directory unless img.stamp says
#   the one there has this size and data; FILEs (inputs made from img.raw) are removed with it.
# stage_files: the directory `stage` of ~$DATA_MB MiB of real files the disks are made of.
# warm FILE...: read files into the page cache.
# hsize BYTES: bytes in IEC units.
# best_time RUNS OUT CMD...: "WALL CPU" of the fastest run (wall seconds, user + system
#   seconds), OUT removed and `sync` run before each run; with BENCH_HYPERFINE=1 and hyperfine
#   installed, hyperfine times it (CPU then the mean over the runs). "nan nan" if CMD fails.

make_test_disk() {
    if [ -s img.raw ] && [ "$(cat img.stamp 2>/dev/null)" = "$DISK $DATA_MB" ]; then
        return
    fi
    echo "building a $DISK ext4 disk with ~$DATA_MB MiB of files..." >&2
    rm -rf img.raw "$@"
    stage_files
    mke2fs -q -t ext4 -d stage -F img.raw "$DISK"
    rm -rf stage
    echo "$DISK $DATA_MB" > img.stamp
}

stage_files() {
    rm -rf stage
    mkdir stage
    local have=0 d dst
    for d in /usr/lib/x86_64-linux-gnu /usr/lib/jvm /usr/lib/llvm-* /usr/share/doc /usr/lib/gcc \
        /usr/bin /usr/share /usr/lib /usr/include /usr/libexec /usr/sbin /opt; do
        [ -d "$d" ] || continue
        [ "$have" -ge "$DATA_MB" ] && break
        dst="stage/$(echo "$d" | tr / _)"
        [ -e "$dst" ] && continue
        cp -al "$d" "$dst" 2>/dev/null || cp -a "$d" "$dst" 2>/dev/null || true
        have=$(du -sm stage | cut -f1)
    done
}

warm() { cat "$@" > /dev/null; }
hsize() { numfmt --to=iec --suffix=B "$1"; }

best_time() {
    local runs=$1 out=$2; shift 2
    if [ "${BENCH_HYPERFINE:-0}" = 1 ] && command -v hyperfine >/dev/null; then
        hyperfine -N --runs "$runs" --prepare "rm -rf $out; sync" --export-json h.json \
            "$*" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; echo nan nan; return; }
        python3 -c 'import json;r=json.load(open("h.json"))["results"][0];print("%.3f %.2f"%(min(r["times"]),r["user"]+r["system"]))'
        return
    fi
    local best= cpu= t c
    for _ in $(seq "$runs"); do
        rm -rf "$out"; sync
        /usr/bin/time -f '%e %U %S' -o t.txt "$@" >/dev/null 2>&1 ||
            { echo "FAILED: $*" >&2; echo nan nan; return; }
        read -r t c < <(awk '{print $1, $2 + $3}' t.txt)
        if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; cpu=$c; fi
    done
    echo "$best $cpu"
}

# best_time_pair RUNS OUT_A "CMD A" OUT_B "CMD B": "WALL_A CPU_A WALL_B CPU_B", the fastest of
#   RUNS runs of each (each run a `best_time 1`), the two commands run alternately (A, B, A,
#   B, ...) so that both see the same state of a noisy page cache. The commands are
#   word-split (no quoting inside them). "nan" for a command that never succeeded.
best_time_pair() {
    local runs=$1 oa=$2 ca=$3 ob=$4 cb=$5 ta= pa= tb= pb= t c
    for _ in $(seq "$runs"); do
        # shellcheck disable=SC2086
        read -r t c < <(best_time 1 "$oa" $ca)
        if faster "$t" "$ta"; then ta=$t; pa=$c; fi
        # shellcheck disable=SC2086
        read -r t c < <(best_time 1 "$ob" $cb)
        if faster "$t" "$tb"; then tb=$t; pb=$c; fi
    done
    echo "${ta:-nan} ${pa:-nan} ${tb:-nan} ${pb:-nan}"
}

# faster T BEST: whether wall time T (maybe "nan") beats BEST (maybe empty or "nan").
faster() {
    [ "$1" != nan ] && { [ -z "$2" ] || [ "$2" = nan ] || awk "BEGIN{exit !($1 < $2)}"; }
}
