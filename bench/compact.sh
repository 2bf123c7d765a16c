#!/usr/bin/env bash
# bench/compact.sh — `vmdk compact` on the 4 GiB ext4 disk of real files, after the guest
# deleted half of them and zeroed its free space.
#
# Usage: bench/compact.sh [WORKDIR]        (default WORKDIR: /tmp/vmdk-bench-compact; ~12 GB free)
# Environment:
#   DISK=4G        virtual size of the test disk
#   DATA_MB=1600   how much real data to put in it (hard-linked copies of /usr trees)
#   VMDK=...       our binary (default: target/release/vmdk, built here)
# Needs: qemu-img, mke2fs/debugfs (e2fsprogs), zerofree, FUSE (vmdk mount).
#
# What it does:
#   1. builds an ext4 image (mke2fs -d) of DISK holding ~DATA_MB of files, as in convert.sh,
#      and converts it with qemu-img to monolithicSparse (disk.vmdk);
#   2. plays the guest: mounts disk.vmdk read-write with `vmdk mount` (FUSE, no loop
#      device needed), deletes every other file with debugfs, and zeroes the file system's
#      free blocks with zerofree (what `dd if=/dev/zero of=mnt/zero; rm mnt/zero` does in a
#      guest, without also allocating the never-used free space);
#   3. keeps a copy, times `vmdk compact disk.vmdk`, and reports time, sizes and space
#      reclaimed; the result must pass `qemu-img check` and `qemu-img compare` with the copy.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
WORK=${1:-/tmp/vmdk-bench-compact}
DISK=${DISK:-4G}
DATA_MB=${DATA_MB:-1600}

for t in qemu-img mke2fs debugfs; do
    command -v $t >/dev/null || { echo "$t is required" >&2; exit 1; }
done
command -v zerofree >/dev/null || apt-get install -y zerofree >/dev/null 2>&1 ||
    { echo "zerofree is required" >&2; exit 1; }
if [ -z "${VMDK:-}" ]; then
    (cd "$ROOT" && cargo build --release -q -p vmdk-cli)
    VMDK="$ROOT/target/release/vmdk"
fi

mkdir -p "$WORK"
cd "$WORK"
rm -rf mnt img.raw disk.vmdk before.vmdk
mkdir mnt

# ---- 1. the disk -----------------------------------------------------------------------
echo "building a $DISK ext4 disk with ~$DATA_MB MiB of files..." >&2
stage_files
# Every other regular file goes in step 2 (paths relative to the file system's root).
(cd stage && find . -type f -printf '%P\n' | awk 'NR % 2 == 0') > delete.list
mke2fs -q -t ext4 -d stage -F img.raw "$DISK"
rm -rf stage
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse img.raw disk.vmdk
rm -f img.raw

# ---- 2. the guest deletes half its files and zeroes its free space ------------------------
"$VMDK" mount --rw disk.vmdk mnt
trap 'fusermount3 -u "$WORK/mnt" 2>/dev/null || true' EXIT
sed 's/^/rm "\//; s/$/"/' delete.list > delete.cmds
debugfs -w -f delete.cmds mnt/disk >/dev/null 2>&1
zerofree mnt/disk
fusermount3 -u mnt
trap - EXIT
sleep 1
qemu-img check -q disk.vmdk
cp --sparse=always disk.vmdk before.vmdk

# ---- 3. compact --------------------------------------------------------------------------
size_before=$(stat -c %s disk.vmdk)
used_before=$(du -B1 disk.vmdk | cut -f1)
sync
start=$(date +%s.%N)
out=$(/usr/bin/time -f '%e %U %S %M' -o t.txt "$VMDK" compact disk.vmdk)
read -r wall user sys rss < t.txt
size_after=$(stat -c %s disk.vmdk)
used_after=$(du -B1 disk.vmdk | cut -f1)
check=$(qemu-img check disk.vmdk >/dev/null 2>&1 && echo clean || echo FAILED)
same=$(qemu-img compare -q before.vmdk disk.vmdk && echo identical || echo DIFFERENT)
rm -f before.vmdk

h() { numfmt --to=iec --suffix=B "$1"; }
echo "$out"
printf '%-28s %s\n' "files deleted in the guest" "$(wc -l < delete.list)"
printf '%-28s %s s wall, %s s CPU, %s MiB peak RSS\n' "vmdk compact" "$wall" \
    "$(awk "BEGIN{print $user + $sys}")" "$((rss / 1024))"
printf '%-28s %s -> %s (%s reclaimed)\n' "file size" "$(h "$size_before")" "$(h "$size_after")" \
    "$(h $((size_before - size_after)))"
printf '%-28s %s -> %s\n' "host space used (du)" "$(h "$used_before")" "$(h "$used_after")"
printf '%-28s %s, %s\n' "qemu-img check / compare" "$check" "$same"
[ "$check" = clean ] && [ "$same" = identical ]
