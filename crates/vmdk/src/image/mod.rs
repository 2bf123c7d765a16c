//! The image layer. This file: an open image as a mapped disk: the [`Image`] type, what it
//! holds, and the answers it gives over the whole virtual disk ([`Image::map`],
//! [`Image::map_layer`], [`Image::read_at`]) through the one walk over its extents.
//! Opening (probing, the descriptor, extents, backing chain, CID check, locks) is in
//! `open.rs`, what a file is in `probe.rs`, and how to open in `options.rs`; writing (the
//! one write walk, the CID update) in `write`](mod@write). [`Disk` (`disk.rs`) is what whole-disk
//! operations read, whatever the format ([`ImageFormat`]); [`raw`] is raw files as disks,
//! [`walk`] walks disks' maps in bounded batches, `reader` is `std::io::Read + Seek` over
//! an image.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::{Extent, ExtentKind};
use crate::extent::{MapBuilder, MapEntry, MapTarget};
use crate::format::descriptor::{Descriptor, ExtentAccess};
use crate::storage::namespace::Namespace;
use crate::storage::{FileId, Storage};

pub mod allocation;
mod descriptor;
mod disk;
mod extents;
mod open;
mod options;
mod probe;
pub mod raw;
pub(crate) mod reader;
pub mod walk;
pub(crate) mod write;

pub use disk::{Disk, ImageFormat};
pub use options::{OpenOptions, DEFAULT_MAX_CHAIN_DEPTH, MAX_DIRECTORY_MEMORY, MAX_VIRTUAL_SIZE};
pub(crate) use probe::probe_storage_full;
pub use probe::{
    foreign_format_error, foreign_virtual_size, foreign_virtual_size_of, probe, probe_in,
    probe_path, probe_storage, FileFormat, SOURCE_FORMATS,
};

/// Where an image's descriptor text lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorLocation {
    /// The image file is the descriptor.
    File,
    /// Embedded in the (sparse) image file at this byte offset, with room for this many bytes.
    Embedded {
        /// Byte offset.
        offset: u64,
        /// Bytes reserved.
        capacity: u64,
    },
    /// No descriptor on disk (a bare COWD/seSparse/headerless sparse extent); one was made up.
    Synthesized,
}

/// An open VMDK image: its descriptor, its extents and its backing chain.
///
/// `Image` is `Send + Sync`: share it (e.g. in an `Arc`) and read from many threads at once.
#[derive(Debug)]
pub struct Image {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Descriptor,
    pub(crate) desc_location: DescriptorLocation,
    pub(crate) format: FileFormat,
    pub(crate) extents: Vec<Extent>,
    pub(crate) size: u64,
    pub(crate) backing: Option<Box<Image>>,
    pub(crate) writable: bool,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) write_state: crate::image::write::WriteState,
    /// Where this image's files are (new extents of a resize go there too).
    pub(crate) namespace: Arc<dyn Namespace>,
}

impl Image {
    /// The file the image was opened from (its descriptor, or its one sparse file).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The namespace the image's files were opened in.
    pub fn namespace(&self) -> &Arc<dyn Namespace> {
        &self.namespace
    }

    /// Bytes of memory this image's (not its backing chain's) grain directories take.
    pub fn directory_memory(&self) -> u64 {
        let mut seen = HashSet::new();
        self.extents
            .iter()
            .map(|e| match &e.kind {
                // Lines naming one file share its extent: count it once.
                ExtentKind::Sparse(s) if seen.insert(Arc::as_ptr(s)) => s.directory_memory(),
                _ => 0,
            })
            .sum()
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The descriptor (from the file, embedded, or made up for bare extents).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
    /// Where the descriptor lives.
    pub fn descriptor_location(&self) -> &DescriptorLocation {
        &self.desc_location
    }
    /// What the opened file itself is.
    pub fn file_format(&self) -> FileFormat {
        self.format
    }
    /// The `createType`.
    pub fn create_type(&self) -> &str {
        &self.descriptor.create_type
    }
    /// The extents in disk order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }
    /// The backing image, if any.
    pub fn backing(&self) -> Option<&Image> {
        self.backing.as_deref()
    }
    /// Whether the image was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    /// The identities of every host file this image and its backing chain use (descriptor,
    /// extents, backing files), so a caller about to create or truncate a file can make sure
    /// it is none of them, whatever its name.
    pub fn file_ids(&self) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self.storage.file_id().into_iter().collect();
        for e in &self.extents {
            if let Some(id) = e.file().and_then(|f| f.storage.file_id()) {
                ids.push(id);
            }
        }
        if let Some(b) = &self.backing {
            ids.extend(b.file_ids());
        }
        ids.sort_by_key(|i| (i.dev, i.ino));
        ids.dedup();
        ids
    }

    /// Bytes the image's own files take on the host.
    pub fn allocated_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        if seen.insert(self.path.clone()) {
            total += self.storage.allocated_size().unwrap_or(0);
        }
        for e in &self.extents {
            if let Some(f) = e.file() {
                if seen.insert(f.path.clone()) {
                    total += f.storage.allocated_size().unwrap_or(0);
                }
            }
        }
        total
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::invalid(format!(
                "range {offset}+{len} is outside the {}-byte disk",
                self.size
            ))
            .with_path(&self.path));
        }
        Ok(())
    }

    /// Index of the extent containing virtual byte `offset` (which must be inside the disk).
    pub(crate) fn extent_index(&self, offset: u64) -> usize {
        self.extents
            .partition_point(|e| e.start + e.length <= offset)
            .min(self.extents.len() - 1)
    }

    /// What this image alone (not its backing chain) holds in `[offset, offset+len)`.
    /// Adjacent stretches with the same target are merged; data stretches are merged when
    /// they are contiguous in the same file, so callers can issue large reads.
    pub fn map_layer(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut b = MapBuilder::default();
        self.map_layer_into(offset, len, 0, &mut b)?;
        Ok(b.entries)
    }

    /// Like [`Image::map_layer`], but at most `max_entries` entries (at least one) covering
    /// a prefix of the range; see [`Image::map_prefix`].
    pub fn map_layer_prefix(
        &self,
        offset: u64,
        len: u64,
        max_entries: usize,
    ) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut b = MapBuilder::with_limit(max_entries);
        self.map_layer_into(offset, len, 0, &mut b)?;
        Ok(b.entries)
    }

    /// The one walk over the extents under `[offset, offset+len)`, for reads and writes
    /// alike: calls `f(index, extent, offset in the extent, length, offset from `offset`)`
    /// for each piece in order, until `f` returns `Ok(false)`.
    pub(crate) fn walk_extents(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, &Extent, u64, u64, u64) -> Result<bool>,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset;
        let mut i = self.extent_index(offset);
        while pos < end && i < self.extents.len() {
            let e = &self.extents[i];
            let n = (e.start + e.length).min(end) - pos;
            if n > 0 && !f(i, e, pos - e.start, n, pos - offset)? {
                break;
            }
            pos += n;
            i += 1;
        }
        Ok(())
    }

    /// Map this layer into `b`, stopping when `b` refuses a stretch.
    fn map_layer_into(&self, offset: u64, len: u64, depth: u32, b: &mut MapBuilder) -> Result<()> {
        self.walk_extents(offset, len, |_, e, rel, n, _| {
            let pos = e.start + rel;
            if e.access == ExtentAccess::NoAccess {
                // VMware marks extents it must not touch; they read as zeros here rather
                // than shifting the data after them (QEMU's mistake) or failing the disk.
                b.push(pos, n, MapTarget::Zero, depth);
            } else {
                let mut at = pos;
                e.map(rel, n, &mut |l, t| {
                    let more = b.push(at, l, t, depth);
                    at += l;
                    more
                })?;
            }
            Ok(!b.stopped())
        })
    }

    /// What `[offset, offset+len)` resolves to through the backing chain. Stretches that no
    /// layer holds come back as [`MapTarget::Unallocated`] with the depth of the last layer.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut out = MapBuilder::default();
        self.map_resolved(offset, len, 0, &mut out)?;
        Ok(out.entries)
    }

    /// Like [`Image::map`], but stops after `max_entries` entries (at least one): the
    /// entries cover `[offset, offset + covered)` for some `covered <= len`, and are not
    /// empty when `len > 0`. Map a whole disk by calling it again from the end of the last
    /// entry: the cost is proportional to the entries and metadata met, not to the bytes
    /// covered, so a huge zero or unallocated stretch costs one step.
    pub fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut out = MapBuilder::with_limit(max_entries);
        self.map_resolved(offset, len, 0, &mut out)?;
        Ok(out.entries)
    }

    /// Map `[offset, offset+len)` through the chain into `out`, stopping when `out` is full.
    ///
    /// Each piece of this layer is resolved as its extent hands it over, not after the layer
    /// is mapped: the walk then stops within a piece of where `out` filled. Mapping the
    /// layer first (its empty stretches merged into one) made every batch of a whole-disk
    /// walk rescan the rest of an empty overlay: batches × overlay tables over a backing
    /// file of many entries.
    fn map_resolved(&self, offset: u64, len: u64, depth: u32, out: &mut MapBuilder) -> Result<()> {
        let mut failed = None;
        self.walk_extents(offset, len, |_, e, rel, n, _| {
            let pos = e.start + rel;
            if e.access == ExtentAccess::NoAccess {
                // See `map_layer_into`.
                out.push(pos, n, MapTarget::Zero, depth);
                return Ok(!out.stopped());
            }
            let mut at = pos;
            e.map(rel, n, &mut |l, t| {
                let more = self
                    .resolve_piece(at, l, t, depth, out)
                    .unwrap_or_else(|err| {
                        failed = Some(err);
                        false
                    });
                at += l;
                more
            })?;
            if let Some(err) = failed.take() {
                return Err(err);
            }
            Ok(!out.stopped())
        })
    }

    /// Push one piece of this layer into `out`, through the backing chain where the layer
    /// holds nothing; `false` once `out` is full.
    fn resolve_piece(
        &self,
        start: u64,
        length: u64,
        target: MapTarget,
        depth: u32,
        out: &mut MapBuilder,
    ) -> Result<bool> {
        match (&target, &self.backing) {
            (MapTarget::Unallocated, Some(b)) => {
                // The part beyond a smaller parent reads as zeros.
                let inside = b.size.saturating_sub(start).min(length);
                if inside > 0 {
                    b.map_resolved(start, inside, depth + 1, out)?;
                }
                Ok(!out.stopped()
                    && out.push(
                        start + inside,
                        length - inside,
                        MapTarget::Unallocated,
                        depth,
                    ))
            }
            _ => Ok(out.push(start, length, target, depth)),
        }
    }

    /// Fill `buf` with the virtual disk's bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        // A grain discarded meanwhile keeps its place until this read is done.
        let _gates = self.reuse_gates(offset, buf.len() as u64);
        for e in self.map(offset, buf.len() as u64)? {
            let s = (e.start - offset) as usize;
            let dst = &mut buf[s..s + e.length as usize];
            e.target.read_into(dst)?;
        }
        Ok(())
    }
}
