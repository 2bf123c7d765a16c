//! Files held in memory: unit tests and fuzz targets build and open whole images (extents
//! and backing chains included) without a temporary directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Namespace, OpenMode};
use crate::error::{Error, ErrorKind, Result};
use crate::storage::paths;
use crate::storage::{FileId, MemStorage, Storage};

/// A set of named in-memory files. Names are resolved lexically (there are no symlinks),
/// under the same containment rule as host files.
#[derive(Debug)]
pub struct MemNamespace {
    /// Distinguishes the identities of two namespaces' files.
    dev: u64,
    files: Mutex<HashMap<PathBuf, Arc<MemStorage>>>,
}

impl Default for MemNamespace {
    fn default() -> Self {
        Self::new()
    }
}

impl MemNamespace {
    /// An empty namespace.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        MemNamespace {
            // Host device numbers are small; the top bit keeps these apart from them.
            dev: (1 << 63) | NEXT.fetch_add(1, Ordering::Relaxed),
            files: Mutex::new(HashMap::new()),
        }
    }

    fn files(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<MemStorage>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(name: &Path) -> PathBuf {
        paths::normalize_lexically(name)
    }

    /// Put a file named `name` holding `data` (replacing any file of that name).
    pub fn insert(&self, name: impl AsRef<Path>, data: Vec<u8>) -> Arc<MemStorage> {
        let key = Self::key(name.as_ref());
        let mut files = self.files();
        let id = FileId {
            dev: self.dev,
            ino: files.len() as u64 + 1,
        };
        let id = files.get(&key).and_then(|s| s.file_id()).unwrap_or(id);
        let s = Arc::new(MemStorage::with_id(data, id));
        files.insert(key, s.clone());
        s
    }

    /// The current contents of `name`, if it exists.
    pub fn get(&self, name: impl AsRef<Path>) -> Option<Vec<u8>> {
        self.files()
            .get(&Self::key(name.as_ref()))
            .map(|s| s.to_vec())
    }

    /// Every file's name, sorted.
    pub fn names(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = self.files().keys().cloned().collect();
        v.sort();
        v
    }
}

impl Namespace for MemNamespace {
    fn open(&self, name: &Path, _mode: OpenMode) -> Result<Arc<dyn Storage>> {
        match self.files().get(&Self::key(name)) {
            Some(s) => Ok(s.clone()),
            None => Err(Error::io(
                std::io::Error::from_raw_os_error(libc::ENOENT),
                "cannot open",
            )
            .with_path(name)),
        }
    }

    fn create(&self, name: &Path, _lock: bool) -> Result<Arc<dyn Storage>> {
        Ok(self.insert(name, Vec::new()))
    }

    fn remove(&self, name: &Path) -> Result<()> {
        match self.files().remove(&Self::key(name)) {
            Some(_) => Ok(()),
            None => Err(Error::new(ErrorKind::Io, "cannot remove: no such file").with_path(name)),
        }
    }

    fn identity(&self, name: &Path) -> Result<Option<FileId>> {
        Ok(self.files().get(&Self::key(name)).and_then(|s| s.file_id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::paths::PathPolicy;

    #[test]
    fn names_resolve_inside_their_directory_only() {
        let ns = MemNamespace::new();
        ns.insert("/img/a.vmdk", vec![1]);
        ns.insert("/img/sub/b.vmdk", vec![2]);
        let p = PathPolicy::default();
        let r = ns.resolve(Path::new("/img/a.vmdk"), "sub/b.vmdk", "extent file", &p);
        assert_eq!(r.unwrap(), Path::new("/img/sub/b.vmdk"));
        let e = ns
            .resolve(Path::new("/img/a.vmdk"), "../etc/passwd", "extent file", &p)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
        let e = ns
            .resolve(Path::new("/img/a.vmdk"), "sub/../../x", "extent file", &p)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
        assert_eq!(
            ns.resolve(Path::new("/img/a.vmdk"), "/img/sub/b.vmdk", "x", &p)
                .unwrap(),
            Path::new("/img/sub/b.vmdk")
        );
        let allow = PathPolicy {
            allowed_dirs: vec!["/base".into()],
            ..Default::default()
        };
        assert!(ns
            .resolve(Path::new("/img/a.vmdk"), "../base/c.vmdk", "x", &allow)
            .is_ok());
    }

    #[test]
    fn identities_tell_files_apart_and_survive_rewrites() {
        let ns = MemNamespace::new();
        ns.insert("a", vec![]);
        ns.insert("b", vec![]);
        let a = ns.identity(Path::new("a")).unwrap().unwrap();
        let b = ns.identity(Path::new("./b")).unwrap().unwrap();
        assert_ne!(a, b);
        ns.create(Path::new("a"), true).unwrap();
        assert_eq!(ns.identity(Path::new("a")).unwrap(), Some(a));
        assert_eq!(ns.identity(Path::new("c")).unwrap(), None);
        assert_ne!(
            a,
            MemNamespace::new().insert("a", vec![]).file_id().unwrap()
        );
    }
}
