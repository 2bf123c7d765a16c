//! Every byte we read from qemu-made images equals what qemu reads (`qemu-img convert -O raw`,
//! or ranges of it for big sparse disks), and `Image::map` agrees with `qemu-img map`.

use crate::common::*;
use vmdk_test_support::qemu::{qemu_create_as, qemu_overlay, qemu_to_vmdk};

use std::path::{Path, PathBuf};
use vmdk::Image;

const GIB: u64 = 1 << 30;

fn is_sparse(sub: &str) -> bool {
    sub.contains("Sparse") || sub == "streamOptimized"
}

/// Create a `size` image of `sub` with extra `-o` options and scribble on it (stream images
/// are made by converting a scribbled raw file, the only way qemu writes them).
fn make(d: &Dir, sub: &str, extra: &str, size: &str) -> PathBuf {
    let img = d.path("disk.vmdk");
    let opts = if extra.is_empty() {
        format!("subformat={sub}")
    } else {
        format!("subformat={sub},{extra}")
    };
    if sub == "streamOptimized" {
        let raw = d.path("src.raw");
        qemu_img(&["create", "-f", "raw", raw.to_str().unwrap(), size]);
        qemu_io_raw(&raw);
        qemu_to_vmdk(&raw, &img, "", &opts);
    } else {
        qemu_create_as("vmdk", &img, size, &opts);
        scribble(&img);
        if extra.contains("zeroed_grain=on") {
            // Whole-grain zero writes become zeroed-grain GTEs; partial ones write zeros.
            qemu_io(
                &img,
                &[
                    "write -z 64k 64k",
                    "write -z 1088k 64k",
                    "write -z 2M 128k",
                    "write -z 3001k 2k",
                ],
            );
        }
    }
    img
}

fn check_subformat(sub: &str, extra: &str, size: &str) {
    let d = Dir::new();
    let img = make(&d, sub, extra, size);
    let what = format!("{sub} {extra}");
    assert_same(&what, &our_raw(&img), &qemu_raw(&img));
    let opened = Image::open(&img).unwrap();
    assert_eq!(opened.create_type(), sub, "{what}");
    if is_sparse(sub) {
        assert_eq!(our_map(&opened), qemu_map(&img), "{what}: map");
    }
}

fn qemu_io_raw(raw: &Path) {
    run(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 4k",
        "-c",
        "write -P 0x22 60k 8k",
        "-c",
        "write -P 0x33 1M 200k",
        "-c",
        "write -P 0x44 3000k 1k",
        raw.to_str().unwrap(),
    ]));
}

#[test]
fn monolithic_sparse() {
    check_subformat("monolithicSparse", "", "5M");
}

#[test]
fn monolithic_sparse_zeroed_grain() {
    let d = Dir::new();
    let img = make(&d, "monolithicSparse", "zeroed_grain=on", "5M");
    let raw = our_raw(&img);
    assert_same("zeroed grain", &raw, &qemu_raw(&img));
    // The zeroed zones read zeros although data was written there first.
    assert!(raw[1088 << 10..1152 << 10].iter().all(|&b| b == 0));
    let opened = Image::open(&img).unwrap();
    let map = our_map(&opened);
    assert_eq!(map, qemu_map(&img));
    assert!(
        map.iter().any(|e| e.present && e.zero && !e.data),
        "zeroed grains show in the map: {map:?}"
    );
}

#[test]
fn monolithic_flat() {
    check_subformat("monolithicFlat", "", "5M");
}

#[test]
fn two_gb_sparse() {
    check_subformat("twoGbMaxExtentSparse", "", "5M");
    check_subformat("twoGbMaxExtentSparse", "zeroed_grain=on", "5M");
}

#[test]
fn two_gb_flat() {
    check_subformat("twoGbMaxExtentFlat", "", "5M");
}

#[test]
fn stream_optimized() {
    check_subformat("streamOptimized", "", "5M");
    check_subformat("streamOptimized", "zeroed_grain=on", "5M");
}

#[test]
fn options_matrix() {
    for sub in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"] {
        for extra in [
            "compat6=on",
            "hwversion=4",
            "hwversion=6",
            "hwversion=21",
            "adapter_type=ide",
            "adapter_type=buslogic",
            "adapter_type=lsilogic",
            "adapter_type=legacyESX",
            "toolsversion=12345",
        ] {
            check_subformat(sub, extra, "3M");
        }
    }
    for extra in ["compat6=on", "hwversion=21,adapter_type=lsilogic"] {
        check_subformat("streamOptimized", extra, "5M");
    }
    for extra in [
        "compat6=on,zeroed_grain=on",
        "adapter_type=buslogic,zeroed_grain=on",
    ] {
        check_subformat("monolithicSparse", extra, "5M");
    }
}

#[test]
fn descriptor_fields_reflect_options() {
    let d = Dir::new();
    let p = d.path("a.vmdk");
    qemu_create_as("vmdk", &p, "1M", "adapter_type=lsilogic,hwversion=21");
    let img = Image::open(&p).unwrap();
    assert_eq!(img.descriptor().ddb("ddb.adapterType"), Some("lsilogic"));
    assert_eq!(img.descriptor().ddb("ddb.virtualHWVersion"), Some("21"));
    assert_eq!(img.size(), 1 << 20);
}

/// Odd sizes: the last grain (or flat extent) is partial.
#[test]
fn odd_sizes() {
    for sub in ["monolithicSparse", "monolithicFlat", "streamOptimized"] {
        check_subformat(sub, "", "3100k");
    }
}

/// Spot-check ranges of a big image against qemu without converting the whole disk.
fn compare_ranges(img_path: &Path, ranges: &[(u64, u64)]) {
    let img = Image::open(img_path).unwrap();
    for &(off, len) in ranges {
        let ours = our_range(&img, off, len);
        let theirs = qemu_raw_range(img_path, off, len);
        assert_same(&format!("range {off}+{len}"), &ours, &theirs);
    }
}

/// twoGbMaxExtent images bigger than one extent, with data across the 2 GiB and 4 GiB extent
/// boundaries (files stay sparse: qemu truncates flat extents up).
#[test]
fn two_gb_extent_boundaries() {
    for sub in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let d = Dir::new();
        let p = d.path("big.vmdk");
        qemu_create_as("vmdk", &p, "5G", &format!("subformat={sub}"));
        let b2 = 2 * GIB;
        let b4 = 4 * GIB;
        qemu_io(
            &p,
            &[
                &format!("write -P 0x5a {} 98304", b2 - 32768),
                &format!("write -P 0x5b {} 1536", b2 - 512),
                &format!("write -P 0x6a {} 131072", b4 - 65536 - 512),
                &format!("write -P 0x7a {} 65536", 5 * GIB - 65536),
                "write -P 0x11 0 4096",
            ],
        );
        let img = Image::open(&p).unwrap();
        assert_eq!(img.size(), 5 * GIB);
        assert_eq!(img.extents().len(), 3, "{sub}");
        compare_ranges(
            &p,
            &[
                (0, 65536),
                (b2 - 131072, 262144),
                (b4 - 196608, 393216),
                (5 * GIB - 131072, 131072),
                (3 * GIB + 12288, 54272),
            ],
        );
        // One read spanning the boundary, in one call.
        let got = our_range(&img, b2 - 1024, 2048);
        assert!(got[..512].iter().all(|&b| b == 0x5a));
        assert!(got[512..2048].iter().all(|&b| b == 0x5b));
        if sub.contains("Sparse") {
            assert_eq!(our_map(&img), qemu_map(&p), "{sub}: map");
        }
    }
}

/// A 4 TiB monolithicSparse with writes near the start, the middle and the end: qemu-io
/// confirms the patterns, we read the same, zeros at sampled offsets elsewhere, and the
/// map agrees with qemu's over windows.
#[test]
fn multi_tib_sparse() {
    let d = Dir::new();
    let p = d.path("huge.vmdk");
    let size = 4u64 << 40;
    qemu_img(&["create", "-f", "vmdk", p.to_str().unwrap(), "4T"]);
    let writes = [
        (0u64, 65536u64, 0x55u8),
        (2u64 << 40, 65536, 0x56),
        ((2u64 << 40) + 65536 + 123 * 512, 1024, 0x57),
        (size - 65536, 65536, 0x58),
        ((3u64 << 40) - 512, 1024, 0x59),
    ];
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p:#x} {o} {l}"))
        .collect();
    qemu_io(&p, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
    let reads: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("read -P {p:#x} {o} {l}"))
        .collect();
    qemu_io(&p, &reads.iter().map(String::as_str).collect::<Vec<_>>());
    let img = Image::open(&p).unwrap();
    assert_eq!(img.size(), size);
    for &(o, l, pat) in &writes {
        let got = our_range(&img, o, l);
        assert!(got.iter().all(|&b| b == pat), "pattern {pat:#x} at {o}");
    }
    let mut rng = Rng(42);
    for _ in 0..64 {
        let o = rng.below(size / 512 - 16) * 512;
        if writes
            .iter()
            .any(|&(wo, wl, _)| o < wo + wl && wo < o + 8192)
        {
            continue;
        }
        assert!(
            our_range(&img, o, 8192).iter().all(|&b| b == 0),
            "zeros at {o}"
        );
    }
    compare_ranges(&p, &[(2u64 << 40, 131072), ((3u64 << 40) - 65536, 131072)]);
    for (start, len) in [
        (0u64, GIB),
        ((2u64 << 40) - GIB / 2, GIB),
        (size - GIB, GIB),
        ((3u64 << 40) - GIB / 2, GIB),
    ] {
        let theirs = qemu_map_args(&[
            &format!("--start-offset={start}"),
            &format!("--max-length={len}"),
            p.to_str().unwrap(),
        ]);
        let ours = merge_map(img.map(start, len).unwrap().iter().map(to_qmap).collect());
        assert_eq!(ours, theirs, "map window {start}+{len}");
    }
    // The whole-disk map is cheap and says where the data is.
    let all = img.map(0, size).unwrap();
    let data: u64 = all
        .iter()
        .filter(|e| e.target.is_data())
        .map(|e| e.length)
        .sum();
    // Six grains: the write at 3 TiB - 512 straddles two.
    assert_eq!(data, 6 * 65536, "allocated grains");
}

fn create_child(parent: &Path, child: &Path, extra: &str) {
    let mut args = vec![
        "create",
        "-f",
        "vmdk",
        "-b",
        parent.file_name().unwrap().to_str().unwrap(),
        "-F",
        "vmdk",
    ];
    if !extra.is_empty() {
        args.extend(["-o", extra]);
    }
    args.push(child.to_str().unwrap());
    qemu_img(&args);
}

#[test]
fn backing_chain_two_levels() {
    let d = Dir::new();
    let base = d.path("base.vmdk");
    let child = d.path("child.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "4M"]);
    qemu_io(
        &base,
        &[
            "write -P 0xb0 0 1M",
            "write -P 0xb1 2M 1M",
            "write -P 0xb2 4000k 96k",
        ],
    );
    create_child(&base, &child, "");
    qemu_io(
        &child,
        &[
            "write -P 0xc0 512k 1M",
            "write -P 0xc1 2100k 3k",
            "write -P 0xc2 3M 64k",
        ],
    );
    let ours = our_raw(&child);
    assert_same("2-level", &ours, &qemu_raw(&child));
    assert!(ours[0..512 << 10].iter().all(|&b| b == 0xb0));
    let img = Image::open(&child).unwrap();
    assert!(img.backing().is_some());
    assert_eq!(our_map(&img), qemu_map(&child), "2-level map");
    // map_layer shows only the child's own grains.
    let layer = img.map_layer(0, img.size()).unwrap();
    assert!(layer.iter().all(|e| e.depth == 0));
}

#[test]
fn backing_chain_three_levels_with_zeroed_grains() {
    let d = Dir::new();
    let a = d.path("a.vmdk");
    let b = d.path("b.vmdk");
    let c = d.path("c.vmdk");
    qemu_img(&["create", "-f", "vmdk", a.to_str().unwrap(), "6M"]);
    qemu_io(&a, &["write -P 0xa0 0 6M"]);
    create_child(&a, &b, "zeroed_grain=on");
    qemu_io(
        &b,
        &[
            "write -P 0xb0 1M 1M",
            "write -z 3M 256k", // zeroed grains over the base's data
            "write -P 0xb1 5M 4k",
        ],
    );
    create_child(&b, &c, "zeroed_grain=on");
    qemu_io(
        &c,
        &[
            "write -P 0xc0 1536k 1M", // over b's data and over a's
            "write -z 1M 128k",       // zeros over b's data
            "write -z 5M 64k",        // zeros over b's small write
            "write -P 0xc1 3M 4k",    // data inside b's zeroed zone
        ],
    );
    let ours = our_raw(&c);
    assert_same("3-level", &ours, &qemu_raw(&c));
    // Zeroed grains hide the parents' data.
    assert!(ours[1 << 20..(1 << 20) + (128 << 10)]
        .iter()
        .all(|&b| b == 0));
    assert!(ours[(3 << 20) + 65536..(3 << 20) + (256 << 10)]
        .iter()
        .all(|&b| b == 0));
    assert!(ours[5 << 20..(5 << 20) + 65536].iter().all(|&b| b == 0));
    assert!(ours[4 << 20..(4 << 20) + 4096].iter().all(|&b| b == 0xa0));
    let img = Image::open(&c).unwrap();
    assert_eq!(our_map(&img), qemu_map(&c), "3-level map");
    let depths: std::collections::BTreeSet<u32> = img
        .map(0, img.size())
        .unwrap()
        .iter()
        .map(|e| e.depth)
        .collect();
    assert_eq!(depths.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
    // Each layer on its own also matches qemu.
    assert_same("middle layer", &our_raw(&b), &qemu_raw(&b));
}

/// A child bigger than its parent: the part past the parent's end reads as zeros.
#[test]
fn child_larger_than_parent() {
    let d = Dir::new();
    let base = d.path("base.vmdk");
    let child = d.path("child.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "1M"]);
    qemu_io(&base, &["write -P 0x10 0 1M"]);
    qemu_overlay(&child, "base.vmdk", "", "3M");
    qemu_io(&child, &["write -P 0x20 2M 4k"]);
    assert_same("larger child", &our_raw(&child), &qemu_raw(&child));
}

/// A chain whose base is flat and whose middle is a stream image.
#[test]
fn chain_over_flat_and_stream() {
    let d = Dir::new();
    let base = d.path("base.vmdk");
    qemu_create_as("vmdk", &base, "3M", "subformat=monolithicFlat");
    qemu_io(&base, &["write -P 0x31 0 3M"]);
    let child = d.path("child.vmdk");
    create_child(&base, &child, "subformat=twoGbMaxExtentSparse");
    qemu_io(&child, &["write -P 0x32 1M 100k"]);
    assert_same("flat base", &our_raw(&child), &qemu_raw(&child));
    let img = Image::open(&child).unwrap();
    let layer = img.map_layer(0, img.size()).unwrap();
    assert!(layer.iter().any(|e| e.target.is_data()));
}

/// Differential: random qemu-io write sequences (patterns and zero writes, unaligned, across
/// grains and table boundaries) on random subformats, odd sizes and 1-2 level chains; every
/// byte and the map must match qemu.
#[test]
fn random_write_sequences() {
    let subs = [
        ("monolithicSparse", ""),
        ("monolithicSparse", "zeroed_grain=on"),
        ("twoGbMaxExtentSparse", "zeroed_grain=on"),
        ("monolithicFlat", ""),
        ("twoGbMaxExtentFlat", ""),
    ];
    let seeds: u64 = std::env::var("RANDOM_WRITE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14);
    for seed in 0..seeds {
        let mut rng = Rng(seed * 0x1234_5678 + 99);
        let d = Dir::new();
        let (sub, extra) = subs[rng.below(subs.len() as u64) as usize];
        let sectors = 2048 + rng.below(12 * 2048);
        let size = sectors * 512;
        let chain = sub.contains("Sparse") && rng.below(2) == 0;
        let base = d.path("base.vmdk");
        let opts = if extra.is_empty() {
            format!("subformat={sub}")
        } else {
            format!("subformat={sub},{extra}")
        };
        qemu_create_as("vmdk", &base, &size.to_string(), &opts);
        let mut random_writes = |layer: &Path| {
            let mut cmds = Vec::new();
            for _ in 0..12 {
                let off = rng.below(sectors) * 512;
                let max = (size - off).min(300 * 1024) / 512;
                let len = (1 + rng.below(max.max(1))) * 512;
                let len = len.min(size - off);
                if rng.below(4) == 0 {
                    cmds.push(format!("write -z {off} {len}"));
                } else {
                    cmds.push(format!("write -P {} {off} {len}", 1 + rng.below(250)));
                }
            }
            qemu_io(layer, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
        };
        // Each layer is written before its child is made (a write changes the CID).
        random_writes(&base);
        let mut layers = vec![base.clone()];
        if chain {
            let child = d.path("child.vmdk");
            create_child(&base, &child, extra);
            random_writes(&child);
            layers.push(child);
        }
        let top = layers.last().unwrap();
        let what = format!("seed {seed}: {sub} {extra} size {size} chain {chain}");
        assert_same(&what, &our_raw(top), &qemu_raw(top));
        if sub.contains("Sparse") {
            let img = Image::open(top).unwrap();
            assert_eq!(our_map(&img), qemu_map(top), "{what}: map");
        }
    }
}

/// Differential, stream images: random raw contents converted by qemu (partial last grains
/// included), sometimes with a sparse child on top (a compressed parent under a chain).
#[test]
fn random_stream_images() {
    for seed in 0..6u64 {
        let mut rng = Rng(seed * 0x9e37 + 5);
        let d = Dir::new();
        let size = (2048 + rng.below(8 * 2048)) * 512;
        let raw = d.path("src.raw");
        qemu_img(&[
            "create",
            "-f",
            "raw",
            raw.to_str().unwrap(),
            &size.to_string(),
        ]);
        let mut cmd = std::process::Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for _ in 0..10 {
            let off = rng.below(size / 512) * 512;
            let len = (1 + rng.below(400)) * 512;
            let len = len.min(size - off);
            cmd.arg("-c")
                .arg(format!("write -P {} {off} {len}", 1 + rng.below(250)));
        }
        cmd.arg(&raw);
        run(&mut cmd);
        let base = d.path("base.vmdk");
        qemu_to_vmdk(&raw, &base, "", "subformat=streamOptimized");
        let mut top = base.clone();
        if seed % 2 == 1 {
            let child = d.path("child.vmdk");
            create_child(&base, &child, "zeroed_grain=on");
            qemu_io(
                &child,
                &[
                    &format!("write -P 0xee {} 70000", size / 3 / 512 * 512),
                    &format!("write -z {} 131072", (size / 2) / 65536 * 65536),
                ],
            );
            top = child;
        }
        let what = format!("stream seed {seed} size {size}");
        let ours = our_raw(&top);
        assert_same(&what, &ours, &qemu_raw(&top));
        if top == base {
            assert_same(&what, &ours, &std::fs::read(&raw).unwrap());
        }
        let img = Image::open(&top).unwrap();
        assert_eq!(our_map(&img), qemu_map(&top), "{what}: map");
    }
}
