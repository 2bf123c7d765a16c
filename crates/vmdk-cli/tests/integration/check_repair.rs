//! `vmdk check -r leaks|all`: images qemu made, damaged by patching their metadata, are
//! repaired; afterwards `qemu-img check` is clean and `qemu-img compare` finds the content
//! that was readable before (grains that pointed nowhere read as zeros).

use std::path::{Path, PathBuf};

use crate::common::*;

/// Table entries (grains) of qemu's default 64 KiB-grain layout: 512 per table.
const GT_ENTRIES: u64 = 512;

/// Offset of grain-table entry `grain` through the directory whose offset (in sectors) is
/// in the header at `dir_field` (56: primary, 48: redundant).
fn entry_offset(image: &Path, dir_field: u64, grain: u64) -> u64 {
    let dir = read_u64(image, dir_field) * 512;
    let table = read_u32(image, dir + grain / GT_ENTRIES * 4) as u64;
    table * 512 + grain % GT_ENTRIES * 4
}

/// A 64 MiB image (two grain tables) with data in grains 0, 1, 2 and 512, 513.
fn image(dir: &Path, name: &str) -> PathBuf {
    let a = qemu_create(dir, name, "64M", &[]);
    qemu_io(
        &a,
        &[
            "write -P 1 0 64k",
            "write -P 2 64k 64k",
            "write -P 3 128k 64k",
            "write -P 4 32M 128k",
        ],
    );
    a
}

/// The image's content as raw, read by qemu.
fn raw_copy(image: &Path, name: &str) -> PathBuf {
    let raw = image.with_file_name(name);
    qemu_img(&["convert", "-O", "raw", &s(image), &s(&raw)]);
    raw
}

fn zero_range(raw: &Path, offset: u64, len: usize) {
    patch(raw, offset, &vec![0u8; len]);
}

/// qemu-img check is clean, ours too, and qemu reads `expected`.
fn assert_repaired(image: &Path, expected: &Path) {
    let q = tool("qemu-img", &["check", &s(image)]);
    assert_eq!(q.code, 0, "qemu-img check: {}{}", q.stdout, q.stderr);
    let r = vmdk(&["check", &s(image)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("No errors were found on the image.\n"));
    let c = tool("qemu-img", &["compare", &s(expected), &s(image)]);
    assert_eq!(c.code, 0, "qemu-img compare: {}{}", c.stdout, c.stderr);
}

fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn leaks_are_cut_off_and_punched_out() {
    let d = tempdir();
    let a = image(d.path(), "a.vmdk");
    // Grain 1 unreferenced by both tables: an interior leak (it now reads as zeros).
    patch(&a, entry_offset(&a, 56, 1), &0u32.to_le_bytes());
    patch(&a, entry_offset(&a, 48, 1), &0u32.to_le_bytes());
    // Two grains of garbage at the end: a trailing leak.
    let len = std::fs::metadata(&a).unwrap().len();
    patch(&a, len, &[0x5a; 131072]);
    let expected = raw_copy(&a, "expected.raw");
    let before = allocated(&a);
    assert_eq!(vmdk(&["check", &s(&a)]).code, 3);

    let r = vmdk(&["check", "-r", "leaks", &s(&a)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with(
            "The following inconsistencies were found and repaired:\n\n    3 leaked clusters\n    \
             0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on \
             the image.\n"
        ),
        "{}",
        r.stdout
    );
    assert_eq!(
        std::fs::metadata(&a).unwrap().len(),
        len,
        "trailing leak cut"
    );
    // The punched grain and the cut tail no longer take space (give or take the
    // filesystem's own bookkeeping).
    assert!(
        allocated(&a) + 3 * 65536 - 8192 <= before,
        "{} -> {}",
        before,
        allocated(&a)
    );
    assert_repaired(&a, &expected);
    // Nothing left to repair: nothing printed about repairs.
    let r = vmdk(&["check", "-r", "all", &s(&a)]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("No errors"), "{}", r.stdout);
}

#[test]
fn corruptions_are_repaired_from_the_redundant_copy_or_dropped() {
    let d = tempdir();
    let a = image(d.path(), "a.vmdk");
    let expected_img = raw_copy(&a, "expected.raw");
    // Grain 2 points past the end of the file in both copies: unreadable, becomes zeros.
    patch(&a, entry_offset(&a, 56, 2), &0x0100_0000u32.to_le_bytes());
    patch(&a, entry_offset(&a, 48, 2), &0x0100_0000u32.to_le_bytes());
    zero_range(&expected_img, 128 * 1024, 65536);
    // Grain 1 points into the grain directory in the primary table only: the redundant
    // table is sound and wins.
    let gd = read_u64(&a, 56);
    patch(&a, entry_offset(&a, 56, 1), &(gd as u32).to_le_bytes());
    // The second table's primary directory entry points past the end of the file: the
    // redundant table is copied to a new table.
    patch(&a, gd * 512 + 4, &0x0100_0000u32.to_le_bytes());
    assert_eq!(vmdk(&["check", &s(&a)]).code, 2);
    let b = d.path().join("b.vmdk");
    std::fs::copy(&a, &b).unwrap();

    let r = vmdk(&["check", "-r", "all", &s(&a)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Leaked: grain 2's data, which nothing points at any more (the table the broken
    // directory entry no longer reaches lies in the header's overhead, not counted).
    assert!(
        r.stdout.starts_with(
            "The following inconsistencies were found and repaired:\n\n    1 leaked clusters\n    \
             4 corruptions\n"
        ),
        "{}",
        r.stdout
    );
    assert!(r
        .stdout
        .contains("Double checking the fixed image now...\nNo errors were found"));
    assert_repaired(&a, &expected_img);

    // JSON carries the counts as qemu's does.
    let r = vmdk(&["check", "-r", "all", "--output=json", &s(&b)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v = r.json();
    assert_eq!(v["leaks-fixed"], 1, "{v}");
    assert_eq!(v["corruptions-fixed"], 4, "{v}");
    assert!(v.get("corruptions").is_none() && v.get("leaks").is_none());
    assert_repaired(&b, &expected_img);
}

#[test]
fn redundant_table_disagreeing_is_made_equal_to_the_primary() {
    let d = tempdir();
    let a = image(d.path(), "a.vmdk");
    let expected = raw_copy(&a, "expected.raw");
    patch(&a, entry_offset(&a, 48, 0), &0u32.to_le_bytes());
    let r = vmdk(&["check", &s(&a)]);
    assert!(r
        .stderr
        .contains("Warning: redundant grain table 0 differs"));
    let r = vmdk(&["check", "-r", "all", &s(&a)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r
        .stdout
        .contains("    0 leaked clusters\n    1 corruptions\n"));
    assert!(!r.stderr.contains("differs"), "{}", r.stderr);
    assert_eq!(
        read_u32(&a, entry_offset(&a, 48, 0)),
        read_u32(&a, entry_offset(&a, 56, 0))
    );
    assert_repaired(&a, &expected);
}

#[test]
fn leaks_only_leaves_corruptions_and_keeps_what_the_redundant_copy_uses() {
    let d = tempdir();
    let a = image(d.path(), "a.vmdk");
    let gd = read_u64(&a, 56);
    // The second primary table lies past the end of the file: its grains are used only
    // by the redundant copy, and `-r leaks` must not give them back.
    patch(&a, gd * 512 + 4, &0x0100_0000u32.to_le_bytes());
    let len = std::fs::metadata(&a).unwrap().len();
    let r = vmdk(&["check", "-r", "leaks", &s(&a)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("1 errors were found on the image."));
    assert_eq!(std::fs::metadata(&a).unwrap().len(), len);
    // `-r all` then recovers the data from the redundant table.
    let r = vmdk(&["check", "-r", "all", &s(&a)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    qemu_io(&a, &["read -P 4 32M 128k"]);
}

#[test]
fn leaks_are_left_when_grains_overlap() {
    let d = tempdir();
    let a = image(d.path(), "a.vmdk");
    // Grain 3 shares grain 0's space: claims overlap, so unclaimed space is not trusted.
    let g0 = read_u32(&a, entry_offset(&a, 56, 0));
    patch(&a, entry_offset(&a, 56, 3), &g0.to_le_bytes());
    patch(&a, entry_offset(&a, 48, 3), &g0.to_le_bytes());
    let len = std::fs::metadata(&a).unwrap().len();
    patch(&a, len, &[0x5a; 65536]);
    let r = vmdk(&["check", "-r", "all", &s(&a)]);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    assert_contains!(r.stderr, "leaked space left as it is");
    assert_eq!(std::fs::metadata(&a).unwrap().len(), len + 65536);
    qemu_io(&a, &["read -P 2 64k 64k", "read -P 4 32M 128k"]);
}

#[test]
fn stream_images_cannot_be_repaired() {
    let d = tempdir();
    let a = qemu_create_sub(d.path(), "a.vmdk", "4M", "streamOptimized");
    let r = vmdk(&["check", "-r", "leaks", &s(&a)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_contains!(r.stderr, "only hosted sparse extents");
}
