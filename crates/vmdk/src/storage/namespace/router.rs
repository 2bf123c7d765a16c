//! Routing names to namespaces: host files, plus whatever other backends claim a name (an
//! OVA archive's members, object-store URLs). A router holds the backends its caller gives
//! it, as values: the library keeps no registry, so what a namespace can open depends only
//! on how it was built (the CLI builds one with object storage and OVAs, the library's
//! default has OVAs, a test can have none).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{AppendOutput, LocalNamespace, Namespace, OpenMode, StreamSink};
use crate::error::Result;
use crate::storage::paths::PathPolicy;
use crate::storage::{FileId, Storage};

/// A family of names served by something other than the host's file system.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The namespace that serves `name`, or `None` when `name` is not this backend's.
    /// Called for every name opened, so it must answer "not mine" cheaply.
    fn namespace_for(&self, name: &Path) -> Result<Option<Arc<dyn Namespace>>>;

    /// Open the file `name` itself, read-only, as it is stored, or `None` when `name` is
    /// not this backend's. The same as opening it in [`Backend::namespace_for`]'s namespace
    /// except for a backend that serves a file's name as something inside it: an OVA
    /// archive's own name stands for its first disk, and this opens the archive (for
    /// `ova info` and the upload verdict, which judge the file as it is).
    fn open_file(&self, name: &Path, mode: OpenMode) -> Result<Option<Arc<dyn Storage>>> {
        match self.namespace_for(name)? {
            Some(ns) => ns.open(name, mode).map(Some),
            None => Ok(None),
        }
    }
}

/// Routes each name to the first of its backends that claims it, or to host files.
#[derive(Debug, Clone, Default)]
pub struct RouterNamespace {
    backends: Vec<Arc<dyn Backend>>,
}

impl RouterNamespace {
    /// A router asking `backends` in order, then host files. With none it is
    /// [`LocalNamespace`].
    pub fn new(backends: Vec<Arc<dyn Backend>>) -> Self {
        RouterNamespace { backends }
    }

    /// Its backends, in the order they are asked.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.backends
    }

    /// The namespace serving `name`.
    pub fn namespace_of(&self, name: &Path) -> Result<Arc<dyn Namespace>> {
        for b in &self.backends {
            if let Some(ns) = b.namespace_for(name)? {
                return Ok(ns);
            }
        }
        Ok(Arc::new(LocalNamespace))
    }

    /// Open the file `name` itself, as it is stored (see [`Backend::open_file`]): an OVA
    /// archive named as a whole opens the archive, not its first disk.
    pub fn open_file(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        for b in &self.backends {
            if let Some(s) = b.open_file(name, mode)? {
                return Ok(s);
            }
        }
        LocalNamespace.open(name, mode)
    }
}

impl Namespace for RouterNamespace {
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> Result<PathBuf> {
        self.namespace_of(referrer)?
            .resolve(referrer, name, what, policy)
    }
    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        self.namespace_of(name)?.open(name, mode)
    }
    fn create(&self, name: &Path, lock: bool) -> Result<Arc<dyn Storage>> {
        self.namespace_of(name)?.create(name, lock)
    }
    fn create_stream(&self, name: &Path, lock: bool) -> Result<Box<dyn StreamSink>> {
        self.namespace_of(name)?.create_stream(name, lock)
    }
    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        self.namespace_of(name)?.identity(name)
    }
    fn is_file(&self, name: &Path) -> bool {
        self.namespace_of(name).is_ok_and(|ns| ns.is_file(name))
    }
    fn remove(&self, name: &Path) -> Result<()> {
        self.namespace_of(name)?.remove(name)
    }
    fn stream_only(&self, name: &Path) -> bool {
        self.namespace_of(name).is_ok_and(|ns| ns.stream_only(name))
    }
    fn create_append(&self, name: &Path, lock: bool) -> Result<Box<dyn AppendOutput>> {
        self.namespace_of(name)?.create_append(name, lock)
    }
}
