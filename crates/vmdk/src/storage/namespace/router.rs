//! The default namespace: host files, plus whatever other backends claim a name (an OVA
//! archive's members, object-store URLs). Every command that takes an image name goes
//! through it, so a new backend reaches all of them at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{AppendOutput, LocalNamespace, Namespace, OpenMode, StreamSink};
use crate::error::Result;
use crate::paths::PathPolicy;
use crate::storage::{FileId, Storage};

/// A family of names served by something other than the host's file system.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The namespace that serves `name`, or `None` when `name` is not this backend's.
    /// Called for every name opened, so it must answer "not mine" cheaply.
    fn namespace_for(&self, name: &Path) -> Result<Option<Arc<dyn Namespace>>>;
}

static BACKENDS: RwLock<Vec<Arc<dyn Backend>>> = RwLock::new(Vec::new());

/// Add `backend` to every [`default`] namespace made from now on (and to those made before:
/// they consult the list on every call). Backends registered later are asked first.
pub fn register_backend(backend: Arc<dyn Backend>) {
    BACKENDS
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(0, backend);
}

/// Routes each name to the backend that claims it, or to host files.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterNamespace;

impl RouterNamespace {
    /// The namespace serving `name`.
    pub fn namespace_of(&self, name: &Path) -> Result<Arc<dyn Namespace>> {
        let backends = BACKENDS.read().unwrap_or_else(|e| e.into_inner()).clone();
        for b in backends {
            if let Some(ns) = b.namespace_for(name)? {
                return Ok(ns);
            }
        }
        // Built in: members of OVA archives (`X.ova`, `X.ova/DISK.vmdk`).
        if let Some(ns) = crate::ova::OvaBackend.namespace_for(name)? {
            return Ok(ns);
        }
        Ok(Arc::new(LocalNamespace))
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
    fn remove(&self, name: &Path) -> Result<()> {
        self.namespace_of(name)?.remove(name)
    }
    fn stream_only(&self, name: &Path) -> bool {
        self.namespace_of(name).is_ok_and(|ns| ns.stream_only(name))
    }
    fn open_whole(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        self.namespace_of(name)?.open_whole(name, mode)
    }
    fn create_append(&self, name: &Path, lock: bool) -> Result<Box<dyn AppendOutput>> {
        self.namespace_of(name)?.create_append(name, lock)
    }
}
