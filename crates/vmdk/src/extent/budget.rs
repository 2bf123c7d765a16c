//! The memory one open image (with its whole backing chain) may hold for sparse-extent
//! metadata, whatever the number of extents: grain directories up to a fixed bound, checked
//! before each directory is allocated, and one grain-table cache shared by every extent.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::grain_table::GrainTableCache;

/// Shared by the extents of an image and its backing chain while they are opened.
#[derive(Debug)]
pub struct ExtentBudget {
    cache: Arc<GrainTableCache>,
    directory_limit: u64,
    directory_used: AtomicU64,
}

impl ExtentBudget {
    /// A budget with a grain-table cache of `cache_bytes` and at most `directory_limit`
    /// bytes of grain directories.
    pub fn new(cache_bytes: usize, directory_limit: u64) -> Self {
        ExtentBudget {
            cache: Arc::new(GrainTableCache::new(cache_bytes)),
            directory_limit,
            directory_used: AtomicU64::new(0),
        }
    }

    /// The grain-table cache every extent opened with this budget uses.
    pub fn cache(&self) -> &Arc<GrainTableCache> {
        &self.cache
    }

    /// Take `bytes` of directory memory for `what` in `file`, before allocating it. The
    /// error names the extent file in its message and carries no path, so the caller can
    /// attach the image the user opened (which may be a descriptor naming that file often).
    pub fn reserve_directory(&self, bytes: u64, file: &Path, what: &str) -> Result<()> {
        let limit = self.directory_limit;
        self.directory_used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|t| *t <= limit)
            })
            .map_err(|used| {
                Error::corrupt(format!(
                    "the {what} of '{}' ({} KiB) would take the grain directories of the \
                     image and its backing chain past {} MiB of memory ({} KiB already)",
                    file.display(),
                    bytes >> 10,
                    limit >> 20,
                    used >> 10,
                ))
            })?;
        Ok(())
    }

    /// Bytes of directory memory taken so far.
    pub fn directory_used(&self) -> u64 {
        self.directory_used.load(Ordering::Relaxed)
    }
}
