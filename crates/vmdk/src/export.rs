//! An opened image as a block device for other programs: the NBD export of `vmdk serve`
//! (feature `nbd`), and the rules every such consumer shares.
//!
//! The dependency points from the format to the protocol (this crate uses `vmdk-nbd`'s
//! [`BlockExport`] trait), never the other way round, so the NBD server stays a server for
//! any block backend and everything about VMDK (what a compressed grain or an unallocated
//! grain means to a client, which images can be written) stays in this crate.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use vmdk_nbd::{AllocationDepth, BlockExport, BlockStatus, FileSlice};

use crate::extent::ExtentKind;
use crate::{ErrorKind, ExtentFile, Image, MapEntry, MapTarget, OpenOptions, Result};

/// Map entries one block-status request looks at, at most: the work per request is bounded
/// by entries, not bytes (a huge zero stretch is one step), and the client asks again for
/// the rest.
const BLOCK_STATUS_ENTRIES: usize = 4096;

/// Open `path` for export with `opts`. Like qemu's `auto-read-only`: when `opts` asks for
/// a writable image and the image is one that cannot be written (seSparse, VMware's
/// streamOptimized layout, version 3), it is opened read-only instead, with a warning,
/// since it is still worth serving. Every other error is returned as is.
pub fn open_for_export(opts: &OpenOptions, path: impl AsRef<Path>) -> Result<Image> {
    let path = path.as_ref();
    match opts.open(path) {
        Err(e) if opts.writable && e.kind() == ErrorKind::ReadOnly => {
            tracing::warn!("{e:#}; exporting read-only");
            opts.clone().writable(false).open(path)
        }
        r => r,
    }
}

/// A compressed write (qemu-io's `write -c`, qemu's `BDRV_REQ_WRITE_COMPRESSED`) to a
/// VMDK image: every VMDK takes it, as qemu's driver does. A streamOptimized extent
/// stores every grain compressed anyway, and on the other extents qemu's VMDK driver
/// writes the data plainly, so it is the plain write path in both cases.
pub fn write_compressed(image: &Image, buf: &[u8], offset: u64) -> Result<()> {
    image.write_at(buf, offset)
}

/// An opened image as an NBD export ([`vmdk_nbd::Server`] serves it).
pub struct ImageExport {
    image: Arc<Image>,
    /// The files of flat extents anywhere in the chain (by [`ExtentFile::id`]): block status
    /// reports their host holes as zeros, as qemu does (its flat extents recurse into the
    /// file), found with `SEEK_DATA`/`SEEK_HOLE` without reading a byte.
    flat_files: HashSet<u64>,
    /// For each layer of the chain (0 = the image), whether it has a backing file:
    /// `qemu:allocation-depth` counts what lies beyond a shorter backing file as allocated
    /// in that backing file.
    has_backing: Vec<bool>,
}

impl ImageExport {
    /// Export `image`; it is served writable when it was opened writable.
    pub fn new(image: Arc<Image>) -> ImageExport {
        let mut flat_files = HashSet::new();
        let mut has_backing = Vec::new();
        let mut layer = Some(&*image);
        while let Some(img) = layer {
            for e in img.extents() {
                if let ExtentKind::Flat { file, .. } = &e.kind {
                    flat_files.insert(file.id());
                }
            }
            has_backing.push(img.backing().is_some());
            layer = img.backing();
        }
        ImageExport {
            image,
            flat_files,
            has_backing,
        }
    }

    /// The exported image (to flush it once the server has stopped, for example).
    pub fn image(&self) -> &Arc<Image> {
        &self.image
    }
}

fn io_err(e: crate::Error) -> std::io::Error {
    e.into()
}

/// What a stretch of the map is to an NBD client's `base:allocation`, as qemu-nbd says it:
/// a hole is anything that is not data, and holes read as zeros. Compressed grains are
/// data like any other stored grain.
fn allocation(target: &MapTarget) -> (bool, bool) {
    match target {
        MapTarget::Data { .. } | MapTarget::Compressed { .. } => (false, false),
        MapTarget::Zero | MapTarget::Unallocated => (true, true),
    }
}

/// Append an extent to a block-status answer, merging it into the last one of its kind.
fn push_status(out: &mut Vec<BlockStatus>, length: u64, hole: bool, zero: bool) {
    match out.last_mut() {
        Some(last) if last.hole == hole && last.zero == zero => last.length += length,
        _ => out.push(BlockStatus { length, hole, zero }),
    }
}

/// Push the block status of `len` bytes at `offset` of a flat extent's `file`: data where the
/// host file has data, zero (but not a hole: the extent is allocated, as qemu-nbd says) where
/// it has a hole or ends. Stops early once `out` holds `limit` extents; the extents pushed
/// always cover a prefix of the range.
fn push_flat_status(
    out: &mut Vec<BlockStatus>,
    file: &ExtentFile,
    offset: u64,
    len: u64,
    limit: usize,
) -> Result<()> {
    let size = file.storage.len().map_err(|e| {
        crate::Error::io(e, "getting the size of a flat extent's file").with_path(&file.path)
    })?;
    let end = offset + len;
    if offset < size {
        crate::storage::scan_holes(&*file.storage, offset, end.min(size), |_, n, data| {
            push_status(out, n, false, !data);
            out.len() < limit
        });
        if out.len() >= limit {
            return Ok(());
        }
    }
    if end > size {
        push_status(out, end - offset.max(size), false, true);
    }
    Ok(())
}

impl ImageExport {
    /// Block status of `[offset, offset + len)`: with `holes`, flat extents' host holes are
    /// looked up and reported as zeros; without, flat extents are data throughout (cheaper,
    /// and still correct for a read: a hole reads as zeros).
    fn status(&self, offset: u64, len: u64, holes: bool) -> Result<Vec<BlockStatus>> {
        let len = len.min(self.image.size().saturating_sub(offset));
        let mut out: Vec<BlockStatus> = Vec::new();
        for e in self.image.map_prefix(offset, len, BLOCK_STATUS_ENTRIES)? {
            match &e.target {
                MapTarget::Data { file, offset }
                    if holes && self.flat_files.contains(&file.id()) =>
                {
                    push_flat_status(&mut out, file, *offset, e.length, BLOCK_STATUS_ENTRIES)?;
                    if out.len() >= BLOCK_STATUS_ENTRIES {
                        break;
                    }
                }
                t => {
                    let (hole, zero) = allocation(t);
                    push_status(&mut out, e.length, hole, zero);
                }
            }
        }
        Ok(out)
    }

    /// qemu's allocation depth of one map entry: 0 unallocated in every layer, 1 allocated in
    /// the image, N allocated in its (N-1)th backing file. A stretch beyond the end of a
    /// shorter backing file counts as allocated (as zeros) in that backing file, as
    /// `bdrv_is_allocated_above` says.
    fn depth_of(&self, e: &MapEntry) -> u32 {
        match e.target {
            MapTarget::Unallocated => {
                if self
                    .has_backing
                    .get(e.depth as usize)
                    .copied()
                    .unwrap_or(false)
                {
                    e.depth + 2
                } else {
                    0
                }
            }
            _ => e.depth + 1,
        }
    }
}

/// An extent file as the open descriptor an NBD server sends reads from; only made for files
/// whose storage has one ([`crate::Storage::as_fd`]).
struct ExtentFd(Arc<ExtentFile>);

impl std::os::fd::AsFd for ExtentFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0
            .storage
            .as_fd()
            .expect("ExtentFd is only made for storage with a descriptor")
    }
}

impl BlockExport for ImageExport {
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.image.read_at(buf, offset).map_err(io_err)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.image.write_at(buf, offset).map_err(io_err)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.image.flush().map_err(io_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> std::io::Result<()> {
        self.image
            .write_zeroes(offset, len, may_trim)
            .map_err(io_err)
    }
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.image.discard(offset, len).map_err(io_err)
    }
    fn can_trim(&self) -> bool {
        self.image.can_discard()
    }
    fn is_read_only(&self) -> bool {
        !self.image.is_writable()
    }
    fn block_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<BlockStatus>> {
        self.status(offset, len, true).map_err(io_err)
    }
    fn read_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<BlockStatus>> {
        self.status(offset, len, false).map_err(io_err)
    }
    fn read_file(&self, offset: u64, len: u64) -> Option<FileSlice> {
        // Plain data in one host file throughout: what `read_at` returns there is that
        // file's bytes (zeros past its end), so they may go from the page cache directly.
        let entries = self.image.map_prefix(offset, len, 1).ok()?;
        match entries.as_slice() {
            [MapEntry {
                start,
                length,
                target: MapTarget::Data { file, offset: at },
                ..
            }] if *start == offset && *length == len && file.storage.as_fd().is_some() => {
                Some(FileSlice {
                    file: Arc::new(ExtentFd(file.clone())),
                    offset: *at,
                })
            }
            _ => None,
        }
    }
    fn allocation_depth(&self, offset: u64, len: u64) -> std::io::Result<Vec<AllocationDepth>> {
        let len = len.min(self.image.size().saturating_sub(offset));
        let mut out: Vec<AllocationDepth> = Vec::new();
        for e in self
            .image
            .map_prefix(offset, len, BLOCK_STATUS_ENTRIES)
            .map_err(io_err)?
        {
            let depth = self.depth_of(&e);
            match out.last_mut() {
                Some(last) if last.depth == depth => last.length += e.length,
                _ => out.push(AllocationDepth {
                    length: e.length,
                    depth,
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{create, CreateOptions, Subformat};

    /// Block status merges neighbours of one kind and says data for stored grains, hole
    /// and zero for the rest, over a real image.
    #[test]
    fn block_status_of_a_sparse_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.vmdk");
        let opts = CreateOptions {
            subformat: Subformat::MonolithicSparse,
            ..CreateOptions::default()
        };
        create(&path, 4 << 20, &opts).unwrap();
        let image = OpenOptions::new().writable(true).open(&path).unwrap();
        image.write_at(&[7u8; 4096], 128 << 10).unwrap();
        let export = ImageExport::new(Arc::new(image));
        let st = export.block_status(0, 4 << 20).unwrap();
        assert_eq!(
            st,
            vec![
                BlockStatus {
                    length: 128 << 10,
                    hole: true,
                    zero: true
                },
                BlockStatus {
                    length: 64 << 10,
                    hole: false,
                    zero: false
                },
                BlockStatus {
                    length: (4 << 20) - (192 << 10),
                    hole: true,
                    zero: true
                },
            ]
        );
        assert!(!export.is_read_only());
    }
}
