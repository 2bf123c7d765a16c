//! Extents: the pieces a virtual disk is made of, each mapped onto a host file (or onto
//! nothing, for ZERO extents), and `map`, the answers a map gives (extents produce them,
//! so they live here rather than above).

pub(crate) mod allocation;
pub(crate) mod budget;
mod compact;
pub(crate) mod compressed;
pub(crate) mod entries;
pub(crate) mod free_space;
pub(crate) mod grain_directory;
pub(crate) mod grain_table;
mod grow;
mod make_empty;
pub(crate) mod map;
pub(crate) mod metadata;
mod repair;
mod shrink;
pub(crate) mod space_scan;
pub(crate) mod sparse;
pub(crate) mod sparse_write;
pub(crate) mod write_guard;
pub(crate) mod write_map;

use std::sync::Arc;

use crate::error::Result;

use crate::format::descriptor::{ExtentAccess, ExtentType};
// The layer's face: what the layers above name, always as `crate::extent::X` (never a
// file of this folder; `layers.rs` checks it).
pub(crate) use budget::ExtentBudget;
pub use compact::CompactStats;
pub(crate) use compressed::GrainEncoder;
pub use compressed::{CompressedGrain, MAX_LEVEL};
pub(crate) use grain_table::DEFAULT_CACHE_BYTES;
pub(crate) use map::MapBuilder;
pub use map::{ExtentFile, MapEntry, MapTarget};
pub(crate) use metadata::Region;
pub(crate) use repair::ExtentFindings;
pub use sparse::{GrainEntry, SparseExtent, SparseFlavor};
pub(crate) use write_map::WriteOp;

/// How an extent stores its bytes.
#[derive(Debug)]
pub enum ExtentKind {
    /// Bytes stored contiguously in `file` from byte `offset` (FLAT and VMFS extents).
    Flat {
        /// The host file.
        file: Arc<ExtentFile>,
        /// Byte offset of the extent's first byte in the file.
        offset: u64,
    },
    /// No storage: reads as zeros.
    Zero,
    /// Grain directory / grain tables / grains; shared by the lines naming the same file.
    Sparse(Arc<SparseExtent>),
}

/// One extent of an image, placed in the virtual disk.
#[derive(Debug)]
pub struct Extent {
    /// Virtual byte offset where this extent starts.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Access mode from the descriptor line.
    pub access: ExtentAccess,
    /// Type keyword from the descriptor line.
    pub kind_keyword: ExtentType,
    /// Storage.
    pub kind: ExtentKind,
}

impl Extent {
    /// The host file, if any.
    pub fn file(&self) -> Option<&Arc<ExtentFile>> {
        match &self.kind {
            ExtentKind::Flat { file, .. } => Some(file),
            ExtentKind::Zero => None,
            ExtentKind::Sparse(s) => Some(s.file()),
        }
    }

    /// Map `[off, off+len)` relative to the extent start, calling `emit` with consecutive
    /// `(length, target)` pieces until it returns `false` (the caller has enough).
    pub fn map(
        &self,
        off: u64,
        len: u64,
        emit: &mut dyn FnMut(u64, MapTarget) -> bool,
    ) -> Result<()> {
        match &self.kind {
            ExtentKind::Flat { file, offset } => {
                emit(
                    len,
                    MapTarget::Data {
                        file: file.clone(),
                        offset: offset + off,
                    },
                );
                Ok(())
            }
            ExtentKind::Zero => {
                emit(len, MapTarget::Zero);
                Ok(())
            }
            ExtentKind::Sparse(s) => s.map(off, len, emit),
        }
    }
}
