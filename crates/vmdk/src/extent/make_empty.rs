//! Emptying a sparse extent (what `commit` does to the overlay it committed): every grain
//! becomes unallocated again, so the backing file shows through, and the file is cut after
//! its last metadata so the space comes back.
//!
//! Order for crash safety: the tables are zeroed (both copies) and flushed before the file
//! is cut. A crash in between leaves unreferenced grains after the metadata (a leak that
//! check reports), never a table pointing past the end of the file.

use crate::error::{Error, Result};
use crate::extent::sparse::{SparseExtent, SparseFlavor};
use crate::format::SECTOR_SIZE;

impl SparseExtent {
    /// Deallocate every grain of this extent. The extent's cached tables are stale
    /// afterwards: the caller drops the image (see [`crate::Image::make_empty`]).
    pub(crate) fn make_empty(&self) -> Result<()> {
        let path = &self.file.path;
        if self.flavor != SparseFlavor::Vmdk4 || self.compressed {
            return Err(Error::unsupported(
                "emptying is supported for hosted sparse extents only (not stream, COWD or \
                 seSparse extents)",
            )
            .with_path(path));
        }
        let Some(h) = self.header.as_ref() else {
            return Err(Error::unsupported("extent without a header").with_path(path));
        };
        let storage = &self.file.storage;
        let len = storage
            .len()
            .map_err(|e| Error::io(e, "getting file size").with_path(path))?;
        let dir = &self.dir;
        let table_bytes = dir.coding().table_bytes();
        let dir_bytes = dir.len() as u64 * dir.coding().width() as u64;
        // Readers (qemu and ours) want the file to reach at least the header's `overhead`,
        // where the first grain would go.
        let mut end = SECTOR_SIZE
            .max(h.overhead.saturating_mul(SECTOR_SIZE))
            .max((h.desc_offset + h.desc_size) * SECTOR_SIZE)
            .max(dir.offset() + dir_bytes);
        if let Some(r) = dir.redundant_offset() {
            end = end.max(r + dir_bytes);
        }
        let zeros = vec![0u8; table_bytes as usize];
        for (_, entries) in dir.raw_copies() {
            for raw in entries {
                let Some(off) = dir
                    .coding()
                    .decode_directory(raw)
                    .map_err(|m| Error::corrupt(m.to_string()).with_path(path))?
                else {
                    continue;
                };
                if off.checked_add(table_bytes).is_none_or(|t| t > len) {
                    return Err(Error::corrupt(format!(
                        "grain table at sector {raw} lies past the end of the file"
                    ))
                    .with_path(path));
                }
                storage
                    .write_at(&zeros, off)
                    .map_err(|e| Error::io(e, "clearing a grain table").with_path(path))?;
                end = end.max(off + table_bytes);
            }
        }
        storage
            .flush()
            .map_err(|e| Error::io(e, "flushing cleared tables").with_path(path))?;
        let end = end.next_multiple_of(SECTOR_SIZE);
        if end < len {
            storage
                .set_len(end)
                .map_err(|e| Error::io(e, "truncating the emptied extent").with_path(path))?;
            storage
                .flush()
                .map_err(|e| Error::io(e, "flushing the emptied extent").with_path(path))?;
        }
        Ok(())
    }
}
