//! `vmdk compact` against qemu as the oracle: the compacted image passes `qemu-img check`,
//! `qemu-img compare` finds it identical to a copy taken before, and its files got smaller.

use crate::common::*;
use vmdk_test_support::qemu::qemu_to_vmdk;

use std::path::{Path, PathBuf};

/// Bytes of the image's files (descriptor and extents) in `dir`.
fn files_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_str().unwrap().starts_with("before"))
        .filter(|e| !e.file_name().to_str().unwrap().starts_with("base"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Copy the image (a `twoGbMaxExtentSparse` descriptor and its extents too) as
/// `before*`, keeping the names inside the descriptor working: the copy is converted.
fn snapshot(img: &Path) -> PathBuf {
    let before = img.with_file_name("before.vmdk");
    qemu_to_vmdk(img, &before, "vmdk", "");
    before
}

/// Compact `img`, then hold it against its state before with qemu-img.
fn compact_and_compare(img: &Path, expect_smaller: bool) -> String {
    let dir = img.parent().unwrap();
    let before = snapshot(img);
    let size_before = files_size(dir);
    let out = vmdk_ok(&["compact", &s(img)]);
    assert!(out.starts_with("Image compacted:"), "{out}");
    let check = tool("qemu-img", &["check", &s(img)]);
    assert_eq!(
        check.code, 0,
        "qemu-img check after compact:\n{}",
        check.stdout
    );
    let cmp = tool("qemu-img", &["compare", &s(&before), &s(img)]);
    assert_eq!(
        cmp.code, 0,
        "qemu-img compare:\n{}{}",
        cmp.stdout, cmp.stderr
    );
    assert_contains!(cmp.stdout, "Images are identical");
    vmdk_ok(&["check", &s(img)]);
    let size_after = files_size(dir);
    if expect_smaller {
        assert!(
            size_after < size_before,
            "not smaller: {size_before} -> {size_after}\n{out}"
        );
    }
    out
}

#[test]
fn qemu_image_with_zeros_and_holes() {
    let t = tempdir();
    let img = qemu_create(t.path(), "d.vmdk", "64M", &[]);
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 4M",
            "write -P 0 1M 2M",
            "write -P 0x22 10M 1M",
            "write -z 10M 256k",
            "write -P 0x33 60M 3M",
            "write -P 0 61M 64k",
        ],
    );
    let out = compact_and_compare(&img, true);
    // The 2 MiB and 64k of zeros written as data and the 256k qemu zeroes by writing zeros
    // (no zeroed-grain entries) are no longer stored.
    assert!(out.contains(" 37 zero grains dropped"), "{out}");
    // Compacting again finds nothing to do.
    let size = std::fs::metadata(&img).unwrap().len();
    let again = vmdk_ok(&["compact", &s(&img)]);
    assert!(
        again.contains(" 0 zero grains dropped, 0 grains moved"),
        "{again}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), size);
}

#[test]
fn overlay_keeps_zeros_over_its_backing_file() {
    for zeroed_grain in [true, false] {
        let t = tempdir();
        qemu_written(t.path(), "base.vmdk", "16M", &["write -P 0xaa 0 16M"]);
        let img = t.path().join("d.vmdk");
        let mut args = vec![
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            "base.vmdk",
            "-F",
            "vmdk",
        ];
        if zeroed_grain {
            args.extend(["-o", "zeroed_grain=on"]);
        }
        let ps = s(&img);
        args.push(&ps);
        qemu_img(&args);
        qemu_io(
            &img,
            &[
                "write -P 0x11 0 2M",
                "write -P 0 512k 1M",
                "write -P 0x22 8M 1M",
            ],
        );
        // Without zeroed-grain entries the zeros must stay stored (the backing file would
        // show through), so nothing shrinks.
        let out = compact_and_compare(&img, zeroed_grain);
        if !zeroed_grain {
            assert!(out.contains(" 0 zero grains dropped"), "{out}");
        }
        let read = tool(
            "qemu-io",
            &["-f", "vmdk", "-c", "read -P 0 512k 1M", &s(&img)],
        );
        assert!(!read.stdout.contains("fail"), "{}", read.stdout);
    }
}

#[test]
fn two_gb_max_extent_sparse() {
    let t = tempdir();
    let img = qemu_create_sub(t.path(), "d.vmdk", "3G", "twoGbMaxExtentSparse");
    qemu_io(
        &img,
        &[
            "write -P 0x11 0 2M",
            "write -P 0 0 1M",
            "write -P 0x22 1G 1M",
            "write -P 0x33 2100M 2M",
            "write -P 0 2100M 1M",
            "write -P 0x44 2900M 1M",
        ],
    );
    compact_and_compare(&img, true);
}

#[test]
fn refuses_what_it_cannot_compact() {
    let t = tempdir();
    let stream = qemu_create_sub(t.path(), "s.vmdk", "16M", "streamOptimized");
    let r = vmdk(&["compact", &s(&stream)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("streamOptimized") && r.stderr.contains("cannot be compacted"),
        "{}",
        r.stderr
    );
    let flat = qemu_create_sub(t.path(), "f.vmdk", "16M", "monolithicFlat");
    let r = vmdk(&["compact", &s(&flat)]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "only sparse images");
    let raw = t.path().join("r.img");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    assert_eq!(vmdk(&["compact", &s(&raw)]).code, 1);
}
