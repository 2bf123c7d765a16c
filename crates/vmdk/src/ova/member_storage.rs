//! One member of an archive as a read-only [`Storage`]: a byte range of the archive's own
//! storage, so a disk inside an OVA is read in place, never extracted.

use std::io;
use std::sync::Arc;

use crate::storage::{FileId, Storage};

/// The bytes `[offset, offset + size)` of `archive`, read-only.
#[derive(Debug)]
pub struct MemberStorage {
    archive: Arc<dyn Storage>,
    offset: u64,
    size: u64,
    id: Option<FileId>,
    /// The opened archive this member came from, kept so that later opens of names in it
    /// reuse its index ([`super::open_archives`]).
    _archive: Option<Arc<super::Archive>>,
}

/// Device numbers of member identities carry this bit (memory namespaces use bit 63), so
/// they never equal a host file's.
const MEMBER_TAG: u64 = 1 << 62;

/// The identity of the member whose data starts at `offset` in the archive `archive`: equal
/// for the same member however it is named, different for every other member and file.
pub fn member_id(archive: FileId, offset: u64) -> FileId {
    // SplitMix64 finaliser over the archive's device and inode: deterministic, so two
    // opens of one member agree, and spread, so two archives do not.
    let mut z = archive.dev.rotate_left(32) ^ archive.ino;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    FileId {
        dev: MEMBER_TAG | (z & (MEMBER_TAG - 1)),
        ino: offset,
    }
}

impl MemberStorage {
    /// The member of `archive` at `offset` holding `size` bytes; `id` is the host file it
    /// lives in (the archive's identity).
    pub fn new(archive: Arc<dyn Storage>, offset: u64, size: u64, id: Option<FileId>) -> Self {
        MemberStorage {
            archive,
            offset,
            size,
            id,
            _archive: None,
        }
    }

    /// The same, keeping `archive` alive as long as this member is.
    pub(super) fn keeping(mut self, archive: Arc<super::Archive>) -> Self {
        self._archive = Some(archive);
        self
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "a member of an OVA archive is read-only (extract it to change it)",
    )
}

impl Storage for MemberStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (self.size - offset).min(buf.len() as u64) as usize;
        self.archive.read_at(&mut buf[..n], self.offset + offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn allocated_size(&self) -> Option<u64> {
        Some(self.size)
    }
    fn file_id(&self) -> Option<FileId> {
        self.id
    }
    fn seek_data(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.size {
            return Ok(None);
        }
        Ok(self
            .archive
            .seek_data(self.offset + offset)?
            .map(|d| d - self.offset)
            .filter(|&d| d < self.size))
    }
    fn seek_hole(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.size {
            return Ok(None);
        }
        Ok(Some(
            self.archive
                .seek_hole(self.offset + offset)?
                .map_or(self.size, |h| (h - self.offset).min(self.size)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn reads_only_its_range_and_refuses_writes() {
        let a: Arc<dyn Storage> = Arc::new(MemStorage::new((0..=255u8).collect()));
        let m = MemberStorage::new(a, 10, 5, None);
        let mut buf = [0u8; 8];
        assert_eq!(m.read_up_to(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], &[10, 11, 12, 13, 14]);
        assert_eq!(m.read_at(&mut buf, 5).unwrap(), 0);
        assert_eq!(
            m.write_at(b"x", 0).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let id = FileId { dev: 3, ino: 9 };
        assert_eq!(member_id(id, 512), member_id(id, 512));
        assert_ne!(member_id(id, 512), member_id(id, 1024));
        assert_ne!(
            member_id(id, 512),
            member_id(FileId { dev: 3, ino: 8 }, 512)
        );
    }
}
