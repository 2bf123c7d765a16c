//! Shrinking a hosted sparse extent (what `resize --shrink` does to the sparse extent the
//! new end cuts): only when no data lies past the new end. Grains there that are
//! unallocated, zeroed or read as zeros are dropped (their table entries cleared, redundant
//! copy first, then the space punched out of the file); any other allocated grain refuses
//! the shrink, naming its offset, before anything is changed.
//!
//! Crash ordering: the entries are cleared (redundant tables first, flushed, then the
//! primary ones, flushed) before the header takes the new capacity; the operation
//! (`ops/resize.rs`) writes the descriptor next and only then has the dropped grains
//! punched ([`SparseExtent::punch_grains`]).

use crate::error::{Error, Result};
use crate::extent::sparse::SparseExtent;
use crate::format::SECTOR_SIZE;

impl SparseExtent {
    /// The first grain wholly past `keep` bytes, and the tables' entry count.
    fn first_dropped_grain(&self, keep: u64) -> u64 {
        keep.div_ceil(self.grain_size())
    }

    /// Check that no data lies in this extent past `keep` bytes: every allocated grain there
    /// must read as zeros. Returns the file offsets of the allocated ones (to punch out); an
    /// error naming the first grain holding data (as a virtual-disk offset, the extent
    /// starting at `ext_start`).
    pub(crate) fn grains_past(&self, keep: u64, ext_start: u64) -> Result<Vec<u64>> {
        let gs = self.grain_size();
        let grains = self.capacity().div_ceil(gs);
        let per_table = self.dir.coding().gt_entries;
        let mut dropped = Vec::new();
        let mut buf = vec![0u8; gs as usize];
        let mut g = self.first_dropped_grain(keep);
        while g < grains {
            let i = (g / per_table) as usize;
            if self.dir.table(i)?.is_none() {
                g = (i as u64 + 1) * per_table;
                continue;
            }
            if let Some(off) = self.dir.lookup(g)?.offset() {
                self.file
                    .storage
                    .read_at_padded(&mut buf, off)
                    .map_err(|e| {
                        Error::io(e, "reading a grain past the new end").with_path(&self.file.path)
                    })?;
                if buf.iter().any(|&b| b != 0) {
                    return Err(Error::invalid(format!(
                        "cannot shrink: data is allocated at offset {} past the new end (only \
                         unallocated or zero grains can be dropped)",
                        ext_start + g * gs
                    ))
                    .with_path(&self.file.path));
                }
                dropped.push(off);
            }
            g += 1;
        }
        Ok(dropped)
    }

    /// Shrink this hosted sparse extent to `keep` bytes: clear the table entries past the
    /// new end (redundant tables first, flushed), then write the header with the new
    /// capacity.
    pub(crate) fn shrink(&self, keep: u64) -> Result<()> {
        let path = &self.file.path;
        let storage = &self.file.storage;
        let io = |what: &'static str| move |e: std::io::Error| Error::io(e, what).with_path(path);
        let mut h = self.hosted_header("shrink")?;
        let dir = &self.dir;
        let coding = dir.coding();
        let width = coding.width() as u64;
        let per_table = coding.gt_entries;
        let first = self.first_dropped_grain(keep);
        let grains = self.capacity().div_ceil(self.grain_size());
        // Redundant copies first, so a cut leaves the primary (what readers use) unchanged
        // until its own turn; the dropped grains read as zeros either way.
        let copies: Vec<Box<dyn Fn(usize) -> Option<u64>>> = vec![
            Box::new(|i| dir.redundant_table_offset(i).filter(|&o| o != 0)),
            Box::new(|i| dir.table_offset(i).ok().flatten()),
        ];
        for table_of in copies {
            let mut g = first;
            while g < grains {
                let i = (g / per_table) as usize;
                let table_end = ((i as u64 + 1) * per_table).min(grains);
                if let Some(t) = table_of(i) {
                    let n = (table_end - g) as usize;
                    storage
                        .write_at(&vec![0u8; n * width as usize], t + (g % per_table) * width)
                        .map_err(io("clearing grain table entries"))?;
                }
                g = table_end;
            }
            storage.flush().map_err(io("flushing"))?;
        }
        h.capacity = keep / SECTOR_SIZE;
        storage
            .write_at(&h.serialize(), 0)
            .map_err(io("writing the header"))?;
        storage.flush().map_err(io("flushing"))?;
        Ok(())
    }

    /// Give back the grains a shrink dropped (`dropped`, from [`Self::grains_past`]), once
    /// nothing refers to them any more, and flush.
    pub(crate) fn punch_grains(&self, dropped: &[u64]) -> Result<()> {
        // Best effort: the dropped grains held zeros; where holes cannot be punched the
        // space stays (and check reports it as leaked).
        for &off in dropped {
            let _ = self.file.storage.punch_hole(off, self.grain_size());
        }
        // Durable when resize returns, like the rest (lost, the grains would only leak).
        self.file
            .storage
            .flush()
            .map_err(|e| Error::io(e, "flushing").with_path(&self.file.path))
    }
}
