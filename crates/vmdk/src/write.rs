//! Writing to an open image (see the write-path issue). This module holds the per-image
//! write state and the rules for which images may be opened for writing.

use crate::error::{Error, ErrorKind, Result};
use crate::image::Image;

/// Per-image state used by writers.
#[derive(Debug, Default)]
pub struct WriteState {}

impl Image {
    /// Refuse to open for writing what cannot be written safely.
    pub(crate) fn check_writable_open(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        for e in &self.extents {
            if let crate::extent::ExtentKind::Sparse(s) = &e.kind {
                if s.flavor() == crate::extent::SparseFlavor::SeSparse {
                    return Err(Error::new(
                        ErrorKind::ReadOnly,
                        "seSparse images can only be opened read-only",
                    )
                    .with_path(&self.path));
                }
                if let Some(h) = s.header() {
                    // VMware KB 2064959: version 3 adds changed-block tracking we would not
                    // keep up to date, so only read it (compressed stream files excepted).
                    if h.version == 3 && !s.is_compressed() {
                        return Err(Error::new(
                            ErrorKind::ReadOnly,
                            "VMDK version 3 images can only be opened read-only",
                        )
                        .with_path(&self.path));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Image {
    /// Write `buf` at virtual `offset`. Thread-safe: many writers and readers may work on
    /// one image at once.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        Err(Error::unsupported("write: not implemented yet"))
    }

    /// Write zeros over `[offset, offset+len)`. With `may_unmap`, whole grains may be
    /// deallocated or marked zero instead of written, where that still reads back as zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let _ = (offset, len, may_unmap);
        Err(Error::unsupported("write zeroes: not implemented yet"))
    }

    /// Make all completed writes durable.
    pub fn flush(&self) -> Result<()> {
        Ok(())
    }
}
