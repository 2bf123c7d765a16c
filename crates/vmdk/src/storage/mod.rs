//! The storage layer: the only code that touches `std::fs`. Everything above reaches bytes
//! through a [`Namespace`](namespace::Namespace) (names to files) and [`Storage`] (one
//! open file).
//!
//! This file is positional I/O under every extent: a small trait so tests can swap in
//! memory or a crash-recording layer, and the real thing over `std::fs::File`.
//!
//! ```text
//! mod.rs          Storage, FileStorage (host files), MemStorage, FileId
//! namespace/      names to Storage: host, memory, the router and its backends
//! paths.rs        the path gate: where a name written in a file may lead
//! lock.rs         QEMU's lock bytes on host files
//! aligned_buf.rs  the page-aligned buffer bulk copies read into and write from
//! ```

pub(crate) mod aligned_buf;
pub mod lock;
pub mod namespace;
pub mod paths;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::storage::lock::LockRequest;

/// A byte-addressed file that can be read and written at any offset from many threads at once.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Read up to `buf.len()` bytes at `offset`; returns how many were read (short only at
    /// end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Write all of `buf` at `offset`, growing the file if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Grow or shrink to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make everything written so far durable.
    fn flush(&self) -> io::Result<()>;
    /// Bytes actually allocated on the host (for `info`'s "disk size"); `None` if unknown.
    fn allocated_size(&self) -> Option<u64> {
        None
    }
    /// Which host file this is (device and inode), so callers can tell whether two names
    /// are one file (hard links, symlinks); `None` when not a host file.
    fn file_id(&self) -> Option<FileId> {
        None
    }
    /// Where data starts at or after `offset` (`lseek(SEEK_DATA)`): `Ok(None)` when only a
    /// hole follows up to the end. An `Unsupported` error (the default) means the storage
    /// cannot tell holes from data, and callers treat everything as data.
    fn seek_data(&self, _offset: u64) -> io::Result<Option<u64>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Where the hole at or after `offset` starts (`lseek(SEEK_HOLE)`; the end of the file
    /// counts as a hole): `Ok(None)` past the end. `Unsupported` as for
    /// [`Storage::seek_data`].
    fn seek_hole(&self, _offset: u64) -> io::Result<Option<u64>> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Give `[offset, offset + len)` back to the host, leaving a hole that reads as zeros
    /// and the length unchanged (`fallocate(PUNCH_HOLE)`). Returns whether it did: the
    /// default, for storage that cannot, does nothing and returns `Ok(false)`.
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Start writing this storage's dirty data to the device without waiting for it, so a
    /// later [`Storage::flush`] finds little left to do (`sync_file_range(WRITE)`). A hint:
    /// the default, for storage without a device behind it, does nothing.
    fn start_writeback(&self) -> io::Result<()> {
        Ok(())
    }
    /// The host file descriptor behind this storage, whose bytes at every offset are this
    /// storage's, for callers that hand ranges of it to the kernel (an NBD server's
    /// `sendfile`); `None` (the default) for anything else.
    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fill all of `buf` from `offset`, zero-filling whatever lies past the end of the file.
    ///
    /// This is how data (not metadata) is read: QEMU's file driver pads short reads with
    /// zeros, so a flat extent shorter than its descriptor line reads as zeros there.
    fn read_at_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let done = self.read_up_to(buf, offset)?;
        buf[done..].fill(0);
        Ok(())
    }

    /// Fill all of `buf` from `offset`; a short read is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.read_up_to(buf, offset)? < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "file ends before {} bytes at offset {} could be read",
                    buf.len(),
                    offset
                ),
            ));
        }
        Ok(())
    }

    /// Read from `offset` until `buf` is full or the file ends; returns how many bytes were
    /// read (the one short-read loop every other read helper uses).
    fn read_up_to(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }
}

/// Walk `[start, end)` of `storage` as alternating runs of data and holes, in order:
/// `run(offset, length, is_data)` for each, until it returns `false`. Holes are found with
/// [`Storage::seek_data`]/[`Storage::seek_hole`]; where the storage cannot tell, everything
/// is data. `end` must not lie past the storage's end.
pub fn scan_holes(
    storage: &dyn Storage,
    start: u64,
    end: u64,
    mut run: impl FnMut(u64, u64, bool) -> bool,
) {
    let mut pos = start;
    while pos < end {
        let d = match storage.seek_data(pos) {
            Ok(Some(d)) => d.min(end),
            Ok(None) => end,
            Err(_) => {
                run(pos, end - pos, true);
                return;
            }
        };
        if d > pos && !run(pos, d - pos, false) {
            return;
        }
        if d >= end {
            return;
        }
        let h = match storage.seek_hole(d) {
            Ok(Some(h)) => h.min(end),
            Ok(None) | Err(_) => end,
        };
        // A file growing under us could report a hole at or before `d`; never loop.
        let h = h.max(d + 1).min(end);
        if !run(d, h - d, true) {
            return;
        }
        pos = h;
    }
}

/// The identity of a host file: its device and inode. Two paths name one file exactly when
/// their `FileId`s are equal, however they are spelled (symlinks, hard links, `..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl FileId {
    /// The identity of an open file.
    pub fn of_file(file: &File) -> io::Result<FileId> {
        Ok(Self::of_metadata(&file.metadata()?))
    }

    /// The identity of the file `path` names (symlinks followed); `None` if it does not
    /// exist.
    pub fn of_path(path: &Path) -> io::Result<Option<FileId>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(Self::of_metadata(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn of_metadata(m: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// A host file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
    path: PathBuf,
}

impl FileStorage {
    /// Open `path` for reading, and for writing too if `writable`.
    pub fn open(path: &Path, writable: bool) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Open `path` for reading, and for writing too if `writable`, holding `lock`'s
    /// QEMU-compatible locks for as long as the storage lives (see [`crate::storage::lock`]).
    pub fn open_locked(path: &Path, writable: bool, lock: Option<LockRequest>) -> Result<Self> {
        let s = Self::open(path, writable).map_err(|e| {
            Error::io(
                e,
                if writable {
                    "cannot open for writing"
                } else {
                    "cannot open"
                },
            )
            .with_path(path)
        })?;
        if let Some(req) = lock {
            crate::storage::lock::lock(&s.file, path, req)?;
        }
        Ok(s)
    }

    /// Create `path` (or empty an existing file) for reading and writing. As QEMU does, the
    /// file is locked *before* it is truncated, so a file another process has open as an
    /// image is refused instead of emptied under it; the creation lock is held until the
    /// storage is dropped.
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_locking(path, true)
    }

    /// Create `path` (or empty an existing file) without taking any lock: for callers that
    /// exclude other users themselves.
    pub fn create_unlocked(path: &Path) -> Result<Self> {
        Self::create_locking(path, false)
    }

    /// Open or create `path` without truncating it, take the creation lock if `lock`, then
    /// empty it.
    fn create_locking(path: &Path, lock: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(e, "cannot create").with_path(path))?;
        if lock {
            crate::storage::lock::lock(&file, path, LockRequest::for_create())?;
        }
        empty_file(&file, path)?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
        })
    }

    /// `lseek(fd, pos, whence)` (through rustix: no `unsafe` here): `None` on `ENXIO` (no
    /// data or hole before the end). The descriptor's position is never used for I/O here
    /// (all reads and writes are positional), so moving it is harmless even with many
    /// threads.
    fn lseek(&self, to: rustix::fs::SeekFrom) -> io::Result<Option<u64>> {
        use rustix::fs::SeekFrom;
        let pos = match to {
            SeekFrom::Data(p) | SeekFrom::Hole(p) => p,
            _ => 0,
        };
        if i64::try_from(pos).is_err() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        match rustix::fs::seek(&self.file, to) {
            Ok(r) => Ok(Some(r)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(rustix::io::Errno::INVAL) if !matches!(to, SeekFrom::End(_)) => {
                Err(io::ErrorKind::Unsupported.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The open file, taken out of the storage (its locks go with it).
    pub fn into_file(self) -> File {
        self.file
    }

    /// The path this storage was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for FileStorage {
    fn as_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(&self.file))
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        let meta = self.file.metadata()?;
        if meta.is_file() {
            return Ok(meta.len());
        }
        // Block devices report 0 in their metadata; ask the device itself.
        self.lseek(rustix::fs::SeekFrom::End(0))?
            .ok_or_else(|| io::Error::other("cannot find the end of the device"))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.lseek(rustix::fs::SeekFrom::Data(offset))
    }
    fn seek_hole(&self, offset: u64) -> io::Result<Option<u64>> {
        self.lseek(rustix::fs::SeekFrom::Hole(offset))
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self) -> io::Result<()> {
        use std::os::unix::io::AsRawFd;
        // SAFETY: sync_file_range on a descriptor this storage owns for its whole life; no
        // memory is passed to the kernel. Offset 0 and length 0 mean the whole file.
        let r = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            // Not a regular file or a filesystem without it (the hint is then moot).
            if matches!(e.raw_os_error(), Some(libc::ESPIPE) | Some(libc::EINVAL)) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
    #[cfg(target_os = "linux")]
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<bool> {
        use std::os::unix::io::AsRawFd;
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: fallocate on a descriptor this storage owns for its whole life; no memory
        // is passed to the kernel.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // Filesystems (and devices) without hole punching.
                Some(libc::EOPNOTSUPP) | Some(libc::ENODEV) | Some(libc::ENOSYS) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    }
    fn allocated_size(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }
    fn file_id(&self) -> Option<FileId> {
        FileId::of_file(&self.file).ok()
    }
}

/// An in-memory file, for tests and for building images in memory.
#[derive(Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
    /// Identity given by a [`crate::storage::namespace::MemNamespace`].
    id: Option<FileId>,
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage").finish_non_exhaustive()
    }
}

impl MemStorage {
    /// A storage holding `data`.
    pub fn new(data: Vec<u8>) -> Self {
        MemStorage {
            data: RwLock::new(data),
            id: None,
        }
    }
    /// A storage holding `data` whose [`Storage::file_id`] is `id`.
    pub fn with_id(data: Vec<u8>, id: FileId) -> Self {
        MemStorage {
            data: RwLock::new(data),
            id: Some(id),
        }
    }
    /// A copy of the current contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data.read().unwrap_or_else(|e| e.into_inner());
        let len = data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let n = ((len - offset) as usize).min(buf.len());
        buf[..n].copy_from_slice(&data[offset as usize..offset as usize + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write().unwrap_or_else(|e| e.into_inner());
        let end = offset as usize + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn file_id(&self) -> Option<FileId> {
        self.id
    }
}

/// Empty `file` (just opened or created at `path`) the way that costs nothing later.
///
/// Why not simply truncate: ext4 marks a file truncated to length 0 (even one that was
/// already empty) so that the *last close of that open file* writes back all its dirty data
/// ("auto_da_alloc", protection for programs that rewrite a file in place without fsync).
/// A converter keeps its creating descriptor open and writes gigabytes through it, so its
/// close would wait for the writeback of the whole output: measured as a quarter of the
/// wall time of a 1.6 GB VMDK -> raw conversion. qemu-img escapes this by closing its
/// creating descriptor before writing. Here: an empty file is not truncated at all, and
/// after emptying a non-empty one, a second descriptor is opened and closed at once, which
/// clears ext4's mark while nothing is dirty yet. (Our locks are OFD locks, held by `file`'s
/// own open file description: closing another description of the file does not drop them.)
fn empty_file(file: &File, path: &Path) -> Result<()> {
    let len = file
        .metadata()
        .map_err(|e| Error::io(e, "cannot stat").with_path(path))?
        .len();
    if len == 0 {
        return Ok(());
    }
    file.set_len(0)
        .map_err(|e| Error::io(e, "cannot truncate").with_path(path))?;
    // Failing to open it again only costs the writeback at close: not an error.
    drop(File::open(path));
    Ok(())
}
