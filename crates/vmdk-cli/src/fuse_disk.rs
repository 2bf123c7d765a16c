//! The filesystem `vmdk mount` serves: one directory holding one regular file whose bytes
//! are the guest disk. Every operation goes through the library's public API (`read_at`,
//! `write_at`, `write_zeroes`, `flush`, `map_prefix`), so the format rules, the crash
//! ordering of writes and the path policy are the library's, not this module's.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, OpenAccMode,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyWrite, Request, WriteFlags,
};
use vmdk::Image;

/// The directory's inode (FUSE's root is always 1).
const ROOT: INodeNo = INodeNo(1);
/// The disk file's inode.
const DISK: INodeNo = INodeNo(2);
/// How long the kernel may cache names and attributes. The disk's size never changes while
/// it is mounted and nothing else can change the tree, so a long time is right; it is short
/// enough that `st_blocks` of a writable mount does not go stale for long.
const TTL: Duration = Duration::from_secs(1);
/// Map entries one `lseek` looks at per call to the library, so a disk with millions of
/// small stretches is searched in bounded steps (the whole search still ends at the first
/// match).
const SEEK_BATCH: usize = 4096;

/// One disk image exposed as `<mountpoint>/<name>`.
pub struct DiskFs {
    image: Arc<Image>,
    name: String,
    writable: bool,
    /// Owner of both inodes: whoever mounted (FUSE checks permissions against it with
    /// `default_permissions`).
    uid: u32,
    gid: u32,
    /// The image file's modification time when it was mounted: what the disk file shows.
    mtime: SystemTime,
}

impl DiskFs {
    /// A filesystem serving `image` as a file called `name`, writable if `writable` (the
    /// image must have been opened writable then).
    pub fn new(image: Arc<Image>, name: String, writable: bool) -> DiskFs {
        let mtime = std::fs::metadata(image.path())
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // SAFETY: getuid/getgid take no arguments and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        DiskFs {
            image,
            name,
            writable,
            uid,
            gid,
            mtime,
        }
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size, blocks, nlink) = if ino == ROOT {
            (FileType::Directory, 0o755, 0, 0, 2)
        } else {
            let perm = if self.writable { 0o644 } else { 0o444 };
            // What the image takes on the host, so `du` of the mount says something true.
            let blocks = self.image.allocated_bytes().div_ceil(512);
            (FileType::RegularFile, perm, self.image.size(), blocks, 1)
        };
        FileAttr {
            ino,
            size,
            blocks,
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// The errno a failed library call becomes. The message itself would be lost on the way
/// to the application, so it is logged too.
fn errno(op: &str, e: vmdk::Error) -> Errno {
    tracing::warn!("{op}: {e:#}");
    match e.kind() {
        vmdk::ErrorKind::Io => e
            .os_error()
            .and_then(|o| o.raw_os_error())
            .map_or(Errno::EIO, Errno::from_i32),
        vmdk::ErrorKind::ReadOnly => Errno::EROFS,
        vmdk::ErrorKind::InvalidArgument => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// Where `lseek(fd, offset, SEEK_DATA)` (`data` true) or `SEEK_HOLE` lands on `image`, or
/// `None` for ENXIO. Data is what the chain stores (plain or compressed grains); a hole is
/// everything else (unallocated, zeroed grains, ZERO extents), and the end of the disk is a
/// hole, as lseek(2) defines it.
pub fn seek(image: &Image, offset: u64, data: bool) -> vmdk::Result<Option<u64>> {
    let size = image.size();
    if offset >= size {
        return Ok(None);
    }
    let mut pos = offset;
    while pos < size {
        let entries = image.map_prefix(pos, size - pos, SEEK_BATCH)?;
        for e in &entries {
            if e.target.is_data() == data {
                return Ok(Some(e.start.max(offset)));
            }
        }
        match entries.last() {
            Some(last) => pos = last.start + last.length,
            None => break,
        }
    }
    Ok(if data { None } else { Some(size) })
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == OsStr::new(&self.name) {
            reply.entry(&TTL, &self.attr(DISK), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    /// Only the size can matter here, and it is the disk's: a truncation (`cp` onto the
    /// file, `truncate -s`) to any other size is refused rather than ignored. Mode, owner
    /// and time changes have nowhere to go and are refused too.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino != DISK && ino != ROOT {
            return reply.error(Errno::ENOENT);
        }
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        match size {
            Some(s) if ino == DISK && s != self.image.size() => reply.error(if self.writable {
                Errno::EPERM
            } else {
                Errno::EROFS
            }),
            _ => reply.attr(&TTL, &self.attr(ino)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        if flags.acc_mode() != OpenAccMode::O_RDONLY && !self.writable {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        let disk = self.image.size();
        let len = u64::from(size).min(disk.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        match self.image.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno("read", e)),
        }
    }

    /// Writes inside the disk go to the library; the part of a write past the end is cut
    /// off (a short write, as on a block device), and a write starting at or past the end
    /// fails with ENOSPC.
    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        let room = self.image.size().saturating_sub(offset);
        if room == 0 && !data.is_empty() {
            return reply.error(Errno::ENOSPC);
        }
        let n = (data.len() as u64).min(room) as usize;
        match self.image.write_at(&data[..n], offset) {
            Ok(()) => reply.written(n as u32),
            Err(e) => reply.error(errno("write", e)),
        }
    }

    /// Called on every close(2): a writer learns about a failed flush from close, as with
    /// a local file system that reports write-back errors there.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("flush", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", e)),
        }
    }

    /// `fallocate(PUNCH_HOLE)` and `ZERO_RANGE` become zero writes that may deallocate
    /// whole grains; plain preallocation cannot be promised by a sparse image and is
    /// refused.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let zero = libc::FALLOC_FL_ZERO_RANGE;
        if mode != punch && mode != zero && mode != zero | libc::FALLOC_FL_KEEP_SIZE {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let size = self.image.size();
        if offset >= size {
            return reply.ok();
        }
        let len = length.min(size - offset);
        match self.image.write_zeroes(offset, len, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fallocate", e)),
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers SEEK_SET/CUR/END itself; only these two come here.
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        if ino != DISK {
            return reply.error(Errno::EINVAL);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match seek(&self.image, offset, data) {
            Ok(Some(o)) => reply.offset(o as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, self.name.as_str()),
        ];
        // Each entry carries the offset of the next one, where a later call resumes.
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    /// The session ends (unmounted): make what was written durable before the process
    /// goes. `vmdk mount` flushes again after the session returns and reports a failure.
    fn destroy(&mut self) {
        if let Err(e) = self.image.flush() {
            tracing::error!("flushing at unmount: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SEEK_DATA/SEEK_HOLE over a real sparse image the library creates: one grain of
    /// data in the middle of holes.
    #[test]
    fn seeks_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.vmdk");
        vmdk::create(&path, 16 << 20, &vmdk::CreateOptions::default()).unwrap();
        let img = vmdk::OpenOptions::new().writable(true).open(&path).unwrap();
        img.write_at(&[1u8; 65536], 4 << 20).unwrap();
        let size = img.size();
        assert_eq!(seek(&img, 0, true).unwrap(), Some(4 << 20));
        assert_eq!(
            seek(&img, (4 << 20) + 5, true).unwrap(),
            Some((4 << 20) + 5)
        );
        assert_eq!(seek(&img, 0, false).unwrap(), Some(0));
        assert_eq!(seek(&img, 4 << 20, false).unwrap(), Some((4 << 20) + 65536));
        assert_eq!(seek(&img, 5 << 20, true).unwrap(), None);
        assert_eq!(seek(&img, 5 << 20, false).unwrap(), Some(5 << 20));
        assert_eq!(seek(&img, size, true).unwrap(), None);
        assert_eq!(seek(&img, size, false).unwrap(), None);
    }
}
