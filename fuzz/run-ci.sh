#!/usr/bin/env bash
# Build the fuzz targets and run each one for a bounded time; exit non-zero if any crashes
# (a panic, a hang past -timeout, or memory past -rss_limit_mb), after printing the input.
#
# Works on the stable toolchain, offline but for the crate registry: the libFuzzer runtime
# comes with the libfuzzer-sys crate (built by its build script with the C++ compiler), and the
# coverage instrumentation is plain `-C` codegen flags (no -Z, no nightly, no cargo-fuzz;
# see README.md). No sanitizer runtime, so -malloc_limit_mb is not enforced; the RSS limit is.
#
# Seeds are generated here with qemu-img / qemu-io (small images of a few subformats), so no
# binaries are committed. Run times (seconds) can be changed through the environment:
#   FUZZ_WRITE_SECS   write_image                           (default 45)
#   FUZZ_OTHER_SECS   descriptor, sparse_header, open_image, ova, ova_info, qcow2_source,
#                     inspect, nbd_server
#                     (default 15 each)
#   FUZZ_TARGETS      which targets to build and run        (default: all nine)
#   FUZZ_JOBS         how many targets run at once          (default: the number of CPUs)
# and FUZZ_CORPUS_DIR keeps the corpora there (one folder per target) for longer runs later.
# The build has a target directory of its own (fuzz/target/run-ci), always with the flags
# below, so a second run rebuilds nothing and other builds of fuzz/ do not disturb it.
set -euo pipefail
cd "$(dirname "$0")"

write_secs=${FUZZ_WRITE_SECS:-45}
other_secs=${FUZZ_OTHER_SECS:-15}
targets=${FUZZ_TARGETS:-"descriptor sparse_header open_image write_image ova ova_info qcow2_source inspect nbd_server"}

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps the coverage flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
start=$(date +%s)
echo "fuzz: building the targets ($host)"
bins=()
for t in $targets; do bins+=(--bin "$t"); done
cargo build --quiet --release --locked --target-dir target/run-ci --target "$host" "${bins[@]}"
bin=target/run-ci/$host/release
echo "fuzz: built in $(($(date +%s) - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# ---- seeds ---------------------------------------------------------------------------------
seeds=$work/seeds
mkdir -p "$seeds"
q() { qemu-img "$@" >/dev/null; }
io() { qemu-io -f vmdk "$@" >/dev/null; }
q create -f vmdk "$seeds/sparse.vmdk" 1M
io -c "write -P 0x11 0 4k" -c "write -P 0x22 300k 70k" "$seeds/sparse.vmdk"
q create -f vmdk -o zeroed_grain=on "$seeds/zeroed.vmdk" 1M
io -c "write -P 0x33 64k 8k" -c "write -z 512k 128k" "$seeds/zeroed.vmdk"
q convert -O vmdk -o subformat=streamOptimized "$seeds/sparse.vmdk" "$seeds/stream.vmdk"
q create -f vmdk -o subformat=twoGbMaxExtentSparse "$seeds/split.vmdk" 1M
io -c "write -P 0x44 128k 64k" "$seeds/split.vmdk"
q create -f vmdk -o subformat=monolithicFlat "$seeds/flat.vmdk" 1M
images="sparse.vmdk zeroed.vmdk stream.vmdk split-s001.vmdk"
# qcow2 seeds: small clusters keep them short; compressed, zero and subcluster entries,
# and an overlay whose backing file is the rest of the input.
qio() { qemu-io -f qcow2 "$@" >/dev/null; }
q create -f qcow2 -o cluster_size=4k "$seeds/q.qcow2" 1M
qio -c "write -P 0x11 0 8k" -c "write -c -P 0x22 64k 4k" -c "write -z 128k 8k" "$seeds/q.qcow2"
q create -f qcow2 -o cluster_size=16k,extended_l2=on,compat=1.1 "$seeds/x.qcow2" 1M
qio -c "write -P 0x33 4k 1k" -c "write -z 64k 1k" "$seeds/x.qcow2"
q create -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 "$seeds/top.qcow2" 1M -u
qio -c "write -P 0x44 12k 4k" "$seeds/top.qcow2" 2>/dev/null || true

# A write_image op: kind, u32 LE offset, u16 LE length in 4-byte units, seed.
op() { printf "\\x$1\\x$2\\x$3\\x$4\\x$5\\x$6\\x$7\\x$8"; }

# What NBD clients send, for nbd_server's seeds. `be WIDTH VALUE`: VALUE as WIDTH bytes,
# big-endian.
be() {
  local i out=""
  for ((i = $1 - 1; i >= 0; i--)); do out+=$(printf '\\x%02x' $((($2 >> (8 * i)) & 255))); done
  printf "$out"
}
# `nbd_opt CODE [CMD ARGS...]`: an option whose data is what CMD prints.
nbd_opt() {
  local code=$1
  shift
  if [ $# -gt 0 ]; then "$@" >"$work/opt-data"; else : >"$work/opt-data"; fi
  be 8 0x49484156454F5054
  be 4 "$code"
  be 4 "$(wc -c <"$work/opt-data")"
  cat "$work/opt-data"
}
# INFO/GO data: `info NAME [INFO-TYPE...]`; META_CONTEXT data: `meta NAME [QUERY...]`.
info() {
  be 4 ${#1}
  printf '%s' "$1"
  shift
  be 2 $#
  for i in "$@"; do be 2 "$i"; done
}
meta() {
  be 4 ${#1}
  printf '%s' "$1"
  shift
  be 4 $#
  for q in "$@"; do
    be 4 ${#q}
    printf '%s' "$q"
  done
}
name() { printf '%s' "$1"; }
# Requests: `req FLAGS TYPE HANDLE OFFSET LENGTH` (28 bytes), `xreq` the same with extended
# headers (32 bytes, 64-bit length); `bytes N B` is a payload of N bytes B (hex).
req() {
  be 4 0x25609513
  be 2 "$1"
  be 2 "$2"
  be 8 "$3"
  be 8 "$4"
  be 4 "$5"
}
xreq() {
  be 4 0x21e41c71
  be 2 "$1"
  be 2 "$2"
  be 8 "$3"
  be 8 "$4"
  be 8 "$5"
}
bytes() { head -c "$1" /dev/zero | tr '\0' "\\$(printf '%03o' "0x$2")"; }
corpora=${FUZZ_CORPUS_DIR:-$work/corpus}
for t in $targets; do
  mkdir -p "$corpora/$t"
done
for t in $targets; do
  c=$corpora/$t
  case $t in
    descriptor)
      cp "$seeds/flat.vmdk" "$c/flat"
      head -c 1024 "$seeds/sparse.vmdk" | tail -c 512 >"$c/embedded" ;;
    sparse_header)
      for i in $images; do head -c 2048 "$seeds/$i" >"$c/$i"; done ;;
    open_image)
      for i in $images; do { printf '\xff'; cat "$seeds/$i"; } >"$c/$i"; done ;;
    ova | ova_info)
      # A small OVA: a VMware-style OVF, a manifest and a stream disk, as tar writes them;
      # for ova_info also one with a member appended twice (tar -r) and one whose manifest
      # omits a member, and a pax archive of long names.
      printf '%s' '<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="stream.vmdk" ovf:id="f1"/></References><DiskSection><Info>d</Info><Disk ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d1" ovf:fileRef="f1"/></DiskSection></Envelope>' >"$seeds/a.ovf"
      (cd "$seeds" && echo "SHA256(stream.vmdk)= $(sha256sum stream.vmdk | cut -d' ' -f1)" >a.mf &&
        tar --format=gnu -cf "$c/a.ova" a.ovf a.mf stream.vmdk &&
        tar --format=pax -cf "$c/pax.ova" a.ovf stream.vmdk a.mf)
      if [ "$t" = ova_info ]; then
        (cd "$seeds" && cp "$c/a.ova" "$c/dup.ova" && tar -rf "$c/dup.ova" ./a.mf &&
          echo x >notes.txt && tar --format=gnu -cf "$c/unlisted.ova" a.ovf a.mf stream.vmdk notes.txt &&
          long=$(printf 'n%.0s' $(seq 1 120)).vmdk && cp a.mf "$long" &&
          tar --format=pax -cf "$c/long-pax.ova" a.ovf a.mf "$long" &&
          tar --format=gnu -cf "$c/long-gnu.ova" a.ovf a.mf "$long")
      fi ;;
    inspect)
      # Whole uploads (the other file empty), and a descriptor with an extent to open.
      for i in $images; do { printf '\xff'; cat "$seeds/$i"; } >"$c/$i"; done
      { printf '\x80'; cat "$seeds/flat.vmdk" "$seeds/sparse.vmdk"; } >"$c/flat" ;;
    qcow2_source)
      for i in q.qcow2 x.qcow2; do { printf '\xff'; cat "$seeds/$i"; } >"$c/$i"; done
      t_len=$(wc -c <"$seeds/top.qcow2"); all=$((t_len + $(wc -c <"$seeds/q.qcow2")))
      { printf "\\x$(printf %02x $((t_len * 255 / all + 1)))"; cat "$seeds/top.qcow2" "$seeds/q.qcow2"; } >"$c/chain" ;;
    nbd_server)
      # Byte 0 is the server's configuration (see the target), then the client's bytes:
      # structured replies with base:allocation, every command, as qemu and libnbd do;
      {
        printf '\x00'
        be 4 3
        nbd_opt 8
        nbd_opt 10 meta "" base:allocation
        nbd_opt 7 info "" 3 1 2
        req 0 1 1 65536 4096
        bytes 4096 5a
        req 0 0 2 61440 16384
        req 4 0 3 0 131072
        req 0 7 4 0 2097152
        req 8 7 5 0 2097152
        req 0 6 6 131072 65536
        req 2 6 7 196608 4096
        req 0 4 8 262144 65536
        req 1 3 9 0 0
        req 0 5 10 0 4096
        req 1 1 11 1048576 512
        bytes 512 a5
        req 0 2 12 0 0
      } >"$c/structured"
      # extended headers and both metadata contexts (qemu 10);
      {
        printf '\x02'
        be 4 3
        nbd_opt 11
        nbd_opt 10 meta "" base:allocation qemu:allocation-depth
        nbd_opt 7 info ""
        xreq 32 1 1 65536 4096
        bytes 4096 3c
        xreq 0 0 2 0 65536
        xreq 0 7 3 0 2097152
        xreq 0 6 4 0 1048576
        xreq 0 4 5 1048576 65536
        xreq 0 2 6 0 0
      } >"$c/extended"
      # simple replies after NBD_OPT_EXPORT_NAME, without NO_ZEROES, on a named export;
      {
        printf '\x04'
        be 4 1
        nbd_opt 3
        nbd_opt 6 info disk 0 1 2 3
        nbd_opt 9 meta disk
        nbd_opt 1 name disk
        req 0 1 1 0 512
        bytes 512 77
        req 0 0 2 0 512
        req 0 3 3 0 0
        req 0 2 4 0 0
      } >"$c/simple"
      # the options a listing client tries, ending in NBD_OPT_ABORT;
      {
        printf '\x0b'
        be 4 3
        nbd_opt 3
        nbd_opt 8
        nbd_opt 9 meta ""
        nbd_opt 9 meta "" qemu: base:
        nbd_opt 6 info x
        nbd_opt 5
        nbd_opt 99
        nbd_opt 2
      } >"$c/listing"
      # a read-only export of the base alone: reads, and writes it refuses.
      {
        printf '\x11'
        be 4 3
        nbd_opt 8
        nbd_opt 7 info ""
        req 0 0 1 2093056 8192
        req 0 1 2 0 512
        bytes 512 01
        req 0 7 3 0 4096
        req 0 2 4 0 0
      } >"$c/base-ro" ;;
    write_image)
      for i in $images; do
        {
          printf '\x05'
          op 00 00 10 00 00 00 04 01  # write 4 KiB at 4 KiB
          op 00 00 f0 00 00 00 40 02  # write 64 KiB at 60 KiB (across a grain)
          op 01 00 00 02 00 00 40 00  # zeros (may unmap) over a grain at 128 KiB
          op 03 00 00 03 00 00 80 00  # discard at 192 KiB
          op 02 00 08 00 00 00 02 00  # zeros (no unmap) inside the first grain
          printf '\xff'
          cat "$seeds/$i"
        } >"$c/$i"
      done ;;
  esac
done

# ---- runs ----------------------------------------------------------------------------------
# Each libFuzzer process uses one CPU: FUZZ_JOBS of them run at once, the longest first, each
# for its full time; the results are then reported in the usual order.
jobs=${FUZZ_JOBS:-$(nproc)}
run() {
  local t=$1 secs=$other_secs
  [ "$t" = write_image ] && secs=$write_secs
  mkdir -p "$work/artifacts/$t/"
  echo "fuzz: $t for $secs s"
  local st=0
  "$bin/$t" "$corpora/$t" -max_total_time="$secs" -max_len=300000 \
    -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
    >"$work/$t.log" 2>&1 || st=$?
  echo "$st" >"$work/$t.status"
}
longest_first=
for t in $targets; do
  if [ "$t" = write_image ]; then longest_first="$t $longest_first"; else longest_first+=" $t"; fi
done
for t in $longest_first; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run "$t" &
done
wait

status=0
for t in $targets; do
  art=$work/artifacts/$t/
  log=$work/$t.log
  if [ "$(cat "$work/$t.status")" -ne 0 ]; then
    status=1
    echo "fuzz: $t FAILED; the end of its log:"
    tail -n 40 "$log"
    for f in "$art"*; do
      [ -f "$f" ] || continue
      mkdir -p artifacts/"$t"
      cp "$f" artifacts/"$t"/
      size=$(wc -c <"$f")
      echo "fuzz: $t input saved as fuzz/artifacts/$t/$(basename "$f") ($size bytes)"
      # Small inputs also go to the log, so a CI failure can be reproduced from it alone.
      if [ "$size" -le 16384 ]; then
        echo "fuzz: base64 of the input:"
        base64 -w 0 "$f"
        echo
      fi
    done
  else
    grep -E '^stat::number_of_executed_units' "$log" | sed "s/^/fuzz: $t /" || true
  fi
done
echo "fuzz: total $(($(date +%s) - start)) s"
exit $status
