//! Writing to sparse extents: in-place overwrites, grain allocation at the end of the file,
//! zeroed grains, and appending compressed grains to QEMU-layout stream files.
//!
//! Crash safety comes from ordering: a grain's data is written (and, in durable mode,
//! flushed) before any grain-table entry points at it, and a new grain table is written
//! before the directory entry that points at it. A crash therefore leaves at worst leaked
//! space, never a table pointing at garbage. Concurrent writers to different grains never
//! wait for each other's data I/O: only the grains being allocated are reserved, and the
//! file end is bumped under a short lock.

use crate::error::{Error, ErrorKind, Result};
use crate::extent::compressed::encode_for_write;
use crate::extent::grain_table::GrainTable;
use crate::extent::sparse::{GrainEntry, SparseExtent, SparseFlavor};
use crate::extent::write_guard::{WriteGuard, WriteOp};
use crate::format::SECTOR_SIZE;

/// How a write gets the bytes of a partially written new grain: from the backing chain
/// (or zeros), given an extent-relative offset.
pub type Fill<'a> = &'a (dyn Fn(u64, &mut [u8]) -> Result<()> + Sync);

/// Most grains allocated by one step, bounding the staging buffer for partial grains.
const MAX_RUN: u64 = 512;

fn io_err<'a>(ext: &'a SparseExtent, what: &'a str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(e, what).with_path(&ext.file.path)
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

    /// Write `data` at extent-relative `off`. `fill` supplies backing bytes for the
    /// unwritten parts of newly allocated grains.
    pub fn write(&self, off: u64, data: &[u8], fill: Fill, durable: bool) -> Result<()> {
        self.check_writable()?;
        let dir = &self.dir;
        let guard = dir.guard();
        let gt_entries = dir.coding().gt_entries;
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
            let gd_index = (grain / gt_entries) as usize;
            let table = dir.ensure_table(gd_index, durable)?;
            let idx = (grain % gt_entries) as usize;
            let table_end_grain = (gd_index as u64 + 1) * gt_entries;
            let last_grain = (end - 1) / gs;
            match dir.decode(table.get(idx))? {
                GrainEntry::Data(g) => {
                    // A corrupt table must not send the write onto metadata or past the end.
                    guard.check_table(dir, gd_index)?;
                    guard.check_grain(dir, grain, g)?;
                    // Extend over following grains stored right after this one.
                    let mut run_end_grain = grain + 1;
                    while run_end_grain <= last_grain
                        && run_end_grain < table_end_grain
                        && dir.decode(table.get((run_end_grain % gt_entries) as usize))?
                            == GrainEntry::Data(g + (run_end_grain - grain) * gs)
                        && guard
                            .check_grain(dir, run_end_grain, g + (run_end_grain - grain) * gs)
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
                GrainEntry::Compressed(_) => {
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
        let dir = &self.dir;
        let gs = self.grain_size;
        let end = off + data.len() as u64;
        let slot = |g: u64| (g % dir.coding().gt_entries) as usize;
        let _r = dir.lock_grains(first..max + 1);
        // Another writer may have allocated some of them while we waited.
        let mut states = Vec::new();
        for g in first..=max {
            match dir.decode(table.get(slot(g)))? {
                e if e.is_allocated() => break,
                e => states.push(e),
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
                if !covered && *st == GrainEntry::Unallocated {
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
                dir.release(at, len);
            }
        };
        let store = |reserved: &mut Vec<(u64, u64)>| -> Result<Vec<GrainEntry>> {
            let values = if self.compressed {
                let mut v = Vec::with_capacity(count as usize);
                for (i, chunk) in src.chunks(gs as usize).enumerate() {
                    let lba = (run_start + i as u64 * gs) / SECTOR_SIZE;
                    let rec = encode_for_write(lba, chunk, self.has_marker)?;
                    let at = dir.reserve(rec.len() as u64)?;
                    reserved.push((at, rec.len() as u64));
                    self.file
                        .storage
                        .write_at(&rec, at)
                        .map_err(io_err(self, "writing compressed grain"))?;
                    v.push(GrainEntry::Compressed(at));
                }
                crate::extent::compressed::forget_cached_grain();
                v
            } else {
                let at = dir.reserve(count * gs)?;
                reserved.push((at, count * gs));
                self.file
                    .storage
                    .write_at(src, at)
                    .map_err(io_err(self, "writing data"))?;
                (0..count).map(|i| GrainEntry::Data(at + i * gs)).collect()
            };
            if durable {
                dir.sync()?;
            }
            Ok(values)
        };
        let values = store(&mut reserved).inspect_err(|_| give_back(&reserved))?;
        let old: Vec<u64> = (0..count).map(|i| table.get(slot(first + i))).collect();
        if let Err(e) = dir.publish(gd_index, table, slot(first), &values, true) {
            // Nothing points at the new grains unless part of the table write landed.
            if dir.entries_unchanged(gd_index, slot(first), &old) {
                give_back(&reserved);
            }
            return Err(e);
        }
        Ok(stop)
    }

    /// Point grain `grain` at `entry` (a zeroed or unallocated grain: nothing to write first).
    fn set_grain(&self, grain: u64, entry: GrainEntry, durable: bool) -> Result<()> {
        let dir = &self.dir;
        let gt_entries = dir.coding().gt_entries;
        let gd_index = (grain / gt_entries) as usize;
        let table = dir.ensure_table(gd_index, durable)?;
        let _r = dir.lock_grains(grain..grain + 1);
        dir.publish(
            gd_index,
            &table,
            (grain % gt_entries) as usize,
            &[entry],
            false,
        )
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
        let zero_grain = self.has_zero_grains();
        let end = off + len;
        let mut pos = off;
        while pos < end {
            let grain = pos / gs;
            let g_start = grain * gs;
            let g_end = ((grain + 1) * gs).min(end);
            let whole = pos == g_start && g_end == (grain + 1) * gs;
            let n = g_end - pos;
            let state = self.dir.lookup(grain)?;
            if whole && zero_grain && !self.compressed {
                if state != GrainEntry::Zero {
                    self.set_grain(grain, GrainEntry::Zero, durable)?;
                }
            } else if state == GrainEntry::Zero
                || (may_unmap && state == GrainEntry::Unallocated && hides_nothing)
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

    /// Deallocate the whole grains inside `[off, off+len)` where the result still reads as
    /// zeros: unallocated when nothing shows through (`hides_nothing`), zeroed-grain entries
    /// otherwise when supported. Anything else is left alone (discard is advisory).
    pub fn discard(&self, off: u64, len: u64, hides_nothing: bool, durable: bool) -> Result<()> {
        self.check_writable()?;
        if self.compressed {
            return Ok(());
        }
        let target = if hides_nothing {
            GrainEntry::Unallocated
        } else if self.has_zero_grains() {
            GrainEntry::Zero
        } else {
            return Ok(());
        };
        let gs = self.grain_size;
        for grain in off.div_ceil(gs)..(off + len) / gs {
            if self.dir.lookup(grain)? != target {
                self.set_grain(grain, target, durable)?;
            }
        }
        Ok(())
    }

    /// The write guard, made on first use (before anything is written).
    pub(crate) fn write_guard(&self) -> &WriteGuard {
        self.dir.guard()
    }

    /// Fail, without writing anything, if `op` over `[off, off+len)` (extent-relative)
    /// would write into metadata or past the end of the file through a corrupt table.
    pub fn check_write_targets(&self, off: u64, len: u64, op: WriteOp) -> Result<()> {
        self.check_writable()?;
        let dir = &self.dir;
        let guard = dir.guard();
        let zero_grain = self.has_zero_grains();
        let gs = self.grain_size;
        let end = off.saturating_add(len).min(self.capacity);
        let cover = dir.coding().table_span();
        let mut pos = off;
        while pos < end {
            let gd_index = (pos / cover) as usize;
            if gd_index >= dir.len() {
                break;
            }
            let table_end = ((gd_index as u64 + 1) * cover).min(end);
            let needs_table = match op {
                WriteOp::Data => true,
                WriteOp::Zeroes {
                    may_unmap,
                    hides_nothing,
                } => (zero_grain && !self.compressed) || !(may_unmap && hides_nothing),
                WriteOp::Discard { hides_nothing } => !hides_nothing && zero_grain,
            };
            match dir.table(gd_index)? {
                None if needs_table => guard.check_directory(dir)?,
                None => {}
                Some(table) => {
                    guard.check_table(dir, gd_index)?;
                    if !self.compressed && !matches!(op, WriteOp::Discard { .. }) {
                        let mut p = pos;
                        while p < table_end {
                            let grain = p / gs;
                            let g_end = ((grain + 1) * gs).min(table_end);
                            let whole = p == grain * gs && g_end == (grain + 1) * gs;
                            let in_place = match op {
                                WriteOp::Zeroes { .. } => !(whole && zero_grain),
                                _ => true,
                            };
                            let raw = table.get((grain % dir.coding().gt_entries) as usize);
                            if let (true, GrainEntry::Data(g)) = (in_place, dir.decode(raw)?) {
                                guard.check_grain(dir, grain, g)?;
                            }
                            p = g_end;
                        }
                    }
                }
            }
            pos = table_end;
        }
        Ok(())
    }
}
