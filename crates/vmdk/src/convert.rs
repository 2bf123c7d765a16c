//! Whole-disk operations shared by the CLI and exports: convert to raw or VMDK, compare.
//! Everything is driven by the mapping primitive so holes and zero grains cost nothing.

use std::path::Path;

use crate::create::CreateOptions;
use crate::error::{Error, Result};
use crate::image::{Image, OpenOptions};
use crate::map::MapEntry;

/// Anything convert and compare can read: a VMDK image or a raw file.
pub trait Source: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// What `[offset, offset+len)` holds (resolved through any backing chain).
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>>;
    /// Read bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl Source for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        Image::map(self, offset, len)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Image::read_at(self, buf, offset)
    }
}

/// Open `path` as a source: `format` "raw" or "vmdk", or probed from content when `None`.
pub fn open_source(
    path: &Path,
    format: Option<&str>,
    opts: &OpenOptions,
) -> Result<Box<dyn Source>> {
    let _ = (path, format, opts);
    Err(Error::unsupported("open_source: not implemented yet"))
}

/// Options for conversions.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Worker threads (compression, reading); 0 = number of CPUs.
    pub threads: usize,
    /// Compress output grains (streamOptimized is always compressed).
    pub compress: bool,
    /// zlib level for compressed output.
    pub compression_level: u32,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            threads: 0,
            compress: false,
            compression_level: 6,
        }
    }
}

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Write `src` to `dst` as a sparse raw file (holes where the source has zeros).
pub fn convert_to_raw(
    src: &dyn Source,
    dst: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let _ = (src, dst, opts, progress);
    Err(Error::unsupported("convert to raw: not implemented yet"))
}

/// Write `src` to a new VMDK image at `dst`.
pub fn convert_to_vmdk(
    src: &dyn Source,
    dst: &Path,
    create: &CreateOptions,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let _ = (src, dst, create, opts, progress);
    Err(Error::unsupported("convert to vmdk: not implemented yet"))
}

/// Result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareResult {
    /// Same size and content.
    Identical,
    /// Contents differ first at this byte offset.
    DiffersAt(u64),
    /// Sizes differ (and the common part is identical).
    SizeDiffers {
        /// Size of the first.
        a: u64,
        /// Size of the second.
        b: u64,
    },
}

/// Compare two sources byte for byte, skipping ranges both map as zero.
pub fn compare(a: &dyn Source, b: &dyn Source, progress: Progress) -> Result<CompareResult> {
    let _ = (a, b, progress);
    Err(Error::unsupported("compare: not implemented yet"))
}
