//! The namespace of object names: opens objects for reading, starts uploads for stream
//! outputs, and refuses what object storage cannot do (writing in place, random-access
//! outputs).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmdk::storage::namespace::{AppendOutput, Namespace, OpenMode, StreamSink};
use vmdk::storage::paths::PathPolicy;
use vmdk::storage::{FileId, Storage};
use vmdk::{Error, ErrorKind, Result};

use crate::append_upload::AppendUpload;
use crate::client::{error, runtime};
use crate::name::{self, ObjectName, Scheme};
use crate::reader::ObjectStorage;
use crate::upload::UploadSink;
use crate::Shared;

/// Objects in S3 (or a compatible server) and on HTTP(S) servers.
#[derive(Debug, Clone)]
pub struct ObjectNamespace {
    pub(crate) shared: Arc<Shared>,
}

/// One object's identity: stable for its name within this process, and apart from host
/// files (whose device numbers are small) and in-memory files (top bit).
fn identity(n: &ObjectName) -> FileId {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (n.scheme, &n.authority).hash(&mut h);
    let dev = (1 << 62) | (h.finish() >> 2);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.key.hash(&mut h);
    FileId {
        dev,
        ino: h.finish(),
    }
}

/// Objects seen to exist, by name. An object's identity is its name's (see `identity`),
/// so once an object is known to exist, asking again needs no request: a name inside a
/// remote OVA is routed through the archive object, and every line of a descriptor there
/// names a member that is resolved, identified and opened (each asking whether the archive
/// exists, a HEAD request each: 6 per line before). Only objects found are kept (one made
/// later is found), a removal through this namespace forgets it, and opening still asks
/// (so an object removed elsewhere fails there, with the store's answer). Bounded: all are
/// forgotten when it is full.
#[derive(Debug, Default)]
pub(crate) struct SeenObjects(std::sync::Mutex<std::collections::HashSet<PathBuf>>);

/// Objects [`SeenObjects`] holds at most.
const SEEN_OBJECTS: usize = 4096;

impl SeenObjects {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn contains(&self, name: &Path) -> bool {
        self.lock().contains(name)
    }
    fn insert(&self, name: &Path) {
        let mut seen = self.lock();
        if seen.len() >= SEEN_OBJECTS {
            seen.clear();
        }
        seen.insert(name.to_path_buf());
    }
    fn forget(&self, name: &Path) {
        self.lock().remove(name);
    }
}

impl ObjectNamespace {
    fn store(&self, n: &ObjectName) -> Result<Arc<dyn object_store::ObjectStore>> {
        self.shared.stores.get(n, &self.shared.config)
    }

    fn head(&self, name: &Path) -> Result<(ObjectName, object_store::ObjectMeta)> {
        let n = ObjectName::parse(name)?;
        let store = self.store(&n)?;
        let loc = n.location(name)?;
        let meta = runtime()
            .block_on(store.head(&loc))
            .map_err(|e| error(e, name, "cannot open"))?;
        self.shared.seen.insert(name);
        Ok((n, meta))
    }
}

fn stream_only_message() -> &'static str {
    "object storage takes only outputs written front to back: use -O raw, -O qcow2 or \
     -o subformat=streamOptimized (a random-access image can be uploaded once it is made)"
}

impl Namespace for ObjectNamespace {
    fn resolve(&self, from: &Path, name: &str, what: &str, policy: &PathPolicy) -> Result<PathBuf> {
        name::resolve(from, name, what, policy)
    }

    fn open(&self, name: &Path, mode: OpenMode) -> Result<Arc<dyn Storage>> {
        if mode.writable {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                "objects in object storage cannot be changed in place (write a new object \
                 with convert instead)",
            )
            .with_path(name));
        }
        let (n, meta) = self.head(name)?;
        let store = self.store(&n)?;
        Ok(Arc::new(ObjectStorage::new(
            store,
            meta,
            identity(&n),
            &self.shared.config,
        )))
    }

    fn create(&self, name: &Path, _lock: bool) -> Result<Arc<dyn Storage>> {
        ObjectName::parse(name)?;
        Err(Error::unsupported(stream_only_message()).with_path(name))
    }

    fn create_stream(&self, name: &Path, _lock: bool) -> Result<Box<dyn StreamSink>> {
        let n = ObjectName::parse(name)?;
        if n.scheme != Scheme::S3 {
            return Err(Error::unsupported(
                "HTTP URLs are read-only: write to s3:// (or a local file) instead",
            )
            .with_path(name));
        }
        let store = self.store(&n)?;
        let loc = n.location(name)?;
        let upload = runtime()
            .block_on(store.put_multipart(&loc))
            .map_err(|e| error(e, name, "cannot start the upload"))?;
        Ok(Box::new(UploadSink::new(upload, name, &self.shared.config)))
    }

    /// An upload whose parts are numbered by position, so ranges skipped over can be
    /// filled in before their part is sent (an OVA's descriptor, written last).
    fn create_append(&self, name: &Path, _lock: bool) -> Result<Box<dyn AppendOutput>> {
        let n = ObjectName::parse(name)?;
        if n.scheme != Scheme::S3 {
            return Err(Error::unsupported(
                "HTTP URLs are read-only: write to s3:// (or a local file) instead",
            )
            .with_path(name));
        }
        let store = self
            .shared
            .stores
            .multipart(&n, &self.shared.config)?
            .ok_or_else(|| Error::unsupported("no multipart uploads here").with_path(name))?;
        let loc = n.location(name)?;
        Ok(Box::new(AppendUpload::start(
            store,
            loc,
            name,
            &self.shared.config,
        )?))
    }

    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        if self.shared.seen.contains(name) {
            return Ok(Some(identity(&ObjectName::parse(name)?)));
        }
        match self.head(name) {
            Ok((n, _)) => Ok(Some(identity(&n))),
            Err(e) if e.to_string().ends_with("no such object") => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove(&self, name: &Path) -> Result<()> {
        let n = ObjectName::parse(name)?;
        if n.scheme != Scheme::S3 {
            return Err(Error::unsupported("HTTP URLs are read-only").with_path(name));
        }
        let store = self.store(&n)?;
        let loc = n.location(name)?;
        self.shared.seen.forget(name);
        runtime()
            .block_on(store.delete(&loc))
            .map_err(|e| error(e, name, "cannot remove"))
    }

    fn stream_only(&self, _name: &Path) -> bool {
        true
    }
}
