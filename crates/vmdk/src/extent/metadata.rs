//! Where a sparse extent keeps its metadata: header, embedded descriptor, grain directories
//! and grain tables, as byte ranges of the extent file.
//!
//! `check` claims these ranges to find overlaps and leaks; writers keep them (see
//! `write_guard.rs`) so that a corrupt table can never make a write land on metadata.

use std::fmt;

use crate::extent::sparse::{SparseExtent, SparseFlavor};
use crate::format::cowd_header::COWD_HEADER_SIZE;
use crate::format::SECTOR_SIZE;

/// One piece of a sparse extent's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// The extent header.
    Header,
    /// The descriptor embedded in a VMDK4 extent.
    Descriptor,
    /// The grain directory.
    Directory,
    /// The redundant grain directory.
    RedundantDirectory,
    /// The grain table of this directory entry.
    Table(usize),
    /// The redundant grain table of this directory entry.
    RedundantTable(usize),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Header => f.write_str("header"),
            Region::Descriptor => f.write_str("embedded descriptor"),
            Region::Directory => f.write_str("grain directory"),
            Region::RedundantDirectory => f.write_str("redundant grain directory"),
            Region::Table(i) => write!(f, "grain table {i}"),
            Region::RedundantTable(i) => write!(f, "redundant grain table {i}"),
        }
    }
}

impl SparseExtent {
    /// The metadata at fixed places: header, embedded descriptor (VMDK4), grain directory
    /// and redundant grain directory, as `(region, start, end)` byte ranges in that order.
    /// Ends come from the file's header and may lie past the end of the file.
    pub(crate) fn fixed_regions(&self) -> Vec<(Region, u64, u64)> {
        let mut out = Vec::with_capacity(4);
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::SeSparse => {
                out.push((Region::Header, 0, SECTOR_SIZE));
            }
            SparseFlavor::Cowd => out.push((Region::Header, 0, COWD_HEADER_SIZE as u64)),
        }
        if let Some(h) = &self.header {
            if h.desc_offset != 0 && h.desc_size != 0 {
                let start = h.desc_offset.saturating_mul(SECTOR_SIZE);
                let end = start.saturating_add(h.desc_size.saturating_mul(SECTOR_SIZE));
                out.push((Region::Descriptor, start, end));
            }
        }
        let gd_bytes = self.gd.len() as u64 * self.entry_width as u64;
        out.push((
            Region::Directory,
            self.gd_offset,
            self.gd_offset.saturating_add(gd_bytes),
        ));
        if let Some(rgd) = self.rgd_offset {
            out.push((
                Region::RedundantDirectory,
                rgd,
                rgd.saturating_add(gd_bytes),
            ));
        }
        out
    }

    /// Bytes one grain table takes.
    pub(crate) fn table_bytes(&self) -> u64 {
        self.gt_entries * self.entry_width as u64
    }

    /// Byte offset of the redundant grain table of directory entry `gd_index`: `None` without
    /// a redundant directory, `Some(0)` when its entry is empty.
    pub(crate) fn rgt_offset(&self, gd_index: usize) -> Option<u64> {
        self.rgd
            .as_ref()
            .map(|rgd| rgd.get(gd_index).saturating_mul(SECTOR_SIZE))
    }
}
