//! The names inside an OVA: `X.ova/MEMBER` is a member, read in place; `X.ova` alone is
//! the appliance's first disk. Names written inside a member (extent files, backing
//! files) resolve lexically inside the archive, under the same containment rule as host
//! files. Members are read-only.
//!
//! The archive itself is a file of another namespace (the host's, or object storage's for
//! `s3://bucket/X.ova`), which supplies its bytes; the members are byte ranges of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::archive::Archive;
use crate::error::{Error, ErrorKind, Result};
use crate::storage::namespace::{AppendOutput, LocalNamespace, Namespace, OpenMode, StreamSink};
use crate::storage::paths::{self, PathPolicy};
use crate::storage::{FileId, Storage};

/// The members of an OVA archive.
#[derive(Debug, Clone)]
pub struct OvaNamespace {
    /// The archive's name in `outer`, as given (an object name keeps its `//`).
    archive: PathBuf,
    /// The same, normalised lexically: names are compared with it.
    normalized: PathBuf,
    /// Where the archive file lives.
    outer: Arc<dyn Namespace>,
}

impl OvaNamespace {
    /// The namespace of the archive `archive` (a host file).
    pub fn new(archive: impl Into<PathBuf>) -> Self {
        let archive = paths::normalize_lexically(&archive.into());
        Self::within(archive, Arc::new(LocalNamespace))
    }

    /// The namespace of the archive file `archive` of `outer` (an object in object
    /// storage, say): its bytes are read through `outer`.
    pub fn within(archive: impl Into<PathBuf>, outer: Arc<dyn Namespace>) -> Self {
        let archive = archive.into();
        OvaNamespace {
            normalized: paths::normalize_lexically(&archive),
            archive,
            outer,
        }
    }

    /// The archive's name.
    pub fn archive(&self) -> &Path {
        &self.archive
    }

    /// The archive, indexed: shared with every other open of it while one of its members
    /// is in use (see [`super::open_archives`]).
    fn open_archive(
        &self,
        lock: Option<crate::storage::lock::LockRequest>,
    ) -> Result<Arc<Archive>> {
        super::open_archives::open(&*self.outer, &self.archive, lock)
    }

    /// `name` (normalised lexically, as inside this namespace) as the outer namespace
    /// spells it: `Path` normalisation folds the `//` of `s3://`, which the archive's own
    /// spelling keeps.
    fn outer_name(&self, normalized: PathBuf) -> PathBuf {
        match normalized.strip_prefix(&self.normalized) {
            Ok(rest) if rest.as_os_str().is_empty() => self.archive.clone(),
            Ok(rest) => self.archive.join(rest),
            Err(_) => {
                let (a, n) = (self.archive.to_string_lossy(), normalized.to_string_lossy());
                match a.split_once("://") {
                    // Outside the archive (only where the policy allows it): the same
                    // server, spelled as the archive is.
                    Some((scheme, _)) if n.starts_with(&format!("{scheme}:/")) => {
                        PathBuf::from(format!("{scheme}:/{}", &n[scheme.len() + 1..]))
                    }
                    _ => normalized,
                }
            }
        }
    }

    /// The member `name` names, or `None` when `name` is the archive itself.
    fn member_of(&self, name: &Path) -> Result<Option<String>> {
        let n = paths::normalize_lexically(name);
        let rest = n.strip_prefix(&self.normalized).map_err(|_| {
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
            Some(m) => self.normalized.join(m),
            None => {
                let arch = self.open_archive(None)?;
                self.normalized.join(arch.first_disk()?)
            }
        };
        let r = paths::resolve_lexically(&referrer, name, what, policy)?;
        Ok(self.outer_name(r))
    }

    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        if mode.writable {
            return Err(self.read_only(name));
        }
        let arch = self.open_archive(mode.lock)?;
        let member = self.member_in(&arch, name)?;
        let m = arch.file(&member)?;
        Ok(arch.shared_member_storage(m))
    }

    fn create(&self, name: &Path, lock: bool) -> Result<Arc<dyn Storage>> {
        match self.member_of(name)? {
            // Creating the archive's own name replaces the archive: a host file.
            None => self.outer.create(&self.archive, lock),
            Some(_) => Err(self.read_only(name)),
        }
    }

    fn create_stream(&self, name: &Path, lock: bool) -> Result<Box<dyn StreamSink>> {
        match self.member_of(name)? {
            None => self.outer.create_stream(&self.archive, lock),
            Some(_) => Err(self.read_only(name)),
        }
    }

    fn create_append(&self, name: &Path, lock: bool) -> Result<Box<dyn AppendOutput>> {
        match self.member_of(name)? {
            None => self.outer.create_append(&self.archive, lock),
            Some(_) => Err(self.read_only(name)),
        }
    }

    /// A member's identity is derived from the archive's and the member's offset (two
    /// members are two files, for backing-chain cycles); the archive's own name is the
    /// host file, so an output of that name is recognised as the archive every member's
    /// storage lives in.
    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        let Some(member) = self.member_of(name)? else {
            return self.outer.identity(&self.archive);
        };
        let arch = self.open_archive(None)?;
        Ok(arch.index().file(&member).and_then(|m| arch.member_id(m)))
    }

    fn remove(&self, name: &Path) -> Result<()> {
        match self.member_of(name)? {
            None => self.outer.remove(&self.archive),
            Some(_) => Err(self.read_only(name)),
        }
    }

    fn stream_only(&self, _name: &Path) -> bool {
        self.outer.stream_only(&self.archive)
    }
}
