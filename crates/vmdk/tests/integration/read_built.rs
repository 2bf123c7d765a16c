//! Images qemu-img cannot create, built byte by byte from the documented layouts: COWD
//! (vmfsSparse), seSparse, VMware-layout streamOptimized, hand-written multi-extent
//! descriptors. Each is checked against the raw disk it was built from and, where qemu reads
//! the format, against `qemu-img convert -O raw`.

use crate::common::build::{self, Grain, SECTOR};
use crate::common::*;

use vmdk::{Image, MapTarget};

const MIB: usize = 1 << 20;

/// A disk of `len` bytes with patterned data in `ranges` (and zeros elsewhere).
fn disk_with(len: usize, ranges: &[(usize, usize, u8)]) -> Vec<u8> {
    let mut d = vec![0u8; len];
    for &(off, n, seed) in ranges {
        pattern(&mut d[off..off + n], seed);
    }
    d
}

fn check_all(what: &str, path: &std::path::Path, expected: &[u8], with_qemu: bool) {
    let ours = our_raw(path);
    assert_same(&format!("{what}: ours vs expected"), &ours, expected);
    if with_qemu {
        assert_same(&format!("{what}: ours vs qemu"), &ours, &qemu_raw(path));
    }
}

#[test]
fn cowd_vmfs_sparse_single() {
    for grain_sectors in [1u32, 8] {
        let d = Dir::new();
        // With 1-sector grains a table covers 2 MiB: data straddles the table boundary.
        let disk = disk_with(
            4 * MIB,
            &[
                (0, 4096, 1),
                (2 * MIB - 1000, 4000, 2),
                (3 * MIB + 512, 512, 3),
                (4 * MIB - 512, 512, 4),
            ],
        );
        let sectors = disk.len() / SECTOR;
        build::write(
            d.0.path(),
            "x-delta.vmdk",
            &build::cowd(&disk, grain_sectors, None, &build::nonzero),
        );
        let desc = build::descriptor(
            0x1234abcd,
            0xffffffff,
            "vmfsSparse",
            None,
            &[format!("RW {sectors} VMFSSPARSE \"x-delta.vmdk\"")],
        );
        let p = build::write(d.0.path(), "x.vmdk", desc.as_bytes());
        check_all(&format!("cowd grain {grain_sectors}"), &p, &disk, true);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.size(), disk.len() as u64);
        assert_eq!(our_map(&img), qemu_map(&p), "cowd map");
        // The bare COWD file opens by itself too (descriptor synthesized).
        let bare = Image::open(d.path("x-delta.vmdk")).unwrap();
        assert_eq!(bare.size(), disk.len() as u64);
        assert_same("bare cowd", &our_raw(&d.path("x-delta.vmdk")), &disk);
    }
}

#[test]
fn cowd_child_of_vmfs_flat() {
    let d = Dir::new();
    let len = 3 * MIB;
    let parent = disk_with(len, &[(0, len, 0x40)]);
    let child = disk_with(len, &[(4096, 8192, 0x50), (MIB + 100 * 512, 3 * 512, 0x60)]);
    build::write(d.0.path(), "base-flat.vmdk", &parent);
    let sectors = len / SECTOR;
    let base_desc = build::descriptor(
        0x0badcafe,
        0xffffffff,
        "vmfs",
        None,
        &[format!("RW {sectors} VMFS \"base-flat.vmdk\"")],
    );
    build::write(d.0.path(), "base.vmdk", base_desc.as_bytes());
    // Grains of 8 sectors: a 3-sector write stores its whole grain, the rest of which reads
    // as the child's zeros (COW copied nothing: the builder stores the child's own bytes).
    let policy = |g: u64, bytes: &[u8]| build::nonzero(g, bytes);
    build::write(
        d.0.path(),
        "child-delta.vmdk",
        &build::cowd(&child, 8, Some("base.vmdk"), &policy),
    );
    let child_desc = build::descriptor(
        0x22222222,
        0x0badcafe,
        "vmfsSparse",
        Some("base.vmdk"),
        &[format!("RW {sectors} VMFSSPARSE \"child-delta.vmdk\"")],
    );
    let p = build::write(d.0.path(), "child.vmdk", child_desc.as_bytes());
    let grain = 8 * SECTOR;
    let mut expected = parent.clone();
    for g in 0..len / grain {
        let c = &child[g * grain..(g + 1) * grain];
        if c.iter().any(|&b| b != 0) {
            expected[g * grain..(g + 1) * grain].copy_from_slice(c);
        }
    }
    check_all("cowd child of vmfs", &p, &expected, true);
    let img = Image::open(&p).unwrap();
    assert!(img.backing().is_some());
    // The flat parent is fully written (no holes), so qemu reports it as plain data too.
    assert_eq!(our_map(&img), qemu_map(&p), "cowd chain map");
    // Depth: child's grains at 0, the rest from the flat parent at depth 1.
    let map = img.map(0, img.size()).unwrap();
    assert!(map.iter().any(|e| e.depth == 0 && e.target.is_data()));
    assert!(map.iter().any(|e| e.depth == 1 && e.target.is_data()));
    assert!(map.iter().all(|e| e.target.is_data()));
}

fn se_policy(g: u64, bytes: &[u8]) -> Grain {
    // Grains 100..104 are explicit zero grains, 200..202 "unmapped" (both hide the parent);
    // everything else non-zero is stored, zero grains left unallocated (parent shows).
    match g {
        100..=103 => Grain::Zero,
        200..=201 => Grain::Unmapped,
        _ => build::nonzero(g, bytes),
    }
}

fn build_sesparse_chain(d: &Dir) -> (std::path::PathBuf, Vec<u8>) {
    let len = 40 * MIB; // three grain tables of 16 MiB, the middle one absent
    let parent = disk_with(len, &[(0, 2 * MIB, 0x70), (30 * MIB, 2 * MIB, 0x71)]);
    let child = disk_with(
        len,
        &[
            (0, 8192, 0x80),
            (16 * MIB - 4096, 4096, 0x81), // last grain of table 0
            (31 * MIB, 12288, 0x82),
            (40 * MIB - 4096, 4096, 0x83),
        ],
    );
    let f = std::fs::File::create(d.path("base-flat.vmdk")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&parent[..2 * MIB], 0).unwrap();
    f.write_all_at(&parent[30 * MIB..32 * MIB], 30 * MIB as u64)
        .unwrap();
    f.set_len(len as u64).unwrap();
    let sectors = len / SECTOR;
    build::write(
        d.0.path(),
        "base.vmdk",
        build::descriptor(
            0xaaaa0001,
            0xffffffff,
            "vmfs",
            None,
            &[format!("RW {sectors} VMFS \"base-flat.vmdk\"")],
        )
        .as_bytes(),
    );
    let (se, _) = build::sesparse(&child, &se_policy);
    build::write(d.0.path(), "x-sesparse.vmdk", &se);
    let p = build::write(
        d.0.path(),
        "x.vmdk",
        build::descriptor(
            0xbbbb0002,
            0xaaaa0001,
            "seSparse",
            Some("base.vmdk"),
            &[format!("RW {sectors} SESPARSE \"x-sesparse.vmdk\"")],
        )
        .as_bytes(),
    );
    let mut expected = parent.clone();
    for g in 0..(len / 4096) as u64 {
        let r = g as usize * 4096..(g as usize + 1) * 4096;
        match se_policy(g, &child[r.clone()]) {
            Grain::Skip => {}
            Grain::Zero | Grain::Unmapped => expected[r].fill(0),
            Grain::Data => expected[r.clone()].copy_from_slice(&child[r]),
        }
    }
    (p, expected)
}

#[test]
fn sesparse_child_of_flat() {
    let d = Dir::new();
    let (p, expected) = build_sesparse_chain(&d);
    // Zero grains over parent data must read zeros.
    assert!(expected[100 * 4096..104 * 4096].iter().all(|&b| b == 0));
    check_all("sesparse chain", &p, &expected, true);
    let img = Image::open(&p).unwrap();
    let map = img.map(0, img.size()).unwrap();
    let zero_at = |off: u64| {
        map.iter()
            .find(|e| e.start <= off && off < e.start + e.length)
            .unwrap()
            .clone()
    };
    assert!(matches!(zero_at(100 * 4096).target, MapTarget::Zero));
    assert_eq!(zero_at(100 * 4096).depth, 0);
    assert!(matches!(zero_at(200 * 4096).target, MapTarget::Zero));
    assert_eq!(zero_at(50 * 4096).depth, 1);
    // The bare seSparse file opens too (no parent then: unallocated reads zeros).
    let bare = Image::open(d.path("x-sesparse.vmdk")).unwrap();
    assert_eq!(bare.size(), img.size());
}

#[test]
fn vmware_stream_optimized() {
    for (unknown, len, grain_sectors) in [
        (false, 3 * MIB, 128u64),
        (true, 3 * MIB + 7 * 512, 128), // partial last grain
        (true, 40 * MIB, 128),          // several grain tables (32 MiB each)
        (false, MIB, 8),
    ] {
        let d = Dir::new();
        let sectors = len / SECTOR;
        let mut ranges = vec![(0, 100, 1u8), (65536 - 50, 200, 2), (len - 1024, 1024, 4)];
        if len > 2 * MIB {
            ranges.push((MIB + 4096, 70000, 3));
        }
        if len > 33 * MIB {
            ranges.push((32 * MIB - 10, 20, 5));
        }
        let mut disk = disk_with(len, &ranges);
        // A highly compressible grain and an incompressible one.
        let at = len / 2;
        disk[at..at + 65536].fill(0x77);
        let mut r = Rng(len as u64);
        for b in &mut disk[at + 65536..at + 131072] {
            *b = r.next() as u8;
        }
        let desc = format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"streamOptimized\"\n\n# Extent description\n\
             RDONLY {sectors} SPARSE \"generated-stream.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
             ddb.adapterType = \"lsilogic\"\nddb.virtualHWVersion = \"14\"\n\
             ddb.toolsInstallType = \"4\"\n"
        );
        let (file, layout) = build::vmware_stream(&disk, grain_sectors, &desc, unknown);
        let p = build::write(d.0.path(), "stream.vmdk", &file);
        let what = format!("vmware stream len {len} grain {grain_sectors} unknown {unknown}");
        check_all(&what, &p, &disk, true);
        qemu_img(&["check", "-f", "vmdk", p.to_str().unwrap()]);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.create_type(), "streamOptimized");
        assert_eq!(img.size(), len as u64);
        // The unknown marker and its payload are metadata, not leaked space.
        let report = vmdk::check(&img).unwrap();
        assert_eq!(report.exit_code(), 0, "{what}: check {report:?}");
        assert_eq!(our_map(&img), qemu_map(&p), "{what}: map");
        let map = img.map(0, img.size()).unwrap();
        assert!(map
            .iter()
            .any(|e| matches!(e.target, MapTarget::Compressed { .. })));
        // Every stored grain is mapped as compressed at its marker.
        for (lba, at) in &layout.grains {
            let e = map
                .iter()
                .find(|e| e.start == lba * 512)
                .unwrap_or_else(|| panic!("{what}: no map entry at lba {lba}"));
            match &e.target {
                MapTarget::Compressed(g) => assert_eq!(g.offset(), *at as u64),
                t => panic!("{what}: lba {lba}: {t:?}"),
            }
        }
        // Zero grains were left out and read back as holes.
        let e = map
            .iter()
            .find(|e| e.start <= 1536 * 512 && 1536 * 512 < e.start + e.length);
        if grain_sectors == 128 && len >= 3 * MIB {
            assert!(matches!(e.unwrap().target, MapTarget::Unallocated));
        }
    }
}

/// Everything a real descriptor may carry: CRLF, comments and blank lines before `version`,
/// no final newline, extra fields, unknown ddb keys, and FLAT (with offsets), SPARSE,
/// ZERO, RDONLY and NOACCESS extents.
#[test]
fn multi_extent_mixed_descriptor() {
    let d = Dir::new();
    // Extent 0: FLAT at sector offset 3 of a file that starts with junk.
    let e0 = disk_with(64 * SECTOR, &[(0, 64 * SECTOR, 0x10)]);
    let mut f0 = vec![0xeeu8; 3 * SECTOR];
    f0.extend_from_slice(&e0);
    f0.extend_from_slice(&[0xdd; 1024]); // trailing junk must not show
    build::write(d.0.path(), "a-flat.vmdk", &f0);
    // Extent 1: a qemu-made sparse extent (1 MiB).
    let s = d.path("s.vmdk");
    qemu_img(&["create", "-f", "vmdk", s.to_str().unwrap(), "1M"]);
    qemu_io(
        &s,
        &["write -P 0x21 4096 70000", "write -P 0x22 1040384 8192"],
    );
    let e1 = qemu_raw(&s);
    // Extent 2: ZERO, 100 sectors. Extent 3: RDONLY flat with an offset and extra fields.
    let e3 = disk_with(37 * SECTOR, &[(0, 37 * SECTOR, 0x30)]);
    let mut f3 = vec![0x99u8; 10 * SECTOR];
    f3.extend_from_slice(&e3);
    build::write(d.0.path(), "c-flat.vmdk", &f3);
    // Extent 4: NOACCESS (its file holds data we must not show). Extent 5: FLAT, shorter
    // file than the line claims (the rest reads as zeros, like qemu's file driver).
    build::write(d.0.path(), "secret-flat.vmdk", &[0x5e; 16 * SECTOR]);
    let e5 = disk_with(20 * SECTOR, &[(0, 12 * SECTOR, 0x50)]);
    build::write(d.0.path(), "e-flat.vmdk", &e5[..12 * SECTOR]);
    let text = "\r\n# made by hand\r\n\r\n   # indented comment\r\nversion=1\r\n\
        encoding=\"UTF-8\"\r\nCID=89abcdef\r\nparentCID=ffffffff\r\n\
        createType=\"monolithicFlat\"\r\n\r\n# Extent description\r\n\
        RW 64 FLAT \"a-flat.vmdk\" 3\r\n\
        RW 2048 SPARSE \"s.vmdk\"\r\n\
        RW 100 ZERO\r\n\
        RDONLY 37 FLAT \"c-flat.vmdk\" 10 someExtra moreExtra\r\n\
        NOACCESS 16 FLAT \"secret-flat.vmdk\" 0\r\n\
        RW 20 FLAT \"e-flat.vmdk\" 0\r\n\
        \r\n# The Disk Data Base\r\n#DDB\r\n\r\n\
        ddb.toolsInstallType = \"4\"\r\nddb.somethingNew = \"x y z\"\r\n\
        ddb.virtualHWVersion = \"21\"";
    let p = build::write(d.0.path(), "mixed.vmdk", text.as_bytes());
    let mut expected = e0.clone();
    expected.extend_from_slice(&e1);
    expected.extend_from_slice(&[0u8; 100 * SECTOR]);
    expected.extend_from_slice(&e3);
    expected.extend_from_slice(&[0u8; 16 * SECTOR]);
    expected.extend_from_slice(&e5);
    let img = Image::open(&p).unwrap();
    assert_eq!(
        img.size(),
        (64 + 2048 + 100 + 37 + 16 + 20) * 512,
        "ZERO, RDONLY and NOACCESS extents count in the size"
    );
    assert_eq!(img.extents().len(), 6);
    assert_eq!(img.descriptor().ddb("ddb.somethingNew"), Some("x y z"));
    assert_eq!(img.descriptor().extents[3].extra.len(), 2);
    assert_same("mixed descriptor", &our_raw(&p), &expected);
    // Reads that straddle each extent boundary.
    let mut b = 0u64;
    for e in img.extents() {
        b += e.length;
        if b < img.size() {
            let lo = b - 700;
            let got = our_range(&img, lo, 1400);
            assert_same(
                &format!("boundary {b}"),
                &got,
                &expected[lo as usize..lo as usize + 1400],
            );
        }
    }
}

/// A sparse extent whose capacity is not a multiple of its grain size, followed by another
/// extent: reads stop at the extent's end instead of returning the last grain's padding.
#[test]
fn sparse_extent_partial_last_grain_then_flat() {
    let d = Dir::new();
    // 1024 sectors of data with the tail (past sector 1000) filled with padding junk.
    let mut full = disk_with(1024 * SECTOR, &[(0, 1000 * SECTOR, 0x41)]);
    full[1000 * SECTOR..].fill(0xcc);
    let mut f = build::vmdk4(&full, 128, 512, None, &build::nonzero);
    build::put_u64(&mut f, 12, 1000); // capacity: 1000 sectors, last grain partly used
    build::write(d.0.path(), "p.vmdk", &f);
    let after = disk_with(200 * SECTOR, &[(0, 200 * SECTOR, 0x42)]);
    build::write(d.0.path(), "after-flat.vmdk", &after);
    let text = build::descriptor(
        0x1,
        0xffffffff,
        "monolithicFlat",
        None,
        &[
            "RW 1000 SPARSE \"p.vmdk\"".into(),
            "RW 200 FLAT \"after-flat.vmdk\" 0".into(),
        ],
    );
    let p = build::write(d.0.path(), "d.vmdk", text.as_bytes());
    let mut expected = full[..1000 * SECTOR].to_vec();
    expected.extend_from_slice(&after);
    let img = Image::open(&p).unwrap();
    assert_eq!(img.size(), 1200 * 512);
    assert_same("partial grain", &our_raw(&p), &expected);
    // Straddling read across the extent boundary.
    let got = our_range(&img, 990 * 512, 20 * 512);
    assert_same("straddle", &got, &expected[990 * 512..1010 * 512]);
}

#[test]
fn renamed_monolithic_sparse_opens() {
    let d = Dir::new();
    let a = d.path("original.vmdk");
    qemu_img(&["create", "-f", "vmdk", a.to_str().unwrap(), "2M"]);
    scribble_small(&a);
    let b = d.path("renamed.vmdk");
    std::fs::rename(&a, &b).unwrap();
    let img = Image::open(&b).unwrap();
    assert_eq!(
        img.descriptor().extents[0].file.as_deref(),
        Some("original.vmdk")
    );
    assert_same("renamed", &our_raw(&b), &qemu_raw(&b));
}

fn scribble_small(p: &std::path::Path) {
    qemu_io(
        p,
        &[
            "write -P 0x11 0 4k",
            "write -P 0x22 60k 8k",
            "write -P 0x33 1M 100k",
        ],
    );
}

/// A hand-built monolithicSparse with zeroed grains (GTE 1), 1-sector... 16-sector grains and
/// small grain tables, checked against qemu: exercises geometry qemu-img never writes.
#[test]
fn vmdk4_unusual_geometry() {
    for (grain_sectors, gtes) in [(16u64, 512u32), (1, 128), (8, 4), (128, 1)] {
        let d = Dir::new();
        let len = MIB;
        let disk = disk_with(
            len,
            &[(0, 3000, 1), (300_000, 70_000, 2), (len - 600, 600, 3)],
        );
        let policy = |g: u64, bytes: &[u8]| {
            if g % 7 == 3 && bytes.iter().all(|&b| b == 0) {
                Grain::Zero
            } else {
                build::nonzero(g, bytes)
            }
        };
        let desc = build::descriptor(
            0x5,
            0xffffffff,
            "monolithicSparse",
            None,
            &[format!("RW {} SPARSE \"u.vmdk\"", len / SECTOR)],
        );
        let f = build::vmdk4(&disk, grain_sectors, gtes, Some(&desc), &policy);
        let p = build::write(d.0.path(), "u.vmdk", &f);
        check_all(
            &format!("vmdk4 grain {grain_sectors} gtes {gtes}"),
            &p,
            &disk,
            true,
        );
        let img = Image::open(&p).unwrap();
        assert_eq!(our_map(&img), qemu_map(&p), "map, grain {grain_sectors}");
    }
}

/// Compressed grains in QEMU's up-front layout, with and without grain markers (the latter
/// is how pre-stream "compressed sparse" extents look); qemu reads both.
#[test]
fn compressed_sparse_with_and_without_markers() {
    for markers in [true, false] {
        let d = Dir::new();
        let mut disk = disk_with(2 * MIB, &[(0, 5000, 1), (MIB - 100, 70000, 2)]);
        disk[MIB + 200_000..MIB + 265_536].fill(0x99);
        // qemu needs an embedded descriptor (it reads the CID from it).
        let desc = build::descriptor(
            0x77,
            0xffffffff,
            "streamOptimized",
            None,
            &[format!("RW {} SPARSE \"c.vmdk\"", disk.len() / SECTOR)],
        );
        let f = build::vmdk4_with(&disk, 128, 512, Some(&desc), &build::nonzero, Some(markers));
        let p = build::write(d.0.path(), "c.vmdk", &f);
        check_all(&format!("compressed markers={markers}"), &p, &disk, true);
        let img = Image::open(&p).unwrap();
        assert_eq!(img.create_type(), "streamOptimized");
        assert_eq!(our_map(&img), qemu_map(&p), "map markers={markers}");
    }
}

/// Without the zeroed-grain flag a GTE of 1 is a sector number (the descriptor sector), as
/// qemu reads it; with the flag it is a zero grain.
#[test]
fn gte_one_without_zero_flag() {
    let d = Dir::new();
    let disk = disk_with(MIB, &[(0, 4096, 1)]);
    let desc = build::descriptor(
        0x9,
        0xffffffff,
        "monolithicSparse",
        None,
        &[format!("RW {} SPARSE \"z.vmdk\"", MIB / SECTOR)],
    );
    let policy = |g: u64, b: &[u8]| {
        if g == 3 {
            Grain::Zero
        } else {
            build::nonzero(g, b)
        }
    };
    let mut f = build::vmdk4(&disk, 8, 512, Some(&desc), &policy);
    let flags = u32::from_le_bytes(f[8..12].try_into().unwrap());
    assert_ne!(flags & 4, 0);
    build::put_u32(&mut f, 8, flags & !4);
    let p = build::write(d.0.path(), "z.vmdk", &f);
    let ours = our_raw(&p);
    assert_same("gte 1 without flag", &ours, &qemu_raw(&p));
    // Grain 3 shows sector 1 onwards: the embedded descriptor text.
    assert_eq!(&ours[3 * 4096..3 * 4096 + 21], b"# Disk DescriptorFile");
}

/// Descriptor quirks qemu parses the same way: CRLF, comments and blank lines first, file
/// names with spaces, FLAT offsets, no final newline. (A blank line right before an extent
/// line makes qemu parse that extent twice: its sscanf skips the newline. That is qemu's bug
/// and not copied, so a comment separates them here.)
#[test]
fn descriptor_quirks_match_qemu() {
    let d = Dir::new();
    let mut a = vec![0u8; 100 * SECTOR];
    pattern(&mut a, 0x61);
    let mut fa = vec![0x11u8; 7 * SECTOR];
    fa.extend_from_slice(&a);
    build::write(d.0.path(), "with space-flat.vmdk", &fa);
    let s = d.path("sp arse.vmdk");
    qemu_img(&["create", "-f", "vmdk", s.to_str().unwrap(), "1M"]);
    qemu_io(&s, &["write -P 0x62 1000 70000"]);
    let text = "\r\n#comment\r\n\r\nversion=1\r\nCID=abcdef01\r\nparentCID=ffffffff\r\n\
                createType=\"monolithicFlat\"\r\n\r\n# Extent description\r\n\
                RW 100 FLAT \"with space-flat.vmdk\" 7\r\n\
                RW 2048 SPARSE \"sp arse.vmdk\"\r\n\
                RW 50 FLAT \"with space-flat.vmdk\" 0\r\n\r\n\
                ddb.adapterType = \"ide\"\r\nddb.unknownKey = \"1\"";
    let p = build::write(d.0.path(), "q.vmdk", text.as_bytes());
    let ours = our_raw(&p);
    assert_same("quirks vs qemu", &ours, &qemu_raw(&p));
    assert_eq!(&ours[..100 * SECTOR], &a[..]);
}

/// The qemu quirk above, pinned: a blank line directly before an extent line must not
/// duplicate the extent (qemu's disk grows by one copy of it).
#[test]
fn blank_line_before_extent_is_not_a_second_extent() {
    let d = Dir::new();
    let mut a = vec![0u8; 10 * SECTOR];
    pattern(&mut a, 0x71);
    build::write(d.0.path(), "a-flat.vmdk", &a);
    let text = "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
                RW 10 FLAT \"a-flat.vmdk\" 0\n\nRW 5 ZERO\n";
    let p = build::write(d.0.path(), "b.vmdk", text.as_bytes());
    let img = Image::open(&p).unwrap();
    assert_eq!(img.extents().len(), 2);
    assert_eq!(img.size(), 15 * 512);
    let mut expected = a.clone();
    expected.extend_from_slice(&[0u8; 5 * SECTOR]);
    assert_same("blank line", &our_raw(&p), &expected);
}

/// A descriptor line claiming more sectors than its sparse extent's header holds: the extent
/// keeps the descriptor's size (the tail past the header's capacity reads as zeros) and the
/// next extent starts where the descriptor says. (qemu sizes sparse extents by their headers
/// instead, so its disk is shorter and the data after it shifts; not copied.)
#[test]
fn descriptor_larger_than_sparse_capacity() {
    let d = Dir::new();
    let inner = disk_with(512 * SECTOR, &[(0, 512 * SECTOR, 0x44)]);
    build::write(
        d.0.path(),
        "small.vmdk",
        &build::vmdk4(&inner, 128, 512, None, &build::nonzero),
    );
    let after = disk_with(8 * SECTOR, &[(0, 8 * SECTOR, 0x45)]);
    build::write(d.0.path(), "after-flat.vmdk", &after);
    let p = build::write(
        d.0.path(),
        "d.vmdk",
        build::descriptor(
            1,
            0xffffffff,
            "twoGbMaxExtentSparse",
            None,
            &[
                "RW 600 SPARSE \"small.vmdk\"".into(),
                "RW 8 FLAT \"after-flat.vmdk\" 0".into(),
            ],
        )
        .as_bytes(),
    );
    let img = Image::open(&p).unwrap();
    assert_eq!(img.size(), 608 * 512);
    let mut expected = inner.clone();
    expected.extend_from_slice(&[0u8; 88 * SECTOR]);
    expected.extend_from_slice(&after);
    assert_same("descriptor larger than header", &our_raw(&p), &expected);
    let tail = img.map(512 * 512, 88 * 512).unwrap();
    assert!(tail
        .iter()
        .all(|e| matches!(e.target, MapTarget::Unallocated)));
}

/// Writes into a COWD (vmfsSparse) extent, in place and into new grains; qemu reads the
/// result the same.
#[test]
fn cowd_writes() {
    let d = Dir::new();
    let len = 4 * MIB;
    let mut disk = disk_with(len, &[(0, 4096, 1)]);
    build::write(
        d.0.path(),
        "x-delta.vmdk",
        &build::cowd(&disk, 8, None, &build::nonzero),
    );
    let sectors = len / SECTOR;
    let desc = build::descriptor(
        0x1234abcd,
        0xffffffff,
        "vmfsSparse",
        None,
        &[format!("RW {sectors} VMFSSPARSE \"x-delta.vmdk\"")],
    );
    let p = build::write(d.0.path(), "x.vmdk", desc.as_bytes());
    let img = vmdk::OpenOptions::new().writable(true).open(&p).unwrap();
    for (off, n, v) in [
        (100usize, 300usize, 7u8),
        (3 * MIB + 4000, 10_000, 8),
        (MIB, 65536, 9),
    ] {
        img.write_at(&vec![v; n], off as u64).unwrap();
        disk[off..off + n].fill(v);
    }
    drop(img);
    check_all("cowd after writes", &p, &disk, true);
    // The header's free sector moved past everything we appended.
    let delta = std::fs::read(d.0.path().join("x-delta.vmdk")).unwrap();
    let free = u32::from_le_bytes(delta[28..32].try_into().unwrap()) as u64 * 512;
    assert_eq!(free, delta.len() as u64);
}
