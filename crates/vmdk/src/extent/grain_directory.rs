//! The grain directory of a sparse extent: the directory (and its redundant copy) in memory,
//! the grain tables it points at (through the shared cache), and the verbs writers use to
//! change them. Entries are coded by [`crate::format::grain_entry`]; nothing else in the
//! crate reads or writes raw entries.
//!
//! Writers follow one order, which is what keeps a crash harmless (see ARCHITECTURE.md and
//! `tests/integration/crash_cut.rs`): `GrainDirectory::reserve` space, write the data there
//! (flushed when durable), then `GrainDirectory::publish` the entries; a new table is
//! written (and flushed) before the directory entry pointing at it
//! (`GrainDirectory::ensure_table`).
//! Space whose data never got published is given back (`GrainDirectory::release`).
//! Grains whose entries are cleared (a discard, a zero write) are given back too, once the
//! cleared entries are durable (`GrainDirectory::release_cleared`): punched where the
//! file system can, and reused by later allocations (see `free_space.rs` and
//! `space_scan.rs`). Every verb that touches metadata or allocated grains first asks the
//! [`WriteGuard`], so a corrupt table cannot send a write onto metadata.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::extent::budget::ExtentBudget;
use crate::extent::entries::AtomicEntries;
use crate::extent::free_space::FreeSpace;
use crate::extent::grain_table::{GrainTable, GrainTableCache};
use crate::extent::map::ExtentFile;
use crate::extent::metadata::Region;
use crate::extent::write_guard::WriteGuard;
use crate::format::cowd_header::{decode_free_sector, encode_free_sector, FREE_SECTOR_OFFSET};
use crate::format::grain_entry::{self, GrainCoding, GrainEntry, SparseFlavor};
use crate::format::SECTOR_SIZE;

/// Directory bytes read from the file at once while loading a directory.
const DIRECTORY_READ_CHUNK: u64 = 64 << 10;

/// Where a directory lies in its file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectoryPlace {
    /// Byte offset of the grain directory.
    pub offset: u64,
    /// Byte offset of the redundant grain directory, if the extent keeps one.
    pub redundant: Option<u64>,
    /// Number of directory entries.
    pub entries: u64,
}

/// A sparse extent's grain directory and grain tables.
#[derive(Debug)]
pub struct GrainDirectory {
    file: Arc<ExtentFile>,
    coding: GrainCoding,
    gd: AtomicEntries,
    gd_offset: u64,
    /// The redundant directory's offset and entries (same length as `gd`), if kept.
    rgd: Option<(u64, AtomicEntries)>,
    /// Header and embedded descriptor, for the write guard.
    header_regions: Vec<(Region, u64, u64)>,
    /// The grain-table cache shared with every extent of the image and its chain.
    cache: Arc<GrainTableCache>,
    /// This directory's part of the cache keys.
    cache_id: u64,
    /// File length at open.
    open_len: u64,
    /// Where new grains and tables go, and the space given back.
    space: Mutex<FreeSpace>,
    /// Where grains may start (the VMDK4 header's overhead), when the stretches the first
    /// scan finds unused may be reused (see `space_scan.rs`).
    data_start: Option<u64>,
    /// Held (shared) by everyone who may use a grain's place after looking its entry up:
    /// readers and in-place writers. Taken exclusively, briefly, before cleared grains are
    /// given back, so nobody still writes or reads at a place being handed to another grain.
    reuse_gate: RwLock<()>,
    /// Metadata regions for refusing writes through corrupt tables, made on first write.
    guard: OnceLock<WriteGuard>,
    /// Grains some writer is allocating right now.
    allocating: Mutex<HashSet<u64>>,
    allocated_cv: Condvar,
    /// Serialises grain-table allocation (directory updates).
    directory_lock: Mutex<()>,
}

fn corrupt(file: &ExtentFile, msg: impl std::fmt::Display) -> Error {
    Error::corrupt(msg.to_string()).with_path(&file.path)
}

fn io_err<'a>(file: &'a ExtentFile, what: &'a str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(e, what).with_path(&file.path)
}

/// Read `buf.len()` bytes at `offset`, a short file being corruption of `what`.
pub(crate) fn read_exact(file: &ExtentFile, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    file.storage.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(
                file,
                format!("file is truncated: {what} at offset {offset} lies past its end"),
            )
        } else {
            Error::io(e, format!("reading {what}")).with_path(&file.path)
        }
    })
}

/// Bytes of a directory of `n` entries of `width` bytes at `offset`, checking it lies
/// inside the file.
fn directory_bytes(
    file: &ExtentFile,
    offset: u64,
    n: u64,
    width: usize,
    file_len: u64,
    what: &str,
) -> Result<u64> {
    n.checked_mul(width as u64)
        .filter(|b| offset.checked_add(*b).is_some_and(|end| end <= file_len))
        .ok_or_else(|| {
            corrupt(
                file,
                format!("{what} ({n} entries at offset {offset}) lies past the end of the file"),
            )
        })
}

/// Read a directory of `n` entries of `width` bytes, `bytes` long, at `offset` (already
/// checked with [`directory_bytes`] and reserved in the budget) in small pieces, so the entries are the
/// only big allocation.
fn read_directory(
    file: &ExtentFile,
    offset: u64,
    (n, width): (u64, usize),
    bytes: u64,
    what: &str,
) -> Result<AtomicEntries> {
    let entries = AtomicEntries::zeroed(n as usize, width).ok_or_else(|| {
        Error::io(
            std::io::ErrorKind::OutOfMemory.into(),
            format!("allocating the {what} ({bytes} bytes)"),
        )
        .with_path(&file.path)
    })?;
    let mut buf = vec![0u8; bytes.min(DIRECTORY_READ_CHUNK) as usize];
    let mut done = 0;
    while done < bytes {
        let len = (bytes - done).min(DIRECTORY_READ_CHUNK) as usize;
        read_exact(file, &mut buf[..len], offset + done, what)?;
        entries.fill_from_bytes((done / width as u64) as usize, &buf[..len]);
        done += len as u64;
    }
    Ok(entries)
}

/// Grains reserved for allocation by one writer (see [`GrainDirectory::lock_grains`]).
pub(crate) struct GrainsLock<'a> {
    dir: &'a GrainDirectory,
    grains: std::ops::Range<u64>,
}

impl GrainsLock<'_> {
    /// Free the grains from `end` on, keeping those before locked.
    pub(super) fn shrink(&mut self, end: u64) {
        let end = end.clamp(self.grains.start, self.grains.end);
        self.unlock(end..self.grains.end);
        self.grains.end = end;
    }

    fn unlock(&self, grains: std::ops::Range<u64>) {
        if grains.is_empty() {
            return;
        }
        let mut set = self
            .dir
            .allocating
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for g in grains {
            set.remove(&g);
        }
        self.dir.allocated_cv.notify_all();
    }
}

impl Drop for GrainsLock<'_> {
    fn drop(&mut self) {
        self.unlock(self.grains.clone());
    }
}

impl GrainDirectory {
    /// Load the directory (and its redundant copy) at `place` of `file`, `file_len` bytes
    /// long: both copies are checked against the file and reserved in `budget` (as
    /// `budget_what`) before either is allocated. `header_regions` are the extent's header
    /// and embedded descriptor (see [`crate::extent::metadata`]); `data_start`, where grains
    /// may start when unused stretches of the file may be reused (see `space_scan.rs`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn load(
        file: Arc<ExtentFile>,
        coding: GrainCoding,
        place: DirectoryPlace,
        file_len: u64,
        budget: &ExtentBudget,
        budget_what: &str,
        header_regions: Vec<(Region, u64, u64)>,
        data_start: Option<u64>,
    ) -> Result<GrainDirectory> {
        let (gd_what, rgd_what) = ("grain directory", "redundant grain directory");
        let (n, w) = (place.entries, coding.width());
        let bytes = directory_bytes(&file, place.offset, n, w, file_len, gd_what)?;
        if let Some(off) = place.redundant {
            directory_bytes(&file, off, n, w, file_len, rgd_what)?;
        }
        let copies = if place.redundant.is_some() { 2 } else { 1 };
        budget.reserve_directory(bytes * copies, &file.path, budget_what)?;
        let gd = read_directory(&file, place.offset, (n, w), bytes, gd_what)?;
        let rgd = match place.redundant {
            Some(off) => Some((off, read_directory(&file, off, (n, w), bytes, rgd_what)?)),
            None => None,
        };
        // seSparse files preallocate their areas: new space starts at the file's end as is.
        let next = match coding.flavor {
            SparseFlavor::SeSparse => file_len,
            _ => file_len.next_multiple_of(SECTOR_SIZE),
        };
        Ok(GrainDirectory {
            file,
            coding,
            gd,
            gd_offset: place.offset,
            rgd,
            header_regions,
            cache: budget.cache().clone(),
            cache_id: GrainTableCache::new_extent_id(),
            open_len: file_len,
            space: Mutex::new(FreeSpace::new(next)),
            data_start,
            reuse_gate: RwLock::new(()),
            guard: OnceLock::new(),
            allocating: Mutex::new(HashSet::new()),
            allocated_cv: Condvar::new(),
            directory_lock: Mutex::new(()),
        })
    }

    /// The file holding the directory.
    pub fn file(&self) -> &Arc<ExtentFile> {
        &self.file
    }

    /// How entries are coded (and the grain geometry).
    pub fn coding(&self) -> &GrainCoding {
        &self.coding
    }

    /// Number of directory entries (grain tables the extent can have).
    pub fn len(&self) -> usize {
        self.gd.len()
    }

    /// Whether the directory has no entries (an empty extent).
    pub fn is_empty(&self) -> bool {
        self.gd.is_empty()
    }

    /// Byte offset of the grain directory.
    pub fn offset(&self) -> u64 {
        self.gd_offset
    }

    /// Byte offset of the redundant grain directory, if kept.
    pub fn redundant_offset(&self) -> Option<u64> {
        self.rgd.as_ref().map(|r| r.0)
    }

    /// Bytes of memory the directories take.
    pub fn memory(&self) -> u64 {
        (self.gd.memory() + self.rgd.as_ref().map_or(0, |r| r.1.memory())) as u64
    }

    /// Byte offset of the grain table of directory entry `i`, or `None` if the directory
    /// says there is none.
    #[inline]
    pub fn table_offset(&self, i: usize) -> Result<Option<u64>> {
        self.coding
            .decode_directory(self.gd.get(i))
            .map_err(|m| corrupt(&self.file, m))
    }

    /// Byte offset of the redundant grain table of directory entry `i`: `None` without a
    /// redundant directory, `Some(0)` when its entry is empty.
    pub fn redundant_table_offset(&self, i: usize) -> Option<u64> {
        self.rgd
            .as_ref()
            .map(|(_, rgd)| rgd.get(i).saturating_mul(SECTOR_SIZE))
    }

    /// The raw entries of the directory and of its redundant copy, with their offsets.
    pub(super) fn raw_copies(&self) -> Vec<(u64, Vec<u64>)> {
        std::iter::once((self.gd_offset, &self.gd))
            .chain(self.rgd.as_ref().map(|(o, r)| (*o, r)))
            .map(|(off, d)| (off, (0..d.len()).map(|i| d.get(i)).collect()))
            .collect()
    }

    /// The grain table of directory entry `i` (from the cache or the file), or `None`.
    pub fn table(&self, i: usize) -> Result<Option<Arc<GrainTable>>> {
        let Some(off) = self.table_offset(i)? else {
            return Ok(None);
        };
        let t = self.cache.get_or_load(self.cache_id, i as u64, || {
            let mut buf = vec![0u8; self.coding.table_bytes() as usize];
            read_exact(&self.file, &mut buf, off, "grain table")?;
            Ok::<_, Error>(GrainTable::from_bytes(&buf, self.coding.width()))
        })?;
        Ok(Some(t))
    }

    /// Decode a raw grain-table entry of this extent.
    #[inline]
    pub fn decode(&self, raw: u64) -> Result<GrainEntry> {
        self.coding.decode(raw).map_err(|m| corrupt(&self.file, m))
    }

    /// What the tables say about grain number `grain`.
    pub fn lookup(&self, grain: u64) -> Result<GrainEntry> {
        let i = (grain / self.coding.gt_entries) as usize;
        if i >= self.gd.len() {
            return Ok(GrainEntry::Unallocated);
        }
        match self.table(i)? {
            None => Ok(GrainEntry::Unallocated),
            Some(t) => self.decode(t.get((grain % self.coding.gt_entries) as usize)),
        }
    }

    /// The metadata at fixed places: header, embedded descriptor, grain directory and
    /// redundant grain directory, as `(region, start, end)` byte ranges in that order. Ends
    /// come from the file's header and may lie past the end of the file.
    pub(crate) fn fixed_regions(&self) -> Vec<(Region, u64, u64)> {
        let mut out = self.header_regions.clone();
        let gd_bytes = self.gd.len() as u64 * self.coding.width() as u64;
        out.push((
            Region::Directory,
            self.gd_offset,
            self.gd_offset.saturating_add(gd_bytes),
        ));
        if let Some(rgd) = self.redundant_offset() {
            out.push((
                Region::RedundantDirectory,
                rgd,
                rgd.saturating_add(gd_bytes),
            ));
        }
        out
    }

    // ---- writing ---------------------------------------------------------------------

    /// The write guard, made on first use (before anything is written).
    pub(super) fn guard(&self) -> &WriteGuard {
        self.guard
            .get_or_init(|| WriteGuard::build(self, self.open_len))
    }

    /// Flush the file.
    pub(super) fn sync(&self) -> Result<()> {
        self.file
            .storage
            .flush()
            .map_err(io_err(&self.file, "flushing"))
    }

    /// Reserve grains `grains` for allocation, waiting while another writer holds any of
    /// them; they are free again when the returned lock drops.
    pub(super) fn lock_grains(&self, grains: std::ops::Range<u64>) -> GrainsLock<'_> {
        let mut set = self.allocating.lock().unwrap_or_else(|e| e.into_inner());
        while grains.clone().any(|g| set.contains(&g)) {
            set = self
                .allocated_cv
                .wait(set)
                .unwrap_or_else(|e| e.into_inner());
        }
        for g in grains.clone() {
            set.insert(g);
        }
        GrainsLock { dir: self, grains }
    }

    /// The free-space bookkeeping, with the tables scanned (the first time, under the lock:
    /// nothing is reserved or given back before, so the scan sees every grain in use).
    fn space(&self) -> MutexGuard<'_, FreeSpace> {
        let mut space = self.space.lock().unwrap_or_else(|e| e.into_inner());
        if !space.scanned {
            let scan = self.scan_space(self.data_start);
            space.scanned = true;
            space.can_free = scan.reliable;
            space.tail = scan.tail;
            if space.next < scan.tail {
                // A grain cut by the end of the file owns the space up to its tail.
                if space.next == space.initial {
                    space.initial = scan.tail;
                }
                space.next = scan.tail;
            }
            for (at, len) in scan.holes {
                space.give_back(at, len);
            }
            tracing::debug!(
                file = %self.file.path.display(),
                reliable = scan.reliable,
                holes = space.hole_bytes(),
                "scanned the grain tables for free space"
            );
        }
        space
    }

    /// End of the furthest grain that starts inside the file (at least its length when the
    /// session began writing): a grain the end cuts may be written up to there.
    pub(super) fn tail_end(&self) -> u64 {
        self.space().tail
    }

    /// Reserve `bytes` for a new grain table (or compressed grain): a hole if one fits, the
    /// end of the file otherwise.
    pub(super) fn reserve(&self, bytes: u64) -> Result<u64> {
        let mut space = self.space();
        if let Some(off) = space.take_hole(bytes) {
            return Ok(off);
        }
        self.reserve_at_end(&mut space, bytes)
    }

    /// Reserve space for between one and `max` grains (`max` grain sizes of bytes), one
    /// after the other: from a hole if one holds a grain, the end of the file otherwise.
    /// Returns where, and how many bytes.
    pub(super) fn reserve_grains(&self, max: u64) -> Result<(u64, u64)> {
        let gs = self.coding.grain_size;
        let mut space = self.space();
        if let Some(run) = space.take_run(gs, max) {
            return Ok(run);
        }
        Ok((self.reserve_at_end(&mut space, max)?, max))
    }

    /// Reserve `bytes` at the end of the allocated space.
    fn reserve_at_end(&self, space: &mut FreeSpace, bytes: u64) -> Result<u64> {
        let off = space.next;
        let end = off + bytes;
        // VMDK4 and COWD tables hold 32-bit sector numbers.
        if end / SECTOR_SIZE > u32::MAX as u64 {
            return Err(Error::unsupported(
                "extent file is full (sparse extents cannot grow past 2 TiB)",
            )
            .with_path(&self.file.path));
        }
        if self.coding.flavor == SparseFlavor::Cowd {
            if space.cowd_free_before.is_none() {
                let mut b = [0u8; 4];
                self.file
                    .storage
                    .read_exact_at(&mut b, FREE_SECTOR_OFFSET as u64)
                    .map_err(io_err(&self.file, "reading COWD free sector"))?;
                space.cowd_free_before = Some(decode_free_sector(b));
            }
            // ESX allocates at the header's freeSector: move it past the new space before
            // anything points there, or ESX would later hand the same sectors out again.
            self.file
                .storage
                .write_at(
                    &encode_free_sector((end / SECTOR_SIZE) as u32),
                    FREE_SECTOR_OFFSET as u64,
                )
                .map_err(io_err(&self.file, "updating COWD free sector"))?;
        }
        space.next = end;
        Ok(off)
    }

    /// Give back space reserved by [`Self::reserve`] whose write failed before anything
    /// pointed at it: at the end of the file the file is cut back (so a full file system
    /// leaves no leaked clusters), elsewhere the space is reused by later allocations.
    /// Best effort: this runs on an error path, and failing here only leaks space.
    pub(super) fn release(&self, at: u64, bytes: u64) {
        let mut space = self.space();
        self.give_back(&mut space, at, bytes);
    }

    /// Give `[at, at+bytes)` back to `space`, cutting the file (and, for COWD, moving the
    /// header's free sector back) when the end of the allocated space moves back. Best
    /// effort: failing here only leaves the space unused.
    fn give_back(&self, space: &mut FreeSpace, at: u64, bytes: u64) {
        let Some(end) = space.give_back(at, bytes) else {
            return;
        };
        if self.file.storage.len().is_ok_and(|len| len > end) {
            let _ = self.file.storage.set_len(end);
        }
        if self.coding.flavor == SparseFlavor::Cowd {
            let free = match space.cowd_free_before {
                Some(v) if end == space.initial => v,
                _ => (end / SECTOR_SIZE) as u32,
            };
            let _ = self
                .file
                .storage
                .write_at(&encode_free_sector(free), FREE_SECTOR_OFFSET as u64);
        }
    }

    /// Whether the on-disk entries `first..first+old.len()` of table `i` still hold the raw
    /// values `old` (a failed table write left nothing behind).
    pub(super) fn entries_unchanged(&self, i: usize, first: usize, old: &[u64]) -> bool {
        let Ok(Some(gt)) = self.table_offset(i) else {
            return false;
        };
        let w = self.coding.width();
        let mut buf = vec![0u8; old.len() * w];
        self.file
            .storage
            .read_exact_at(&mut buf, gt + (first * w) as u64)
            .is_ok()
            && grain_entry::entries(w, &buf).eq(old.iter().copied())
    }

    /// The grain table for directory entry `i`, allocating it (and its redundant copy) if
    /// missing: the zeroed table is written (and flushed when `durable`) before the
    /// directory entry that points at it.
    pub(super) fn ensure_table(&self, i: usize, durable: bool) -> Result<Arc<GrainTable>> {
        if let Some(t) = self.table(i)? {
            return Ok(t);
        }
        let _dir = self
            .directory_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.table(i)? {
            return Ok(t);
        }
        self.guard().check_directory(self)?;
        let w = self.coding.width();
        let table_bytes = self.coding.table_bytes().next_multiple_of(SECTOR_SIZE);
        let copies = if self.rgd.is_some() { 2 } else { 1 };
        let base = self.reserve(table_bytes * copies)?;
        let encode = |off: u64| {
            let mut b = Vec::with_capacity(w);
            let raw = self
                .coding
                .encode_directory(Some(off))
                .map_err(|m| corrupt(&self.file, m))?;
            grain_entry::put_entries(w, &[raw], &mut b);
            Ok::<_, Error>((raw, b))
        };
        // Until the directory points at the new table, a failure gives its space back.
        let unpublished = || -> Result<u64> {
            let zeros = vec![0u8; (table_bytes * copies) as usize];
            self.file
                .storage
                .write_at(&zeros, base)
                .map_err(io_err(&self.file, "writing new grain table"))?;
            if durable {
                self.sync()?;
            }
            let (raw, bytes) = encode(base)?;
            self.file
                .storage
                .write_at(&bytes, self.gd_offset + (i * w) as u64)
                .map_err(io_err(&self.file, "writing grain directory"))?;
            Ok(raw)
        };
        let raw = unpublished().inspect_err(|_| self.release(base, table_bytes * copies))?;
        let table = Arc::new(GrainTable::from_bytes(
            &vec![0u8; self.coding.table_bytes() as usize],
            w,
        ));
        self.cache.insert(self.cache_id, i as u64, table.clone());
        self.gd.set(i, raw);
        if let Some((rgd_off, rgd)) = &self.rgd {
            // The primary directory already uses the table; a failure here only leaves the
            // redundant copy out of date (what `check` reports as a warning).
            let (rraw, bytes) = encode(base + table_bytes)?;
            self.file
                .storage
                .write_at(&bytes, rgd_off + (i * w) as u64)
                .map_err(io_err(&self.file, "writing redundant grain directory"))?;
            rgd.set(i, rraw);
        }
        Ok(table)
    }

    /// Point grains `grains` (all in one grain table) at `entry`, a zeroed or unallocated
    /// entry: nothing to write first. The table is created if missing. The grains stored
    /// there until now are cleared: given back by [`Self::release_cleared`] once the
    /// cleared entries are durable.
    pub(super) fn set_entries(
        &self,
        grains: std::ops::Range<u64>,
        entry: GrainEntry,
        durable: bool,
    ) -> Result<()> {
        let gt_entries = self.coding.gt_entries;
        let i = (grains.start / gt_entries) as usize;
        let table = self.ensure_table(i, durable)?;
        let n = (grains.end - grains.start) as usize;
        let entries = vec![entry; n];
        let first = (grains.start % gt_entries) as usize;
        let _r = self.lock_grains(grains);
        // Read under the lock: a concurrent clear of the same grains finds them cleared
        // already and gives nothing back twice.
        let stored = self.stored_places(&table, first, n)?;
        if !stored.is_empty() {
            // The scan, if it is the first, must still see these grains in use.
            drop(self.space());
        }
        self.publish(i, &table, first, &entries, false)?;
        if !stored.is_empty() {
            self.space().cleared(&stored);
        }
        Ok(())
    }

    /// Where entries `first..first+n` of `table` store uncompressed grains, as byte ranges
    /// (neighbours merged).
    fn stored_places(&self, table: &GrainTable, first: usize, n: usize) -> Result<Vec<(u64, u64)>> {
        let gs = self.coding.grain_size;
        let mut out: Vec<(u64, u64)> = Vec::new();
        if self.coding.compressed {
            return Ok(out);
        }
        for slot in first..first + n {
            if let GrainEntry::Data(g) = self.decode(table.get(slot))? {
                match out.last_mut() {
                    Some((at, len)) if *at + *len == g => *len += gs,
                    _ => out.push((g, gs)),
                }
            }
        }
        Ok(out)
    }

    /// Give back the grains whose entries were cleared: flush, so no crash can bring the
    /// old entries back, wait until nobody reads or writes at the old places any more, then
    /// punch them out of the file where the file system can and hand them to later
    /// allocations (at the end of the file, the file is cut). A flush that fails leaves
    /// them for the next call. Nothing is given back when the scan could not account for
    /// every grain (another entry might share them): they stay, unused.
    pub(crate) fn release_cleared(&self) -> Result<()> {
        let ranges = self.space().take_cleared();
        if ranges.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.sync() {
            self.space().restore_cleared(ranges);
            return Err(e);
        }
        drop(self.reuse_gate.write().unwrap_or_else(|e| e.into_inner()));
        if !self.space().can_free {
            return Ok(());
        }
        // Punched before anyone may take them: a hole punched after would destroy new data.
        for &(at, len) in &ranges {
            if let Err(e) = self.file.storage.punch_hole(at, len) {
                tracing::debug!(file = %self.file.path.display(), "punching a hole: {e}");
            }
        }
        let mut space = self.space();
        for (at, len) in ranges {
            self.give_back(&mut space, at, len);
        }
        Ok(())
    }

    /// Hold this while using the place of a grain looked up in the tables (reading it, or
    /// writing it in place), so it is not given to another grain meanwhile.
    pub(crate) fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.reuse_gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Point grains `first..first+entries.len()` of table `i` (`table`, from
    /// [`Self::ensure_table`]) at `entries`: the primary table on disk, then in memory,
    /// then the redundant copy. The data they point at must already be written (and
    /// flushed, for durable writes). `ours`: the entries point at space this session just
    /// reserved.
    pub(super) fn publish(
        &self,
        i: usize,
        table: &GrainTable,
        first: usize,
        entries: &[GrainEntry],
        ours: bool,
    ) -> Result<()> {
        let guard = self.guard();
        guard.check_table(self, i)?;
        let raw = entries
            .iter()
            .map(|e| self.coding.encode(*e))
            .collect::<std::result::Result<Vec<u64>, _>>()
            .map_err(|m| Error::invalid(m.to_string()).with_path(&self.file.path))?;
        let w = self.coding.width();
        let mut bytes = Vec::new();
        grain_entry::put_entries(w, &raw, &mut bytes);
        let gt = self
            .table_offset(i)?
            .ok_or_else(|| corrupt(&self.file, "grain table vanished"))?;
        self.file
            .storage
            .write_at(&bytes, gt + (first * w) as u64)
            .map_err(io_err(&self.file, "writing grain table"))?;
        if ours {
            let grain = i as u64 * self.coding.gt_entries + first as u64;
            guard.mark_ours(self, grain, raw.len() as u64);
        }
        // The primary table is what every reader uses: publish it even if the redundant
        // copy fails below.
        for (k, v) in raw.iter().enumerate() {
            table.set(first + k, *v);
        }
        if let Some(rgt) = self.redundant_table_offset(i) {
            if rgt != 0 {
                self.file
                    .storage
                    .write_at(&bytes, rgt + (first * w) as u64)
                    .map_err(io_err(&self.file, "writing redundant grain table"))?;
            }
        }
        Ok(())
    }
}
