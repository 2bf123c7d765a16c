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
