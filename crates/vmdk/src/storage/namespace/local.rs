//! Host files: the path gate judges where a name really is (symlinks followed), opens take
//! QEMU's lock bytes, creates lock before they truncate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Namespace, OpenMode};
use crate::error::{Error, Result};
use crate::storage::paths::{self, PathPolicy};
use crate::storage::{FileId, FileStorage, Storage};

/// The host's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalNamespace;

impl Namespace for LocalNamespace {
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> Result<PathBuf> {
        paths::resolve(referrer, name, what, policy)
    }

    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        paths::check_file_type(name, mode.allow_devices)?;
        Ok(Arc::new(FileStorage::open_locked(
            name,
            mode.writable,
            mode.lock,
        )?))
    }

    fn create(&self, name: &Path, lock: bool) -> Result<Arc<dyn Storage>> {
        if let Ok(m) = std::fs::metadata(name) {
            if !m.file_type().is_file() {
                // A device would keep stale contents wherever the new image has holes, and
                // a FIFO would hang; an image is created only as a regular file.
                return Err(Error::unsupported(
                    "output must be a regular file (devices are not supported)",
                )
                .with_path(name));
            }
        }
        if lock {
            Ok(Arc::new(FileStorage::create(name)?))
        } else {
            Ok(Arc::new(FileStorage::create_unlocked(name)?))
        }
    }

    fn remove(&self, name: &Path) -> Result<()> {
        std::fs::remove_file(name).map_err(|e| Error::io(e, "cannot remove").with_path(name))
    }

    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        FileId::of_path(name).map_err(|e| Error::io(e, "cannot stat").with_path(name))
    }

    fn is_file(&self, name: &Path) -> bool {
        std::fs::metadata(name).is_ok_and(|m| m.is_file())
    }
}
