//! The names inside an OVA: `X.ova/MEMBER` is a member, read in place; `X.ova` alone is
//! the appliance's first disk. Names written inside a member (extent files, backing
//! files) resolve lexically inside the archive, under the same containment rule as host
//! files. Members are read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::archive::Archive;
use crate::error::{Error, ErrorKind, Result};
use crate::namespace::{LocalNamespace, Namespace, OpenMode, StreamSink};
use crate::paths::{self, PathPolicy};
use crate::storage::{FileId, FileStorage, Storage};

/// The members of the OVA archive at a host path.
#[derive(Debug, Clone)]
pub struct OvaNamespace {
    archive: PathBuf,
}

impl OvaNamespace {
    /// The namespace of the archive `archive` (a host file).
    pub fn new(archive: impl Into<PathBuf>) -> Self {
        OvaNamespace {
            archive: paths::normalize_lexically(&archive.into()),
        }
    }

    /// The archive's host path.
    pub fn archive(&self) -> &Path {
        &self.archive
    }

    /// The member `name` names, or `None` when `name` is the archive itself.
    fn member_of(&self, name: &Path) -> Result<Option<String>> {
        let n = paths::normalize_lexically(name);
        let rest = n.strip_prefix(&self.archive).map_err(|_| {
            Error::invalid(format!(
                "name is not inside the archive {}",
                self.archive.display()
            ))
            .with_path(name)
        })?;
        if rest.as_os_str().is_empty() {
            return Ok(None);
        }
        let parts: Vec<String> = rest
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        Ok(Some(parts.join("/")))
    }

    /// The member `name` stands for in `arch` (the first disk for the bare archive name).
    fn member_in(&self, arch: &Archive, name: &Path) -> Result<String> {
        match self.member_of(name)? {
            Some(m) => Ok(m),
            None => arch.first_disk(),
        }
    }

    fn read_only(&self, name: &Path) -> Error {
        Error::new(
            ErrorKind::ReadOnly,
            "members of an OVA archive are read-only (extract the member to change it)",
        )
        .with_path(name)
    }
}

impl Namespace for OvaNamespace {
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> Result<PathBuf> {
        let referrer = match self.member_of(referrer)? {
            Some(_) => referrer.to_path_buf(),
            None => {
                let arch = Archive::open(&self.archive, None)?;
                self.archive.join(arch.first_disk()?)
            }
        };
        paths::resolve_lexically(&referrer, name, what, policy)
    }

    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        if mode.writable {
            return Err(self.read_only(name));
        }
        let arch = Archive::open(&self.archive, mode.lock)?;
        let member = self.member_in(&arch, name)?;
        let m = arch.file(&member)?;
        Ok(arch.member_storage(m))
    }

    fn create(&self, name: &Path, lock: bool) -> Result<Arc<dyn Storage>> {
        match self.member_of(name)? {
            // Creating the archive's own name replaces the archive: a host file.
            None => LocalNamespace.create(name, lock),
            Some(_) => Err(self.read_only(name)),
        }
    }

    fn create_stream(&self, name: &Path, lock: bool) -> Result<Box<dyn StreamSink>> {
        match self.member_of(name)? {
            None => LocalNamespace.create_stream(name, lock),
            Some(_) => Err(self.read_only(name)),
        }
    }

    /// A member's identity is derived from the archive's and the member's offset (two
    /// members are two files, for backing-chain cycles); the archive's own name is the
    /// host file, so an output of that name is recognised as the archive every member's
    /// storage lives in.
    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        let Some(member) = self.member_of(name)? else {
            return LocalNamespace.identity(name);
        };
        let storage = FileStorage::open(&self.archive, false)
            .map_err(|e| Error::io(e, "cannot open").with_path(&self.archive))?;
        let arch = Archive::from_storage(&self.archive, Arc::new(storage))?;
        Ok(arch.index().file(&member).and_then(|m| arch.member_id(m)))
    }

    fn remove(&self, name: &Path) -> Result<()> {
        match self.member_of(name)? {
            None => LocalNamespace.remove(name),
            Some(_) => Err(self.read_only(name)),
        }
    }
}
