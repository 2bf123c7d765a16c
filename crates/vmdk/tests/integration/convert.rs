//! convert and compare against qemu-img as the oracle: raw output byte-identical to
//! `qemu-img convert -O raw` and sparse; compare finds the exact first difference; images we
//! write pass `qemu-img check` and `qemu-img compare`, and our streamOptimized output is no
//! larger than qemu-img's.

use crate::common::IN_PLACE_SUBFORMATS;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vmdk_test_support::qemu::SUBFORMATS;
use vmdk_test_support::qemu::{qemu_overlay, qemu_to_vmdk};

use crate::common::{self, assert_same, qemu_img, qemu_io, qemu_raw, Dir};
use vmdk::ops::convert::{
    compare, compare_with, convert_to_raw, convert_to_vmdk, CompareResult, ConvertOptions,
};
use vmdk::{CreateOptions, OpenOptions, Subformat};

const MIB: u64 = 1 << 20;

fn none(_: u64, _: u64) {}

/// A few-MiB raw disk with random, repeated, explicitly-zero and hole regions, at offsets
/// that cross grain boundaries, and a size that is not a multiple of the grain size.
fn make_source(path: &Path, size: u64) -> Vec<u8> {
    let mut rng = common::Rng(0x5eed_1234);
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut disk = vec![0u8; size as usize];
    let mut put = |off: u64, bytes: &[u8]| {
        f.write_all_at(bytes, off).unwrap();
        disk[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    };
    // Random (incompressible) data across the first grain boundary.
    let mut random = vec![0u8; 100_000];
    for b in random.iter_mut() {
        *b = rng.next() as u8;
    }
    put(1000, &random);
    // Repeated text (compressible), odd offset and length.
    let text: Vec<u8> = b"the quick brown fox jumps over the lazy dog "
        .iter()
        .copied()
        .cycle()
        .take(777_777)
        .collect();
    put(MIB + 4321, &text);
    // Allocated zeros (must come out as holes / unallocated grains).
    put(3 * MIB, &vec![0u8; 300_000]);
    // A 4 KiB block of data surrounded by allocated zeros.
    let mut z = vec![0u8; 64 * 1024];
    z[8192..12288].fill(0xa5);
    put(3 * MIB + 400_000, &z);
    // Data touching the very end.
    let tail = vec![0x5au8; 2000];
    put(size - 2000, &tail);
    disk
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Bytes in all-zero-free 4 KiB blocks of `data`.
fn nonzero_4k(data: &[u8]) -> u64 {
    data.chunks(4096)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
        * 4096
}

fn raw_via_ours(src: &Path, format: Option<&str>, dst: &Path, threads: usize) -> Vec<u8> {
    let format = format.map(|f| f.parse::<vmdk::ImageFormat>().unwrap());
    let s = vmdk::open_disk(src, format, &OpenOptions::new()).unwrap();
    let opts = ConvertOptions {
        threads,
        ..Default::default()
    };
    let last = AtomicU64::new(0);
    let progress = |d: u64, t: u64| {
        assert!(d <= t);
        last.store(d, Ordering::Relaxed);
    };
    convert_to_raw(&*s, dst, &opts, &progress).unwrap();
    assert_eq!(last.load(Ordering::Relaxed), s.size());
    std::fs::read(dst).unwrap()
}

/// What `qemu-img convert -O raw` makes of `image` (probed by qemu-img itself).
fn oracle(image: &Path) -> Vec<u8> {
    let fmt = qemu_img(&["info", "--output=json", image.to_str().unwrap()]);
    let fmt = if fmt.contains("\"format\": \"vmdk\"") {
        "vmdk"
    } else {
        "raw"
    };
    common::qemu_raw_as(image, fmt, false)
}

fn check_raw_output(what: &str, image: &Path, format: Option<&str>, dir: &Dir) {
    let oracle = if format == Some("vmdk") {
        qemu_raw(image)
    } else {
        oracle(image)
    };
    for threads in [1, 3] {
        let out = dir.path(&format!("{what}.{threads}.out.raw"));
        let ours = raw_via_ours(image, format, &out, threads);
        assert_same(what, &ours, &oracle);
        // Sparse: nothing but the non-zero 4 KiB blocks is allocated (plus file-system slack).
        let alloc = allocated(&out);
        let need = nonzero_4k(&ours);
        assert!(
            alloc <= need + 64 * 1024,
            "{what}: raw output allocates {alloc} bytes, only {need} are non-zero"
        );
    }
}

fn qemu_convert(src: &Path, dst: &Path, subformat: &str) {
    qemu_to_vmdk(src, dst, "raw", &format!("subformat={subformat}"));
}

const SIZE: u64 = 5 * MIB + 3 * 512;

#[test]
fn qemu_images_to_raw_match_qemu() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    make_source(&src, SIZE);
    check_raw_output("raw source", &src, Some("raw"), &dir);
    check_raw_output("probed raw source", &src, None, &dir);
    for sub in SUBFORMATS {
        let img = dir.path(&format!("{sub}.vmdk"));
        qemu_convert(&src, &img, sub);
        check_raw_output(sub, &img, None, &dir);
        check_raw_output(sub, &img, Some("vmdk"), &dir);
    }
}

#[test]
fn chain_to_raw_matches_qemu() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    make_source(&src, SIZE);
    let base = dir.path("base.vmdk");
    qemu_convert(&src, &base, "monolithicSparse");
    let mid = dir.path("mid.vmdk");
    qemu_overlay(&mid, "base.vmdk", "", "");
    qemu_io(
        &mid,
        &[
            "write -P 0x11 4096 8k",
            "write -z 1M 64k",
            "write -P 0x22 2M 100k",
        ],
    );
    let top = dir.path("top.vmdk");
    qemu_overlay(&top, "mid.vmdk", "", "");
    qemu_io(
        &top,
        &["write -P 0x33 65000 70000", "write -P 0x44 5M 1536"],
    );
    check_raw_output("chain", &top, None, &dir);
}

#[test]
fn our_stream_output_passes_qemu_and_is_small() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    let disk = make_source(&src, SIZE);
    let ours = dir.path("ours.vmdk");
    let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
    let create = CreateOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    convert_to_vmdk(&*s, &ours, &create, &ConvertOptions::default(), &none).unwrap();
    qemu_img(&["check", ours.to_str().unwrap()]);
    let out = qemu_img(&["compare", src.to_str().unwrap(), ours.to_str().unwrap()]);
    assert!(out.contains("identical"), "{out}");
    // Our reader reads it back (through the footer).
    assert_same("stream read back", &common::our_raw(&ours), &disk);
    let theirs = dir.path("theirs.vmdk");
    qemu_convert(&src, &theirs, "streamOptimized");
    let (a, b) = (
        std::fs::metadata(&ours).unwrap().len(),
        std::fs::metadata(&theirs).unwrap().len(),
    );
    assert!(a <= b, "our stream image is {a} bytes, qemu-img's {b}");

    // VMware's layout: version 3, NL|COMPRESSED|MARKERS, GD at end, footer + EOS.
    let bytes = std::fs::read(&ours).unwrap();
    assert_eq!(&bytes[0..4], b"KDMV");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        0x30001
    );
    assert_eq!(
        u64::from_le_bytes(bytes[56..64].try_into().unwrap()),
        u64::MAX
    );
    let n = bytes.len();
    assert_eq!(
        u32::from_le_bytes(bytes[n - 1536 + 12..n - 1536 + 16].try_into().unwrap()),
        3
    );
    assert_eq!(&bytes[n - 1024..n - 1020], b"KDMV");
    assert!(bytes[n - 512..].iter().all(|&b| b == 0));
    let desc = String::from_utf8_lossy(&bytes[512..512 * 21]);
    assert!(desc.contains("createType=\"streamOptimized\""), "{desc}");
    assert!(desc.contains("ddb.virtualHWVersion"), "{desc}");

    // The grain data does not depend on the thread count (descriptor CIDs aside).
    let other = dir.path("ours1.vmdk");
    let opts = ConvertOptions {
        threads: 1,
        ..Default::default()
    };
    convert_to_vmdk(&*s, &other, &create, &opts, &none).unwrap();
    let b1 = std::fs::read(&other).unwrap();
    assert_eq!(b1.len(), bytes.len());
    assert!(
        b1[65536..] == bytes[65536..],
        "output differs with 1 thread"
    );

    // And converts back to raw like qemu reads it.
    check_raw_output("our stream", &ours, None, &dir);
}

#[test]
fn stream_output_of_sparse_and_empty_disks() {
    let dir = Dir::new();
    // Empty disk: no grains at all.
    let src = dir.path("empty.raw");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let out = dir.path("empty.vmdk");
    let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
    let create = CreateOptions {
        subformat: Subformat::StreamOptimized,
        ..Default::default()
    };
    convert_to_vmdk(&*s, &out, &create, &ConvertOptions::default(), &none).unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    assert!(
        qemu_img(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]).contains("identical")
    );
    // Data only in the second and fourth grain tables' spans (32 MiB each) and the last
    // grain of the disk, which is partial.
    let size = 130 * MIB + 4096 + 512;
    let src = dir.path("spread.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&[7u8; 5000], 40 * MIB - 100).unwrap();
    f.write_all_at(&[9u8; 70000], 100 * MIB).unwrap();
    f.write_all_at(&[3u8; 1000], size - 1000).unwrap();
    drop(f);
    let out = dir.path("spread.vmdk");
    let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
    convert_to_vmdk(&*s, &out, &create, &ConvertOptions::default(), &none).unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    assert!(
        qemu_img(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]).contains("identical")
    );
    assert_same(
        "spread",
        &common::our_raw(&out),
        &std::fs::read(&src).unwrap(),
    );
}

#[test]
fn raw_to_every_subformat_passes_qemu() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    let disk = make_source(&src, SIZE);
    for sub in IN_PLACE_SUBFORMATS
        .into_iter()
        .chain([Subformat::StreamOptimized])
    {
        let name = sub.create_type();
        let out = dir.path(&format!("{name}.vmdk"));
        let s = vmdk::open_disk(&src, Some(vmdk::ImageFormat::Raw), &OpenOptions::new()).unwrap();
        let create = CreateOptions {
            subformat: sub,
            ..Default::default()
        };
        convert_to_vmdk(&*s, &out, &create, &ConvertOptions::default(), &none)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        qemu_img(&["check", out.to_str().unwrap()]);
        let o = qemu_img(&["compare", src.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(o.contains("identical"), "{name}: {o}");
        assert_same(name, &common::our_raw(&out), &disk);
        if sub == Subformat::MonolithicSparse {
            // Zero grains stay unallocated: no bigger than what qemu-img makes.
            let theirs = dir.path("q.vmdk");
            qemu_convert(&src, &theirs, "monolithicSparse");
            let (a, b) = (
                std::fs::metadata(&out).unwrap().len(),
                std::fs::metadata(&theirs).unwrap().len(),
            );
            assert!(a <= b, "monolithicSparse: ours {a} bytes, qemu-img's {b}");
        }
    }
    // A VMDK source with a chain converts to another subformat too.
    let base = dir.path("base.vmdk");
    qemu_convert(&src, &base, "monolithicSparse");
    let top = dir.path("top.vmdk");
    qemu_overlay(&top, "base.vmdk", "", "");
    qemu_io(&top, &["write -P 0x77 12345 100000", "write -z 1M 1M"]);
    let out = dir.path("flattened.vmdk");
    let s = vmdk::open_disk(&top, None, &OpenOptions::new()).unwrap();
    convert_to_vmdk(
        &*s,
        &out,
        &CreateOptions::default(),
        &ConvertOptions::default(),
        &none,
    )
    .unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    let o = qemu_img(&["compare", top.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.contains("identical"), "{o}");
}

#[test]
fn compression_flag_like_qemu() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    let disk = make_source(&src, SIZE);
    let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
    let opts = ConvertOptions {
        compress: true,
        ..Default::default()
    };
    // Flat: refused (qemu-img: "invalid cluster size").
    let flat = CreateOptions {
        subformat: Subformat::MonolithicFlat,
        ..Default::default()
    };
    let e = convert_to_vmdk(&*s, &dir.path("f.vmdk"), &flat, &opts, &none).unwrap_err();
    assert!(e.to_string().contains("streamOptimized"), "{e}");
    // Hosted sparse: accepted, written uncompressed, as qemu-img does.
    let out = dir.path("c.vmdk");
    convert_to_vmdk(&*s, &out, &CreateOptions::default(), &opts, &none).unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    assert_same("-c monolithicSparse", &qemu_raw(&out), &disk);
}

fn cmp(a: &Path, b: &Path) -> CompareResult {
    let a = vmdk::open_disk(a, None, &OpenOptions::new()).unwrap();
    let b = vmdk::open_disk(b, None, &OpenOptions::new()).unwrap();
    let r = compare(&*a, &*b, &none).unwrap();
    for threads in [1, 3] {
        assert_eq!(compare_with(&*a, &*b, threads, &none).unwrap(), r);
    }
    r
}

fn copy_with(dir: &Dir, name: &str, disk: &[u8], edits: &[(u64, u8)]) -> PathBuf {
    let mut d = disk.to_vec();
    for &(off, v) in edits {
        if off as usize >= d.len() {
            d.resize(off as usize + 1, 0);
        }
        d[off as usize] = v;
    }
    let p = dir.path(name);
    write_file(&p, &d);
    p
}

#[test]
fn compare_finds_exact_first_difference() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    let disk = make_source(&src, SIZE);
    let sparse = dir.path("sparse.vmdk");
    qemu_convert(&src, &sparse, "monolithicSparse");
    let stream = dir.path("stream.vmdk");
    qemu_convert(&src, &stream, "streamOptimized");

    assert_eq!(cmp(&src, &sparse), CompareResult::Identical);
    assert_eq!(cmp(&sparse, &stream), CompareResult::Identical);
    assert_eq!(cmp(&stream, &src), CompareResult::Identical);

    // A changed byte inside data, at an odd offset.
    let off = MIB + 4321 + 65536 * 3 + 17;
    let flip = disk[off as usize] ^ 0x40;
    let b = copy_with(&dir, "b1.raw", &disk, &[(off, flip), (off + 5000, 1)]);
    assert_eq!(cmp(&src, &b), CompareResult::DiffersAt(off));
    assert_eq!(cmp(&b, &stream), CompareResult::DiffersAt(off));
    // Data where the other has a hole / zero grain.
    let off = 2 * MIB + 999_999;
    let b = copy_with(&dir, "b2.raw", &disk, &[(off, 1)]);
    assert_eq!(cmp(&sparse, &b), CompareResult::DiffersAt(off));
    assert_eq!(cmp(&b, &stream), CompareResult::DiffersAt(off));
    // Two differences in different work chunks: the first one wins.
    let b = copy_with(
        &dir,
        "b3.raw",
        &disk,
        &[(SIZE - 3, 0), (4 * MIB + 12_345, 9)],
    );
    assert_eq!(cmp(&stream, &b), CompareResult::DiffersAt(4 * MIB + 12_345));
    // Offset 0.
    let b = copy_with(&dir, "b4.raw", &disk, &[(0, 1)]);
    assert_eq!(cmp(&b, &sparse), CompareResult::DiffersAt(0));

    // A VMDK changed with qemu-io at an odd offset.
    let changed = dir.path("changed.vmdk");
    std::fs::copy(&sparse, &changed).unwrap();
    qemu_io(&changed, &["write -P 0xee 4097001 3"]);
    assert_eq!(cmp(&sparse, &changed), CompareResult::DiffersAt(4_097_001));

    // Sizes differ: extra zeros are fine, extra data is a difference.
    let longer = copy_with(&dir, "longer.raw", &disk, &[(SIZE + 8191, 0)]);
    assert_eq!(
        cmp(&sparse, &longer),
        CompareResult::SizeDiffers {
            a: SIZE,
            b: SIZE + 8192
        }
    );
    let longer = copy_with(
        &dir,
        "longer2.raw",
        &disk,
        &[(SIZE + 777, 3), (SIZE + 8191, 0)],
    );
    assert_eq!(cmp(&longer, &stream), CompareResult::DiffersAt(SIZE + 777));
    let shorter = copy_with(&dir, "shorter.raw", &disk[..(SIZE - 65536) as usize], &[]);
    // The shorter one lacks the tail data.
    assert_eq!(cmp(&shorter, &src), CompareResult::DiffersAt(SIZE - 2000));
}

#[test]
fn open_source_probes_content() {
    let dir = Dir::new();
    let src = dir.path("disk.vmdk"); // a raw file with a misleading name
    make_source(&src, SIZE);
    let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
    assert_eq!(s.size(), SIZE);
    let img = dir.path("image.raw"); // a VMDK with a misleading name
    qemu_convert(&src, &img, "monolithicSparse");
    let s = vmdk::open_disk(&img, None, &OpenOptions::new()).unwrap();
    assert_eq!(s.size(), SIZE.next_multiple_of(512));
    assert!(vmdk::open_disk(&img, Some(vmdk::ImageFormat::Vmdk), &OpenOptions::new()).is_ok());
    assert!(vmdk::open_disk(&src, Some(vmdk::ImageFormat::Vmdk), &OpenOptions::new()).is_err());
    assert!(vmdk::open_disk(&src, Some(vmdk::ImageFormat::Qcow2), &OpenOptions::new()).is_err());
}

#[test]
fn stream_writer_serial_api() {
    use vmdk::ops::stream_writer::StreamWriter;
    let dir = Dir::new();
    let size = 70 * MIB + 512;
    let out = dir.path("serial.vmdk");
    let mut w = StreamWriter::create(&out, size, &CreateOptions::default(), 6).unwrap();
    let gs = w.grain_size() as usize;
    let mut disk = vec![0u8; size as usize];
    for (g, seed) in [(0u64, 1u8), (1, 2), (600, 3), (1119, 4), (1120, 5)] {
        let start = g as usize * gs;
        let end = (start + gs).min(disk.len());
        common::pattern(&mut disk[start..end], seed);
        w.write_grain(g, &disk[start..end]).unwrap();
    }
    // Out of order and zero grains.
    assert!(w.write_grain(5, &vec![1u8; gs]).is_err());
    w.write_grain(1121, &vec![0u8; gs]).unwrap_or(());
    w.finish().unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    assert_same("serial", &qemu_raw(&out), &disk);
    assert_same("serial (ours)", &common::our_raw(&out), &disk);
}

#[test]
fn convert_onto_backing_file_copies_top_layer_only() {
    let dir = Dir::new();
    let src = dir.path("src.raw");
    make_source(&src, SIZE);
    let base = dir.path("base.vmdk");
    qemu_convert(&src, &base, "monolithicSparse");
    let top = dir.path("top.vmdk");
    qemu_overlay(&top, "base.vmdk", "", "");
    // Zeros over base data must survive as zeros in the new image.
    qemu_io(&top, &["write -P 0x61 70000 9000", "write -z 1M 128k"]);
    let out = dir.path("out.vmdk");
    let s = vmdk::open_disk(&top, None, &OpenOptions::new()).unwrap();
    let create = CreateOptions {
        backing_file: Some("base.vmdk".into()),
        ..Default::default()
    };
    convert_to_vmdk(&*s, &out, &create, &ConvertOptions::default(), &none).unwrap();
    qemu_img(&["check", out.to_str().unwrap()]);
    let o = qemu_img(&["compare", top.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.contains("identical"), "{o}");
    // Only the top layer's grains were written.
    let img = vmdk::Image::open(&out).unwrap();
    let own: u64 = img
        .map_layer(0, img.size())
        .unwrap()
        .iter()
        .filter(|e| !matches!(e.target, vmdk::MapTarget::Unallocated))
        .map(|e| e.length)
        .sum();
    assert!(
        own <= 4 * 65536 + 128 * 1024,
        "{own} bytes allocated in the new top"
    );
}

/// Many tasks, so pooled buffers are reused: grains scattered on and off at random, so the
/// stale bytes of an earlier task would show wherever a gap is not zeroed.
#[test]
fn scattered_grains_reuse_buffers_cleanly() {
    let dir = Dir::new();
    let size = 48 * MIB + 4096;
    let src = dir.path("scatter.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    let mut rng = common::Rng(77);
    let mut disk = vec![0u8; size as usize];
    let grains = size.div_ceil(65536);
    for g in 0..grains {
        if rng.below(3) == 0 {
            continue;
        }
        // Part of a grain only, sometimes, so zero 4 KiB blocks sit inside data grains.
        let start = g * 65536 + rng.below(4) * 16384;
        let len = (1 + rng.below(16384)).min(size - start);
        let off = start as usize;
        common::pattern(&mut disk[off..off + len as usize], (g % 251) as u8 + 1);
        f.write_all_at(&disk[off..off + len as usize], start)
            .unwrap();
    }
    drop(f);
    let stream = dir.path("scatter-stream.vmdk");
    qemu_convert(&src, &stream, "streamOptimized");
    let sparse = dir.path("scatter-sparse.vmdk");
    qemu_convert(&src, &sparse, "monolithicSparse");
    for (what, img) in [("stream", &stream), ("sparse", &sparse), ("raw", &src)] {
        for threads in [1, 2] {
            let out = dir.path(&format!("scatter-{what}-{threads}.raw"));
            let ours = raw_via_ours(img, None, &out, threads);
            assert_same(&format!("{what} -> raw, {threads} threads"), &ours, &disk);
        }
    }
    for sub in [Subformat::StreamOptimized, Subformat::MonolithicSparse] {
        for threads in [1, 2] {
            let out = dir.path(&format!("scatter-{}-{threads}.vmdk", sub.create_type()));
            let s = vmdk::open_disk(&stream, None, &OpenOptions::new()).unwrap();
            let create = CreateOptions {
                subformat: sub,
                ..Default::default()
            };
            let opts = ConvertOptions {
                threads,
                ..Default::default()
            };
            convert_to_vmdk(&*s, &out, &create, &opts, &none).unwrap();
            qemu_img(&["check", out.to_str().unwrap()]);
            assert_same(sub.create_type(), &qemu_raw(&out), &disk);
        }
    }
}

/// A raw source whose size is not a multiple of 512: outputs are rounded up to a sector
/// like qemu-img's, and the last (partial) grain must read back in full.
#[test]
fn odd_sized_raw_source() {
    let dir = Dir::new();
    let size = 1_000_001u64;
    let src = dir.path("odd.raw");
    let mut disk = vec![0u8; size as usize];
    common::pattern(&mut disk[..300_000], 9);
    common::pattern(&mut disk[(size - 40_000) as usize..], 3);
    write_file(&src, &disk);
    disk.resize(size.next_multiple_of(512) as usize, 0);
    let out = dir.path("odd.out.raw");
    assert_same("odd raw", &raw_via_ours(&src, None, &out, 0), &disk);
    for sub in [
        Subformat::StreamOptimized,
        Subformat::MonolithicSparse,
        Subformat::MonolithicFlat,
    ] {
        let out = dir.path(&format!("odd-{}.vmdk", sub.create_type()));
        let s = vmdk::open_disk(&src, None, &OpenOptions::new()).unwrap();
        let create = CreateOptions {
            subformat: sub,
            ..Default::default()
        };
        convert_to_vmdk(&*s, &out, &create, &ConvertOptions::default(), &none).unwrap();
        qemu_img(&["check", out.to_str().unwrap()]);
        assert_same(sub.create_type(), &qemu_raw(&out), &disk);
        assert_same(sub.create_type(), &common::our_raw(&out), &disk);
    }
}
