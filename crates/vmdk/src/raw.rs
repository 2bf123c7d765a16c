//! Raw image files as a convert/compare [`Source`](crate::convert::Source): positional reads,
//! and a map that reports the file's holes (found with `SEEK_DATA`/`SEEK_HOLE`) as zeros so
//! they are never read.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::image::OpenOptions;
use crate::lock::{FileRole, LockRequest};
use crate::map::{ExtentFile, MapBuilder, MapEntry, MapTarget};
use crate::storage::{FileStorage, Storage};

/// A raw disk image (regular file or block device), read-only.
#[derive(Debug)]
pub struct RawFile {
    path: PathBuf,
    file: Arc<ExtentFile>,
    /// An independent descriptor for `lseek` queries (reads use positional I/O on `file`).
    seek: File,
    size: u64,
    /// Whether `SEEK_DATA`/`SEEK_HOLE` work here (not on block devices or some file systems).
    sparse_aware: bool,
}

impl RawFile {
    /// Open `path` for reading, locked as QEMU locks a raw image it reads.
    pub fn open(path: &Path) -> Result<RawFile> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Open `path` for reading with the locking choices of `opts` (`locking`,
    /// `force_share`); a raw file holds only guest data, so it is locked as a flat extent.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<RawFile> {
        let lock = opts
            .locking
            .then(|| LockRequest::for_open(FileRole::Data, false, opts.force_share));
        let storage = FileStorage::open_locked(path, false, lock)?;
        let seek = File::open(path).map_err(|e| Error::io(e, "cannot open").with_path(path))?;
        let meta = seek
            .metadata()
            .map_err(|e| Error::io(e, "getting file size").with_path(path))?;
        let size = if meta.is_file() {
            meta.len()
        } else {
            // Block devices report 0 in their metadata; ask the device itself.
            // SAFETY: lseek on an fd we own; no memory is touched.
            let end = unsafe { libc::lseek(seek.as_raw_fd(), 0, libc::SEEK_END) };
            if end < 0 {
                return Err(
                    Error::io(std::io::Error::last_os_error(), "getting size").with_path(path)
                );
            }
            end as u64
        };
        Ok(RawFile {
            path: path.to_path_buf(),
            file: Arc::new(ExtentFile::new(path, Arc::new(storage) as Arc<dyn Storage>)),
            seek,
            size,
            sparse_aware: meta.is_file(),
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

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `lseek(fd, pos, whence)`; `None` when there is no such data/hole before the end
    /// (`ENXIO`); an error when the call is not supported.
    fn seek(&self, pos: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
        // SAFETY: lseek on an fd we own; no memory is touched.
        let r = unsafe { libc::lseek(self.seek.as_raw_fd(), pos as libc::off_t, whence) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
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
        if !self.sparse_aware {
            data(&mut b, offset, end);
            return Ok(b.entries);
        }
        let mut pos = offset;
        while pos < end && !b.stopped() {
            let d = match self.seek(pos, libc::SEEK_DATA) {
                Ok(Some(d)) => d.min(end),
                Ok(None) => end,
                Err(_) => {
                    // No hole support: everything is data.
                    data(&mut b, pos, end);
                    break;
                }
            };
            if d > pos {
                b.push(pos, d - pos, MapTarget::Zero, 0);
            }
            if d >= end {
                break;
            }
            let h = match self.seek(d, libc::SEEK_HOLE) {
                Ok(Some(h)) => h.min(end),
                Ok(None) | Err(_) => end,
            };
            // A file growing under us could report a hole at or before `d`; never loop.
            let h = h.max(d + 1).min(end);
            data(&mut b, d, h);
            pos = h;
        }
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
