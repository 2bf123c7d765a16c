//! A stretch of a source seen as a disk of its own (`vmdk dd`'s `skip=`/`count=`/`osize=`):
//! the conversion engine then copies it like any disk, holes and zero grains included.

use crate::error::{Error, Result};
use crate::extent::{MapBuilder, MapEntry, MapTarget};
use crate::image::Disk;
use crate::storage::FileId;

/// `len` bytes of `src` from `offset`, then zeros up to `size` bytes in all.
pub struct SourceWindow<'a> {
    src: &'a dyn Disk,
    offset: u64,
    len: u64,
    size: u64,
}

impl<'a> SourceWindow<'a> {
    /// The window `[offset, offset + len)` of `src`, padded with zeros (or cut) to `size`.
    pub fn new(src: &'a dyn Disk, offset: u64, len: u64, size: u64) -> Result<Self> {
        if offset.checked_add(len).is_none_or(|end| end > src.size()) {
            return Err(Error::invalid(format!(
                "range {offset}+{len} is outside the {}-byte source",
                src.size()
            )));
        }
        Ok(SourceWindow {
            src,
            offset,
            len: len.min(size),
            size,
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::invalid(format!(
                "range {offset}+{len} is outside the {}-byte disk",
                self.size
            )));
        }
        Ok(())
    }
}

impl Disk for SourceWindow<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        self.check(offset, len)?;
        let mut b = MapBuilder::with_limit(max_entries);
        let inside = self.len.saturating_sub(offset).min(len);
        if inside > 0 {
            let mut covered = offset;
            for e in self
                .src
                .map_prefix(self.offset + offset, inside, max_entries)?
            {
                covered = e.start + e.length - self.offset;
                b.push(e.start - self.offset, e.length, e.target, e.depth);
            }
            if covered < offset + inside {
                // The source answered a prefix: so does the window.
                return Ok(b.entries);
            }
        }
        b.push(offset + inside, len - inside, MapTarget::Zero, 0);
        Ok(b.entries)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let inside = self.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        if inside > 0 {
            self.src.read_at(&mut buf[..inside], self.offset + offset)?;
        }
        buf[inside..].fill(0);
        Ok(())
    }

    fn file_ids(&self) -> Vec<FileId> {
        self.src.file_ids()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::raw::RawFile;

    #[test]
    fn window_shifts_and_pads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r");
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let raw = RawFile::open(&p).unwrap();
        let w = SourceWindow::new(&raw, 1000, 3000, 5000).unwrap();
        let mut buf = vec![0xffu8; 5000];
        w.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..3000], &data[1000..4000]);
        assert!(buf[3000..].iter().all(|&b| b == 0));
        let m = w.map(0, 5000).unwrap();
        assert_eq!(m[0].start, 0);
        assert_eq!(m.last().unwrap().start + m.last().unwrap().length, 5000);
        assert!(matches!(m.last().unwrap().target, MapTarget::Zero));
        assert!(SourceWindow::new(&raw, 8000, 1000, 1000).is_err());
        // Cut short: osize smaller than the window.
        let w = SourceWindow::new(&raw, 0, 8192, 100).unwrap();
        assert_eq!(
            w.map(0, 100).unwrap().iter().map(|e| e.length).sum::<u64>(),
            100
        );
    }
}
