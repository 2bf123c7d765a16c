//! The router's backend for OVA archives: it claims every name that runs through a regular
//! file called `*.ova` (or `*.ova.gz`, to refuse it by name), so `X.ova` and
//! `X.ova/DISK.vmdk` open in place in every command given a router that holds it (the
//! library's [`default_namespace`](super::default_namespace) does).

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::namespace::OvaNamespace;
use crate::error::Result;
use crate::storage::namespace::{Backend, LocalNamespace, Namespace, OpenMode};
use crate::storage::paths;
use crate::storage::Storage;

/// Claims names inside OVA archives that are files of another namespace (see the
/// [module docs](self)).
#[derive(Debug, Clone)]
pub struct OvaBackend {
    /// Where the archives are files: probed for them, and read for their bytes.
    files: Arc<dyn Namespace>,
}

/// Archives among host files.
impl Default for OvaBackend {
    fn default() -> Self {
        OvaBackend::new(Arc::new(LocalNamespace))
    }
}

fn looks_like_ova(c: &OsStr) -> bool {
    is_ova_name(&c.to_string_lossy())
}

/// Whether a file name (one path component) is an OVA's: `*.ova`, or `*.ova.gz` (claimed
/// to be refused by name). Other backends use it to find archives among their names.
pub fn is_ova_name(component: &str) -> bool {
    let l = component.to_ascii_lowercase();
    l.ends_with(".ova") || l.ends_with(".ova.gz")
}

impl OvaBackend {
    /// A backend for archives that are files of `files` (their names lexical paths, as
    /// host files are: object names with a `scheme://` are their backend's to route).
    pub fn new(files: Arc<dyn Namespace>) -> Self {
        OvaBackend { files }
    }

    /// The archive `name` runs through: the shortest prefix of it whose last component is
    /// named `*.ova` and that is a regular file of this backend's namespace. Names without
    /// such a component cost nothing (no system call).
    pub fn archive_of(&self, name: &Path) -> Option<PathBuf> {
        if !name.components().any(|c| looks_like_ova(c.as_os_str())) {
            return None;
        }
        let norm = paths::normalize_lexically(name);
        let mut prefix = PathBuf::new();
        for c in norm.components() {
            prefix.push(c);
            if matches!(c, Component::Normal(s) if looks_like_ova(s)) && self.files.is_file(&prefix)
            {
                return Some(prefix);
            }
        }
        None
    }
}

impl Backend for OvaBackend {
    fn namespace_for(&self, name: &Path) -> Result<Option<Arc<dyn Namespace>>> {
        Ok(self
            .archive_of(name)
            .map(|a| Arc::new(OvaNamespace::within(a, self.files.clone())) as Arc<dyn Namespace>))
    }

    /// The archive's own name opens the archive file; a member's opens the member.
    fn open_file(&self, name: &Path, mode: OpenMode) -> Result<Option<Arc<dyn Storage>>> {
        let Some(archive) = self.archive_of(name) else {
            return Ok(None);
        };
        if archive == paths::normalize_lexically(name) {
            return self.files.open(&archive, mode).map(Some);
        }
        OvaNamespace::within(archive, self.files.clone())
            .open(name, mode)
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::namespace::MemNamespace;

    #[test]
    fn archives_are_files_of_the_backends_namespace() {
        let mem = Arc::new(MemNamespace::new());
        mem.insert("/d/a.ova", vec![0; 1024]);
        let b = OvaBackend::new(mem);
        let a = b.archive_of(Path::new("/d/./a.ova/x.vmdk"));
        assert_eq!(a.as_deref(), Some(Path::new("/d/a.ova")));
        assert_eq!(b.archive_of(Path::new("/d/b.ova/x.vmdk")), None);
        assert_eq!(b.archive_of(Path::new("/d/x.vmdk")), None);
        // A host directory called *.ova is a directory, not an archive.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c.ova")).unwrap();
        let host = OvaBackend::default();
        assert_eq!(host.archive_of(&dir.path().join("c.ova/x.vmdk")), None);
        std::fs::write(dir.path().join("e.ova"), [0u8; 1024]).unwrap();
        assert!(host.archive_of(&dir.path().join("e.ova/x.vmdk")).is_some());
    }
}
