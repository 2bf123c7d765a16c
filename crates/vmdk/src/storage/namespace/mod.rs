//! Where an image's files live: the half of the storage layer that turns *names* into
//! [`Storage`].
//!
//! [`Storage`] is positional I/O on one open file. An image is more than one file: a
//! descriptor names its extents, and `parentFileNameHint` names a backing image, each
//! relative to the file that names it. A [`Namespace`] opens, creates and identifies files
//! by name, resolves a name found inside one file against that file's location, and
//! enforces the path gate while doing so, once, for every backend. Opening, creating,
//! converting and the stream writer reach bytes only through a namespace and `Storage`, so
//! a host directory ([`LocalNamespace`]), memory ([`MemNamespace`]), a member of a tar file
//! or an object store can hold an image and its extents without the format code knowing.
//!
//! Names are [`Path`]s: they display as the user typed them, and `parent`/`join` give
//! relative resolution for any `/`-separated naming scheme (object keys included).

mod local;
mod memory;
mod router;
mod sink;

pub use local::LocalNamespace;
pub use memory::MemNamespace;
pub use router::{Backend, RouterNamespace};
pub use sink::{AppendOutput, StorageOutput, StorageSink, StreamSink};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;
use crate::storage::lock::LockRequest;
use crate::storage::paths::{self, PathPolicy};
use crate::storage::{FileId, Storage};

/// How a file is opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Open for writing as well as reading.
    pub writable: bool,
    /// QEMU-compatible locks to hold while the file is open (host files only; backends
    /// without such locks ignore it).
    pub lock: Option<LockRequest>,
    /// Whether a device file may be opened (only when every path is trusted).
    pub allow_devices: bool,
}

impl OpenMode {
    /// Read-only, unlocked, regular files only.
    pub fn read_only() -> Self {
        OpenMode::default()
    }
}

/// Opens, creates and identifies files by name (see the [module docs](self)).
pub trait Namespace: Send + Sync + fmt::Debug {
    /// The name `name` stands for when it is written inside the file `referrer` (a
    /// descriptor's extent line, a `parentFileNameHint`): relative to the referrer's
    /// directory. A name whose file lies outside that directory and outside every directory
    /// `policy` allows is refused with
    /// [`ErrorKind::UnsafePath`](crate::error::ErrorKind::UnsafePath) (the path gate);
    /// `what` names the reference in the message ("extent file").
    ///
    /// The default applies the gate lexically ([`paths::resolve_lexically`]), which is
    /// exact for namespaces without symlinks (memory, a caller's file objects). A namespace
    /// whose names can be symlinks must judge real locations instead, as
    /// [`LocalNamespace`] does.
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> Result<PathBuf> {
        paths::resolve_lexically(referrer, name, what, policy)
    }

    /// Open the existing file `name`. Only regular files (and devices, when `mode` allows)
    /// are opened: a FIFO would hang, a directory is a mistake.
    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>>;

    /// Create `name`, or empty it if it exists, for reading and writing. Host files are
    /// locked (QEMU's creation lock) *before* they are truncated when `lock` is set, so a
    /// file another process has open as an image is refused instead of emptied under it.
    fn create(&self, name: &Path, lock: bool) -> Result<Arc<dyn Storage>>;

    /// Create `name` as a destination written front to back only, once (stream images,
    /// archives, object-store uploads). The default creates a positional file and appends;
    /// backends that can only stream (uploads) override it.
    fn create_stream(&self, name: &Path, lock: bool) -> Result<Box<dyn StreamSink>> {
        let storage = self.create(name, lock)?;
        Ok(Box::new(StorageSink::new(storage, name)))
    }

    /// Create `name` as a destination written front to back except for ranges skipped
    /// over and filled in later (see [`AppendOutput`]): an OVA, whose descriptor comes
    /// first but is known last. The default is a positional file; an upload overrides it.
    fn create_append(&self, name: &Path, lock: bool) -> Result<Box<dyn AppendOutput>> {
        Ok(Box::new(StorageOutput::new(self.create(name, lock)?, name)))
    }

    /// The identity of the file `name` names, if it exists: two names are one file exactly
    /// when their identities are equal (symlinks, hard links, `..`). Used to find cycles in
    /// backing chains and to refuse an output that is one of the inputs.
    fn identity(&self, name: &Path) -> Result<Option<FileId>>;

    /// Whether `name` can only be written front to back ([`Namespace::create_stream`]), as
    /// an upload to object storage: [`Namespace::create`] refuses it, and a raw output is
    /// then streamed, its holes written as zeros.
    fn stream_only(&self, _name: &Path) -> bool {
        false
    }

    /// Remove the file `name` (an extent a shrink drops).
    fn remove(&self, name: &Path) -> Result<()>;

    /// Whether `name` exists.
    fn exists(&self, name: &Path) -> bool {
        matches!(self.identity(name), Ok(Some(_)))
    }

    /// Whether `name` is a regular file (not a directory, device or FIFO). The default is
    /// [`Namespace::exists`], right for namespaces that hold only files (memory, objects);
    /// host files override it. Backends use it to tell an archive from a directory of the
    /// same name without opening it.
    fn is_file(&self, name: &Path) -> bool {
        self.exists(name)
    }
}

/// The host's files only.
pub fn local() -> Arc<dyn Namespace> {
    Arc::new(LocalNamespace)
}
