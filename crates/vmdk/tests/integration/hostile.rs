//! Hostile and malformed images: every one must give an `Err` of the right kind whose message
//! names the file, never a panic, a hang (each case runs under a deadline) or a huge
//! allocation (a counting global allocator records the largest single allocation made on the
//! thread running the case).

use crate::common::build::{self, Grain, SECTOR};
use crate::common::*;
use vmdk_test_support::qemu::{qemu_create_as, qemu_overlay, qemu_to_vmdk};

use crate::common::alloc;
use std::path::{Path, PathBuf};

use vmdk::{ErrorKind, Image, OpenOptions};

// The allocator that records the largest allocation is the binary's, in common::alloc.

/// Largest single allocation a hostile case may make. Real tables and grains are far
/// smaller; the hostile files here are all tiny.
const ALLOC_CAP: usize = 40 << 20;

/// Run `f` under a deadline and the allocation cap, returning its result.
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let w = what.to_string();
    let (r, largest) = with_timeout(what, 20, move || {
        alloc::largest_reset();
        let r = f();
        (r, alloc::largest())
    });
    assert!(
        largest <= ALLOC_CAP,
        "{w}: allocated {largest} bytes at once (cap {ALLOC_CAP})"
    );
    r
}

/// Open `path` and read and map all of it (bounded: at most 64 MiB is read).
fn open_and_read(path: &Path, opts: &OpenOptions) -> vmdk::Result<()> {
    let img = opts.open(path)?;
    let size = img.size();
    let n = size.min(64 << 20);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < n {
        let len = (n - off).min(buf.len() as u64) as usize;
        img.read_at(&mut buf[..len], off)?;
        off += len as u64;
    }
    img.map(0, n)?;
    // Unaligned reads inside every extent (offset arithmetic in the middle of extents).
    let spots: Vec<u64> = img
        .extents()
        .iter()
        .flat_map(|e| {
            [
                e.start + e.length / 2 + 123,
                e.start + e.length.saturating_sub(700),
            ]
        })
        .collect();
    for at in spots {
        let len = 1000.min(size.saturating_sub(at)) as usize;
        img.read_at(&mut buf[..len], at)?;
        img.map(at, len as u64)?;
    }
    if size > n {
        // The end of a big disk too.
        let len = buf.len().min(size as usize);
        img.read_at(&mut buf[..len], size - len as u64)?;
    }
    Ok(())
}

/// Assert that opening (and reading) `path` fails with `kind` and a message naming `names`.
fn expect_err(what: &str, path: &Path, kind: &[ErrorKind], names: &str) -> vmdk::Error {
    expect_err_with(what, path, OpenOptions::default(), kind, names)
}

fn expect_err_with(
    what: &str,
    path: &Path,
    opts: OpenOptions,
    kind: &[ErrorKind],
    names: &str,
) -> vmdk::Error {
    let p = path.to_path_buf();
    let r = guarded(what, move || open_and_read(&p, &opts));
    let e = match r {
        Ok(()) => panic!("{what}: opened and read without error"),
        Err(e) => e,
    };
    assert!(
        kind.contains(&e.kind()),
        "{what}: kind {:?}, expected one of {kind:?}: {e}",
        e.kind()
    );
    let msg = e.to_string();
    assert!(
        msg.contains(names),
        "{what}: message does not name '{names}': {msg}"
    );
    assert!(e.message().len() > 10, "{what}: message too terse: {msg}");
    if std::env::var_os("SHOW_ERRORS").is_some() {
        eprintln!("{what}: {msg}");
    }
    e
}

fn qemu_sparse(d: &Dir, name: &str, size: &str) -> PathBuf {
    let p = d.path(name);
    qemu_img(&["create", "-f", "vmdk", p.to_str().unwrap(), size]);
    qemu_io(&p, &["write -P 0x11 0 4k", "write -P 0x22 300k 70k"]);
    p
}

fn sample_disk(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    pattern(&mut d[..8192], 1);
    pattern(&mut d[len / 2..len / 2 + 70000], 2);
    pattern(&mut d[len - 512..], 3);
    d
}

/// A valid small header-only VMDK4 file we can poke at.
fn header_only(capacity: u64, grain: u64, gtes: u32, gd_offset: u64) -> Vec<u8> {
    let mut f = vec![0u8; 4 * SECTOR];
    f[0..4].copy_from_slice(b"KDMV");
    build::put_u32(&mut f, 4, 1);
    build::put_u32(&mut f, 8, 1);
    build::put_u64(&mut f, 12, capacity);
    build::put_u64(&mut f, 20, grain);
    build::put_u32(&mut f, 44, gtes);
    build::put_u64(&mut f, 56, gd_offset);
    build::put_u64(&mut f, 64, 1);
    f[73..77].copy_from_slice(b"\n \r\n");
    f
}

const C: &[ErrorKind] = &[ErrorKind::Corrupt];

/// A named corruption applied to a good file.
type Poke = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn truncated_header() {
    let d = Dir::new();
    let full = std::fs::read(qemu_sparse(&d, "ok.vmdk", "2M")).unwrap();
    for n in [4usize, 40, 78, 100, 511] {
        let p = build::write(d.0.path(), &format!("t{n}.vmdk"), &full[..n]);
        expect_err(&format!("header cut at {n}"), &p, C, &format!("t{n}.vmdk"));
    }
}

#[test]
fn truncated_file() {
    let d = Dir::new();
    let full = std::fs::read(qemu_sparse(&d, "ok.vmdk", "2M")).unwrap();
    // Cut inside the descriptor, the grain directory and the grain tables.
    for n in [
        600usize,
        3 * SECTOR + 8,
        21 * SECTOR + 2,
        40 * SECTOR,
        65535,
    ] {
        let p = build::write(d.0.path(), &format!("cut{n}.vmdk"), &full[..n]);
        expect_err(&format!("file cut at {n}"), &p, C, &format!("cut{n}.vmdk"));
    }
    // A grain table pointing past the end of a file whose header says nothing is missing.
    let mut f = header_only(2048, 128, 512, 1);
    build::put_u32(&mut f, SECTOR, 1000); // GT at sector 1000: past EOF
    let p = build::write(d.0.path(), "gt-past-eof.vmdk", &f);
    let e = expect_err("GT past EOF", &p, C, "gt-past-eof.vmdk");
    assert!(e.message().contains("truncated"), "{e}");
}

#[test]
fn bad_geometry() {
    let d = Dir::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("grain0", header_only(2048, 0, 512, 1)),
        ("grain-huge", header_only(1 << 30, 0x20_0001, 512, 1)),
        ("grain-2g", header_only(1 << 30, 1 << 22, 512, 1)),
        ("gtes0", header_only(2048, 128, 0, 1)),
        ("gtes513", header_only(2048, 128, 513, 1)),
        ("gtes-max", header_only(2048, 128, u32::MAX, 1)),
        ("cap-2^62", header_only(1 << 62, 128, 512, 1)),
        ("cap-2^50", header_only(1 << 50, 128, 512, 1)),
        ("cap-2^40-grain1", header_only(1 << 40, 1, 512, 1)),
        ("gd-past-eof", header_only(1 << 30, 128, 512, 1 << 40)),
        ("gd-overflow", header_only(2048, 128, 512, u64::MAX / 2)),
    ];
    for (name, bytes) in cases {
        let file = format!("{name}.vmdk");
        let p = build::write(d.0.path(), &file, &bytes);
        expect_err(name, &p, C, &file);
    }
    // Version 4 is unsupported (Corrupt or Unsupported both fine, never a panic).
    let mut v4 = header_only(2048, 128, 512, 1);
    build::put_u32(&mut v4, 4, 4);
    let p = build::write(d.0.path(), "v4.vmdk", &v4);
    expect_err(
        "version 4",
        &p,
        &[ErrorKind::Corrupt, ErrorKind::Unsupported],
        "v4.vmdk",
    );
}

#[test]
fn gd_entry_past_eof_in_qemu_image() {
    let d = Dir::new();
    let p = qemu_sparse(&d, "g.vmdk", "2M");
    let mut f = std::fs::read(&p).unwrap();
    let gd = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize * SECTOR;
    build::put_u32(&mut f, gd, 0x7fff_ffff);
    std::fs::write(&p, &f).unwrap();
    expect_err("GD entry past EOF", &p, C, "g.vmdk");
    // A GTE pointing far past EOF reads as zeros, like qemu's file driver (no error), but
    // never panics; one pointing at u32::MAX sectors must not overflow either.
    let p2 = qemu_sparse(&d, "h.vmdk", "2M");
    let mut f = std::fs::read(&p2).unwrap();
    let gd = u64::from_le_bytes(f[56..64].try_into().unwrap()) as usize * SECTOR;
    let gt = u32::from_le_bytes(f[gd..gd + 4].try_into().unwrap()) as usize * SECTOR;
    build::put_u32(&mut f, gt, u32::MAX);
    std::fs::write(&p2, &f).unwrap();
    let theirs = qemu_raw(&p2);
    assert!(
        theirs[..4096].iter().all(|&b| b == 0),
        "qemu reads zeros there"
    );
    let q = p2.clone();
    guarded("GTE past EOF", move || {
        let img = OpenOptions::default()
            .open(&q)
            .expect("a GTE past EOF is not an open error");
        let mut buf = vec![0xa5u8; img.size() as usize];
        img.read_at(&mut buf, 0)
            .expect("a GTE past EOF reads (as zeros)");
        // The grain past EOF reads as zeros, the rest as it was: exactly qemu's view.
        assert_same("GTE past EOF", &buf, &theirs);
    });
}

#[test]
fn oversized_descriptors() {
    let d = Dir::new();
    // A descriptor file over 1 MiB.
    let mut text = build::descriptor(1, 0xffffffff, "monolithicFlat", None, &[]);
    text += "RW 1 ZERO\n";
    while text.len() <= (1 << 20) {
        text += "# padding padding padding padding padding padding padding padding\n";
    }
    let p = build::write(d.0.path(), "big-desc.vmdk", text.as_bytes());
    expect_err("descriptor > 1 MiB", &p, C, "big-desc.vmdk");
    // desc_size huge in a sparse header.
    let mut f = std::fs::read(qemu_sparse(&d, "ds.vmdk", "1M")).unwrap();
    build::put_u64(&mut f, 36, u64::MAX / 1024);
    let p = build::write(d.0.path(), "ds-huge.vmdk", &f);
    expect_err("desc_size huge", &p, C, "ds-huge.vmdk");
    build::put_u64(&mut f, 36, 2000);
    let p = build::write(d.0.path(), "ds-past.vmdk", &f);
    expect_err("desc past EOF", &p, C, "ds-past.vmdk");
    build::put_u64(&mut f, 36, 2);
    build::put_u64(&mut f, 28, u64::MAX / 8);
    let p = build::write(d.0.path(), "do-huge.vmdk", &f);
    expect_err("desc_offset huge", &p, C, "do-huge.vmdk");
    // 100k extent lines.
    let mut text = build::descriptor(1, 0xffffffff, "monolithicFlat", None, &[]);
    for _ in 0..100_000 {
        text += "RW 1 ZERO\n";
    }
    let p = build::write(d.0.path(), "many.vmdk", text.as_bytes());
    expect_err("100k extents", &p, C, "many.vmdk");
    // 60k ZERO extents are legal and must open quickly.
    let mut text = build::descriptor(1, 0xffffffff, "monolithicFlat", None, &[]);
    for _ in 0..60_000 {
        text += "RW 3 ZERO\n";
    }
    let p = build::write(d.0.path(), "zeros.vmdk", text.as_bytes());
    let q = p.clone();
    let size = guarded("60k zero extents", move || {
        let img = Image::open(&q).unwrap();
        let mut b = vec![1u8; 1 << 20];
        img.read_at(&mut b, 12345).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        img.size()
    });
    assert_eq!(size, 60_000 * 3 * 512);
    // Garbage, binary and empty files.
    let p = build::write(d.0.path(), "empty.vmdk", b"");
    expect_err("empty", &p, &[ErrorKind::NotVmdk], "empty.vmdk");
    let p = build::write(d.0.path(), "junk.vmdk", &[0xffu8; 4096]);
    expect_err("junk", &p, &[ErrorKind::NotVmdk], "junk.vmdk");
    let p = build::write(
        d.0.path(),
        "nul.vmdk",
        b"version=1\nCID=1\0createType=\"x\"",
    );
    expect_err("cut by NUL", &p, C, "nul.vmdk");
    let p = build::write(
        d.0.path(),
        "noext.vmdk",
        build::descriptor(1, 0xffffffff, "monolithicFlat", None, &[]).as_bytes(),
    );
    expect_err("no extents", &p, C, "noext.vmdk");
    let p = build::write(
        d.0.path(),
        "bigsize.vmdk",
        build::descriptor(
            1,
            0xffffffff,
            "monolithicFlat",
            None,
            &[
                format!("RW {} ZERO", u64::MAX / 512),
                format!("RW {} ZERO", u64::MAX / 512),
            ],
        )
        .as_bytes(),
    );
    expect_err("sizes overflow", &p, C, "bigsize.vmdk");
    // Offsets near 2^64: arithmetic on them must not overflow (error or zeros, no panic).
    build::write(d.0.path(), "f-flat.vmdk", &[1u8; 8192]);
    for off in [
        u64::MAX / 512,
        u64::MAX / 512 - 7,
        (1u64 << 55) - 1,
        1u64 << 54,
    ] {
        let file = format!("offset-{off}.vmdk");
        let p = build::write(
            d.0.path(),
            &file,
            build::descriptor(
                1,
                0xffffffff,
                "monolithicFlat",
                None,
                &[format!("RW 16 FLAT \"f-flat.vmdk\" {off}")],
            )
            .as_bytes(),
        );
        let q = p.clone();
        guarded(&file, move || {
            match open_and_read(&q, &OpenOptions::default()) {
                Ok(()) => {}
                Err(e) => assert!(e.path().is_some(), "{e}"),
            }
        });
    }
    let p = build::write(
        d.0.path(),
        "missing.vmdk",
        build::descriptor(
            1,
            0xffffffff,
            "monolithicFlat",
            None,
            &["RW 8 FLAT \"nope-flat.vmdk\" 0".into()],
        )
        .as_bytes(),
    );
    expect_err("missing extent", &p, &[ErrorKind::Io], "nope-flat.vmdk");
}

fn flat_desc(d: &Dir, name: &str, extent: &str, kind: &str) -> PathBuf {
    // Only FLAT lines carry an offset (QEMU refuses one on the other kinds).
    let offset = if kind == "FLAT" { " 0" } else { "" };
    build::write(
        d.0.path(),
        name,
        build::descriptor(
            1,
            0xffffffff,
            "monolithicFlat",
            None,
            &[format!("RW 8 {kind} \"{extent}\"{offset}")],
        )
        .as_bytes(),
    )
}

#[test]
fn unsafe_extent_paths() {
    let d = Dir::new();
    std::fs::create_dir(d.path("sub")).unwrap();
    build::write(d.0.path(), "x", &[7u8; 4096]);
    std::os::unix::fs::symlink("/etc/passwd", d.path("link-flat.vmdk")).unwrap();
    std::os::unix::fs::symlink("../x", d.path("sub/uplink")).unwrap();
    let cases = [
        ("abs.vmdk", "/etc/passwd"),
        ("dotdot.vmdk", "../x"),
        ("deep.vmdk", "sub/../../x"),
        ("link.vmdk", "link-flat.vmdk"),
        ("dev.vmdk", "/dev/zero"),
    ];
    for (name, target) in cases {
        let p = flat_desc(&d, name, target, "FLAT");
        let e = expect_err(name, &p, &[ErrorKind::UnsafePath], name);
        assert!(e.to_string().contains(target), "{e}");
        // Through a symlink inside a subdirectory, still refused.
    }
    let p = build::write(
        &d.path("sub"),
        "in-sub.vmdk",
        build::descriptor(
            1,
            0xffffffff,
            "monolithicFlat",
            None,
            &["RW 8 FLAT \"uplink\" 0".into()],
        )
        .as_bytes(),
    );
    expect_err(
        "symlink out of sub",
        &p,
        &[ErrorKind::UnsafePath],
        "in-sub.vmdk",
    );
    // A backing file outside the directory is refused the same way.
    let p = build::write(
        d.0.path(),
        "bad-parent.vmdk",
        build::descriptor(
            1,
            0x1,
            "monolithicFlat",
            Some("/etc/passwd"),
            &["RW 8 ZERO".into()],
        )
        .as_bytes(),
    );
    expect_err(
        "absolute backing",
        &p,
        &[ErrorKind::UnsafePath],
        "bad-parent.vmdk",
    );
    // With allow_unsafe_paths the absolute and symlinked names open (trusted images only).
    let unsafe_ok = OpenOptions::new().allow_unsafe_paths(true);
    for name in ["abs.vmdk", "link.vmdk", "dev.vmdk"] {
        let p = d.path(name);
        let img = unsafe_ok
            .open(&p)
            .unwrap_or_else(|e| panic!("{name} with allow_unsafe_paths: {e}"));
        let mut b = [0u8; 16];
        img.read_at(&mut b, 0).unwrap();
        if name != "dev.vmdk" {
            let passwd = std::fs::read("/etc/passwd").unwrap();
            let n = passwd.len().min(16);
            assert_eq!(&b[..n], &passwd[..n], "{name}");
        }
    }
}

#[test]
fn fifo_is_refused_without_hanging() {
    let d = Dir::new();
    let fifo = d.path("pipe-flat.vmdk");
    run(std::process::Command::new("mkfifo").arg(&fifo));
    let p = flat_desc(&d, "fifo.vmdk", "pipe-flat.vmdk", "FLAT");
    expect_err(
        "fifo extent",
        &p,
        &[ErrorKind::UnsafePath],
        "pipe-flat.vmdk",
    );
    expect_err_with(
        "fifo extent, unsafe allowed",
        &p,
        OpenOptions::new().allow_unsafe_paths(true),
        &[ErrorKind::UnsafePath],
        "pipe-flat.vmdk",
    );
    expect_err(
        "fifo image",
        &fifo,
        &[ErrorKind::UnsafePath],
        "pipe-flat.vmdk",
    );
    let sp = flat_desc(&d, "fifo-sparse.vmdk", "pipe-flat.vmdk", "SPARSE");
    expect_err(
        "fifo sparse extent",
        &sp,
        &[ErrorKind::UnsafePath],
        "pipe-flat.vmdk",
    );
}

fn chain_link(d: &Dir, name: &str, cid: u32, parent_cid: u32, parent: Option<&str>) -> PathBuf {
    build::write(
        d.0.path(),
        name,
        build::descriptor(
            cid,
            parent_cid,
            "monolithicFlat",
            parent,
            &["RW 2048 ZERO".into()],
        )
        .as_bytes(),
    )
}

#[test]
fn cyclic_and_deep_chains() {
    let d = Dir::new();
    let a = chain_link(&d, "a.vmdk", 1, 2, Some("b.vmdk"));
    chain_link(&d, "b.vmdk", 2, 1, Some("a.vmdk"));
    expect_err("a->b->a", &a, &[ErrorKind::BackingChain], ".vmdk");
    let s = chain_link(&d, "self.vmdk", 1, 1, Some("self.vmdk"));
    expect_err("a->a", &s, &[ErrorKind::BackingChain], "self.vmdk");
    // Cycle through a differently spelled name.
    let c = chain_link(&d, "c.vmdk", 1, 1, Some("./sub/../c.vmdk"));
    std::fs::create_dir(d.path("sub")).unwrap();
    expect_err(
        "a->./a",
        &c,
        &[ErrorKind::BackingChain, ErrorKind::UnsafePath],
        "c.vmdk",
    );
    // 200 deep.
    for i in 0..200u32 {
        let parent = (i > 0).then(|| format!("d{}.vmdk", i - 1));
        chain_link(
            &d,
            &format!("d{i}.vmdk"),
            0x1000 + i,
            if i > 0 { 0x1000 + i - 1 } else { 0xffffffff },
            parent.as_deref(),
        );
    }
    expect_err(
        "200 deep",
        &d.path("d199.vmdk"),
        &[ErrorKind::BackingChain],
        "d1",
    );
    // 40 deep is fine.
    let img = Image::open(d.path("d39.vmdk")).unwrap();
    let mut depth = 0;
    let mut cur = Some(&img);
    while let Some(i) = cur {
        depth += 1;
        cur = i.backing();
    }
    assert_eq!(depth, 40);
    // A custom limit counts images: 5 allowed, 6 refused.
    let mut opts = OpenOptions::new();
    opts.max_chain_depth = 5;
    opts.open(d.path("d4.vmdk")).unwrap();
    let e = opts.open(d.path("d5.vmdk")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackingChain, "{e}");
    // Without following backing files, the deep chain opens alone.
    let img = OpenOptions::new()
        .open_backing(false)
        .open(d.path("d199.vmdk"))
        .unwrap();
    assert!(img.backing().is_none());
    // Missing parent.
    let m = chain_link(&d, "orphan.vmdk", 1, 5, Some("gone.vmdk"));
    expect_err(
        "missing parent",
        &m,
        &[ErrorKind::BackingChain],
        "orphan.vmdk",
    );
}

#[test]
fn cid_mismatch() {
    let d = Dir::new();
    let base = d.path("base.vmdk");
    let child = d.path("child.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "1M"]);
    qemu_overlay(&child, "base.vmdk", "", "");
    Image::open(&child).unwrap();
    // Writing to the base changes its CID: the child no longer matches.
    qemu_io(&base, &["write -P 0x42 0 4k"]);
    let e = expect_err(
        "cid mismatch",
        &child,
        &[ErrorKind::CidMismatch],
        "child.vmdk",
    );
    assert!(e.message().contains("parentCID"), "{e}");
    let img = OpenOptions::new()
        .ignore_cid_mismatch(true)
        .open(&child)
        .unwrap();
    assert_eq!(our_range(&img, 0, 4096), vec![0x42; 4096]);
}

fn stream_file(d: &Dir) -> (Vec<u8>, build::StreamLayout, Vec<u8>) {
    let disk = sample_disk(1 << 20);
    let desc = build::descriptor(
        0xfffffffe,
        0xffffffff,
        "streamOptimized",
        None,
        &["RW 2048 SPARSE \"s.vmdk\"".into()],
    );
    let (f, l) = build::vmware_stream(&disk, 128, &desc, true);
    let _ = d;
    (f, l, disk)
}

#[test]
fn compressed_grain_corruption() {
    let d = Dir::new();
    let (f, layout, _) = stream_file(&d);
    let g0 = layout.grains[0].1;
    for (name, size) in [
        ("huge", 0xffff_ffffu32),
        ("big", 200_000),
        ("zero", 0),
        ("past-eof", (f.len() - g0) as u32 - 12 + 10),
    ] {
        let mut bad = f.clone();
        build::put_u32(&mut bad, g0 + 8, size);
        let file = format!("marker-{name}.vmdk");
        let p = build::write(d.0.path(), &file, &bad);
        expect_err(
            &format!("marker size {name}"),
            &p,
            &[ErrorKind::Decompress, ErrorKind::Corrupt],
            &file,
        );
    }
    // Bad zlib data.
    let mut bad = f.clone();
    for b in &mut bad[g0 + 12..g0 + 40] {
        *b ^= 0x5a;
    }
    let p = build::write(d.0.path(), "badzlib.vmdk", &bad);
    let e = expect_err("bad zlib", &p, &[ErrorKind::Decompress], "badzlib.vmdk");
    assert!(e.message().contains("zlib"), "{e}");
    // Data that inflates to more than a grain.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, &vec![0x33u8; 200_000]).unwrap();
    let big = z.finish().unwrap();
    let mut bad = f.clone();
    build::put_u32(&mut bad, g0 + 8, big.len() as u32);
    bad[g0 + 12..g0 + 12 + big.len()].copy_from_slice(&big);
    let p = build::write(d.0.path(), "overflow.vmdk", &bad);
    let e = expect_err(
        "grain inflates too big",
        &p,
        &[ErrorKind::Decompress],
        "overflow.vmdk",
    );
    assert!(e.message().contains("more than"), "{e}");
    // A GTE pointing at a non-marker / past EOF.
    let mut bad = f.clone();
    let gd_sector = u32::from_le_bytes(f[layout.gd..layout.gd + 4].try_into().unwrap());
    let gt = gd_sector as usize * SECTOR;
    build::put_u32(&mut bad, gt, 0x7fff_0000);
    let p = build::write(d.0.path(), "gte-eof.vmdk", &bad);
    expect_err(
        "compressed GTE past EOF",
        &p,
        &[ErrorKind::Decompress, ErrorKind::Corrupt],
        "gte-eof.vmdk",
    );
}

#[test]
fn stream_footer_corruption() {
    let d = Dir::new();
    let (f, layout, _) = stream_file(&d);
    let footer = layout.footer;
    let cases: Vec<(&str, Poke)> = vec![
        ("magic", Box::new(move |b: &mut Vec<u8>| b[footer] = b'X')),
        (
            "footer-marker-type",
            Box::new(move |b: &mut Vec<u8>| build::put_u32(b, footer - SECTOR + 12, 7)),
        ),
        (
            "eos",
            Box::new(move |b: &mut Vec<u8>| {
                let n = b.len();
                build::put_u32(b, n - SECTOR + 12, 9)
            }),
        ),
        (
            "gd-at-end-twice",
            Box::new(move |b: &mut Vec<u8>| build::put_u64(b, footer + 56, u64::MAX)),
        ),
        (
            "gd-past-eof",
            Box::new(move |b: &mut Vec<u8>| build::put_u64(b, footer + 56, 1 << 40)),
        ),
        (
            "grain0",
            Box::new(move |b: &mut Vec<u8>| build::put_u64(b, footer + 20, 0)),
        ),
        (
            "grain-huge",
            Box::new(move |b: &mut Vec<u8>| build::put_u64(b, footer + 20, 0x20_0000)),
        ),
        (
            "chopped",
            Box::new(|b: &mut Vec<u8>| {
                let n = b.len();
                b.truncate(n - 700)
            }),
        ),
        ("tiny", Box::new(|b: &mut Vec<u8>| b.truncate(1500))),
    ];
    for (name, poke) in cases {
        let mut bad = f.clone();
        poke(&mut bad);
        let file = format!("footer-{name}.vmdk");
        let p = build::write(d.0.path(), &file, &bad);
        expect_err(
            &format!("footer {name}"),
            &p,
            &[ErrorKind::Corrupt, ErrorKind::Unsupported],
            &file,
        );
    }
}

#[test]
fn cowd_corruption() {
    let d = Dir::new();
    let disk = sample_disk(4 << 20);
    let good = build::cowd(&disk, 1, None, &build::nonzero);
    let desc = |name: &str| {
        build::descriptor(
            1,
            0xffffffff,
            "vmfsSparse",
            None,
            &[format!("RW 8192 VMFSSPARSE \"{name}\"")],
        )
    };
    let cases: Vec<(&str, Poke)> = vec![
        ("gd-small", Box::new(|b| build::put_u32(b, 24, 1))),
        ("gd-zero", Box::new(|b| build::put_u32(b, 24, 0))),
        ("grain0", Box::new(|b| build::put_u32(b, 16, 0))),
        ("grain-huge", Box::new(|b| build::put_u32(b, 16, u32::MAX))),
        ("gd-past-eof", Box::new(|b| build::put_u32(b, 20, u32::MAX))),
        (
            "gt-past-eof",
            Box::new(|b| build::put_u32(b, 4 * SECTOR, u32::MAX)),
        ),
        ("truncated", Box::new(|b| b.truncate(20))),
    ];
    for (name, poke) in cases {
        let mut bad = good.clone();
        poke(&mut bad);
        let file = format!("cowd-{name}.vmdk");
        build::write(d.0.path(), &file, &bad);
        let p = build::write(
            d.0.path(),
            &format!("desc-{name}.vmdk"),
            desc(&file).as_bytes(),
        );
        expect_err(&format!("cowd {name}"), &p, C, &file);
        // The bare file too.
        expect_err(&format!("bare cowd {name}"), &d.path(&file), C, &file);
    }
}

#[test]
fn sesparse_corruption() {
    let d = Dir::new();
    let disk = sample_disk(20 << 20);
    let policy = |g: u64, b: &[u8]| {
        if g == 5 {
            Grain::Zero
        } else {
            build::nonzero(g, b)
        }
    };
    let (good, l) = build::sesparse(&disk, &policy);
    let desc = |name: &str| {
        build::descriptor(
            1,
            0xffffffff,
            "seSparse",
            None,
            &[format!("RW {} SESPARSE \"{name}\"", disk.len() / SECTOR)],
        )
    };
    // The good one opens and reads right.
    build::write(d.0.path(), "se-good.vmdk", &good);
    let p = build::write(d.0.path(), "good.vmdk", desc("se-good.vmdk").as_bytes());
    assert_same("good sesparse", &our_raw(&p), &disk);
    let vol = l.volatile;
    let gd = l.gd;
    let gt = l.gt_area;
    let cases: Vec<(&str, Poke)> = vec![
        (
            "const-magic",
            Box::new(|b| build::put_u64(b, 0, 0xcafe_babf)),
        ),
        (
            "version",
            Box::new(|b| build::put_u64(b, 8, 0x0000_0002_0000_0002)),
        ),
        ("grain-size", Box::new(|b| build::put_u64(b, 24, 16))),
        ("flags", Box::new(|b| build::put_u64(b, 40, 1))),
        (
            "vol-magic",
            Box::new(move |b| build::put_u64(b, vol, 0xcafe_cafd)),
        ),
        ("dirty", Box::new(move |b| build::put_u64(b, vol + 24, 1))),
        (
            "vol-offset",
            Box::new(|b| build::put_u64(b, 80, u64::MAX / 2)),
        ),
        ("gd-size", Box::new(|b| build::put_u64(b, 136, 0))),
        ("gd-offset", Box::new(|b| build::put_u64(b, 128, 1 << 50))),
        (
            "gd-nibble",
            Box::new(move |b| build::put_u64(b, gd, 0x2000_0000_0000_0000)),
        ),
        (
            "gd-high",
            Box::new(move |b| build::put_u64(b, gd, 0x1000_0001_0000_0000)),
        ),
        (
            "gd-index-huge",
            Box::new(move |b| build::put_u64(b, gd, 0x1000_0000_ffff_ffff)),
        ),
        (
            "gt-nibble4",
            Box::new(move |b| build::put_u64(b, gt, 0x4000_0000_0000_0001)),
        ),
        (
            "gt-nibble0",
            Box::new(move |b| build::put_u64(b, gt, 0x0000_0000_0000_0001)),
        ),
        (
            "gt-area-max",
            Box::new(|b| build::put_u64(b, 144, u64::MAX / 512)),
        ),
        (
            "grain-area-max",
            Box::new(|b| build::put_u64(b, 192, u64::MAX / 512)),
        ),
        (
            "grain-area-edge",
            Box::new(|b| build::put_u64(b, 192, u64::MAX / 512 - 8)),
        ),
        (
            "gt-index-huge",
            Box::new(move |b| build::put_u64(b, gt, 0x3fff_ffff_ffff_ffff)),
        ),
    ];
    for (name, poke) in cases {
        let mut bad = good.clone();
        poke(&mut bad);
        let file = format!("se-{name}.vmdk");
        build::write(d.0.path(), &file, &bad);
        let p = build::write(
            d.0.path(),
            &format!("desc-{name}.vmdk"),
            desc(&file).as_bytes(),
        );
        if name == "gt-index-huge" || name.ends_with("-max") || name.ends_with("-edge") {
            // A grain index past the end reads past EOF: zeros (qemu's file driver does the
            // same); it must neither overflow nor panic.
            let q = p.clone();
            guarded(name, move || {
                let _ = open_and_read(&q, &OpenOptions::default());
            });
            continue;
        }
        expect_err(
            &format!("sesparse {name}"),
            &p,
            &[ErrorKind::Corrupt, ErrorKind::Unsupported],
            &file,
        );
    }
}

/// Valid small images of each kind, each with its name, for the mutation test.
fn seed_images(d: &Dir) -> Vec<(String, Vec<u8>, Option<String>)> {
    let mut out = Vec::new();
    let ms = qemu_sparse(d, "seed-ms.vmdk", "1M");
    out.push(("ms".to_string(), std::fs::read(&ms).unwrap(), None));
    let zg = d.path("seed-zg.vmdk");
    qemu_create_as("vmdk", &zg, "1M", "zeroed_grain=on");
    qemu_io(
        &zg,
        &["write -P 1 0 64k", "write -z 64k 64k", "write -P 2 512k 1k"],
    );
    out.push(("zg".to_string(), std::fs::read(&zg).unwrap(), None));
    let raw = d.path("seed.raw");
    std::fs::write(&raw, sample_disk(1 << 20)).unwrap();
    let qs = d.path("seed-qs.vmdk");
    qemu_to_vmdk(&raw, &qs, "", "subformat=streamOptimized");
    out.push(("qs".to_string(), std::fs::read(&qs).unwrap(), None));
    let (vs, _, _) = stream_file(d);
    out.push(("vs".to_string(), vs, None));
    let disk = sample_disk(1 << 20);
    out.push((
        "cowd".to_string(),
        build::cowd(&disk, 1, None, &build::nonzero),
        Some(build::descriptor(
            1,
            0xffffffff,
            "vmfsSparse",
            None,
            &["RW 2048 VMFSSPARSE \"mut-cowd.bin\"".into()],
        )),
    ));
    let (se, _) = build::sesparse(&disk, &build::nonzero);
    out.push((
        "se".to_string(),
        se,
        Some(build::descriptor(
            1,
            0xffffffff,
            "seSparse",
            None,
            &["RW 2048 SESPARSE \"mut-se.bin\"".into()],
        )),
    ));
    let desc = build::descriptor(
        7,
        0xffffffff,
        "monolithicFlat",
        None,
        &[
            "RW 1024 FLAT \"mut-desc.bin\" 0".into(),
            "RW 100 ZERO".into(),
            "RW 1024 FLAT \"mut-desc.bin\" 1024".into(),
        ],
    );
    out.push(("desc".to_string(), desc.into_bytes(), None));
    out
}

/// Flip random bytes (mostly in metadata) and truncate at random lengths; open, read and map
/// each mutant. Errors are fine; panics, hangs and huge allocations are not.
#[test]
fn random_mutations() {
    let d = Dir::new();
    // A flat file for the descriptor seed.
    build::write(d.0.path(), "mut-desc.bin", &sample_disk(1 << 20));
    let seeds = seed_images(&d);
    if let Ok(out) = std::env::var("FUZZ_SEEDS_DIR") {
        // Seed corpus for fuzz/ (see fuzz/README.md): each image, and its descriptor if any.
        for (name, bytes, desc) in &seeds {
            std::fs::write(Path::new(&out).join(format!("{name}.img")), bytes).unwrap();
            if let Some(t) = desc {
                std::fs::write(Path::new(&out).join(format!("{name}.desc")), t).unwrap();
            }
        }
    }
    let mut rng = Rng(std::env::var("MUTANT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x005e_ed0f_f00d));
    let iterations: usize = std::env::var("MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let mut opened = 0;
    for i in 0..iterations {
        let (name, base, desc) = &seeds[i % seeds.len()];
        let mut m = base.clone();
        match rng.below(4) {
            0 => {
                let n = rng.below(m.len() as u64 + 1) as usize;
                m.truncate(n);
            }
            _ => {
                let flips = 1 + rng.below(8);
                for _ in 0..flips {
                    // Metadata lives early in these files; aim there most of the time.
                    let range = if rng.below(4) == 0 {
                        m.len()
                    } else {
                        m.len().min(80 * 1024)
                    };
                    if range == 0 {
                        break;
                    }
                    let at = rng.below(range as u64) as usize;
                    m[at] = match rng.below(3) {
                        0 => rng.next() as u8,
                        1 => m[at] ^ (1 << rng.below(8)),
                        _ => [0u8, 0xff, 0x80, 0x7f][rng.below(4) as usize],
                    };
                }
            }
        }
        let what = format!("mutant {i} of {name}");
        let target = match desc {
            None => build::write(d.0.path(), "mutant.vmdk", &m),
            Some(text) => {
                let file = if name == "cowd" {
                    "mut-cowd.bin"
                } else {
                    "mut-se.bin"
                };
                build::write(d.0.path(), file, &m);
                build::write(d.0.path(), "mutant.vmdk", text.as_bytes())
            }
        };
        let t = target.clone();
        let r = guarded(&what, move || open_and_read(&t, &OpenOptions::default()));
        match r {
            Ok(()) => opened += 1,
            Err(e) => {
                assert!(
                    e.path().is_some() && e.to_string().starts_with('\''),
                    "{what}: error does not name a file: {e}"
                );
            }
        }
    }
    // Sanity: the mutations are not all fatal (many flips hit data or unused bytes).
    assert!(opened > iterations / 10, "only {opened} mutants opened");
}

#[test]
fn odd_files() {
    let d = Dir::new();
    // A directory, a missing file, a directory named as an extent.
    std::fs::create_dir(d.path("adir.vmdk")).unwrap();
    expect_err(
        "directory",
        &d.path("adir.vmdk"),
        &[ErrorKind::UnsafePath, ErrorKind::Io, ErrorKind::NotVmdk],
        "adir.vmdk",
    );
    expect_err(
        "missing",
        &d.path("nope.vmdk"),
        &[ErrorKind::Io],
        "nope.vmdk",
    );
    let p = flat_desc(&d, "dir-extent.vmdk", "adir.vmdk", "FLAT");
    expect_err(
        "directory extent",
        &p,
        &[ErrorKind::UnsafePath, ErrorKind::Io],
        "adir.vmdk",
    );
    // A descriptor naming itself as a sparse extent.
    let p = flat_desc(&d, "selfish.vmdk", "selfish.vmdk", "SPARSE");
    expect_err("self as sparse", &p, C, "selfish.vmdk");
    // A zero-capacity KDMV header whose embedded descriptor names the file itself as its
    // sparse extent, and itself as parent: no recursion, a clean answer.
    let desc = build::descriptor(
        1,
        1,
        "monolithicSparse",
        Some("kdmv0.vmdk"),
        &["RW 2048 SPARSE \"kdmv0.vmdk\"".into()],
    );
    let mut f = header_only(0, 128, 512, 1);
    build::put_u64(&mut f, 28, 1);
    build::put_u64(&mut f, 36, 2);
    f.resize(8 * SECTOR, 0);
    f[SECTOR..SECTOR + desc.len()].copy_from_slice(desc.as_bytes());
    let p = build::write(d.0.path(), "kdmv0.vmdk", &f);
    expect_err(
        "capacity-0 container naming itself",
        &p,
        &[ErrorKind::BackingChain, ErrorKind::Corrupt],
        "kdmv0.vmdk",
    );
    // Same without the parent: must open or fail cleanly, never loop.
    let desc = build::descriptor(
        1,
        0xffffffff,
        "monolithicSparse",
        None,
        &["RW 2048 SPARSE \"kdmv1.vmdk\"".into()],
    );
    f[SECTOR..SECTOR + desc.len() + 1].copy_from_slice(&[desc.as_bytes(), &[0]].concat());
    let p = build::write(d.0.path(), "kdmv1.vmdk", &f);
    let q = p.clone();
    guarded("capacity-0 self extent", move || {
        let _ = open_and_read(&q, &OpenOptions::default());
    });
}

/// A descriptor naming one big-directory sparse file many times shares one opened extent
/// (one directory in memory); naming many distinct big-directory files is refused once
/// their directories would pass the bound, before the next one is allocated.
#[test]
fn many_extents_sharing_a_big_directory() {
    let d = Dir::new();
    let big = d.path("big.vmdk");
    // 16 TiB: 2 MiB of directory (4 MiB with the redundant copy) in memory per extent;
    // 300 distinct ones would be 1.2 GiB.
    vmdk::create(&big, 16 << 40, &vmdk::CreateOptions::default()).unwrap();
    let sectors = (16u64 << 40) / 512;
    let desc = |names: &dyn Fn(usize) -> String| {
        let lines: Vec<String> = (0..300)
            .map(|i| format!("RW {sectors} SPARSE \"{}\"", names(i)))
            .collect();
        build::descriptor(1, 0xffffffff, "twoGbMaxExtentSparse", None, &lines)
    };
    let same = build::write(
        d.0.path(),
        "same.vmdk",
        desc(&|_| "big.vmdk".into()).as_bytes(),
    );
    let img = guarded("one file 300 times", move || Image::open(&same).unwrap());
    assert_eq!(img.extents().len(), 300);
    assert_eq!(img.directory_memory(), 4 << 20);
    // Hard links are one file too (opened once, keyed by identity).
    for i in 0..300 {
        std::fs::hard_link(&big, d.path(&format!("h{i}.vmdk"))).unwrap();
    }
    let links = build::write(
        d.0.path(),
        "links.vmdk",
        desc(&|i| format!("h{i}.vmdk")).as_bytes(),
    );
    let img = guarded("hard links 300 times", move || Image::open(&links).unwrap());
    assert_eq!(img.directory_memory(), 4 << 20);
    // 300 distinct files with a big directory each: the big image's first 64 KiB (header
    // and descriptor) and holes up to its length, so its directories read as all
    // unallocated and each copy costs one block of disk.
    let mut head = vec![0u8; 64 << 10];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(&big).unwrap(), &mut head, 0)
        .unwrap();
    let big_len = std::fs::metadata(&big).unwrap().len();
    for i in 0..300 {
        let f = std::fs::File::create(d.path(&format!("l{i}.vmdk"))).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
        f.set_len(big_len).unwrap();
    }
    let p = build::write(
        d.0.path(),
        "many.vmdk",
        desc(&|i| format!("l{i}.vmdk")).as_bytes(),
    );
    let e = expect_err("many big extents", &p, &[ErrorKind::Corrupt], "many.vmdk");
    assert!(e.message().contains("grain directories"), "{e}");
}

/// Sizes QEMU and NBD clients cannot address (past 2^63 - 2^30) are refused at open, before
/// anything is mapped: a 224-byte descriptor of 2^64 - 512 bytes used to make a map run for
/// 18 minutes.
#[test]
fn absurd_virtual_sizes() {
    let d = Dir::new();
    let max_sectors = vmdk::image::MAX_VIRTUAL_SIZE / 512;
    let cases: [(&str, Vec<String>, ErrorKind); 4] = [
        (
            "2^64",
            vec![format!("RW {} ZERO", u64::MAX / 512)],
            ErrorKind::Unsupported,
        ),
        (
            "cap+1",
            vec![format!("RW {} ZERO", max_sectors + 1)],
            ErrorKind::Unsupported,
        ),
        (
            "two-halves",
            vec![
                format!("RW {} ZERO", max_sectors / 2 + 1),
                format!("RW {} ZERO", max_sectors / 2 + 1),
            ],
            ErrorKind::Unsupported,
        ),
        (
            "overflow",
            vec![
                format!("RW {} ZERO", u64::MAX / 512),
                format!("RW {} ZERO", u64::MAX / 512),
            ],
            ErrorKind::Corrupt,
        ),
    ];
    for (name, lines, kind) in cases {
        let file = format!("{name}.vmdk");
        let desc = build::descriptor(1, 0xffffffff, "monolithicFlat", None, &lines);
        let p = build::write(d.0.path(), &file, desc.as_bytes());
        let t0 = std::time::Instant::now();
        let e = expect_err(name, &p, &[kind], &file);
        assert!(t0.elapsed().as_secs() < 2, "{name}: {:?}", t0.elapsed());
        assert!(
            e.message().contains("2^64") || e.message().contains("QEMU"),
            "{e}"
        );
    }
    // A sparse extent claiming more than the cap is refused before its directory is read.
    let mut f = header_only(max_sectors + 128, 1 << 21, 512, 1);
    build::put_u64(&mut f, 64, 1);
    let p = build::write(d.0.path(), "cap.vmdk", &f);
    let e = expect_err("sparse capacity", &p, C, "cap.vmdk");
    assert!(e.message().contains("QEMU"), "{e}");
    // Nor is such an image created.
    let p = d.path("new.vmdk");
    let max = vmdk::image::MAX_VIRTUAL_SIZE;
    let e = vmdk::create(&p, max + 512, &vmdk::CreateOptions::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!p.exists());
    // The cap itself is fine, and a disk that size of zeros maps in one step.
    let desc = build::descriptor(
        1,
        0xffffffff,
        "monolithicFlat",
        None,
        &[format!("RW {max_sectors} ZERO")],
    );
    let p = build::write(d.0.path(), "max.vmdk", desc.as_bytes());
    let img = guarded("max", move || Image::open(&p).unwrap());
    assert_eq!(img.size(), vmdk::image::MAX_VIRTUAL_SIZE);
    let m = img.map_prefix(0, img.size(), 1).unwrap();
    assert_eq!((m.len(), m[0].length), (1, img.size()));
}

/// Mapping costs the entries met, not the bytes covered: `map_prefix` stops at its limit,
/// and walking a 4 EiB disk of zeros and holes takes a handful of steps.
#[test]
fn map_prefix_and_walker_cost_entries_not_bytes() {
    let d = Dir::new();
    // Data grains alternating with holes, then a huge ZERO extent, then an unallocated
    // sparse extent.
    let disk = sample_disk(1 << 20);
    let sparse = build::vmdk4(&disk, 8, 512, None, &|g, b| {
        if g % 2 == 0 {
            build::nonzero(g, b)
        } else {
            Grain::Skip
        }
    });
    build::write(d.0.path(), "a.vmdk", &sparse);
    build::write(d.0.path(), "b.vmdk", &sparse);
    let huge = (1u64 << 62) / 512;
    let desc = build::descriptor(
        1,
        0xffffffff,
        "twoGbMaxExtentSparse",
        None,
        &[
            "RW 2048 SPARSE \"a.vmdk\"".to_string(),
            format!("RW {huge} ZERO"),
            "RW 2048 SPARSE \"b.vmdk\"".to_string(),
        ],
    );
    let p = build::write(d.0.path(), "d.vmdk", desc.as_bytes());
    let img = Image::open(&p).unwrap();
    let size = img.size();
    let all = img.map(0, size).unwrap();
    // A prefix, at most the limit, starting where asked and matching the full map.
    for limit in [1, 2, 7, 100] {
        let m = img.map_prefix(0, size, limit).unwrap();
        assert!(!m.is_empty() && m.len() <= limit, "{limit}: {}", m.len());
        for (x, y) in m.iter().zip(&all) {
            assert_eq!((x.start, x.depth), (y.start, y.depth));
            assert!(x.length <= y.length);
        }
    }
    // The walker yields the same stretches (maybe cut where a batch ends).
    let mut w = vmdk::image::walk::MapWalker::new(&img, 0, size);
    let mut pos = 0;
    let mut steps = 0;
    while let Some(e) = w.next().unwrap() {
        assert_eq!(e.start, pos);
        pos += e.length;
        steps += 1;
    }
    assert_eq!(pos, size);
    assert!(
        steps <= all.len() + 2,
        "{steps} steps for {} entries",
        all.len()
    );
    // Comparing with itself reads the data but skips the 4 EiB of zeros.
    let t0 = std::time::Instant::now();
    let r = vmdk::ops::convert::compare(&img, &img, &|_, _| {}).unwrap();
    assert_eq!(r, vmdk::CompareResult::Identical);
    assert!(t0.elapsed().as_secs() < 10, "{:?}", t0.elapsed());
}

/// Two descriptor lines naming one sparse file share its extent: grains allocated through
/// one line are never handed out again through the other (separate allocators would both
/// append at the file's end, and the second write would overwrite the first).
#[test]
fn lines_naming_one_sparse_file_share_its_allocator() {
    let d = Dir::new();
    let one = d.path("one.vmdk");
    vmdk::create(&one, 1 << 20, &vmdk::CreateOptions::default()).unwrap();
    let desc = build::descriptor(
        1,
        0xffffffff,
        "twoGbMaxExtentSparse",
        None,
        &[
            "RW 2048 SPARSE \"one.vmdk\"".to_string(),
            "RW 2048 SPARSE \"one.vmdk\"".to_string(),
        ],
    );
    let p = build::write(d.0.path(), "two.vmdk", desc.as_bytes());
    let img = OpenOptions::new().writable(true).open(&p).unwrap();
    let (a, b) = (vec![0xaau8; 65536], vec![0xbbu8; 65536]);
    img.write_at(&a, 0).unwrap(); // grain 0 of the file, through line 1
    img.write_at(&b, (1 << 20) + 65536).unwrap(); // grain 1, through line 2
    img.flush().unwrap();
    drop(img);
    let img = Image::open(&p).unwrap();
    let read = |off: u64| {
        let mut buf = vec![0u8; 65536];
        img.read_at(&mut buf, off).unwrap();
        buf
    };
    // Each line sees both grains of the one file.
    for base in [0, 1 << 20] {
        assert!(read(base) == a, "grain 0 via line at {base}");
        assert!(read(base + 65536) == b, "grain 1 via line at {base}");
    }
    let out = qemu_img(&["check", one.to_str().unwrap()]);
    assert!(out.contains("No errors"), "{out}");
}
