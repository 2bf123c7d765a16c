//! New grains, from reservation to publication: the write-side steps of the crash-ordering
//! rule (see ARCHITECTURE.md) in one type.
//!
//! [`GrainDirectory::allocate`] makes sure the grain table exists, locks the grains against
//! other allocators, re-reads their entries (another writer may have allocated some while the
//! caller looked) and, for uncompressed extents, reserves their space. The caller writes the
//! grains' bytes at [`Allocation::host`] (or, for compressed grains, at the places
//! [`Allocation::reserve_record`] gives), then [`Allocation::publish`] flushes the data when
//! the write is durable and only then points the tables at it. An allocation dropped without
//! being published gives its space back, so a failed write leaves no leak.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::grain_directory::{GrainDirectory, GrainsLock};
use crate::extent::grain_table::GrainTable;
use crate::format::grain_entry::GrainEntry;

/// Grains being allocated by one writer: locked, with space reserved, not yet published.
pub(crate) struct Allocation<'a> {
    dir: &'a GrainDirectory,
    gd_index: usize,
    table: Arc<GrainTable>,
    first: u64,
    /// The grains' entries before this allocation (unallocated or zeroed).
    old: Vec<GrainEntry>,
    /// The entries to publish (filled in as space is reserved).
    new: Vec<GrainEntry>,
    /// Space reserved so far, given back unless published.
    reserved: Vec<(u64, u64)>,
    durable: bool,
    published: bool,
    _lock: GrainsLock<'a>,
}

impl GrainDirectory {
    /// Start allocating grains `grains` (all in one grain table): the table is created if
    /// missing, the grains are locked, and those still unallocated or zeroed from the first
    /// on are taken (`None` when the first was allocated meanwhile: write it in place). For
    /// uncompressed extents their space is reserved, contiguously: as many of them as one
    /// stretch of free space holds (see [`Allocation::grains`]).
    pub(crate) fn allocate(
        &self,
        grains: Range<u64>,
        durable: bool,
    ) -> Result<Option<Allocation<'_>>> {
        let gt_entries = self.coding().gt_entries;
        let gd_index = (grains.start / gt_entries) as usize;
        debug_assert_eq!((grains.end - 1) / gt_entries, gd_index as u64);
        let table = self.ensure_table(gd_index, durable)?;
        let mut lock = self.lock_grains(grains.clone());
        let mut old = Vec::new();
        for g in grains.clone() {
            match self.decode(table.get((g % gt_entries) as usize))? {
                e if e.is_allocated() => break,
                e => old.push(e),
            }
        }
        if old.is_empty() {
            return Ok(None);
        }
        let mut reserved = Vec::new();
        let mut new = Vec::with_capacity(old.len());
        if !self.coding().compressed {
            // As many grains as one stretch of free space holds (a hole may hold fewer).
            let gs = self.coding().grain_size;
            let (at, bytes) = self.reserve_grains(old.len() as u64 * gs)?;
            reserved.push((at, bytes));
            old.truncate((bytes / gs) as usize);
            new = (0..old.len() as u64)
                .map(|i| GrainEntry::Data(at + i * gs))
                .collect();
        }
        lock.shrink(grains.start + old.len() as u64);
        Ok(Some(Allocation {
            dir: self,
            gd_index,
            table,
            first: grains.start,
            new,
            old,
            reserved,
            durable,
            published: false,
            _lock: lock,
        }))
    }
}

impl Allocation<'_> {
    /// The grains taken.
    pub(crate) fn grains(&self) -> Range<u64> {
        self.first..self.first + self.old.len() as u64
    }

    /// Each grain's entry before this allocation (unallocated or zeroed).
    pub(crate) fn old(&self) -> &[GrainEntry] {
        &self.old
    }

    /// Where the grains' bytes go, one after the other (uncompressed extents).
    pub(crate) fn host(&self) -> u64 {
        debug_assert!(!self.dir.coding().compressed);
        self.reserved[0].0
    }

    /// Reserve `bytes` for the compressed record of the next grain, returning where to
    /// write it (compressed extents, one call per grain in order).
    pub(crate) fn reserve_record(&mut self, bytes: u64) -> Result<u64> {
        debug_assert!(self.dir.coding().compressed && self.new.len() < self.old.len());
        let at = self.dir.reserve(bytes)?;
        self.reserved.push((at, bytes));
        self.new.push(GrainEntry::Compressed(at));
        Ok(at)
    }

    /// The grains' bytes are written: make them durable (when the write is) and point the
    /// tables, primary then redundant, at them. If the table write fails and nothing of it
    /// landed, the space is given back.
    pub(crate) fn publish(mut self) -> Result<()> {
        let dir = self.dir;
        if self.new.len() != self.old.len() {
            return Err(
                Error::invalid("allocation published before all grains were stored")
                    .with_path(&dir.file().path),
            );
        }
        if self.durable {
            dir.sync()?;
        }
        let gt_entries = dir.coding().gt_entries;
        let slot = (self.first % gt_entries) as usize;
        let before: Vec<u64> = (0..self.new.len())
            .map(|i| self.table.get(slot + i))
            .collect();
        let result = dir.publish(self.gd_index, &self.table, slot, &self.new, true);
        // Nothing points at the new grains unless part of the table write landed.
        if result.is_ok() || !dir.entries_unchanged(self.gd_index, slot, &before) {
            self.published = true;
        }
        result
    }
}

impl Drop for Allocation<'_> {
    fn drop(&mut self) {
        if !self.published {
            for &(at, len) in self.reserved.iter().rev() {
                self.dir.release(at, len);
            }
        }
    }
}
