//! A full file system: writes fail with the OS's "No space left on device", and the image
//! they fail on still opens, reads back everything written before, and checks clean (ours
//! and `qemu-img check`: no leaked clusters), like qemu leaves its images. Each case fills
//! a small tmpfs (mounted here: the tests run as root; `VMDK_TEST_NO_MOUNT=1` skips them).

use crate::common::build;
use crate::common::*;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use vmdk::{ErrorKind, Image, OpenOptions};

const GRAIN: usize = 64 << 10;
/// Linux's errno for a full file system.
const ENOSPC: i32 = 28;

/// Incompressible data for write number `n`, so compressed (stream) images fill up too.
fn data(n: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x1234_5678);
    (0..len).map(|_| r.next() as u8).collect()
}

/// Assert `e` is the OS's ENOSPC, kept through the error and its `io::Error` form.
fn assert_no_space(e: vmdk::Error, image: &Path) {
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let msg = format!("{e:#}"); // the error and its causes
    assert!(msg.contains("No space left on device"), "{msg}");
    // The image, or for split images one of its extents ("split-s002.vmdk").
    let stem = image.file_stem().unwrap().to_str().unwrap();
    assert!(
        msg.contains(&format!("/{stem}.vmdk'")) || msg.contains(&format!("/{stem}-s0")),
        "message does not name the file: {msg}"
    );
    assert_eq!(e.os_error().and_then(|o| o.raw_os_error()), Some(ENOSPC));
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull, "{io}");
}

/// Our check and qemu's both find nothing wrong (no corruption, no leaks).
fn assert_clean(image: &Path) {
    let img = Image::open(image).unwrap();
    let r = vmdk::check(&img).unwrap();
    assert!(r.is_clean(), "{}: {r:?}", image.display());
    let q = Command::new("qemu-img")
        .arg("check")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        q.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&q.stdout),
        String::from_utf8_lossy(&q.stderr)
    );
}

/// Write grain-sized chunks at `offsets` (one after another) until the file system is full;
/// returns the writes that succeeded. Fails the test if the disk never fills.
fn fill(img: &Image, path: &Path, offsets: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut done = Vec::new();
    for (n, off) in offsets.enumerate() {
        match img.write_at(&data(n as u64, GRAIN), off) {
            Ok(()) => done.push((n as u64, off)),
            Err(e) => {
                assert_no_space(e, path);
                // The next write fails the same way, and changes nothing either.
                let e = img.write_at(&data(999, GRAIN), off).unwrap_err();
                assert_no_space(e, path);
                assert!(!done.is_empty(), "not even one write fitted");
                return done;
            }
        }
    }
    panic!("{}: the file system never filled up", path.display());
}

/// Everything written reads back, through a fresh open.
fn assert_reads_back(path: &Path, done: &[(u64, u64)]) {
    let img = Image::open(path).unwrap();
    let mut buf = vec![0u8; GRAIN];
    for &(n, off) in done {
        img.read_at(&mut buf, off).unwrap();
        assert!(
            buf == data(n, GRAIN),
            "{}: write {n} at {off} did not read back",
            path.display()
        );
    }
}

fn qemu_create(dir: &Path, name: &str, size: &str, opts: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "vmdk"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([p.to_str().unwrap(), size]);
    qemu_img(&args);
    p
}

fn writable(path: &Path) -> Image {
    OpenOptions::new().writable(true).open(path).unwrap()
}

#[test]
fn monolithic_sparse_fills_cleanly() {
    let Some(fs) = Tmpfs::mount("2m", "monolithic_sparse_fills_cleanly") else {
        return;
    };
    let p = qemu_create(fs.path(), "mono.vmdk", "256M", "");
    let img = writable(&p);
    // Every fourth grain, so later grains land in new tables too.
    let done = fill(&img, &p, (0..).map(|i| i * 4 * GRAIN as u64 + 512));
    drop(img);
    assert_reads_back(&p, &done);
    assert_clean(&p);
}

#[test]
fn stream_optimized_appends_fill_cleanly() {
    let Some(fs) = Tmpfs::mount("2m", "stream_optimized_appends_fill_cleanly") else {
        return;
    };
    let p = qemu_create(fs.path(), "stream.vmdk", "64M", "subformat=streamOptimized");
    let img = writable(&p);
    let done = fill(&img, &p, (0..).map(|i| i * GRAIN as u64));
    drop(img);
    assert_reads_back(&p, &done);
    assert_clean(&p);
}

#[test]
fn split_sparse_fills_cleanly() {
    let Some(fs) = Tmpfs::mount("2m", "split_sparse_fills_cleanly") else {
        return;
    };
    let p = qemu_create(
        fs.path(),
        "split.vmdk",
        "3G",
        "subformat=twoGbMaxExtentSparse",
    );
    let img = writable(&p);
    // Both extents get data: start 512 KiB before the 2 GiB boundary.
    let start = (2u64 << 30) - (512 << 10);
    let done = fill(&img, &p, (0..).map(|i| start + i * GRAIN as u64));
    assert!(done.iter().any(|&(_, off)| off >= 2 << 30));
    drop(img);
    assert_reads_back(&p, &done);
    assert_clean(&p);
}

#[test]
fn cowd_fills_cleanly() {
    let Some(fs) = Tmpfs::mount("2m", "cowd_fills_cleanly") else {
        return;
    };
    let disk = vec![0u8; 64 << 20];
    let p = build::write(
        fs.path(),
        "cowd.vmdk",
        &build::cowd(&disk, 128, None, &build::nonzero),
    );
    let img = writable(&p);
    let done = fill(&img, &p, (0..).map(|i| i * GRAIN as u64));
    drop(img);
    assert_reads_back(&p, &done);
    // qemu does not check COWD extents; ours must be clean.
    let r = vmdk::check(&Image::open(&p).unwrap()).unwrap();
    assert!(r.is_clean(), "{r:?}");
}

/// Four writers at once fail together: however their allocations interleave, rolling them
/// back leaves no corruption, and (once space is back and more grains are written, which
/// would reuse any space a failed allocation left between live ones) no leak.
#[test]
fn concurrent_writers_leave_no_leak_once_space_returns() {
    let Some(fs) = Tmpfs::mount("3m", "concurrent_writers_leave_no_leak_once_space_returns") else {
        return;
    };
    let p = qemu_create(fs.path(), "shared.vmdk", "64M", "");
    // Ballast leaves about 1 MiB free.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![1u8; 2 << 20]).unwrap();
    let img = Arc::new(writable(&p));
    let done = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (img, done, p) = (img.clone(), done.clone(), p.clone());
            std::thread::spawn(move || {
                // Thread t writes grains t, t+4, t+8, ... of the first grain table.
                for i in 0..128u64 {
                    let g = i * 4 + t;
                    let n = 1000 * t + i;
                    match img.write_at(&data(n, GRAIN), g * GRAIN as u64) {
                        Ok(()) => done.lock().unwrap().push((n, g * GRAIN as u64)),
                        Err(e) => {
                            assert_no_space(e, &p);
                            return;
                        }
                    }
                }
                panic!("thread {t}: the file system never filled up");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::fs::remove_file(&ballast).unwrap();
    // Space is back: more grains, which take up whatever failed allocations left behind.
    let mut done = done.lock().unwrap().clone();
    for i in 0..8u64 {
        let off = (600 + i) * GRAIN as u64;
        img.write_at(&data(5000 + i, GRAIN), off).unwrap();
        done.push((5000 + i, off));
    }
    drop(img);
    assert_reads_back(&p, &done);
    assert_clean(&p);
}
