//! `vmdk check`: clean on what qemu and we make, corruptions and leaks found in patched files.

use std::path::Path;
use vmdk_test_support::qemu::qemu_to_vmdk;
use vmdk_test_support::qemu::SUBFORMATS_AND_VMFS;

use crate::common::*;

fn check(image: &Path) -> Run {
    vmdk(&["check", &s(image)])
}

fn check_json(image: &Path) -> (i32, serde_json::Value) {
    let r = vmdk(&["check", "--output=json", &s(image)]);
    (r.code, r.json())
}

fn assert_clean(image: &Path) {
    let r = check(image);
    assert_eq!(r.code, 0, "{}: {}\n{}", image.display(), r.stdout, r.stderr);
    assert!(r.stdout.starts_with("No errors were found on the image.\n"));
    assert_eq!(r.stderr, "", "{}", image.display());
    let q = tool("qemu-img", &["check", &s(image)]);
    assert_eq!(
        q.code,
        0,
        "qemu-img check {}: {}",
        image.display(),
        q.stderr
    );
}

#[test]
fn qemu_images_are_clean() {
    let d = tempdir();
    let a = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    qemu_io(
        &a,
        &[
            "write -P 1 60k 10k",
            "write -P 2 1M 200k",
            "write -P 3 15M 1M",
        ],
    );
    assert_clean(&a);
    let (code, v) = check_json(&a);
    assert_eq!(code, 0);
    assert_eq!(v["check-errors"], 0);
    assert_eq!(v["format"], "vmdk");
    assert_eq!(v["filename"], s(&a));
    assert_eq!(v["allocated-clusters"], 2 + 4 + 16);
    assert_eq!(v["total-clusters"], 256);
    assert_eq!(
        v["image-end-offset"].as_u64().unwrap(),
        std::fs::metadata(&a).unwrap().len()
    );
    assert!(v.get("corruptions").is_none() && v.get("leaks").is_none());

    let z = qemu_create(d.path(), "z.vmdk", "4M", &["zeroed_grain=on"]);
    qemu_io(&z, &["write -z 0 1M", "write -P 1 1M 64k"]);
    assert_clean(&z);

    let s2 = d.path().join("s.vmdk");
    qemu_to_vmdk(&a, &s2, "", "subformat=streamOptimized");
    assert_clean(&s2);
    let (_, v) = check_json(&s2);
    assert_eq!(v["compressed-clusters"], v["allocated-clusters"]);
    // Grains appended to QEMU's stream layout leave its old end-of-stream marker behind.
    vmdk_ok(&[
        "io",
        "-c",
        "write -P 9 2M 64k",
        "-c",
        "write -P 9 4M 100k",
        &s(&s2),
    ]);
    assert_clean(&s2);

    let t = qemu_create_sub(d.path(), "t.vmdk", "3G", "twoGbMaxExtentSparse");
    qemu_io(&t, &["write -P 1 2047M 2M"]);
    assert_clean(&t);

    for sub in ["monolithicFlat", "twoGbMaxExtentFlat"] {
        let f = qemu_create_sub(d.path(), &format!("{sub}.vmdk"), "4M", sub);
        assert_clean(&f);
    }

    let child = qemu_child(d.path(), "child.vmdk", &a, None);
    qemu_io(&child, &["write -P 9 100k 100k"]);
    assert_clean(&child);
    // Only the image itself is checked: a missing backing file does not matter.
    std::fs::remove_file(&a).unwrap();
    assert_eq!(check(&child).code, 0);
}

#[test]
fn our_images_are_clean() {
    let d = tempdir();
    for sub in SUBFORMATS_AND_VMFS {
        let p = d.path().join(format!("{sub}.vmdk"));
        vmdk_ok(&[
            "create",
            "-q",
            "-o",
            &format!("subformat={sub}"),
            &s(&p),
            "4M",
        ]);
        assert_clean(&p);
        if sub != "streamOptimized" {
            vmdk_ok(&[
                "io",
                "-c",
                "write -P 7 100k 300k",
                "-c",
                "write -P 8 3M 4k",
                &s(&p),
            ]);
            assert_clean(&p);
        }
    }
    // Converted to a (VMware-layout) stream file, and appended to a QEMU-layout one.
    let src = d.path().join("monolithicSparse.vmdk");
    let conv = d.path().join("conv.vmdk");
    vmdk_ok(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&src),
        &s(&conv),
    ]);
    assert_clean(&conv);
}

#[test]
fn grain_past_end_of_file() {
    let d = tempdir();
    let a = qemu_written(d.path(), "a.vmdk", "10M", &["write -P 1 0 128k"]);
    // Grain 2 (virtual sector 256) points far past the end, in both tables.
    patch(&a, gte_offset(&a, 2), &100000u32.to_le_bytes());
    patch(&a, rgte_offset(&a, 2), &100000u32.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("ERROR: cluster offset for sector 256 points after end of file"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains(
        "1 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n"
    ));
    let (code, v) = check_json(&a);
    assert_eq!(code, 2);
    assert_eq!(v["corruptions"], 1);
    // qemu-img finds it too (and fails the check).
    let q = tool("qemu-img", &["check", &s(&a)]);
    assert_ne!(q.code, 0);
    assert_contains!(q.stderr, "points after EOF");
}

#[test]
fn shared_and_misplaced_grains() {
    let d = tempdir();
    let a = qemu_written(d.path(), "a.vmdk", "10M", &["write -P 1 0 128k"]);
    let g0 = read_u32(&a, gte_offset(&a, 0));
    // Grain 5 shares grain 0's space.
    patch(&a, gte_offset(&a, 5), &g0.to_le_bytes());
    patch(&a, rgte_offset(&a, 5), &g0.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_contains!(r.stderr, "overlaps another grain");

    // Grain 6 points at sector 1 (the descriptor): no zeroed-grain flag, so that is data.
    patch(&a, gte_offset(&a, 6), &1u32.to_le_bytes());
    patch(&a, rgte_offset(&a, 6), &1u32.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 2);
    assert_contains!(r.stderr, "overlaps metadata");
    let (_, v) = check_json(&a);
    assert_eq!(v["corruptions"], 2);
}

#[test]
fn grain_table_problems() {
    let d = tempdir();
    let a = qemu_written(d.path(), "a.vmdk", "64M", &["write -P 1 0 64k"]);
    let gd = read_u64(&a, 56) * 512;
    // Directory entry 1 points past the end of the file.
    patch(&a, gd + 4, &0x100000u32.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_contains!(r.stderr, "grain table 1 at offset");
    assert_contains!(r.stderr, "past the end of the file");
    // Directory entry 1 points at the same table as entry 0.
    let gt0 = read_u32(&a, gd);
    patch(&a, gd + 4, &gt0.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 2);
    assert_contains!(r.stderr, "grain table 1 at offset");
    assert_contains!(r.stderr, "overlaps metadata");
    // The redundant copy now disagrees: a warning, not a corruption.
    patch(&a, gd + 4, &0u32.to_le_bytes());
    assert_eq!(check(&a).code, 0);
    patch(&a, rgte_offset(&a, 0), &0u32.to_le_bytes());
    let r = check(&a);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Warning: redundant grain table 0 differs from the primary in 1 entries"),
        "{}",
        r.stderr
    );
}

#[test]
fn leaked_space() {
    let d = tempdir();
    let a = qemu_written(d.path(), "a.vmdk", "10M", &["write -P 1 0 64k"]);
    // A grain's worth of garbage appended that no table points at.
    let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
    std::io::Write::write_all(&mut f, &[0x5a; 65536]).unwrap();
    drop(f);
    let r = check(&a);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(
        "1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n"
    ));
    assert_contains!(r.stderr, "leaked space: 65536 bytes at offset");
    let (code, v) = check_json(&a);
    assert_eq!(code, 3);
    assert_eq!(v["leaks"], 1);
    // qemu-img does not look for leaks in VMDK files.
    assert_eq!(tool("qemu-img", &["check", &s(&a)]).code, 0);
}

#[test]
fn bad_compressed_grain_marker() {
    let d = tempdir();
    let src = qemu_written(d.path(), "src.vmdk", "4M", &["write -P 1 0 128k"]);
    let st = d.path().join("s.vmdk");
    qemu_to_vmdk(&src, &st, "", "subformat=streamOptimized");
    let g1 = read_u32(&st, gte_offset(&st, 1)) as u64 * 512;
    // The marker's size field claims a megabyte.
    patch(&st, g1 + 8, &(1u32 << 20).to_le_bytes());
    let r = check(&st);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_contains!(r.stderr, "marker claims 1048576 compressed bytes");
    // A wrong LBA in the marker.
    patch(&st, g1 + 8, &85u32.to_le_bytes());
    patch(&st, g1, &7u64.to_le_bytes());
    let r = check(&st);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("marker names sector 7 of the extent, expected 128"),
        "{}",
        r.stderr
    );
}

#[test]
fn cannot_check() {
    let d = tempdir();
    let r = vmdk(&["check", &s(&d.path().join("missing.vmdk"))]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("vmdk: "), "{}", r.stderr);
    let raw = d.path().join("r.raw");
    std::fs::write(&raw, vec![0u8; 4096]).unwrap();
    let r = vmdk(&["check", &s(&raw)]);
    assert_eq!(r.code, 63);
    assert!(r.stderr.contains("does not support checks"));
}
