//! How to open an image: [`OpenOptions`] and the bounds an open enforces by default.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Image;
use crate::error::{Error, Result};
use crate::storage::lock::{FileRole, LockRequest};
use crate::storage::namespace::Namespace;
use crate::storage::paths::PathPolicy;

/// Most memory the grain directories of an image and its backing chain may take together
/// (checked before each directory is allocated). 512 MiB is 128M four-byte entries: 4 PiB
/// of disk at 64 KiB grains, hundreds of times VMware's largest (62 TiB, 8 MiB with the
/// redundant copy), while leaving room under a 1 GiB address-space limit.
pub const MAX_DIRECTORY_MEMORY: u64 = 512 << 20;

pub use crate::format::MAX_VIRTUAL_SIZE;

/// qemu's refusal of force-share (`-U`) by an open that writes (`block.c`), word for word.
pub(crate) const FORCE_SHARE_READ_ONLY: &str =
    "force-share=on can only be used with read-only images";

/// Deepest backing chain we follow by default.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 64;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open for writing (backing files are always opened read-only).
    pub writable: bool,
    /// Allow extent and backing files anywhere (outside the image's directory and every
    /// allowed directory) and device files. Off by default: only for trusted images.
    pub allow_unsafe_paths: bool,
    /// Directories, besides the image's own, whose files (and their subdirectories' files)
    /// an image may name as extents or backing files. The CLI fills this from
    /// `--allow-path` and `VMDK_ALLOW_PATHS` ([`PathPolicy::dirs_from_env`]).
    pub allow_paths: Vec<PathBuf>,
    /// Take QEMU-compatible image locks on every file the image uses (see [`crate::storage::lock`]),
    /// so a `vmdk` and a QEMU process never write one image at once. On by default; turn it
    /// off only when the caller excludes other users itself.
    pub locking: bool,
    /// Open read-only without excluding writers (qemu-img's `-U`/`--force-share`): the
    /// image may change while it is read. Refused by every open and operation that writes
    /// (see [`OpenOptions::refuse_force_share`]).
    pub force_share: bool,
    /// Open a child even when its `parentCID` differs from its parent's `CID`.
    pub ignore_cid_mismatch: bool,
    /// Follow `parentFileNameHint` to open the backing chain.
    pub open_backing: bool,
    /// Deepest backing chain accepted.
    pub max_chain_depth: u32,
    /// Bytes of grain tables cached, for the image and its backing chain together
    /// (shared by all their sparse extents, however many).
    pub grain_table_cache_bytes: usize,
    /// Durable writes: flush data to stable storage before the grain-table entry that points
    /// at it is written, so a power cut can never leave a table pointing at unwritten data.
    pub durable: bool,
    /// Where the image's files are: host files and OVA members by default
    /// ([`default_namespace`](crate::ova::default_namespace)); memory, an object store or
    /// anything else a caller's namespace serves otherwise. Every file of the image and its backing
    /// chain is opened through it, and names inside the image are resolved by it.
    pub namespace: Option<Arc<dyn Namespace>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            allow_unsafe_paths: false,
            allow_paths: Vec::new(),
            locking: true,
            force_share: false,
            ignore_cid_mismatch: false,
            open_backing: true,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
            grain_table_cache_bytes: crate::extent::DEFAULT_CACHE_BYTES,
            durable: false,
            namespace: None,
        }
    }
}

impl OpenOptions {
    /// Default options (read-only, safe paths, CID checked).
    pub fn new() -> Self {
        Self::default()
    }
    /// Set [`OpenOptions::writable`].
    pub fn writable(mut self, v: bool) -> Self {
        self.writable = v;
        self
    }
    /// Set [`OpenOptions::allow_unsafe_paths`].
    pub fn allow_unsafe_paths(mut self, v: bool) -> Self {
        self.allow_unsafe_paths = v;
        self
    }
    /// Add a directory to [`OpenOptions::allow_paths`].
    pub fn allow_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.allow_paths.push(dir.into());
        self
    }
    /// Set [`OpenOptions::locking`].
    pub fn locking(mut self, v: bool) -> Self {
        self.locking = v;
        self
    }
    /// Set [`OpenOptions::force_share`].
    pub fn force_share(mut self, v: bool) -> Self {
        self.force_share = v;
        self
    }
    /// Refuse these options for an open or an operation that writes `path` when they ask
    /// for force-share (`-U`), with qemu's message: sharing is for readers, and a writer
    /// that dropped it quietly would take the locks the caller asked it not to take, or
    /// write an image another process may be using. This is the one place that decides:
    /// [`Image::open_with`] asks it of every writable open, [`crate::open_disk()`] of every
    /// writable disk, and every operation that writes (`crate::resize::resize`,
    /// `crate::rebase::rebase`, `crate::commit::commit`, `crate::compact::compact`,
    /// `crate::repair::repair`) before it opens anything.
    pub fn refuse_force_share(&self, path: &Path) -> Result<()> {
        if self.force_share {
            return Err(Error::invalid(FORCE_SHARE_READ_ONLY).with_path(path));
        }
        Ok(())
    }
    /// These options for an operation that writes `path`: writable, once
    /// [`OpenOptions::refuse_force_share`] lets them through.
    pub fn for_writing(&self, path: &Path) -> Result<OpenOptions> {
        self.refuse_force_share(path)?;
        Ok(OpenOptions {
            writable: true,
            ..self.clone()
        })
    }
    /// The path gate these options describe.
    pub fn path_policy(&self) -> PathPolicy {
        PathPolicy {
            allow_unsafe: self.allow_unsafe_paths,
            allowed_dirs: self.allow_paths.clone(),
        }
    }
    /// The namespace files are opened in ([`OpenOptions::namespace`], or the library's
    /// [`default_namespace`](crate::ova::default_namespace)).
    pub fn namespace(&self) -> Arc<dyn Namespace> {
        self.namespace
            .clone()
            .unwrap_or_else(|| crate::ova::default_namespace())
    }
    /// Set [`OpenOptions::namespace`].
    pub fn in_namespace(mut self, ns: Arc<dyn Namespace>) -> Self {
        self.namespace = Some(ns);
        self
    }
    /// The locks to take on a file of `role` opened `writable`, if locking is on.
    pub(super) fn lock_request(&self, role: FileRole, writable: bool) -> Option<LockRequest> {
        self.locking
            .then(|| LockRequest::for_open(role, writable, self.force_share))
    }
    /// Set [`OpenOptions::ignore_cid_mismatch`].
    pub fn ignore_cid_mismatch(mut self, v: bool) -> Self {
        self.ignore_cid_mismatch = v;
        self
    }
    /// Set [`OpenOptions::open_backing`].
    pub fn open_backing(mut self, v: bool) -> Self {
        self.open_backing = v;
        self
    }
    /// Set [`OpenOptions::durable`].
    pub fn durable(mut self, v: bool) -> Self {
        self.durable = v;
        self
    }
    /// Open `path` with these options.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with(path, self)
    }
}
