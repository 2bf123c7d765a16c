//! Writes through corrupt tables: a grain-table entry pointing at the descriptor, the grain
//! directory or a grain table, directory entries sharing a table or pointing at the
//! directory, entries past the end of the file. `check` reports each of these; a write
//! through one must fail with a `Corrupt` error naming the file and the problem, and leave
//! every file of the image byte-identical.

use crate::common::build::{self, SECTOR};
use crate::common::*;
use vmdk_test_support::qemu::{qemu_create_as, qemu_to_vmdk};

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use vmdk::{ErrorKind, Image, OpenOptions};

fn read_u32(path: &Path, at: u64) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u32::from_le_bytes(b)
}

fn read_u64(path: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_le_bytes(b)
}

fn put_u32(path: &Path, at: u64, v: u32) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(&v.to_le_bytes(), at)
        .unwrap();
}

/// Sector of the (primary) grain directory of a VMDK4 file.
fn gd_sector(path: &Path) -> u64 {
    read_u64(path, 56)
}

/// Byte offset of primary directory entry `i`.
fn gde_at(path: &Path, i: u64) -> u64 {
    gd_sector(path) * 512 + i * 4
}

/// Byte offset of entry `j` of grain table `i` (through the primary directory).
fn gte_at(path: &Path, i: u64, j: u64) -> u64 {
    read_u32(path, gde_at(path, i)) as u64 * 512 + j * 4
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// `check` must see the corruption we made (the guard is no stricter than `check`).
fn assert_check_flags(path: &Path) {
    let img = Image::open(path).unwrap();
    let r = vmdk::check(&img).unwrap();
    assert!(
        r.corruption_count() > 0,
        "{}: check found nothing: {r:?}",
        path.display()
    );
}

/// Open `path` writable, run `op`, and expect a `Corrupt` error mentioning `needle` and the
/// damaged file (`file`, default `path`), with every file in the directory unchanged.
fn expect_refused(
    path: &Path,
    file: Option<&Path>,
    needle: &str,
    op: impl FnOnce(&Image) -> vmdk::Result<()>,
) {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    let img = OpenOptions::new().writable(true).open(path).unwrap();
    let e = op(&img).expect_err("the write went through");
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let msg = e.to_string();
    let name = file.unwrap_or(path).display().to_string();
    assert!(msg.contains(&name), "message does not name {name}: {msg}");
    assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    // Later writes elsewhere must not have been half-done either.
    drop(img);
    let after = snapshot(dir);
    for (p, b) in &before {
        assert!(
            after.get(p) == Some(b),
            "{} changed although the write was refused ({msg})",
            p.display()
        );
    }
    assert_eq!(before.len(), after.len());
}

fn write_4k(at: u64) -> impl FnOnce(&Image) -> vmdk::Result<()> {
    move |img| img.write_at(&[0x5a; 4096], at)
}

/// A qemu monolithicSparse image of `size` with data in its first grain and at 1 MiB.
fn qemu_sparse(dir: &Path, size: &str) -> PathBuf {
    let p = dir.join("a.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), size]);
    qemu_io(&p, &["write -P 1 0 64k", "write -P 2 1M 64k"]);
    p
}

#[test]
fn grain_entry_pointing_at_the_descriptor() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    put_u32(&p, gte_at(&p, 0, 0), 1);
    assert_check_flags(&p);
    expect_refused(&p, None, "embedded descriptor", write_4k(0));
    // Zeroing part of the grain writes into it too.
    expect_refused(&p, None, "embedded descriptor", |img| {
        img.write_zeroes(512, 512, true)
    });
}

#[test]
fn grain_entry_pointing_at_the_directory_or_a_table() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    let gd = gd_sector(&p);
    let gt = read_u32(&p, gde_at(&p, 0)) as u64;
    let rgd = read_u64(&p, 48);
    put_u32(&p, gte_at(&p, 0, 0), gd as u32);
    // Grain 16 (1 MiB) into the grain table; grain 17 into the redundant directory.
    put_u32(&p, gte_at(&p, 0, 16), gt as u32);
    put_u32(&p, gte_at(&p, 0, 17), rgd as u32);
    assert_check_flags(&p);
    expect_refused(&p, None, "grain directory", write_4k(4096));
    expect_refused(&p, None, "grain table", write_4k(1 << 20));
    expect_refused(&p, None, "redundant grain directory", write_4k(17 << 16));
    // One write over unallocated grains and then the bad one: nothing at all is written.
    expect_refused(&p, None, "grain table", |img| {
        img.write_at(&vec![7u8; 3 << 16], 14 << 16)
    });
}

#[test]
fn directory_entries_sharing_a_table() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "64M");
    qemu_io(&p, &["write -P 3 33M 64k"]);
    let t0 = read_u32(&p, gde_at(&p, 0));
    put_u32(&p, gde_at(&p, 1), t0);
    assert_check_flags(&p);
    // Through either entry: a write would show at both places.
    expect_refused(&p, None, "grain table 1", write_4k(40 << 20));
    expect_refused(&p, None, "grain table 0", write_4k(0));
    expect_refused(&p, None, "grain table 0", |img| {
        img.write_zeroes(0, 1 << 20, true)
    });
}

#[test]
fn directory_entry_pointing_at_the_directory() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    let gd = gd_sector(&p) as u32;
    put_u32(&p, gde_at(&p, 0), gd);
    assert_check_flags(&p);
    expect_refused(&p, None, "overlaps the grain directory", write_4k(8 << 20));
}

#[test]
fn grain_entry_past_the_end_of_the_file() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    // 8 GiB into a 200 KiB file: the write would grow the file to 8 GiB.
    put_u32(&p, gte_at(&p, 0, 0), 0x0100_0000);
    assert_check_flags(&p);
    expect_refused(&p, None, "past the end of the file", write_4k(0));
}

/// A file cut inside its last grain (found by the `write_image` fuzz target): the grain
/// still reads (zeros past the cut) and takes writes, and new grains go past its tail, not
/// over it.
#[test]
fn grain_cut_by_the_end_of_the_file_stays_apart_from_new_grains() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    let len = std::fs::metadata(&p).unwrap().len();
    // The last grain (1 MiB) is the file's last 64 KiB: cut 4 KiB + 100 bytes off it.
    assert_eq!(read_u32(&p, gte_at(&p, 0, 16)) as u64 * 512 + 65536, len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 4196)
        .unwrap();
    let img = OpenOptions::new().writable(true).open(&p).unwrap();
    let new: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
    img.write_at(&new, 5 << 16).unwrap();
    img.write_at(&[0x77; 8192], (1 << 20) + 60 * 1024).unwrap();
    let mut back = vec![0u8; 65536];
    img.read_at(&mut back, 5 << 16).unwrap();
    assert!(back == new, "the new grain was overwritten");
    img.read_at(&mut back, 1 << 20).unwrap();
    let mut want = vec![2u8; 65536];
    want[60 * 1024 - 100..60 * 1024].fill(0); // cut off, never rewritten
    want[60 * 1024..].fill(0x77);
    // The 8 KiB write runs into grain 17, which is new.
    assert!(back == want, "the cut grain reads wrong");
    drop(img);
    let r = vmdk::check(&Image::open(&p).unwrap()).unwrap();
    assert_eq!(r.corruption_count(), 0, "{r:?}");
    // qemu agrees on every byte.
    assert_same("cut grain", &our_raw(&p), &qemu_raw(&p));
}

#[test]
fn entry_past_the_end_is_not_taken_for_a_grain_allocated_later() {
    let d = tempfile::tempdir().unwrap();
    let p = qemu_sparse(d.path(), "16M");
    // Grain 5 points exactly where the next grain will be allocated.
    let len = std::fs::metadata(&p).unwrap().len();
    put_u32(&p, gte_at(&p, 0, 5), (len / 512) as u32);
    assert_check_flags(&p);
    let img = OpenOptions::new().writable(true).open(&p).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    img.write_at(&data, 100 << 16).unwrap();
    let e = img.write_at(&[9u8; 4096], 5 << 16).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(e.to_string().contains("past the end of the file"), "{e}");
    // Our own grain is still writable and intact.
    img.write_at(&[1u8; 512], (100 << 16) + 512).unwrap();
    let mut back = vec![0u8; 65536];
    img.read_at(&mut back, 100 << 16).unwrap();
    let mut want = data.clone();
    want[512..1024].fill(1);
    assert!(back == want, "the grain allocated this session was damaged");
}

#[test]
fn split_sparse_extent_corruption_leaves_every_file_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("split.vmdk");
    qemu_create_as("vmdk", &p, "3G", "subformat=twoGbMaxExtentSparse");
    qemu_io(&p, &["write -P 1 0 64k", "write -P 2 2G 64k"]);
    let e2 = d.path().join("split-s002.vmdk");
    assert!(e2.exists());
    put_u32(&e2, gte_at(&e2, 0, 0), gd_sector(&e2) as u32);
    assert_check_flags(&p);
    // Across the boundary: the first extent's part must not be written either.
    expect_refused(&p, Some(&e2), "grain directory", |img| {
        img.write_at(&[3u8; 8192], (2 << 30) - 4096)
    });
}

#[test]
fn stream_append_into_a_shared_table() {
    let d = tempfile::tempdir().unwrap();
    let src = qemu_sparse(d.path(), "64M");
    qemu_io(&src, &["write -P 3 33M 64k"]);
    let p = d.path().join("s.vmdk");
    qemu_to_vmdk(&src, &p, "", "subformat=streamOptimized");
    std::fs::remove_file(&src).unwrap();
    let t0 = read_u32(&p, gde_at(&p, 0));
    put_u32(&p, gde_at(&p, 1), t0);
    assert_check_flags(&p);
    expect_refused(&p, None, "grain table 1", write_4k(40 << 20));
}

#[test]
fn cowd_grain_entry_pointing_at_its_directory_or_past_the_end() {
    let d = tempfile::tempdir().unwrap();
    let mut disk = vec![0u8; 4 << 20];
    pattern(&mut disk[..64 << 10], 3);
    let f = build::cowd(&disk, 16, None, &build::nonzero);
    let p = build::write(d.path(), "c.vmdk", &f);
    // Directory at sector 4 (after the 2 KiB header); its first table follows.
    let gt = read_u32(&p, 4 * SECTOR as u64) as u64;
    put_u32(&p, gt * 512, 4);
    assert_check_flags(&p);
    expect_refused(&p, None, "grain directory", write_4k(0));
    put_u32(&p, gt * 512, 0x00ff_0000);
    expect_refused(&p, None, "past the end of the file", write_4k(0));
}

/// `check` must tell a compressed grain whose last sector happens to look like an
/// end-of-stream marker (16 zero bytes) from a real marker: found by the `write_image` fuzz
/// target, where a grain appended to a stream file ended that way and `check` reported the
/// sound image as corrupt.
#[test]
fn a_grain_tail_that_looks_like_a_marker_is_a_grain() {
    let d = tempfile::tempdir().unwrap();
    let mut disk = vec![0u8; 1 << 20];
    pattern(&mut disk[..65536], 9);
    let mut f = build::vmdk4_with(&disk, 128, 512, None, &build::nonzero, Some(true));
    // The one grain is the file's last record: make it 1000 compressed bytes whose second
    // sector starts with 16 zeros. (`check` does not decompress; reading it would fail.)
    let gd = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize * SECTOR;
    let gt = u32::from_le_bytes(f[gd..gd + 4].try_into().unwrap()) as usize * SECTOR;
    let at = u32::from_le_bytes(f[gt..gt + 4].try_into().unwrap()) as usize * SECTOR;
    f.truncate(at + 12);
    f[at + 8..at + 12].copy_from_slice(&1000u32.to_le_bytes());
    let mut data = vec![0x5au8; 1000];
    data[500..516].fill(0);
    f.extend_from_slice(&data);
    f.resize(at + 1024, 0);
    let p = build::write(d.path(), "s.vmdk", &f);
    let r = vmdk::check(&Image::open(&p).unwrap()).unwrap();
    assert!(r.is_clean(), "{r:?}");
}
