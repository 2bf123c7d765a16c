//! Freed space goes back: a discard, or a zero write that may unmap, gives the space of the
//! grains it stops storing back to the host (punched) and to later allocations (reused), the
//! file is cut where the freed space ends it, and `check` (ours and qemu-img's) stays clean.
//! Images where nothing can be deallocated say why; a corrupt table never makes a writer
//! give back a grain another entry still uses; concurrent writers, discarders and readers
//! never see one grain's data in another.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vmdk::storage::namespace::{LocalNamespace, Namespace, OpenMode};
use vmdk::storage::paths::PathPolicy;
use vmdk::{create, CreateOptions, ErrorKind, FileId, OpenOptions, Storage, Subformat};

const MIB: u64 = 1 << 20;
const GRAIN: u64 = 64 << 10;

fn rw(path: &Path) -> vmdk::Image {
    OpenOptions::new().writable(true).open(path).unwrap()
}

/// Bytes the file takes on the host.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Our check and qemu-img's find nothing at all (no leaks either).
fn clean(path: &Path) {
    let img = OpenOptions::new().open(path).unwrap();
    let r = vmdk::check(&img).unwrap();
    assert!(
        r.is_clean(),
        "check: {:?} {:?} {} leaked",
        r.corruptions,
        r.leaks,
        r.leaked_clusters
    );
    let out = qemu_img(&["check", "-f", "vmdk", path.to_str().unwrap()]);
    assert!(
        out.contains("No errors were found"),
        "qemu-img check: {out}"
    );
}

fn sparse(d: &Dir, name: &str, size: u64, zeroed: bool) -> std::path::PathBuf {
    let p = d.path(name);
    create(
        &p,
        size,
        &CreateOptions {
            zeroed_grain: zeroed,
            ..Default::default()
        },
    )
    .unwrap();
    p
}

#[test]
fn discarded_grains_are_punched_and_reused() {
    let d = Dir::new();
    let p = sparse(&d, "a.vmdk", 128 * MIB, false);
    qemu_io(&p, &["write -P 1 0 24M"]);
    let (len0, alloc0) = (len(&p), allocated(&p));
    let img = rw(&p);
    img.discard(0, 16 * MIB).unwrap();
    drop(img);
    // The file keeps its length (the freed grains are below live ones) but not its blocks.
    assert_eq!(len(&p), len0);
    assert!(
        allocated(&p) + 15 * MIB < alloc0,
        "{} -> {} bytes allocated",
        alloc0,
        allocated(&p)
    );
    clean(&p);
    // A later write elsewhere takes the freed space, in the same session and in the next.
    let img = rw(&p);
    img.write_at(&vec![2u8; (8 * MIB) as usize], 64 * MIB)
        .unwrap();
    drop(img);
    let img = rw(&p);
    img.write_at(&vec![3u8; (8 * MIB) as usize], 100 * MIB)
        .unwrap();
    drop(img);
    assert_eq!(
        len(&p),
        len0,
        "the file grew instead of reusing freed space"
    );
    clean(&p);
    qemu_io(
        &p,
        &[
            "read -P 0 0 16M",
            "read -P 1 16M 8M",
            "read -P 0 24M 40M",
            "read -P 2 64M 8M",
            "read -P 0 72M 28M",
            "read -P 3 100M 8M",
            "read -P 0 108M 20M",
        ],
    );
}

#[test]
fn freed_space_at_the_end_cuts_the_file() {
    let d = Dir::new();
    let p = sparse(&d, "a.vmdk", 64 * MIB, false);
    let empty = len(&p);
    qemu_io(&p, &["write -P 1 0 4M", "write -P 2 8M 4M"]);
    let img = rw(&p);
    // Middle first: a hole; then the top, which takes the hole below it along.
    img.discard(0, 4 * MIB).unwrap();
    img.discard(8 * MIB, 4 * MIB).unwrap();
    drop(img);
    assert_eq!(len(&p), empty, "the file was not cut back to its metadata");
    clean(&p);
    qemu_io(&p, &["read -P 0 0 64M"]);
}

#[test]
fn zero_writes_that_may_unmap_free_grains() {
    let d = Dir::new();
    for zeroed in [false, true] {
        let p = sparse(&d, &format!("z{zeroed}.vmdk"), 64 * MIB, zeroed);
        qemu_io(&p, &["write -P 1 0 8M", "write -P 2 16M 64k"]);
        let alloc0 = allocated(&p);
        let img = rw(&p);
        // Partial grains at both ends keep their place, written with zeros.
        img.write_zeroes(1000, 6 * MIB, true).unwrap();
        drop(img);
        assert!(
            allocated(&p) + 5 * MIB < alloc0,
            "zeroed_grain={zeroed}: {alloc0} -> {}",
            allocated(&p)
        );
        clean(&p);
        qemu_io(
            &p,
            &[
                "read -P 1 0 1000",
                "read -P 0 1000 6M",
                "read -P 1 6292456 1912088",
                "read -P 2 16M 64k",
            ],
        );
    }
    // Without unmap, a default image keeps its grains (zeros written in place).
    let p = sparse(&d, "keep.vmdk", 64 * MIB, false);
    qemu_io(&p, &["write -P 1 0 4M"]);
    let alloc0 = allocated(&p);
    rw(&p).write_zeroes(0, 4 * MIB, false).unwrap();
    assert!(allocated(&p) + MIB > alloc0, "no-unmap zero write freed");
    clean(&p);
    qemu_io(&p, &["read -P 0 0 4M"]);
}

#[test]
fn overlay_discards_leave_zeroed_grains_over_the_backing_file() {
    let d = Dir::new();
    let base = d.path("base.vmdk");
    qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "16M"]);
    qemu_io(&base, &["write -P 0xaa 0 16M"]);
    let top = d.path("top.vmdk");
    create(
        &top,
        16 * MIB,
        &CreateOptions {
            backing_file: Some("base.vmdk".into()),
            zeroed_grain: true,
            ..Default::default()
        },
    )
    .unwrap();
    let img = rw(&top);
    img.write_at(&vec![1u8; (4 * MIB) as usize], 0).unwrap();
    img.write_at(&vec![2u8; (2 * MIB) as usize], 8 * MIB)
        .unwrap();
    let before = len(&top);
    // The top grains: the file is cut; the middle: holes. The backing file stays hidden.
    img.discard(8 * MIB, 2 * MIB).unwrap();
    img.discard(GRAIN, 2 * MIB).unwrap();
    let mut buf = vec![0xffu8; (3 * MIB) as usize];
    img.read_at(&mut buf, 0).unwrap();
    assert!(buf[..GRAIN as usize].iter().all(|&b| b == 1));
    assert!(buf[GRAIN as usize..(GRAIN + 2 * MIB) as usize]
        .iter()
        .all(|&b| b == 0));
    drop(img);
    assert!(len(&top) + 2 * MIB <= before, "{before} -> {}", len(&top));
    clean(&top);
    qemu_io(
        &top,
        &[
            "read -P 1 0 64k",
            "read -P 0 64k 2M",
            "read -P 1 2112k 1984k",
            "read -P 0xaa 4M 4M",
            "read -P 0 8M 2M",
            "read -P 0xaa 10M 6M",
        ],
    );
}

#[test]
fn images_that_cannot_deallocate_say_why() {
    let d = Dir::new();
    // streamOptimized: compressed grains.
    let s = d.path("s.vmdk");
    create(
        &s,
        4 * MIB,
        &CreateOptions {
            subformat: Subformat::StreamOptimized,
            ..Default::default()
        },
    )
    .unwrap();
    let img = rw(&s);
    img.write_at(&vec![1u8; GRAIN as usize], 0).unwrap();
    assert!(!img.can_discard());
    let e = img.discard(0, GRAIN).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string().contains("compressed (streamOptimized)"),
        "{e}"
    );
    drop(img);
    // An overlay without zeroed-grain entries: the backing file would show through.
    let base = sparse(&d, "base.vmdk", 4 * MIB, false);
    let top = d.path("top.vmdk");
    create(
        &top,
        4 * MIB,
        &CreateOptions {
            backing_file: Some("base.vmdk".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let img = rw(&top);
    let e = img.discard(0, GRAIN).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("zeroed_grain=on"), "{e}");
    // Nothing to do is no error.
    img.discard(0, 0).unwrap();
    drop(img);
    // Read-only is read-only.
    let e = OpenOptions::new()
        .open(&base)
        .unwrap()
        .discard(0, GRAIN)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly, "{e}");
}

#[test]
fn flat_extents_punch_holes() {
    let d = Dir::new();
    let p = d.path("f.vmdk");
    create(
        &p,
        16 * MIB,
        &CreateOptions {
            subformat: Subformat::MonolithicFlat,
            ..Default::default()
        },
    )
    .unwrap();
    let flat = d.path("f-flat.vmdk");
    let img = rw(&p);
    img.write_at(&vec![7u8; (16 * MIB) as usize], 0).unwrap();
    img.flush().unwrap();
    let alloc0 = allocated(&flat);
    assert!(img.can_discard());
    img.discard(MIB, 4 * MIB).unwrap();
    img.write_zeroes(8 * MIB, 4 * MIB, true).unwrap();
    drop(img);
    assert!(
        allocated(&flat) + 7 * MIB < alloc0,
        "{alloc0} -> {}",
        allocated(&flat)
    );
    assert_eq!(len(&flat), 16 * MIB);
    qemu_io(
        &p,
        &[
            "read -P 7 0 1M",
            "read -P 0 1M 4M",
            "read -P 7 5M 3M",
            "read -P 0 8M 4M",
            "read -P 7 12M 4M",
        ],
    );
}

#[test]
fn cowd_gives_space_back() {
    let d = Dir::new();
    // A vmfsSparse (COWD) extent with 64 KiB grains, the first 4 MiB and 8-10 MiB stored.
    let mut disk = vec![0u8; (16 * MIB) as usize];
    disk[..(4 * MIB) as usize].fill(1);
    disk[(8 * MIB) as usize..(10 * MIB) as usize].fill(2);
    let p = build::write(
        d.0.path(),
        "c.vmdk",
        &build::cowd(&disk, 128, None, &build::nonzero),
    );
    let grown = len(&p);
    let img = rw(&p);
    img.discard(0, 2 * MIB).unwrap();
    // The freed grains take the next write, and the top ones go with the end of the file.
    img.write_at(&vec![3u8; (2 * MIB) as usize], 12 * MIB)
        .unwrap();
    img.discard(8 * MIB, 2 * MIB).unwrap();
    drop(img);
    assert!(len(&p) + 2 * MIB <= grown, "{grown} -> {}", len(&p));
    let mut model = vec![0u8; (16 * MIB) as usize];
    model[(2 * MIB) as usize..(4 * MIB) as usize].fill(1);
    model[(12 * MIB) as usize..(14 * MIB) as usize].fill(3);
    assert_same("cowd", &our_raw(&p), &model);
    // qemu does not check COWD extents; ours must be clean.
    let r = vmdk::check(&OpenOptions::new().open(&p).unwrap()).unwrap();
    assert!(r.is_clean(), "{:?} {:?}", r.corruptions, r.leaks);
}

/// Two grain-table entries sharing one grain (a corrupt image): clearing one must not give
/// the grain back, or the other entry would read zeros, or a later write's data.
#[test]
fn a_grain_another_entry_shares_is_never_given_back() {
    let d = Dir::new();
    let p = d.path("c.vmdk");
    qemu_img(&["create", "-f", "vmdk", p.to_str().unwrap(), "4M"]);
    qemu_io(&p, &["write -P 1 0 64k", "write -P 2 64k 64k"]);
    // Grain 1's entries (both tables) point at grain 0's place.
    let bytes = std::fs::read(&p).unwrap();
    let h = vmdk::format::sparse_header::SparseHeader::parse(&bytes).unwrap();
    let u32_at = |off: u64| {
        let o = off as usize;
        u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as u64
    };
    let s = vmdk::FileStorage::open(&p, true).unwrap();
    for gd in [h.gd_offset, h.rgd_offset] {
        let gt = u32_at(gd * 512) * 512;
        let g0 = u32_at(gt);
        s.write_at(&(g0 as u32).to_le_bytes(), gt + 4).unwrap();
    }
    drop(s);
    let img = rw(&p);
    img.discard(0, GRAIN).unwrap();
    img.write_at(&vec![9u8; (2 * MIB) as usize], 2 * MIB)
        .unwrap();
    let mut buf = vec![0u8; GRAIN as usize];
    img.read_at(&mut buf, GRAIN).unwrap();
    assert!(
        buf.iter().all(|&b| b == 1),
        "the shared grain was given away"
    );
    drop(img);
    qemu_io(&p, &["read -P 1 64k 64k", "read -P 9 2M 2M"]);
}

/// Writers and discarders work on their own stripes of grains while readers read: freed
/// places are handed from one stripe to another all the time, and no stripe ever reads
/// another's bytes; the result equals the model and checks clean.
#[test]
fn concurrent_discards_writes_and_reads_keep_grains_apart() {
    let d = Dir::new();
    let p = sparse(&d, "t.vmdk", 32 * MIB, false);
    let img = Arc::new(rw(&p));
    let threads = 4u64;
    let rounds = 40u64;
    let stripe = 4 * GRAIN;
    std::thread::scope(|s| {
        for t in 0..threads {
            let img = img.clone();
            s.spawn(move || {
                let base = t * 8 * MIB;
                for r in 0..rounds {
                    let fill = (t * rounds + r) as u8 | 1;
                    let at = base + (r % 16) * stripe;
                    img.write_at(&vec![fill; stripe as usize], at).unwrap();
                    let mut buf = vec![0u8; stripe as usize];
                    img.read_at(&mut buf, at).unwrap();
                    assert!(buf.iter().all(|&b| b == fill), "thread {t} round {r}");
                    if r % 3 != 2 {
                        img.discard(at, stripe).unwrap();
                    }
                }
            });
        }
        for k in 0..2u64 {
            let img = img.clone();
            s.spawn(move || {
                let mut buf = vec![0u8; (3 * GRAIN) as usize];
                for i in 0..200u64 {
                    let at = (i * 7 + k) * GRAIN % (32 * MIB - 3 * GRAIN);
                    img.read_at(&mut buf, at).unwrap();
                    // Every byte is zero or written by the thread owning its stripe.
                    for (j, &b) in buf.iter().enumerate() {
                        let owner = (at + j as u64) / (8 * MIB);
                        assert!(
                            b == 0 || (b as u64 - 1) / rounds == owner,
                            "byte {} reads {b}, written by another thread",
                            at + j as u64
                        );
                    }
                }
            });
        }
    });
    img.flush().unwrap();
    drop(img);
    let mut model = vec![0u8; (32 * MIB) as usize];
    for t in 0..threads {
        for r in 0..rounds {
            let at = (t * 8 * MIB + (r % 16) * stripe) as usize;
            let fill = if r % 3 != 2 {
                0
            } else {
                (t * rounds + r) as u8 | 1
            };
            model[at..at + stripe as usize].fill(fill);
        }
    }
    assert_same("concurrent", &our_raw(&p), &model);
    assert_same("concurrent (qemu)", &qemu_raw(&p), &model);
    clean(&p);
}

/// A read (or write) of host bytes covering `at` that stops half-way: it says so on
/// `reached` and waits for `go` before going on.
struct Pause {
    at: u64,
    write: bool,
    reached: Sender<()>,
    go: Receiver<()>,
}

#[derive(Debug)]
struct Pausing {
    inner: Arc<dyn Storage>,
    pause: Arc<Mutex<Option<Pause>>>,
}

impl std::fmt::Debug for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pause at {}", self.at)
    }
}

impl Pausing {
    fn maybe_pause(&self, offset: u64, len: usize, write: bool) {
        let hit = {
            let mut p = self.pause.lock().unwrap();
            match &*p {
                Some(x) if x.write == write && offset <= x.at && x.at < offset + len as u64 => {
                    p.take()
                }
                _ => None,
            }
        };
        if let Some(p) = hit {
            p.reached.send(()).unwrap();
            p.go.recv().unwrap();
        }
    }
}

impl Storage for Pausing {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.maybe_pause(offset, buf.len(), false);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.maybe_pause(offset, buf.len(), true);
        self.inner.write_at(buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<bool> {
        self.inner.punch_hole(offset, len)
    }
    fn seek_data(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.inner.seek_data(offset)
    }
    fn seek_hole(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.inner.seek_hole(offset)
    }
}

/// Host files whose reads can be paused.
#[derive(Debug)]
struct PausingNamespace {
    pause: Arc<Mutex<Option<Pause>>>,
}

impl Namespace for PausingNamespace {
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
        Ok(Arc::new(Pausing {
            inner: LocalNamespace.open(name, mode)?,
            pause: self.pause.clone(),
        }))
    }
    fn create(&self, _name: &Path, _lock: bool) -> vmdk::Result<Arc<dyn Storage>> {
        unreachable!("the test only opens")
    }
    fn remove(&self, _name: &Path) -> vmdk::Result<()> {
        unreachable!("the test only opens")
    }
    fn identity(&self, name: &Path) -> vmdk::Result<Option<FileId>> {
        LocalNamespace.identity(name)
    }
}

/// Grain 0 stored at its host place, and an image whose reads or writes there can be paused.
fn pausable(d: &Dir) -> (PathBuf, u64, Arc<Mutex<Option<Pause>>>, Arc<vmdk::Image>) {
    let p = sparse(d, "r.vmdk", 16 * MIB, false);
    qemu_io(&p, &["write -P 1 0 64k", "write -P 2 64k 64k"]);
    let host = {
        let img = OpenOptions::new().open(&p).unwrap();
        match &img.map(0, GRAIN).unwrap()[0].target {
            vmdk::MapTarget::Data { offset, .. } => *offset,
            t => panic!("grain 0 is {t:?}"),
        }
    };
    let pause = Arc::new(Mutex::new(None));
    let img = Arc::new(
        OpenOptions::new()
            .writable(true)
            .in_namespace(Arc::new(PausingNamespace {
                pause: pause.clone(),
            }))
            .open(&p)
            .unwrap(),
    );
    (p, host, pause, img)
}

/// While `user` is paused using grain 0's place, discard grain 0 and write a new grain
/// (which would take the place): that must wait until `user` is done.
fn discard_meanwhile<T: Send + 'static>(
    host: u64,
    write: bool,
    pause: &Mutex<Option<Pause>>,
    img: &Arc<vmdk::Image>,
    user: impl FnOnce(&vmdk::Image) -> T + Send + 'static,
) -> T {
    let (reached_tx, reached) = channel();
    let (go, go_rx) = channel();
    *pause.lock().unwrap() = Some(Pause {
        at: host,
        write,
        reached: reached_tx,
        go: go_rx,
    });
    let user = {
        let img = img.clone();
        std::thread::spawn(move || user(&img))
    };
    reached.recv_timeout(Duration::from_secs(20)).unwrap();
    let (done_tx, done) = channel();
    let writer = {
        let img = img.clone();
        std::thread::spawn(move || {
            img.discard(0, GRAIN).unwrap();
            img.write_at(&vec![9u8; GRAIN as usize], 8 * MIB).unwrap();
            done_tx.send(()).unwrap();
        })
    };
    assert!(
        done.recv_timeout(Duration::from_millis(300)).is_err(),
        "the discard gave the place back while it was in use"
    );
    go.send(()).unwrap();
    let out = user.join().unwrap();
    writer.join().unwrap();
    out
}

/// A read that looked grain 0 up before a discard cleared it is still reading the old
/// place when the discard gives it back and a write to another grain takes it: the discard
/// waits for the read, which returns the old bytes, never the new grain's.
#[test]
fn a_read_in_flight_keeps_its_grain_from_being_reused() {
    let d = Dir::new();
    let (p, host, pause, img) = pausable(&d);
    let buf = discard_meanwhile(host, false, &pause, &img, |img| {
        let mut buf = vec![0u8; GRAIN as usize];
        img.read_at(&mut buf, 0).unwrap();
        buf
    });
    assert!(
        buf.iter().all(|&b| b == 1),
        "the read saw another grain's bytes"
    );
    drop(img);
    clean(&p);
    qemu_io(
        &p,
        &["read -P 0 0 64k", "read -P 2 64k 64k", "read -P 9 8M 64k"],
    );
}

/// The same for a write in place: it lands in grain 0's old place before anyone else may
/// have it (and is then discarded with the grain), never in the new grain.
#[test]
fn a_write_in_flight_keeps_its_grain_from_being_reused() {
    let d = Dir::new();
    let (p, host, pause, img) = pausable(&d);
    discard_meanwhile(host, true, &pause, &img, |img| {
        img.write_at(&[5u8; 4096], 0).unwrap();
    });
    drop(img);
    clean(&p);
    qemu_io(
        &p,
        &["read -P 0 0 64k", "read -P 2 64k 64k", "read -P 9 8M 64k"],
    );
}
