//! Positional I/O under every extent: a small trait so tests can swap in memory or a
//! crash-recording layer, and the real thing over `std::fs::File`.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
    /// Whether the storage is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fill all of `buf` from `offset`, zero-filling whatever lies past the end of the file.
    ///
    /// This is how data (not metadata) is read: QEMU's file driver pads short reads with
    /// zeros, so a flat extent shorter than its descriptor line reads as zeros there.
    fn read_at_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }

    /// Fill all of `buf` from `offset`; a short read is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "file ends before {} bytes at offset {} could be read",
                        buf.len(),
                        offset
                    ),
                ));
            }
            done += n;
        }
        Ok(())
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

    /// Create (or truncate) `path` for reading and writing.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FileStorage {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The path this storage was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for FileStorage {
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
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn allocated_size(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().ok().map(|m| m.blocks() * 512)
    }
}

/// An in-memory file, for tests and for building images in memory.
#[derive(Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
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
}
