//! Crash safety: record every write the library issues, cut the sequence at each point,
//! and check that every cut image opens, passes `qemu-img check` (and ours), and holds the
//! old or the new content of each grain.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmdk::namespace::{LocalNamespace, Namespace, OpenMode};
use vmdk::paths::PathPolicy;
use vmdk::{create, CreateOptions, FileId, FileStorage, OpenOptions, Storage};

#[derive(Debug, Clone)]
enum Op {
    Write(PathBuf, u64, Vec<u8>),
    SetLen(PathBuf, u64),
}

#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Storage>,
    path: PathBuf,
    log: Arc<Mutex<Vec<Op>>>,
}

impl Storage for Recording {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Op::Write(self.path.clone(), offset, buf.to_vec()));
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Op::SetLen(self.path.clone(), len));
        self.inner.set_len(len)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Host files whose every write and resize is logged.
#[derive(Debug)]
struct RecordingNamespace {
    log: Arc<Mutex<Vec<Op>>>,
}

impl Namespace for RecordingNamespace {
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> vmdk::Result<PathBuf> {
        LocalNamespace.resolve(referrer, name, what, policy)
    }
    fn open(&self, name: &Path, mode: OpenMode) -> vmdk::Result<Arc<dyn Storage>> {
        Ok(Arc::new(Recording {
            inner: LocalNamespace.open(name, mode)?,
            path: name.to_path_buf(),
            log: self.log.clone(),
        }))
    }
    fn create(&self, _name: &Path, _lock: bool) -> vmdk::Result<Arc<dyn Storage>> {
        unreachable!("the actions only write into the image")
    }
    fn remove(&self, _name: &Path) -> vmdk::Result<()> {
        unreachable!("the actions only write into the image")
    }
    fn identity(&self, name: &Path) -> vmdk::Result<Option<FileId>> {
        LocalNamespace.identity(name)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn replay(ops: &[Op], dir: &Path) {
    for op in ops {
        match op {
            Op::Write(p, off, data) => {
                let s = FileStorage::open(&dir.join(p.file_name().unwrap()), true).unwrap();
                s.write_at(data, *off).unwrap();
            }
            Op::SetLen(p, len) => {
                let s = FileStorage::open(&dir.join(p.file_name().unwrap()), true).unwrap();
                s.set_len(*len).unwrap();
            }
        }
    }
}

/// Run `actions` against the image in `setup` (a directory holding `disk.vmdk` and its
/// files), then check every cut of the recorded write sequence.
fn crash_test(setup: &Path, grain: usize, actions: impl Fn(&vmdk::Image)) {
    let ops = record(setup, true, |disk, opts| {
        let img = opts.clone().writable(true).open(disk).unwrap();
        actions(&img);
        img.flush().unwrap();
    });
    check_cuts(setup, grain, &ops);
}

/// Run `operation` on a copy of the image in `setup` (given its path and options that
/// record every write), returning the writes. `changes_content`: whether the guest must see
/// different bytes afterwards (otherwise the very same bytes).
fn record(setup: &Path, changes_content: bool, operation: impl Fn(&Path, &OpenOptions)) -> Vec<Op> {
    let work = setup.parent().unwrap().join("work");
    copy_dir(setup, &work);
    let old = our_raw(&setup.join("disk.vmdk"));
    let log = Arc::new(Mutex::new(Vec::new()));
    let opts = OpenOptions::new()
        .durable(true)
        .in_namespace(Arc::new(RecordingNamespace { log: log.clone() }));
    operation(&work.join("disk.vmdk"), &opts);
    let new = our_raw(&work.join("disk.vmdk"));
    if changes_content {
        assert_ne!(old, new, "the actions must change something");
    } else {
        assert!(old == new, "the operation must keep the content");
    }
    let ops = log.lock().unwrap().clone();
    ops
}

/// Check every cut of `ops` applied to a copy of `setup`: it opens, checks clean (at worst
/// leaks) with ours and qemu-img, and every grain holds its old or its new content.
fn check_cuts(setup: &Path, grain: usize, ops: &[Op]) {
    let work = setup.parent().unwrap().join("work");
    let old = our_raw(&setup.join("disk.vmdk"));
    let new = our_raw(&work.join("disk.vmdk"));
    assert!(ops.len() > 3, "too few writes recorded: {}", ops.len());
    for cut in 0..=ops.len() {
        let dir = setup.parent().unwrap().join(format!("cut{cut}"));
        copy_dir(setup, &dir);
        replay(&ops[..cut], &dir);
        let disk = dir.join("disk.vmdk");
        let img = vmdk::OpenOptions::new()
            .ignore_cid_mismatch(true)
            .open(&disk)
            .unwrap_or_else(|e| panic!("cut {cut}: open failed: {e}"));
        let report = vmdk::check(&img).unwrap_or_else(|e| panic!("cut {cut}: check failed: {e}"));
        assert!(
            report.corruptions.is_empty(),
            "cut {cut}: check found corruptions: {:?}",
            report.corruptions
        );
        drop(img);
        let out = std::process::Command::new("qemu-img")
            .args(["check", "-U", disk.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(3),
            "cut {cut}: qemu-img check: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let got = our_raw(&disk);
        for (g, chunk) in got.chunks(grain).enumerate() {
            let r = g * grain..g * grain + chunk.len();
            assert!(
                chunk == &old[r.clone()] || chunk == &new[r.clone()],
                "cut {cut}: grain {g} holds neither old nor new data"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn monolithic_sparse_cuts() {
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    create(&setup.join("disk.vmdk"), 2 << 20, &CreateOptions::default()).unwrap();
    crash_test(&setup, 65536, |img| {
        img.write_at(&[0x11; 1000], 100).unwrap();
        img.write_at(&vec![0x22; 3 * 65536], 4 * 65536).unwrap();
        img.write_at(&vec![0x44; 70000], 10 * 65536 + 5000).unwrap();
        img.write_at(&[0x55; 4096], 20 * 65536).unwrap();
    });
}

#[test]
fn overlay_cuts() {
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    let base = setup.join("base.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "2M"]);
    qemu_io(&base, &["write -P 0xaa 0 2M"]);
    create(
        &setup.join("disk.vmdk"),
        2 << 20,
        &CreateOptions {
            backing_file: Some("base.vmdk".into()),
            ..Default::default()
        },
    )
    .unwrap();
    crash_test(&setup, 65536, |img| {
        img.write_at(&[0x11; 1000], 100).unwrap();
        img.write_at(&vec![0x22; 70000], 3 * 65536 + 100).unwrap();
    });
}

#[test]
fn zeroed_grain_cuts() {
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    let disk = setup.join("disk.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        disk.to_str().unwrap(),
        "2M",
    ]);
    qemu_io(&disk, &["write -P 0x77 0 1M"]);
    crash_test(&setup, 65536, |img| {
        img.write_zeroes(0, 4 * 65536, true).unwrap();
        img.write_at(&vec![0x22; 65536], 8 * 65536).unwrap();
    });
}

#[test]
fn grain_table_allocation_cuts() {
    // An image whose grain directory is empty (tables allocated on demand, as some tools
    // leave them): the table must be written before the directory points at it.
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    let disk = setup.join("disk.vmdk");
    create(&disk, 64 << 20, &CreateOptions::default()).unwrap();
    {
        let bytes = std::fs::read(&disk).unwrap();
        let h = vmdk::format::sparse_header::SparseHeader::parse(&bytes).unwrap();
        let s = FileStorage::open(&disk, true).unwrap();
        let n = h.gd_entries() as usize * 4;
        s.write_at(&vec![0u8; n], h.gd_offset * 512).unwrap();
        s.write_at(&vec![0u8; n], h.rgd_offset * 512).unwrap();
    }
    crash_test(&setup, 65536, |img| {
        img.write_at(&[0x11; 4096], 40 << 20).unwrap();
        img.write_at(&[0x22; 4096], 1 << 20).unwrap();
    });
}

/// Compact an image with zero grains and holes: every cut of the zero-grain pass, the
/// moves and the truncation leaves the same content.
fn compact_cuts(setup: &Path) {
    let disk = setup.join("disk.vmdk");
    let before = std::fs::metadata(&disk).unwrap().len();
    let ops = record(setup, false, |disk, opts| {
        let stats = vmdk::compact::compact(disk, opts, &|_, _| {}).unwrap();
        assert!(stats.zero_grains > 0 && stats.moved_grains > 0, "{stats:?}");
    });
    let after = std::fs::metadata(setup.parent().unwrap().join("work/disk.vmdk"))
        .unwrap()
        .len();
    assert!(
        after < before,
        "compact did not shrink the file: {before} -> {after}"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::SetLen(..))),
        "compact never truncated"
    );
    check_cuts(setup, 65536, &ops);
}

/// Data grains, some overwritten with zeros (qemu allocates them), the last ones at the
/// top of the file.
fn fill_for_compact(disk: &Path) {
    qemu_io(
        disk,
        &[
            "write -P 0x11 0 256k",
            "write -P 0x22 1M 128k",
            "write -P 0 64k 128k",
            "write -P 0x33 2M 64k",
            "write -P 0x44 3M 192k",
        ],
    );
}

#[test]
fn compact_cuts_monolithic_sparse() {
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    let disk = setup.join("disk.vmdk");
    qemu_img(&["create", "-f", "vmdk", disk.to_str().unwrap(), "4M"]);
    fill_for_compact(&disk);
    compact_cuts(&setup);
}

#[test]
fn compact_cuts_overlay_with_zeroed_grains() {
    // Over a backing file, zero grains become zeroed-grain entries (the backing file must
    // not show through).
    let d = Dir::new();
    let setup = d.path("setup");
    std::fs::create_dir(&setup).unwrap();
    let base = setup.join("base.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "4M"]);
    qemu_io(&base, &["write -P 0xaa 0 4M"]);
    let disk = setup.join("disk.vmdk");
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "zeroed_grain=on",
        "-b",
        "base.vmdk",
        "-F",
        "vmdk",
        disk.to_str().unwrap(),
    ]);
    fill_for_compact(&disk);
    compact_cuts(&setup);
}
