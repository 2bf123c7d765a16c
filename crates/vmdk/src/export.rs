//! An opened image as a block device for other programs: the NBD export of `vmdk serve`
//! (feature `nbd`), and the rules every such consumer shares.
//!
//! The dependency points from the format to the protocol (this crate uses `vmdk-nbd`'s
//! [`BlockExport`] trait), never the other way round, so the NBD server stays a server for
//! any block backend and everything about VMDK (what a compressed grain or an unallocated
//! grain means to a client, which images can be written) stays in this crate.

use std::path::Path;
use std::sync::Arc;

use vmdk_nbd::{BlockExport, BlockStatus};

use crate::{ErrorKind, Image, MapTarget, OpenOptions, Result};

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
}

impl ImageExport {
    /// Export `image`; it is served writable when it was opened writable.
    pub fn new(image: Arc<Image>) -> ImageExport {
        ImageExport { image }
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
        let len = len.min(self.image.size().saturating_sub(offset));
        let mut out: Vec<BlockStatus> = Vec::new();
        for e in self
            .image
            .map_prefix(offset, len, BLOCK_STATUS_ENTRIES)
            .map_err(io_err)?
        {
            let (hole, zero) = allocation(&e.target);
            match out.last_mut() {
                Some(last) if last.hole == hole && last.zero == zero => last.length += e.length,
                _ => out.push(BlockStatus {
                    length: e.length,
                    hole,
                    zero,
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
