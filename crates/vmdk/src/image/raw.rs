//! Raw image files as a [`Disk`](crate::image::Disk): positional reads,
//! and a map that reports the file's holes (found with `SEEK_DATA`/`SEEK_HOLE`) as zeros so
//! they are never read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::{ExtentFile, MapBuilder, MapEntry, MapTarget};
use crate::image::OpenOptions;
use crate::storage::lock::{FileRole, LockRequest};
use crate::storage::namespace::OpenMode;

/// A raw disk image (regular file or block device), read-only.
#[derive(Debug)]
pub struct RawFile {
    path: PathBuf,
    file: Arc<ExtentFile>,
    size: u64,
}

impl RawFile {
    /// Open the host file `path` for reading, locked as QEMU locks a raw image it reads.
    pub fn open(path: &Path) -> Result<RawFile> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Open `path` for reading in `opts`'s namespace with the locking choices of `opts`
    /// (`locking`, `force_share`); a raw file holds only guest data, so it is locked as a
    /// flat extent. The user named the file, so it may be a device.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<RawFile> {
        let lock = opts
            .locking
            .then(|| LockRequest::for_open(FileRole::Data, false, opts.force_share));
        let mode = OpenMode {
            writable: false,
            lock,
            allow_devices: true,
        };
        let storage = opts.namespace().open(path, mode)?;
        let size = storage
            .len()
            .map_err(|e| Error::io(e, "getting size").with_path(path))?;
        Ok(RawFile {
            path: path.to_path_buf(),
            file: Arc::new(ExtentFile::new(path, storage)),
            size,
        })
    }

    /// The identity of the host file.
    pub fn file_id(&self) -> Option<crate::storage::FileId> {
        self.file.storage.file_id()
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the file takes on its host, if known (`info`'s "disk size").
    pub fn allocated_size(&self) -> Option<u64> {
        self.file.storage.allocated_size()
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What `[offset, offset+len)` holds: holes as [`MapTarget::Zero`], the rest as data.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.map_prefix(offset, len, usize::MAX)
    }

    /// Like [`RawFile::map`], but stops after `max_entries` entries (at least one), which
    /// then cover a prefix of the range.
    pub fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "range {offset}+{len} is outside the {}-byte disk",
                    self.size
                ))
                .with_path(&self.path)
            })?;
        let mut b = MapBuilder::with_limit(max_entries);
        let data = |b: &mut MapBuilder, s: u64, e: u64| {
            b.push(
                s,
                e - s,
                MapTarget::Data {
                    file: self.file.clone(),
                    offset: s,
                },
                0,
            )
        };
        crate::storage::scan_holes(&*self.file.storage, offset, end, |s, len, is_data| {
            if is_data {
                data(&mut b, s, s + len)
            } else {
                b.push(s, len, MapTarget::Zero, 0)
            }
        });
        Ok(b.entries)
    }

    /// Fill `buf` from `offset` (zeros past the end of the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .storage
            .read_at_padded(buf, offset)
            .map_err(|e| Error::io(e, format!("reading at offset {offset}")).with_path(&self.path))
    }
}
