//! Growing a hosted sparse extent (what `resize` does to the last sparse extent of an image
//! that gets larger): a larger capacity and more grain-directory entries, with a zeroed
//! grain table for each new entry (QEMU's driver expects every table to exist). When the
//! directory has no room left in its sectors, both directories move to the end of the file,
//! as VirtualBox relocates them.
//!
//! Crash ordering: the new tables and directories are written and flushed before the header
//! (capacity and directory offsets), so an interrupted grow leaves the old extent (plus
//! unreferenced space at the end of the file). The descriptor, written last, is the
//! operation's (`ops/resize.rs`).

use crate::error::{Error, Result};
use crate::extent::sparse::SparseExtent;
use crate::format::grain_entry::GrainEntry;
use crate::format::SECTOR_SIZE;

impl SparseExtent {
    /// Zero what this extent still holds past `end` bytes, in the grain a shrink cut
    /// part-way (its bytes past the end were kept, unread), so growing never brings back
    /// data a shrink dropped. Done before the capacity grows, while nothing reads those
    /// bytes, and flushed, so a power loss cannot expose them either.
    pub(crate) fn zero_past(&self, end: u64) -> Result<()> {
        let grain = self.grain_size();
        if end.is_multiple_of(grain) {
            return Ok(());
        }
        let GrainEntry::Data(offset) = self.lookup(end / grain)? else {
            return Ok(());
        };
        let file = &self.file;
        let skip = end % grain;
        let zeros = vec![0u8; (grain - skip) as usize];
        let io =
            |what: &'static str| move |e: std::io::Error| Error::io(e, what).with_path(&file.path);
        file.storage
            .write_at(&zeros, offset + skip)
            .map_err(io("zeroing the rest of the last grain"))?;
        file.storage.flush().map_err(io("flushing"))
    }

    /// Give this hosted sparse extent `new_len` bytes of capacity: zeroed grain tables for
    /// the new directory entries, the directories moved to the end of the file when they
    /// have no room, then the header.
    pub(crate) fn grow(&self, new_len: u64) -> Result<()> {
        let path = &self.file.path;
        let storage = &self.file.storage;
        let io = |what: &'static str| move |e: std::io::Error| Error::io(e, what).with_path(path);
        let mut h = self.hosted_header("grow")?;
        let dir = &self.dir;
        let old_n = dir.len() as u64;
        h.capacity = new_len / SECTOR_SIZE;
        let new_n = h.gd_entries();
        if new_n > crate::format::sparse_header::MAX_GD_ENTRIES {
            return Err(
                Error::invalid("the new size is too large for a sparse extent").with_path(path),
            );
        }
        let table_bytes = dir.coding().table_bytes();
        let mut end = storage
            .len()
            .map_err(io("getting file size"))?
            .next_multiple_of(SECTOR_SIZE);
        // Directory room: the whole sectors the directory occupies now.
        let room = (old_n * 4).next_multiple_of(SECTOR_SIZE) / 4;
        let relocate = new_n > room;
        let mut new_offsets = Vec::new();
        for (off, mut entries) in dir.raw_copies() {
            for _ in old_n..new_n {
                let raw = dir.coding().encode_directory(Some(end)).map_err(|_| {
                    Error::invalid(
                        "the extent file would grow past what 32-bit grain directories address",
                    )
                    .with_path(path)
                })?;
                entries.push(raw);
                end += table_bytes.next_multiple_of(SECTOR_SIZE);
            }
            let mut bytes = Vec::new();
            dir.coding().put_entries(&entries, &mut bytes);
            if relocate {
                let at = end;
                end += (bytes.len() as u64).next_multiple_of(SECTOR_SIZE);
                storage
                    .write_at(&bytes, at)
                    .map_err(io("writing a grain directory"))?;
                new_offsets.push(at);
            } else {
                let from = (old_n * 4) as usize;
                storage
                    .write_at(&bytes[from..], off + from as u64)
                    .map_err(io("writing a grain directory"))?;
                new_offsets.push(off);
            }
        }
        // The new tables are zeros: extending the file makes them so without writing.
        if storage.len().map_err(io("getting file size"))? < end {
            storage.set_len(end).map_err(io("extending the file"))?;
        }
        storage.flush().map_err(io("flushing"))?;
        h.gd_offset = new_offsets[0] / SECTOR_SIZE;
        if let Some(r) = new_offsets.get(1) {
            h.rgd_offset = r / SECTOR_SIZE;
        }
        storage
            .write_at(&h.serialize(), 0)
            .map_err(io("writing the header"))?;
        storage.flush().map_err(io("flushing"))?;
        Ok(())
    }
}
