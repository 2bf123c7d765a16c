//! Power-loss testing: a namespace that records every change an operation makes to its
//! files, and the files a power loss at any point could leave behind.
//!
//! The model is SQLite's crash-test VFS and ALICE's: every write, `set_len`, `punch_hole`
//! and `flush` is logged per file, in the order the operation issued them. A power loss
//! after event `cut` leaves, for each file, everything before that file's last flush
//! (before `cut`) as it was written, and each change after that flush kept or lost
//! independently of the others (kept ones land in their order). A flush makes only its own
//! file durable: it says nothing about any other. Creating and removing files are taken to
//! be durable at once (the directory operations are not what is under test).
//!
//! [`Run::verify`] goes through the states worth checking (every flush boundary with all and
//! with none of the unflushed changes kept, every prefix of short logs, and random cuts with
//! random subsets lost), and for each distinct one checks what [`Verify`] asks: the images
//! open, check clean but for leaks, and every guest sector holds one of the contents it was
//! allowed to hold ([`Allowed`]).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vmdk::format::descriptor::Descriptor;
use vmdk::storage::paths::normalize_lexically;
use vmdk::{FileId, Image, MapTarget, MemNamespace, Namespace, OpenMode, OpenOptions, Storage};

use super::Rng;

/// A set of files by name: the state of a namespace.
pub type Files = BTreeMap<PathBuf, Vec<u8>>;

/// One change an operation made.
#[derive(Debug, Clone)]
pub enum Kind {
    Write {
        at: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    Punch {
        at: u64,
        len: u64,
    },
    Flush,
    /// The file was created (or emptied): durable at once.
    Create,
    /// The file was removed: durable at once.
    Remove,
}

/// A change to one file.
#[derive(Debug, Clone)]
pub struct Event {
    pub file: PathBuf,
    pub kind: Kind,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.file.file_name().unwrap_or_default().to_string_lossy();
        match &self.kind {
            Kind::Write { at, data } => write!(f, "{name}: write {} bytes at {at}", data.len()),
            Kind::SetLen(l) => write!(f, "{name}: set_len {l}"),
            Kind::Punch { at, len } => write!(f, "{name}: punch {len} bytes at {at}"),
            Kind::Flush => write!(f, "{name}: flush"),
            Kind::Create => write!(f, "{name}: create"),
            Kind::Remove => write!(f, "{name}: remove"),
        }
    }
}

type Log = Arc<Mutex<Vec<Event>>>;

fn lock(log: &Log) -> MutexGuard<'_, Vec<Event>> {
    log.lock().unwrap_or_else(|e| e.into_inner())
}

/// In-memory files whose every change is logged (see the module docs).
pub struct CrashNamespace {
    inner: MemNamespace,
    log: Log,
}

impl std::fmt::Debug for CrashNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashNamespace").finish_non_exhaustive()
    }
}

impl CrashNamespace {
    /// A namespace holding `files`, with an empty log.
    pub fn new(files: &Files) -> Arc<Self> {
        let inner = MemNamespace::new();
        for (name, data) in files {
            inner.insert(name, data.clone());
        }
        Arc::new(CrashNamespace {
            inner,
            log: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Options opening images in this namespace.
    pub fn opts(self: &Arc<Self>) -> OpenOptions {
        OpenOptions::new().in_namespace(self.clone() as Arc<dyn Namespace>)
    }

    /// This namespace, as the library takes it.
    pub fn dyn_ns(self: &Arc<Self>) -> Arc<dyn Namespace> {
        self.clone()
    }

    /// Every change so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.log).clone()
    }

    /// The files as they are now (nothing lost).
    pub fn files(&self) -> Files {
        files_of(&self.inner)
    }

    fn wrap(&self, inner: Arc<dyn Storage>, name: &Path) -> Arc<dyn Storage> {
        Arc::new(Recording {
            inner,
            file: normalize_lexically(name),
            log: self.log.clone(),
        })
    }
}

impl Namespace for CrashNamespace {
    fn open(&self, name: &Path, mode: OpenMode) -> vmdk::Result<Arc<dyn Storage>> {
        Ok(self.wrap(self.inner.open(name, mode)?, name))
    }
    fn create(&self, name: &Path, lock_it: bool) -> vmdk::Result<Arc<dyn Storage>> {
        let mut log = lock(&self.log);
        let s = self.inner.create(name, lock_it)?;
        log.push(Event {
            file: normalize_lexically(name),
            kind: Kind::Create,
        });
        drop(log);
        Ok(self.wrap(s, name))
    }
    fn remove(&self, name: &Path) -> vmdk::Result<()> {
        let mut log = lock(&self.log);
        self.inner.remove(name)?;
        log.push(Event {
            file: normalize_lexically(name),
            kind: Kind::Remove,
        });
        Ok(())
    }
    fn identity(&self, name: &Path) -> vmdk::Result<Option<FileId>> {
        self.inner.identity(name)
    }
}

/// One open file of a [`CrashNamespace`]: changes are applied and logged under one lock,
/// so the log's order is the order they landed in.
struct Recording {
    inner: Arc<dyn Storage>,
    file: PathBuf,
    log: Log,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Recording {
    fn push(&self, log: &mut Vec<Event>, kind: Kind) {
        log.push(Event {
            file: self.file.clone(),
            kind,
        });
    }
}

impl Storage for Recording {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut log = lock(&self.log);
        self.inner.write_at(buf, offset)?;
        self.push(
            &mut log,
            Kind::Write {
                at: offset,
                data: buf.to_vec(),
            },
        );
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut log = lock(&self.log);
        self.inner.set_len(len)?;
        self.push(&mut log, Kind::SetLen(len));
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let mut log = lock(&self.log);
        self.inner.flush()?;
        self.push(&mut log, Kind::Flush);
        Ok(())
    }
    fn file_id(&self) -> Option<FileId> {
        self.inner.file_id()
    }
    /// Memory can have holes too: the range reads as zeros, the length stays.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        let mut log = lock(&self.log);
        punch(&*self.inner, offset, len)?;
        self.push(&mut log, Kind::Punch { at: offset, len });
        Ok(true)
    }
}

fn punch(s: &dyn Storage, offset: u64, len: u64) -> io::Result<()> {
    let end = s.len()?.min(offset.saturating_add(len));
    if offset < end {
        s.write_at(&vec![0u8; (end - offset) as usize], offset)?;
    }
    Ok(())
}

/// The files of a memory namespace.
pub fn files_of(ns: &MemNamespace) -> Files {
    ns.names()
        .into_iter()
        .map(|n| {
            let data = ns.get(&n).expect("listed");
            (n, data)
        })
        .collect()
}

/// A memory namespace holding `files`.
pub fn mem_of(files: &Files) -> Arc<MemNamespace> {
    let ns = MemNamespace::new();
    for (name, data) in files {
        ns.insert(name, data.clone());
    }
    Arc::new(ns)
}

/// The files of host directory `dir` as `/d/NAME` (images made with qemu-img).
pub fn load_dir(dir: &Path) -> Files {
    let mut files = Files::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            files.insert(
                Path::new("/d").join(e.file_name()),
                std::fs::read(e.path()).unwrap(),
            );
        }
    }
    files
}

/// Write `files` into host directory `dir` (for qemu-img), `/d/NAME` as `dir/NAME`.
pub fn store_dir(files: &Files, dir: &Path) {
    for (name, data) in files {
        std::fs::write(dir.join(name.file_name().unwrap()), data).unwrap();
    }
}

/// Options for reading images in `ns`.
pub fn opts_in(ns: &Arc<MemNamespace>) -> OpenOptions {
    OpenOptions::new().in_namespace(ns.clone() as Arc<dyn Namespace>)
}

/// The guest view of `image` among `files` (with its backing chain when `chain`).
pub fn view(files: &Files, image: &str, chain: bool) -> Vec<u8> {
    let ns = mem_of(files);
    let img = opts_in(&ns)
        .open_backing(chain)
        .ignore_cid_mismatch(true)
        .open(image)
        .unwrap_or_else(|e| panic!("open {image}: {e:#}"));
    read_all(&img, u64::MAX).unwrap_or_else(|e| panic!("read {image}: {e:#}"))
}

/// The guest view of `image` through a live namespace (between the steps of an operation).
pub fn view_in(ns: &Arc<dyn Namespace>, image: &str, chain: bool) -> Vec<u8> {
    let img = OpenOptions::new()
        .in_namespace(ns.clone())
        .open_backing(chain)
        .ignore_cid_mismatch(true)
        .force_share(true)
        .open(image)
        .unwrap_or_else(|e| panic!("open {image}: {e:#}"));
    read_all(&img, u64::MAX).unwrap_or_else(|e| panic!("read {image}: {e:#}"))
}

/// The first `limit` bytes of the guest view (at most its size).
pub fn read_all(img: &Image, limit: u64) -> vmdk::Result<Vec<u8>> {
    let len = img.size().min(limit) as usize;
    let mut buf = vec![0u8; len];
    let chunk = 1 << 20;
    let mut off = 0;
    while off < len {
        let n = chunk.min(len - off);
        img.read_at(&mut buf[off..off + n], off as u64)?;
        off += n;
    }
    Ok(buf)
}

const SECTOR: usize = 512;

fn hash(bytes: &[u8]) -> u64 {
    // FNV-1a over 8-byte words: fast enough at opt-level 1, and collisions between the few
    // versions of one sector do not matter in practice.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for w in words.by_ref() {
        h = (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn sector_hash(s: &[u8]) -> u64 {
    if s.len() == SECTOR {
        hash(s)
    } else {
        hash(s) ^ 1
    }
}

/// What a guest may see after a power loss: each sector holds what it held in one of the
/// versions (independently of its neighbours), and the disk has one of their sizes. Beyond
/// the bytes of every version (`zeros_beyond`), the disk reads as zeros: a grown disk's new
/// range, checked through the map rather than read byte by byte.
#[derive(Debug, Clone)]
pub struct Allowed {
    sizes: Vec<u64>,
    sectors: Vec<Vec<u64>>,
}

impl Allowed {
    /// Any sector of any of `versions`.
    pub fn any_of(versions: &[&[u8]]) -> Self {
        Self::with_sizes(versions, &[])
    }

    /// Exactly `v`.
    pub fn exactly(v: &[u8]) -> Self {
        Self::any_of(&[v])
    }

    /// Any of `versions`, and also the sizes `more_sizes`, past the versions' bytes reading
    /// as zeros.
    pub fn with_sizes(versions: &[&[u8]], more_sizes: &[u64]) -> Self {
        let longest = versions.iter().map(|v| v.len()).max().unwrap_or(0);
        let mut a = Allowed {
            sizes: versions.iter().map(|v| v.len() as u64).collect(),
            sectors: vec![Vec::new(); longest.div_ceil(SECTOR)],
        };
        for v in versions {
            for (i, s) in v.chunks(SECTOR).enumerate() {
                a.allow(i, s);
            }
        }
        a.sizes.extend_from_slice(more_sizes);
        a.sizes.sort_unstable();
        a.sizes.dedup();
        a
    }

    /// What a disk may hold after a power loss part-way through a series of writes none of
    /// which was flushed: `versions[0]` before them, `versions[k + 1]` after the `k`th,
    /// which changed `ranges[k]` (bytes). Each write may be lost or kept on its own, so a
    /// sector holds `versions[0]` with any subset of the writes touching it applied in
    /// order (a write is whole within a sector: each lands in one storage write there).
    pub fn writes(versions: &[&[u8]], ranges: &[(u64, u64)]) -> Self {
        assert_eq!(versions.len(), ranges.len() + 1);
        let len = versions[0].len();
        assert!(versions.iter().all(|v| v.len() == len));
        let mut a = Self::any_of(&[versions[0]]);
        for i in 0..len.div_ceil(SECTOR) {
            let (s0, s1) = (i * SECTOR, ((i + 1) * SECTOR).min(len));
            let touching: Vec<usize> = (0..ranges.len())
                .filter(|&k| {
                    let (a, b) = ranges[k];
                    (a as usize) < s1 && (b as usize) > s0
                })
                .collect();
            assert!(touching.len() <= 12, "too many writes over sector {i}");
            for subset in 0..1u32 << touching.len() {
                let mut sector = versions[0][s0..s1].to_vec();
                for (bit, &k) in touching.iter().enumerate() {
                    if subset & (1 << bit) != 0 {
                        let (a, b) = ranges[k];
                        let from = (a as usize).max(s0);
                        let to = (b as usize).min(s1);
                        sector[from - s0..to - s0].copy_from_slice(&versions[k + 1][from..to]);
                    }
                }
                a.allow(i, &sector);
            }
        }
        a
    }

    fn allow(&mut self, i: usize, s: &[u8]) {
        let h = sector_hash(s);
        if !self.sectors[i].contains(&h) {
            self.sectors[i].push(h);
        }
    }

    /// Bytes held by the versions (the rest must read as zeros).
    fn stored(&self) -> u64 {
        (self.sectors.len() * SECTOR) as u64
    }

    /// Check `img` against these versions; `Err` describes the first difference.
    pub fn check(&self, img: &Image) -> Result<(), String> {
        let size = img.size();
        if !self.sizes.contains(&size) {
            return Err(format!(
                "the disk has {size} bytes, not one of {:?}",
                self.sizes
            ));
        }
        let stored = size.min(self.stored());
        let data = read_all(img, stored).map_err(|e| format!("read failed: {e:#}"))?;
        for (i, s) in data.chunks(SECTOR).enumerate() {
            if !self.sectors[i].contains(&sector_hash(s)) {
                let first = s.iter().position(|&b| b != 0);
                return Err(format!(
                    "sector {i} (byte {}) holds none of its {} allowed contents (first \
                     non-zero byte at {first:?}, {:02x?}...)",
                    i * SECTOR,
                    self.sectors[i].len(),
                    &s[..16.min(s.len())]
                ));
            }
        }
        if size > stored {
            zeros_beyond(img, stored, size)?;
        }
        Ok(())
    }
}

/// `[from, to)` of `img` reads as zeros (walked through the map, data stretches read).
fn zeros_beyond(img: &Image, from: u64, to: u64) -> Result<(), String> {
    let mut pos = from;
    while pos < to {
        let entries = img
            .map_prefix(pos, to - pos, 1024)
            .map_err(|e| format!("map failed at {pos}: {e:#}"))?;
        let Some(last) = entries.last() else {
            return Err(format!("map made no progress at {pos}"));
        };
        for e in &entries {
            if matches!(e.target, MapTarget::Unallocated | MapTarget::Zero) {
                continue;
            }
            let mut at = e.start;
            while at < e.start + e.length {
                let n = (e.start + e.length - at).min(1 << 20);
                let mut buf = vec![0u8; n as usize];
                img.read_at(&mut buf, at)
                    .map_err(|err| format!("read failed at {at}: {err:#}"))?;
                if let Some(i) = buf.iter().position(|&b| b != 0) {
                    return Err(format!(
                        "byte {} of the new range holds {:#04x}, not zero",
                        at + i as u64,
                        buf[i]
                    ));
                }
                at += n;
            }
        }
        pos = last.start + last.length;
    }
    Ok(())
}

/// One image to check in every state.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Its name (`/d/...`).
    pub image: String,
    /// Read through its backing chain.
    pub chain: bool,
    /// What its guest may see.
    pub allowed: Allowed,
}

impl Expect {
    pub fn new(image: &str, chain: bool, allowed: Allowed) -> Self {
        Expect {
            image: image.to_string(),
            chain,
            allowed,
        }
    }
}

/// What every state must satisfy.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    /// The images, opened and read.
    pub expects: Vec<Expect>,
    /// Images (each alone) that must check clean but for leaks; the expected images are
    /// checked anyway.
    pub also_check: Vec<String>,
    /// Open children whose `parentCID` no longer matches (commit changes the base before
    /// the overlay). The final state is always opened strictly.
    pub cid_tolerant: bool,
    /// Even the finished operation leaves a child's `parentCID` stale (commit -b leaves the
    /// images between the top and the base stale, by design).
    pub stale_at_end: bool,
    /// The images need not exist or open yet (create): a state whose images do not open is
    /// fine, one whose images open must satisfy the rest.
    pub may_not_open: bool,
    /// Corruptions the start already had (repairing them): a state may have at most these.
    pub corruptions_allowed: u64,
    /// The operation leaves every change durable when it returns (each file flushed after
    /// its last change).
    pub durable_on_return: bool,
    /// Random cuts to try on top of the flush boundaries (0: the default,
    /// [`default_random_cuts`]).
    pub random_cuts: usize,
    /// Every this many distinct states, also `qemu-img check` each image (0: never).
    pub qemu_every: usize,
}

/// Random cuts per operation: `VMDK_CRASH_CUTS` or 200.
pub fn default_random_cuts() -> usize {
    std::env::var("VMDK_CRASH_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// `VMDK_CRASH_TEAR`: also tear writes into pieces of this many bytes (off by default).
pub fn tear_size() -> Option<u64> {
    std::env::var("VMDK_CRASH_TEAR")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&t| t > 0)
}

/// Which unflushed changes a state keeps.
#[derive(Debug, Clone)]
pub enum Keep {
    All,
    None,
    /// Kept unless listed (event indices).
    AllBut(Vec<usize>),
    /// Kept unless the predicate says lost.
    Lose(fn(&Event) -> bool),
}

impl Keep {
    fn keeps(&self, i: usize, e: &Event) -> bool {
        match self {
            Keep::All => true,
            Keep::None => false,
            Keep::AllBut(lost) => !lost.contains(&i),
            Keep::Lose(lost) => !lost(e),
        }
    }
}

/// A state after a power loss: the log cut after `cut` events, the unflushed ones kept as
/// `keep` says.
#[derive(Debug, Clone)]
pub struct Cut {
    pub cut: usize,
    pub keep: Keep,
}

/// An operation's recorded changes.
#[derive(Debug, Clone)]
pub struct Run {
    /// The files before.
    pub start: Files,
    /// Every change, in order.
    pub events: Vec<Event>,
    /// The files after (nothing lost).
    pub end: Files,
}

/// Run `op` over `start` in a recording namespace.
pub fn record(start: &Files, op: impl FnOnce(&Arc<CrashNamespace>)) -> Run {
    let ns = CrashNamespace::new(start);
    op(&ns);
    Run {
        start: start.clone(),
        events: ns.events(),
        end: ns.files(),
    }
}

/// What [`Run::verify`] went through.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried {
    /// States generated.
    pub cuts: usize,
    /// Distinct ones among them (each checked).
    pub distinct: usize,
    /// Flushes in the log.
    pub flushes: usize,
    /// Events in the log.
    pub events: usize,
}

impl Run {
    /// Indices of the events that are flushes.
    pub fn flushes(&self) -> Vec<usize> {
        (0..self.events.len())
            .filter(|&i| matches!(self.events[i].kind, Kind::Flush))
            .collect()
    }

    /// For the first `cut` events, whether each is durable (before its file's last flush
    /// before `cut`).
    pub fn durable(&self, cut: usize) -> Vec<bool> {
        let mut last: BTreeMap<&Path, usize> = BTreeMap::new();
        for (i, e) in self.events[..cut].iter().enumerate() {
            if matches!(e.kind, Kind::Flush) {
                last.insert(&e.file, i);
            }
        }
        self.events[..cut]
            .iter()
            .enumerate()
            .map(|(i, e)| match e.kind {
                Kind::Flush | Kind::Create | Kind::Remove => true,
                _ => last.get(e.file.as_path()).is_some_and(|&l| i < l),
            })
            .collect()
    }

    /// The files a power loss leaves in state `c`.
    pub fn state(&self, c: &Cut) -> Files {
        let durable = self.durable(c.cut);
        let mut files = self.start.clone();
        for (i, e) in self.events[..c.cut].iter().enumerate() {
            let kept = durable[i] || c.keep.keeps(i, e);
            if kept {
                apply(&mut files, e);
            }
        }
        files
    }

    /// The unflushed events of state `c` it loses.
    pub fn lost(&self, c: &Cut) -> Vec<usize> {
        let durable = self.durable(c.cut);
        (0..c.cut)
            .filter(|&i| !durable[i] && !c.keep.keeps(i, &self.events[i]))
            .collect()
    }

    /// A description of state `c` precise enough to build it again (for a regression test).
    pub fn describe(&self, c: &Cut) -> String {
        let mut s = format!(
            "power lost after event {} of {}; unflushed changes lost: ",
            c.cut,
            self.events.len()
        );
        let lost = self.lost(c);
        if lost.is_empty() {
            s.push_str("none");
        }
        for i in &lost {
            let _ = write!(s, "\n    #{i} {}", self.events[*i]);
        }
        s.push_str("\n  the log up to there:");
        let from = c.cut.saturating_sub(12);
        for (i, e) in self.events[from..c.cut].iter().enumerate() {
            let _ = write!(s, "\n    #{} {e}", from + i);
        }
        s
    }

    /// The states worth checking: every flush boundary (and the end) with all and with none
    /// of the unflushed changes kept, every prefix when the log is short, and `random`
    /// random cuts with random subsets lost (seeded by `seed`).
    pub fn cuts(&self, random: usize, seed: u64) -> Vec<Cut> {
        let n = self.events.len();
        let mut out = Vec::new();
        let mut boundaries: Vec<usize> = self.flushes();
        boundaries.push(n);
        for &b in &boundaries {
            out.push(Cut {
                cut: b,
                keep: Keep::All,
            });
            out.push(Cut {
                cut: b,
                keep: Keep::None,
            });
        }
        if n <= 300 {
            for cut in 0..n {
                out.push(Cut {
                    cut,
                    keep: Keep::All,
                });
            }
        }
        let mut rng = Rng(seed);
        for _ in 0..random {
            let cut = rng.below(n as u64 + 1) as usize;
            let durable = self.durable(cut);
            // Lose few, about half, or most of the unflushed changes.
            let p = [10, 50, 90][rng.below(3) as usize];
            let lost: Vec<usize> = (0..cut)
                .filter(|&i| !durable[i] && rng.below(100) < p)
                .collect();
            out.push(Cut {
                cut,
                keep: Keep::AllBut(lost),
            });
        }
        out
    }

    /// Check every state of [`Run::cuts`] against `v`, panicking with every failure found
    /// (each described with [`Run::describe`]). `name` seeds the random cuts and names the
    /// run in the summary printed.
    pub fn verify(&self, name: &str, v: &Verify) -> Tried {
        let seed = std::env::var("VMDK_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
            ^ hash(name.as_bytes());
        let random = if v.random_cuts > 0 {
            v.random_cuts
        } else {
            default_random_cuts()
        };
        assert!(
            self.events.iter().any(|e| !matches!(e.kind, Kind::Flush)),
            "{name}: the operation changed nothing"
        );
        let descriptors = self.descriptors(v);
        let mut failures = Vec::new();
        // The finished operation: everything kept opens strictly, and if the operation says
        // so, losing every unflushed change loses nothing.
        let end = Cut {
            cut: self.events.len(),
            keep: Keep::All,
        };
        let strict = Verify {
            cid_tolerant: v.stale_at_end,
            may_not_open: false,
            corruptions_allowed: 0,
            ..v.clone()
        };
        if let Err(e) = check_state(&self.end, &strict, &descriptors, None) {
            failures.push(format!("the finished operation: {e}"));
        }
        if v.durable_on_return {
            let none = Cut {
                cut: self.events.len(),
                keep: Keep::None,
            };
            let lost = self.lost(&none);
            if !lost.is_empty() {
                failures.push(format!(
                    "changes not durable when the operation returned:\n  {}",
                    self.describe(&none)
                ));
            }
        }
        debug_assert!(self.state(&end) == self.end);
        let mut seen = HashSet::new();
        let mut tried = Tried {
            flushes: self.flushes().len(),
            events: self.events.len(),
            ..Default::default()
        };
        let qemu_dir = (v.qemu_every > 0).then(|| tempfile::tempdir().unwrap());
        // Whole writes, then (with `VMDK_CRASH_TEAR`) writes torn into pieces of that many
        // bytes, each kept or lost on its own.
        let torn = tear_size().map(|t| self.torn(t));
        let runs = std::iter::once((self, seed)).chain(torn.as_ref().map(|t| (t, seed ^ 1)));
        'runs: for (run, seed) in runs {
            let cuts = run.cuts(random, seed);
            tried.cuts += cuts.len();
            for c in &cuts {
                let files = run.state(c);
                if !seen.insert(files_hash(&files)) {
                    continue;
                }
                tried.distinct += 1;
                let qemu = qemu_dir
                    .as_ref()
                    .filter(|_| tried.distinct % v.qemu_every == 1 % v.qemu_every)
                    .map(|d| d.path());
                if let Err(e) = check_state(&files, v, &descriptors, qemu) {
                    failures.push(format!("{e}\n  {}", run.describe(c)));
                    if failures.len() >= 5 {
                        break 'runs;
                    }
                }
            }
        }
        eprintln!(
            "crash {name}: {} events, {} flushes, {} cuts, {} distinct states checked",
            tried.events, tried.flushes, tried.cuts, tried.distinct
        );
        if !failures.is_empty() {
            panic!(
                "{name}: {} failing state(s):\n{}",
                failures.len(),
                failures.join("\n\n")
            );
        }
        tried
    }

    /// The same changes with every write cut into pieces at multiples of `size` bytes of
    /// its file (a device that keeps only some sectors of a write).
    pub fn torn(&self, size: u64) -> Run {
        let mut events = Vec::new();
        for e in &self.events {
            match &e.kind {
                Kind::Write { at, data } => {
                    let mut pos = *at;
                    let end = at + data.len() as u64;
                    while pos < end {
                        let next = ((pos / size + 1) * size).min(end);
                        let piece = data[(pos - at) as usize..(next - at) as usize].to_vec();
                        events.push(Event {
                            file: e.file.clone(),
                            kind: Kind::Write {
                                at: pos,
                                data: piece,
                            },
                        });
                        pos = next;
                    }
                }
                _ => events.push(e.clone()),
            }
        }
        Run {
            start: self.start.clone(),
            events,
            end: self.end.clone(),
        }
    }

    /// Check the states of one family (a regression test): a cut after every event, with
    /// the unflushed changes `lost` picks lost and the rest kept.
    pub fn verify_every_cut(&self, name: &str, v: &Verify, lost: fn(&Event) -> bool) {
        let descriptors = self.descriptors(v);
        let mut seen = HashSet::new();
        for cut in 0..=self.events.len() {
            let c = Cut {
                cut,
                keep: Keep::Lose(lost),
            };
            let files = self.state(&c);
            if !seen.insert(files_hash(&files)) {
                continue;
            }
            if let Err(e) = check_state(&files, v, &descriptors, None) {
                panic!("{name}: {e}\n  {}", self.describe(&c));
            }
        }
    }
}

/// The descriptors each checked image may have: one it had at some point of the operation
/// (never a mix of two, nor one cut short).
type Descriptors = BTreeMap<String, Vec<Descriptor>>;

impl Run {
    fn descriptors(&self, v: &Verify) -> Descriptors {
        let mut out = Descriptors::new();
        for name in v.images() {
            let key = normalize_lexically(Path::new(name));
            // Where the descriptor lies in its file: an embedded one in its sectors, a
            // descriptor file anywhere.
            let region = [&self.start, &self.end]
                .iter()
                .filter_map(|f| f.get(&key))
                .find_map(|bytes| {
                    let h = vmdk::format::sparse_header::SparseHeader::parse(bytes).ok()?;
                    Some((h.desc_offset * 512, (h.desc_offset + h.desc_size) * 512))
                });
            let touches = |e: &Event| {
                e.file == key
                    && match (&e.kind, region) {
                        (_, None) => true,
                        (Kind::Write { at, data }, Some((a, b))) => {
                            *at < b && at + data.len() as u64 > a
                        }
                        (Kind::Punch { at, len }, Some((a, b))) => *at < b && at + len > a,
                        (Kind::Flush, _) => false,
                        _ => true,
                    }
            };
            let mut list: Vec<Descriptor> = Vec::new();
            let mut add = |files: &Files| {
                let ns = mem_of(files);
                let opened = opts_in(&ns)
                    .open_backing(false)
                    .ignore_cid_mismatch(true)
                    .open(name);
                if let Ok(img) = opened {
                    if !list.contains(img.descriptor()) {
                        list.push(img.descriptor().clone());
                    }
                }
            };
            let mut cur = self.start.clone();
            add(&cur);
            for e in &self.events {
                apply(&mut cur, e);
                if touches(e) {
                    add(&cur);
                }
            }
            out.insert(name.to_string(), list);
        }
        out
    }
}

impl Verify {
    /// Every image checked alone: the expected ones and `also_check`.
    fn images(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.expects.iter().map(|e| e.image.as_str()).collect();
        v.extend(self.also_check.iter().map(String::as_str));
        v
    }
}

fn files_hash(files: &Files) -> u64 {
    let mut h = 0u64;
    for (name, data) in files {
        h = h.rotate_left(5) ^ hash(name.as_os_str().as_encoded_bytes());
        h = h.rotate_left(5) ^ hash(data) ^ data.len() as u64;
    }
    h
}

/// Apply one change to `files`.
pub fn apply(files: &mut Files, e: &Event) {
    match &e.kind {
        Kind::Create => {
            files.insert(e.file.clone(), Vec::new());
        }
        Kind::Remove => {
            files.remove(&e.file);
        }
        Kind::Flush => {}
        kind => {
            let f = files.entry(e.file.clone()).or_default();
            match kind {
                Kind::Write { at, data } => {
                    let end = *at as usize + data.len();
                    if f.len() < end {
                        f.resize(end, 0);
                    }
                    f[*at as usize..end].copy_from_slice(data);
                }
                Kind::SetLen(l) => f.resize(*l as usize, 0),
                Kind::Punch { at, len } => {
                    let end = (at.saturating_add(*len) as usize).min(f.len());
                    if (*at as usize) < end {
                        f[*at as usize..end].fill(0);
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

/// Check one state against `v`; with `qemu`, also run `qemu-img check` on each image there.
fn check_state(
    files: &Files,
    v: &Verify,
    descriptors: &Descriptors,
    qemu: Option<&Path>,
) -> Result<(), String> {
    let ns = mem_of(files);
    let opts = opts_in(&ns).ignore_cid_mismatch(v.cid_tolerant);
    let to_check = v.images();
    for e in &v.expects {
        let img = match opts.clone().open_backing(e.chain).open(&e.image) {
            Ok(img) => img,
            Err(_) if v.may_not_open => return Ok(()),
            Err(err) => return Err(format!("{} does not open: {err:#}", e.image)),
        };
        e.allowed
            .check(&img)
            .map_err(|m| format!("{}: {m}", e.image))?;
    }
    for name in &to_check {
        let img = match opts.clone().open_backing(false).open(name) {
            Ok(img) => img,
            Err(_) if v.may_not_open => return Ok(()),
            Err(err) => return Err(format!("{name} does not open alone: {err:#}")),
        };
        let allowed = &descriptors[*name];
        if !allowed.is_empty() && !allowed.contains(img.descriptor()) {
            return Err(format!(
                "{name}: the descriptor is none the image had: {:?}",
                img.descriptor()
            ));
        }
        let r = vmdk::check(&img).map_err(|e| format!("{name}: check failed: {e:#}"))?;
        if r.corruption_count() > v.corruptions_allowed || r.check_errors > 0 {
            return Err(format!(
                "{name}: check finds {} corruption(s) and {} error(s): {:?} {:?}",
                r.corruption_count(),
                r.check_errors,
                r.corruptions,
                r.errors
            ));
        }
    }
    if let Some(dir) = qemu {
        for f in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        store_dir(files, dir);
        for name in &to_check {
            let p = dir.join(Path::new(name).file_name().unwrap());
            let out = std::process::Command::new("qemu-img")
                .args(["check", "-U", "-f", "vmdk"])
                .arg(&p)
                .output()
                .unwrap();
            let ok = out.status.code() == Some(0)
                || out.status.code() == Some(3)
                // Repairing a corrupt image: until its fixes land it is as corrupt as it
                // was (qemu-img gives up on some corruptions with 1).
                || (v.corruptions_allowed > 0 && matches!(out.status.code(), Some(1 | 2)));
            if !ok {
                return Err(format!(
                    "{name}: qemu-img check exits {:?}: {}{}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    Ok(())
}
