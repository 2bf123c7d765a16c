//! Images we create and write pass `qemu-img check` and compare identical with what we wrote.

use crate::common::*;
use vmdk::{create, CreateOptions, Image, OpenOptions, Subformat};
use vmdk_test_support::qemu::qemu_overlay;

const SIZE: u64 = 5 << 20;

/// Deterministic writes that cross grain boundaries, partial grains, and a zero write.
fn writes() -> Vec<(u64, Vec<u8>)> {
    vec![
        (0, vec![0x11; 4096]),
        (60 << 10, vec![0x22; 8192]),
        (1 << 20, (0..200 * 1024).map(|i| (i % 251) as u8).collect()),
        (3000 << 10, vec![0x44; 1024]),
        ((5 << 20) - 512, vec![0x55; 512]),
        (65536 * 3, vec![0x66; 65536 * 2]),
    ]
}

fn check_with_qemu(img: &std::path::Path, model: &[u8], dir: &Dir) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = dir.path("model.raw");
    std::fs::write(&raw, model).unwrap();
    qemu_img(&[
        "compare",
        "-f",
        "vmdk",
        "-F",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
}

fn matrix(sub: Subformat, zeroed_grain: bool) {
    let dir = Dir::new();
    let img = dir.path("disk.vmdk");
    let opts = CreateOptions {
        subformat: sub,
        zeroed_grain,
        ..Default::default()
    };
    create(&img, SIZE, &opts).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    check_with_qemu(&img, &model, &dir);
    {
        let image = OpenOptions::new().writable(true).open(&img).unwrap();
        let old_cid = image.cid();
        let mut ws = writes();
        if sub == Subformat::StreamOptimized {
            // Compressed grains can only be written once (qemu refuses the same).
            ws.drain(0..2);
            let e = image
                .write_at(&[1; 512], 0)
                .and_then(|_| image.write_at(&[2; 512], 512));
            assert_eq!(e.unwrap_err().kind(), vmdk::ErrorKind::ReadOnly);
            model[..512].fill(1);
        }
        for (off, data) in ws {
            image.write_at(&data, off).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        assert_ne!(image.cid(), old_cid, "CID must change on first write");
        if sub != Subformat::StreamOptimized {
            image.write_zeroes(1 << 20, 128 << 10, true).unwrap();
            model[1 << 20..(1 << 20) + (128 << 10)].fill(0);
        }
        image.flush().unwrap();
        assert_same("read back", &our_raw(&img)[..], &model);
    }
    assert_same("reopened", &our_raw(&img), &model);
    check_with_qemu(&img, &model, &dir);
    assert_same("qemu reads", &qemu_raw(&img), &model);
}

#[test]
fn monolithic_sparse() {
    matrix(Subformat::MonolithicSparse, false);
}
#[test]
fn monolithic_sparse_zeroed_grain() {
    matrix(Subformat::MonolithicSparse, true);
}
#[test]
fn monolithic_flat() {
    matrix(Subformat::MonolithicFlat, false);
}
#[test]
fn two_gb_sparse() {
    matrix(Subformat::TwoGbMaxExtentSparse, false);
}
#[test]
fn two_gb_flat() {
    matrix(Subformat::TwoGbMaxExtentFlat, false);
}
#[test]
fn vmfs() {
    matrix(Subformat::Vmfs, false);
}
#[test]
fn stream_optimized_append() {
    matrix(Subformat::StreamOptimized, false);
}

#[test]
fn overlay_on_qemu_base() {
    let dir = Dir::new();
    let base = dir.path("base.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "4M"]);
    qemu_io(&base, &["write -P 0xaa 0 4M"]);
    let child = dir.path("child.vmdk");
    create(
        &child,
        4 << 20,
        &CreateOptions {
            backing_file: Some("base.vmdk".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let image = OpenOptions::new().writable(true).open(&child).unwrap();
    image.write_at(&[0xbb; 100], 70_000).unwrap();
    drop(image);
    let mut model = vec![0xaa; 4 << 20];
    model[70_000..70_100].fill(0xbb);
    assert_same("ours", &our_raw(&child), &model);
    assert_same("qemu", &qemu_raw(&child), &model);
    qemu_img(&["check", child.to_str().unwrap()]);
    // And qemu writing into our overlay.
    qemu_io(&child, &["write -P 0xcc 1M 4k"]);
    model[1 << 20..(1 << 20) + 4096].fill(0xcc);
    assert_same("after qemu write", &our_raw(&child), &model);
}

#[test]
fn read_only_refuses_writes() {
    let dir = Dir::new();
    let img = dir.path("d.vmdk");
    create(&img, 1 << 20, &CreateOptions::default()).unwrap();
    let image = Image::open(&img).unwrap();
    let e = image.write_at(&[1], 0).unwrap_err();
    assert_eq!(e.kind(), vmdk::ErrorKind::ReadOnly);
}

#[test]
fn discard_and_reader_adapter() {
    use std::io::{Read, Seek, SeekFrom};
    let dir = Dir::new();
    let img = dir.path("d.vmdk");
    create(&img, 1 << 20, &CreateOptions::default()).unwrap();
    let image = OpenOptions::new().writable(true).open(&img).unwrap();
    image.write_at(&vec![7u8; 1 << 20], 0).unwrap();
    assert!(image.can_discard());
    // Grains 1 and 2 are whole inside the range; the partial edges keep their data.
    image.discard(1000, 3 * 65536).unwrap();
    let mut r = vmdk::ImageReader::new(&image);
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all.len(), 1 << 20);
    assert!(all[..65536].iter().all(|&b| b == 7));
    assert!(all[65536..3 * 65536].iter().all(|&b| b == 0));
    assert!(all[3 * 65536..].iter().all(|&b| b == 7));
    let map = image.map(0, 1 << 20).unwrap();
    assert!(map
        .iter()
        .any(|e| matches!(e.target, vmdk::MapTarget::Unallocated) && e.start == 65536));
    r.seek(SeekFrom::Start(65530)).unwrap();
    let mut b = [0u8; 12];
    r.read_exact(&mut b).unwrap();
    assert_eq!(b, [7, 7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 0]);
    // Map entries hold the extent files open (and locked) like the image itself.
    drop((map, image));
    qemu_img(&["check", img.to_str().unwrap()]);
}

#[test]
fn write_zeroes_no_hole_keeps_space_allocated() {
    let dir = Dir::new();
    let img = dir.path("d.vmdk");
    create(&img, 1 << 20, &CreateOptions::default()).unwrap();
    let image = OpenOptions::new().writable(true).open(&img).unwrap();
    // May unmap: fresh grains stay unallocated (they read as zeros anyway).
    image.write_zeroes(0, 65536, true).unwrap();
    // No hole: the zeros are stored.
    image.write_zeroes(65536, 65536, false).unwrap();
    let map = image.map(0, 2 * 65536).unwrap();
    assert!(matches!(map[0].target, vmdk::MapTarget::Unallocated));
    assert_eq!(map[0].length, 65536);
    assert!(matches!(map[1].target, vmdk::MapTarget::Data { .. }));
    let mut buf = vec![1u8; 2 * 65536];
    image.read_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn chain_flattened_into_every_subformat() {
    let dir = Dir::new();
    let base = dir.path("base.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "4M"]);
    qemu_io(&base, &["write -P 0x31 0 1M", "write -P 0x32 3M 100k"]);
    let mid = dir.path("mid.vmdk");
    qemu_overlay(&mid, "base.vmdk", "", "");
    qemu_io(&mid, &["write -P 0x33 500k 70k", "write -z 3M 64k"]);
    let top = dir.path("top.vmdk");
    qemu_overlay(&top, "mid.vmdk", "", "");
    qemu_io(&top, &["write -P 0x34 2M 4k"]);
    let expected = qemu_raw(&top);
    let src = Image::open(&top).unwrap();
    for sub in [
        Subformat::MonolithicSparse,
        Subformat::StreamOptimized,
        Subformat::TwoGbMaxExtentFlat,
    ] {
        let out = dir.path(&format!("flat-{}.vmdk", sub.create_type()));
        let opts = CreateOptions {
            subformat: sub,
            ..Default::default()
        };
        vmdk::ops::convert::convert_to_vmdk(&src, &out, &opts, &Default::default(), &|_, _| {})
            .unwrap();
        assert_same(sub.create_type(), &qemu_raw(&out), &expected);
        assert!(Image::open(&out).unwrap().backing().is_none());
        qemu_img(&["check", out.to_str().unwrap()]);
    }
}
