//! What convert and compare read: the [`Source`] trait, its implementations for VMDK images
//! and raw files, and [`open_source`], which decides by content which one a file is.

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::{FileFormat, Image, OpenOptions};
use crate::map::MapEntry;
use crate::raw::RawFile;
use crate::storage::FileId;

/// Anything convert and compare can read: a VMDK image or a raw file.
pub trait Source: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// What `[offset, offset+len)` holds (resolved through any backing chain), in one
    /// vector: for ranges whose entries are bounded (a task, a buffer). A whole disk's map can
    /// be millions of entries (a qcow2 image of 512-byte clusters alternating data and holes
    /// holds 2 million per GiB); walk it with [`crate::walk::MapWalker`] instead.
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.map_prefix(offset, len, usize::MAX)
    }
    /// Like [`Source::map`], but at most `max_entries` entries (at least one) covering a
    /// prefix of the range, at a cost proportional to the entries rather than the bytes.
    ///
    /// Required rather than built on `map`: mapping a fixed window and cutting it would cost
    /// the whole window's entries (memory and time) for every batch a walker asks for.
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>>;
    /// Read bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Every host file the source reads (so an output never overwrites one of them).
    fn file_ids(&self) -> Vec<FileId>;
}

impl Source for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        Image::map(self, offset, len)
    }
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        Image::map_prefix(self, offset, len, max_entries)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Image::read_at(self, buf, offset)
    }
    fn file_ids(&self) -> Vec<FileId> {
        Image::file_ids(self)
    }
}

impl Source for RawFile {
    fn size(&self) -> u64 {
        RawFile::size(self)
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        RawFile::map(self, offset, len)
    }
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        RawFile::map_prefix(self, offset, len, max_entries)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        RawFile::read_at(self, buf, offset)
    }
    fn file_ids(&self) -> Vec<FileId> {
        RawFile::file_id(self).into_iter().collect()
    }
}

/// Open `path` as a source: `format` "raw" or "vmdk", or probed from content when `None`:
/// a VMDK file opens as an image, an image of another format (qcow2, VHD, ...) is refused
/// with its name rather than read as raw bytes, and anything else is a raw disk.
pub fn open_source(
    path: &Path,
    format: Option<&str>,
    opts: &OpenOptions,
) -> Result<Box<dyn Source>> {
    let is_vmdk = match format {
        Some("vmdk") => true,
        Some("raw") => false,
        Some("qcow2") => return Ok(Box::new(crate::qcow2::Qcow2Image::open_with(path, opts)?)),
        Some(other) => {
            return Err(Error::invalid(format!(
                "unknown source format '{other}' (expected raw, vmdk or qcow2)"
            )))
        }
        None => match crate::image::probe_in(&*opts.namespace(), path)? {
            Some(FileFormat::Foreign(crate::format::foreign::ForeignFormat::Qcow2)) => {
                return Ok(Box::new(crate::qcow2::Qcow2Image::open_with(path, opts)?))
            }
            Some(FileFormat::Foreign(f)) => {
                return Err(crate::image::foreign_format_error(path, f))
            }
            Some(_) => true,
            None => false,
        },
    };
    if is_vmdk {
        Ok(Box::new(Image::open_with(path, opts)?))
    } else {
        Ok(Box::new(RawFile::open_with(path, opts)?))
    }
}
