//! Where a sparse extent keeps its metadata: header, embedded descriptor, grain directories
//! and grain tables, as byte ranges of the extent file.
//!
//! `check` claims these ranges to find overlaps and leaks; writers keep them (see
//! `write_guard.rs`) so that a corrupt table can never make a write land on metadata.

use std::fmt;

use crate::format::cowd_header::COWD_HEADER_SIZE;
use crate::format::grain_entry::SparseFlavor;
use crate::format::sparse_header::SparseHeader;
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

/// The metadata at the start of a sparse extent: its header and, for VMDK4, the embedded
/// descriptor, as `(region, start, end)` byte ranges (the directories add their own, see
/// [`crate::extent::GrainDirectory`]).
pub(crate) fn header_regions(
    flavor: SparseFlavor,
    header: Option<&SparseHeader>,
) -> Vec<(Region, u64, u64)> {
    let mut out = Vec::with_capacity(4);
    match flavor {
        SparseFlavor::Vmdk4 | SparseFlavor::SeSparse => {
            out.push((Region::Header, 0, SECTOR_SIZE));
        }
        SparseFlavor::Cowd => out.push((Region::Header, 0, COWD_HEADER_SIZE as u64)),
    }
    if let Some(h) = header {
        if let Some(d) = h.embedded_descriptor_range() {
            out.push((Region::Descriptor, d.start, d.end));
        }
    }
    out
}
