//! One disk abstraction below the operations: [`Disk`], what convert, compare, dd, measure,
//! map and rebase read, whatever the file's format, and [`ImageFormat`], the formats a disk
//! can be opened as.
//!
//! VMDK images ([`Image`]), raw files ([`RawFile`]), qcow2 images
//! ([`Qcow2Image`](crate::qcow2::Qcow2Image)) and windows of any of them
//! ([`SourceWindow`](crate::ops::source_window::SourceWindow)) implement it. It lives in
//! the image layer, not with convert, so that the layers between (qcow2's backing files,
//! the walks in [`super::walk`]) can name it without naming an operation. Opening a file
//! as a disk of the format given or probed is [`open_disk`](fn@crate::ops::open_disk), in the
//! operations layer because it names qcow2.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::extent::MapEntry;
use crate::format::foreign::ForeignFormat;
use crate::image::raw::RawFile;
use crate::image::{foreign_format_error, probe_in, FileFormat, Image, SOURCE_FORMATS};
use crate::storage::namespace::Namespace;
use crate::storage::FileId;

/// A virtual disk that can be mapped and read: a VMDK image, a raw file, a qcow2 image, or a
/// window of one of them.
pub trait Disk: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// What `[offset, offset+len)` holds (resolved through any backing chain), in one
    /// vector: for ranges whose entries are bounded (a task, a buffer). A whole disk's map can
    /// be millions of entries (a qcow2 image of 512-byte clusters alternating data and holes
    /// holds 2 million per GiB); walk it with [`crate::image::walk::MapWalker`] instead.
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.map_prefix(offset, len, usize::MAX)
    }
    /// Like [`Disk::map`], but at most `max_entries` entries (at least one) covering a
    /// prefix of the range, at a cost proportional to the entries rather than the bytes.
    ///
    /// Required rather than built on `map`: mapping a fixed window and cutting it would cost
    /// the whole window's entries (memory and time) for every batch a walker asks for.
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>>;
    /// Read bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Every host file the disk reads (so an output never overwrites one of them).
    fn file_ids(&self) -> Vec<FileId>;
}

impl Disk for Image {
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

impl Disk for RawFile {
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

/// A format a file can be opened as a [`Disk`] in, by qemu's name for it (`-f`, `-O`,
/// a qcow2 header's backing format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// A VMDK image (any subformat): an [`Image`].
    Vmdk,
    /// The file's bytes are the disk: a [`RawFile`].
    Raw,
    /// A qcow2 image: a [`Qcow2Image`](crate::qcow2::Qcow2Image).
    Qcow2,
}

impl ImageFormat {
    /// qemu's name of the format.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }

    /// What the file `path` of `ns` is, decided by its content as qemu-img probes: a VMDK
    /// file (descriptor or any sparse header) is `Vmdk`, a qcow2 image `Qcow2`, an image of
    /// another format (VHD, VDI, ...) an error naming it ([`ErrorKind::ForeignFormat`]:
    /// its bytes are not the disk, so reading them as raw would be wrong), anything else
    /// `Raw`.
    ///
    /// [`ErrorKind::ForeignFormat`]: crate::error::ErrorKind::ForeignFormat
    pub fn probe_in(ns: &dyn Namespace, path: &Path) -> Result<ImageFormat> {
        Ok(match probe_in(ns, path)? {
            Some(FileFormat::Foreign(ForeignFormat::Qcow2)) => ImageFormat::Qcow2,
            Some(FileFormat::Foreign(f)) => {
                return Err(foreign_format_error(path, f, SOURCE_FORMATS))
            }
            Some(_) => ImageFormat::Vmdk,
            None => ImageFormat::Raw,
        })
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// qemu's names, exactly (qemu's driver names are case-sensitive). Another name is an
/// [`InvalidArgument`](crate::error::ErrorKind::InvalidArgument) error in qemu-img's words,
/// "Unknown driver 'NAME'", followed by the names this library reads (qemu knows formats we
/// do not, so its words alone would not tell the user what to type); callers attach the
/// file it was meant for.
impl FromStr for ImageFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<ImageFormat> {
        match s {
            "vmdk" => Ok(ImageFormat::Vmdk),
            "raw" => Ok(ImageFormat::Raw),
            "qcow2" => Ok(ImageFormat::Qcow2),
            other => Err(Error::invalid(format!(
                "Unknown driver '{other}' (expected vmdk, qcow2 or raw)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused_as_qemu_does() {
        for f in [ImageFormat::Vmdk, ImageFormat::Raw, ImageFormat::Qcow2] {
            assert_eq!(f.to_string().parse::<ImageFormat>().unwrap(), f);
        }
        let e = "vpc".parse::<ImageFormat>().unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidArgument);
        assert_eq!(
            e.message(),
            "Unknown driver 'vpc' (expected vmdk, qcow2 or raw)"
        );
        assert!("VMDK".parse::<ImageFormat>().is_err());
    }
}
