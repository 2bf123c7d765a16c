//! Writing to sparse extents: in-place overwrites, grain allocation at the end of the file,
//! zeroed grains, and appending compressed grains to QEMU-layout stream files.
//!
//! Crash safety comes from ordering: a grain's data is written (and, in durable mode,
//! flushed) before any grain-table entry points at it, and a new grain table is written
//! before the directory entry that points at it. A crash therefore leaves at worst leaked
//! space, never a table pointing at garbage. Concurrent writers to different grains never
//! wait for each other's data I/O: only the grains being allocated are reserved, and the
//! file end is bumped under a short lock.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::extent::grain_table::GrainTable;
use crate::extent::sparse::{GrainState, SparseExtent, SparseFlavor};
use crate::format::marker::{GrainMarker, GRAIN_MARKER_SIZE};
use crate::format::SECTOR_SIZE;

/// Locks used by writers of one sparse extent.
#[derive(Debug, Default)]
pub struct WriteLocks {
    /// Grains some writer is allocating right now.
    allocating: Mutex<HashSet<u64>>,
    allocated_cv: Condvar,
    /// Serialises grain-table allocation (directory updates).
    directory: Mutex<()>,
}

/// How a write gets the bytes of a partially written new grain: from the backing chain
/// (or zeros), given an extent-relative offset.
pub type Fill<'a> = &'a (dyn Fn(u64, &mut [u8]) -> Result<()> + Sync);

/// Most grains allocated by one step, bounding the staging buffer for partial grains.
const MAX_RUN: u64 = 512;

struct Reservation<'a> {
    locks: &'a WriteLocks,
    grains: std::ops::Range<u64>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut set = self
            .locks
            .allocating
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for g in self.grains.clone() {
            set.remove(&g);
        }
        self.locks.allocated_cv.notify_all();
    }
}

impl WriteLocks {
    /// Reserve `grains` for allocation, waiting while another writer holds any of them.
    fn reserve(&self, grains: std::ops::Range<u64>) -> Reservation<'_> {
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
        Reservation {
            locks: self,
            grains,
        }
    }
}

fn io_err<'a>(ext: &'a SparseExtent, what: &str) -> impl Fn(std::io::Error) -> Error + 'a {
    let what = what.to_string();
    move |e| Error::io(e, what.clone()).with_path(&ext.file.path)
}

impl SparseExtent {
    /// Refuse writes this extent cannot take safely.
    pub fn check_writable(&self) -> Result<()> {
        let refuse = |m: &str| Err(Error::new(ErrorKind::ReadOnly, m).with_path(&self.file.path));
        if self.flavor == SparseFlavor::SeSparse {
            return refuse("seSparse extents are read-only");
        }
        if self.footer_layout {
            // Appending would have to move the footer; a crash half-way would leave a file
            // with no valid footer at its end. Convert instead.
            return refuse(
                "VMware-layout streamOptimized images (footer at end) cannot be modified; \
                 convert the image instead",
            );
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.file.storage.flush().map_err(io_err(self, "flushing"))
    }

    /// Reserve `bytes` for new grains or tables: space given back by a failed write if some
    /// fits, the end of the file otherwise.
    fn reserve_space(&self, bytes: u64) -> Result<u64> {
        // Scans the tables the first time: do it before taking the lock.
        let tail = self
            .write_guard()
            .tail_end(self)
            .next_multiple_of(SECTOR_SIZE);
        let mut space = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(off) = space.take_hole(bytes) {
            return Ok(off);
        }
        if space.next < tail {
            // A grain cut by the end of the file owns the space up to its tail.
            if space.next == space.initial {
                space.initial = tail;
            }
            space.next = tail;
        }
        let off = space.next;
        let end = off + bytes;
        // VMDK4 and COWD tables hold 32-bit sector numbers.
        if end / SECTOR_SIZE > u32::MAX as u64 {
            return Err(Error::unsupported(
                "extent file is full (sparse extents cannot grow past 2 TiB)",
            )
            .with_path(&self.file.path));
        }
        if self.flavor == SparseFlavor::Cowd {
            if space.cowd_free_before.is_none() {
                let mut b = [0u8; 4];
                self.file
                    .storage
                    .read_exact_at(&mut b, 28)
                    .map_err(io_err(self, "reading COWD free sector"))?;
                space.cowd_free_before = Some(u32::from_le_bytes(b));
            }
            // ESX allocates at the header's freeSector: move it past the new space before
            // anything points there, or ESX would later hand the same sectors out again.
            self.file
                .storage
                .write_at(&((end / SECTOR_SIZE) as u32).to_le_bytes(), 28)
                .map_err(io_err(self, "updating COWD free sector"))?;
        }
        space.next = end;
        Ok(off)
    }

    /// Give back space reserved by [`Self::reserve_space`] whose write failed before anything
    /// pointed at it: at the end of the file the file is cut back (so a full file system
    /// leaves no leaked clusters), elsewhere the space is reused by later allocations.
    /// Best effort: this runs on an error path, and failing here only leaks space.
    fn release_space(&self, at: u64, bytes: u64) {
        let mut space = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let Some(end) = space.give_back(at, bytes) else {
            return;
        };
        if self.file.storage.len().is_ok_and(|len| len > end) {
            let _ = self.file.storage.set_len(end);
        }
        if self.flavor == SparseFlavor::Cowd {
            let free = match space.cowd_free_before {
                Some(v) if end == space.initial => v,
                _ => (end / SECTOR_SIZE) as u32,
            };
            let _ = self.file.storage.write_at(&free.to_le_bytes(), 28);
        }
    }

    /// Whether the on-disk entries `first..first+old.len()` of table `gd_index` still hold
    /// `old` (a failed table write left nothing behind).
    fn entries_unchanged(&self, gd_index: usize, first: usize, old: &[u32]) -> bool {
        let Ok(Some(gt)) = self.gt_offset(gd_index) else {
            return false;
        };
        let mut buf = vec![0u8; old.len() * 4];
        self.file
            .storage
            .read_exact_at(&mut buf, gt + first as u64 * 4)
            .is_ok()
            && buf
                .chunks_exact(4)
                .zip(old)
                .all(|(c, &v)| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) == v)
    }

    /// The grain table for `gd_index`, allocating it (and its redundant copy) if missing.
    fn ensure_table(&self, gd_index: usize, durable: bool) -> Result<Arc<GrainTable>> {
        if let Some(t) = self.table(gd_index)? {
            return Ok(t);
        }
        let _dir = self
            .write_locks
            .directory
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = self.table(gd_index)? {
            return Ok(t);
        }
        self.write_guard().check_directory(self)?;
        let table_bytes = (self.gt_entries * 4).next_multiple_of(SECTOR_SIZE);
        let copies = if self.rgd.is_some() { 2 } else { 1 };
        let base = self.reserve_space(table_bytes * copies)?;
        // Until the directory points at the new table, a failure gives its space back.
        let unpublished = || -> Result<u32> {
            let zeros = vec![0u8; (table_bytes * copies) as usize];
            self.file
                .storage
                .write_at(&zeros, base)
                .map_err(io_err(self, "writing new grain table"))?;
            if durable {
                self.sync()?;
            }
            let sector = (base / SECTOR_SIZE) as u32;
            self.file
                .storage
                .write_at(&sector.to_le_bytes(), self.gd_offset + gd_index as u64 * 4)
                .map_err(io_err(self, "writing grain directory"))?;
            Ok(sector)
        };
        let sector =
            unpublished().inspect_err(|_| self.release_space(base, table_bytes * copies))?;
        let table = Arc::new(GrainTable::from_bytes(
            &vec![0u8; self.gt_entries as usize * 4],
            4,
        ));
        self.cache
            .insert(self.cache_id, gd_index as u64, table.clone());
        self.gd.set(gd_index, sector as u64);
        if let (Some(rgd), Some(rgd_off)) = (&self.rgd, self.rgd_offset) {
            // The primary directory already uses the table; a failure here only leaves the
            // redundant copy out of date (what `check` reports as a warning).
            let rsector = ((base + table_bytes) / SECTOR_SIZE) as u32;
            self.file
                .storage
                .write_at(&rsector.to_le_bytes(), rgd_off + gd_index as u64 * 4)
                .map_err(io_err(self, "writing redundant grain directory"))?;
            rgd.set(gd_index, rsector as u64);
        }
        Ok(table)
    }

    /// Write raw entries `values` for grains starting at `first` (all in table `gd_index`)
    /// to the grain table and its redundant copy, then publish them in memory. `allocated`:
    /// the values point at grains this session just allocated.
    fn set_entries(
        &self,
        gd_index: usize,
        table: &GrainTable,
        first: usize,
        values: &[u32],
        allocated: bool,
    ) -> Result<()> {
        let guard = self.write_guard();
        guard.check_table(self, gd_index)?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let gt = self
            .gt_offset(gd_index)?
            .ok_or_else(|| Error::corrupt("grain table vanished").with_path(&self.file.path))?;
        self.file
            .storage
            .write_at(&bytes, gt + first as u64 * 4)
            .map_err(io_err(self, "writing grain table"))?;
        if allocated {
            let grain = gd_index as u64 * self.gt_entries + first as u64;
            guard.mark_ours(self, grain, values.len() as u64);
        }
        // The primary table is what every reader uses: publish it even if the redundant
        // copy fails below.
        for (i, v) in values.iter().enumerate() {
            table.set(first + i, *v as u64);
        }
        if let Some(rgt) = self.rgt_offset(gd_index) {
            if rgt != 0 {
                self.file
                    .storage
                    .write_at(&bytes, rgt + first as u64 * 4)
                    .map_err(io_err(self, "writing redundant grain table"))?;
            }
        }
        Ok(())
    }

    /// Write `data` at extent-relative `off`. `fill` supplies backing bytes for the
    /// unwritten parts of newly allocated grains.
    pub fn write(&self, off: u64, data: &[u8], fill: Fill, durable: bool) -> Result<()> {
        self.check_writable()?;
        let guard = self.write_guard();
        let end = off + data.len() as u64;
        if end > self.capacity {
            return Err(Error::invalid(format!(
                "write past the extent's capacity ({} bytes)",
                self.capacity
            ))
            .with_path(&self.file.path));
        }
        let gs = self.grain_size;
        let mut pos = off;
        while pos < end {
            let grain = pos / gs;
            let gd_index = (grain / self.gt_entries) as usize;
            let table = self.ensure_table(gd_index, durable)?;
            let idx = (grain % self.gt_entries) as usize;
            let table_end_grain = (gd_index as u64 + 1) * self.gt_entries;
            let last_grain = (end - 1) / gs;
            match self.decode(table.get(idx))? {
                GrainState::Allocated(g) if !self.compressed => {
                    // A corrupt table must not send the write onto metadata or past the end.
                    guard.check_table(self, gd_index)?;
                    guard.check_grain(self, grain, g)?;
                    // Extend over following grains stored right after this one.
                    let mut run_end_grain = grain + 1;
                    while run_end_grain <= last_grain
                        && run_end_grain < table_end_grain
                        && self.decode(table.get((run_end_grain % self.gt_entries) as usize))?
                            == GrainState::Allocated(g + (run_end_grain - grain) * gs)
                        && guard
                            .check_grain(self, run_end_grain, g + (run_end_grain - grain) * gs)
                            .is_ok()
                    {
                        run_end_grain += 1;
                    }
                    let stop = end.min(run_end_grain * gs);
                    let src = &data[(pos - off) as usize..(stop - off) as usize];
                    self.file
                        .storage
                        .write_at(src, g + pos % gs)
                        .map_err(io_err(self, "writing data"))?;
                    pos = stop;
                }
                GrainState::Allocated(_) => {
                    return Err(Error::new(
                        ErrorKind::ReadOnly,
                        "cannot overwrite an allocated grain of a compressed (streamOptimized) image",
                    )
                    .with_path(&self.file.path));
                }
                _ => {
                    let max_grain = last_grain.min(table_end_grain - 1).min(grain + MAX_RUN - 1);
                    pos = self.allocate_run(
                        gd_index, &table, grain, max_grain, pos, off, data, fill, durable,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Allocate grains `first..=max` (as many as are still unallocated from `first`), write
    /// their data, and point the table at them. Returns the new write position.
    #[allow(clippy::too_many_arguments)]
    fn allocate_run(
        &self,
        gd_index: usize,
        table: &GrainTable,
        first: u64,
        max: u64,
        pos: u64,
        off: u64,
        data: &[u8],
        fill: Fill,
        durable: bool,
    ) -> Result<u64> {
        let gs = self.grain_size;
        let end = off + data.len() as u64;
        let slot = |g: u64| (g % self.gt_entries) as usize;
        let _r = self.write_locks.reserve(first..max + 1);
        // Another writer may have allocated some of them while we waited.
        let mut states = Vec::new();
        for g in first..=max {
            match self.decode(table.get(slot(g)))? {
                GrainState::Allocated(_) => break,
                s => states.push(s),
            }
        }
        if states.is_empty() {
            return Ok(pos); // now allocated: the caller's loop writes in place
        }
        let count = states.len() as u64;
        let run_start = first * gs;
        let run_end = (first + count) * gs;
        let stop = end.min(run_end);
        let new_data = &data[(pos - off) as usize..(stop - off) as usize];
        // Fully covered runs are written straight from the caller's buffer; others are
        // staged: backing (or zeros, for zeroed grains), then the new data on top.
        let staged;
        let src: &[u8] = if pos == run_start && stop == run_end {
            new_data
        } else {
            let mut buf = vec![0u8; (count * gs) as usize];
            for (i, st) in states.iter().enumerate() {
                let g0 = run_start + i as u64 * gs;
                let covered = pos <= g0 && stop >= g0 + gs;
                if !covered && *st == GrainState::Unallocated {
                    let len = gs.min(self.capacity.saturating_sub(g0));
                    fill(
                        g0,
                        &mut buf[i * gs as usize..i * gs as usize + len as usize],
                    )?;
                }
            }
            buf[(pos - run_start) as usize..(stop - run_start) as usize].copy_from_slice(new_data);
            staged = buf;
            &staged
        };
        // Space reserved so far; given back if the run fails before its entries land.
        let mut reserved: Vec<(u64, u64)> = Vec::new();
        let give_back = |reserved: &[(u64, u64)]| {
            for &(at, len) in reserved.iter().rev() {
                self.release_space(at, len);
            }
        };
        let store = |reserved: &mut Vec<(u64, u64)>| -> Result<Vec<u32>> {
            let values = if self.compressed {
                let mut v = Vec::with_capacity(count as usize);
                for (i, chunk) in src.chunks(gs as usize).enumerate() {
                    let lba = (run_start + i as u64 * gs) / SECTOR_SIZE;
                    let rec = compress_grain(chunk, lba, self.has_marker)?;
                    let at = self.reserve_space(rec.len() as u64)?;
                    reserved.push((at, rec.len() as u64));
                    self.file
                        .storage
                        .write_at(&rec, at)
                        .map_err(io_err(self, "writing compressed grain"))?;
                    v.push((at / SECTOR_SIZE) as u32);
                }
                crate::extent::compressed::forget_cached_grain();
                v
            } else {
                let at = self.reserve_space(count * gs)?;
                reserved.push((at, count * gs));
                self.file
                    .storage
                    .write_at(src, at)
                    .map_err(io_err(self, "writing data"))?;
                (0..count)
                    .map(|i| ((at + i * gs) / SECTOR_SIZE) as u32)
                    .collect()
            };
            if durable {
                self.sync()?;
            }
            Ok(values)
        };
        let values = store(&mut reserved).inspect_err(|_| give_back(&reserved))?;
        let old: Vec<u32> = (0..count)
            .map(|i| table.get(slot(first + i)) as u32)
            .collect();
        if let Err(e) = self.set_entries(gd_index, table, slot(first), &values, true) {
            // Nothing points at the new grains unless part of the table write landed.
            if self.entries_unchanged(gd_index, slot(first), &old) {
                give_back(&reserved);
            }
            return Err(e);
        }
        Ok(stop)
    }

    /// Write zeros over `[off, off+len)`. Whole grains become zeroed-grain entries where the
    /// extent supports them, stay unallocated where that reads as zeros (`hides_nothing`:
    /// no backing file shows through), and are written with zeros otherwise.
    /// Without `may_unmap` (NBD's NO_HOLE) no grain is left unallocated: zeros are stored,
    /// as a zeroed-grain entry where the extent has them (QEMU does the same).
    pub fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        may_unmap: bool,
        hides_nothing: bool,
        fill: Fill,
        durable: bool,
    ) -> Result<()> {
        self.check_writable()?;
        let gs = self.grain_size;
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let grain = pos / gs;
            let g_start = grain * gs;
            let g_end = ((grain + 1) * gs).min(end);
            let whole = pos == g_start && g_end == (grain + 1) * gs;
            let n = g_end - pos;
            let state = self.grain_state(grain)?;
            if whole && self.zero_grain && !self.compressed {
                if state != GrainState::Zero {
                    let gd_index = (grain / self.gt_entries) as usize;
                    let table = self.ensure_table(gd_index, durable)?;
                    let _r = self.write_locks.reserve(grain..grain + 1);
                    self.set_entries(
                        gd_index,
                        &table,
                        (grain % self.gt_entries) as usize,
                        &[1],
                        false,
                    )?;
                }
            } else if state == GrainState::Zero
                || (may_unmap && state == GrainState::Unallocated && hides_nothing)
            {
                // Already reads as zeros.
            } else {
                let zeros = vec![0u8; n as usize];
                self.write(pos, &zeros, fill, durable)?;
            }
            pos = g_end;
        }
        Ok(())
    }
}

impl SparseExtent {
    /// Deallocate the whole grains inside `[off, off+len)` where the result still reads as
    /// zeros: unallocated when nothing shows through (`hides_nothing`), zeroed-grain entries
    /// otherwise when supported. Anything else is left alone (discard is advisory).
    pub fn discard(&self, off: u64, len: u64, hides_nothing: bool, durable: bool) -> Result<()> {
        self.check_writable()?;
        if self.compressed {
            return Ok(());
        }
        let gs = self.grain_size;
        let first = off.div_ceil(gs);
        let end_grain = (off + len) / gs;
        for grain in first..end_grain {
            let value = if hides_nothing {
                0
            } else if self.zero_grain {
                1
            } else {
                continue;
            };
            let state = self.grain_state(grain)?;
            let unchanged = match state {
                GrainState::Unallocated => value == 0,
                GrainState::Zero => value == 1,
                GrainState::Allocated(_) => false,
            };
            if unchanged {
                continue;
            }
            let gd_index = (grain / self.gt_entries) as usize;
            let table = self.ensure_table(gd_index, durable)?;
            let _r = self.write_locks.reserve(grain..grain + 1);
            self.set_entries(
                gd_index,
                &table,
                (grain % self.gt_entries) as usize,
                &[value],
                false,
            )?;
        }
        Ok(())
    }
}

/// Compress one grain into its on-disk record (marker if `marker`, zlib stream, sector
/// padding).
fn compress_grain(data: &[u8], lba: u64, marker: bool) -> Result<Vec<u8>> {
    let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
    let bound = c.zlib_compress_bound(data.len());
    let head = if marker { GRAIN_MARKER_SIZE } else { 0 };
    let mut out = vec![0u8; head + bound];
    let n = c
        .zlib_compress(data, &mut out[head..])
        .map_err(|e| Error::new(ErrorKind::Io, format!("compression failed: {e:?}")))?;
    if marker {
        GrainMarker {
            lba,
            size: n as u32,
        }
        .write(&mut out);
    }
    out.truncate((head + n).next_multiple_of(SECTOR_SIZE as usize));
    out.resize((head + n).next_multiple_of(SECTOR_SIZE as usize), 0);
    Ok(out)
}
