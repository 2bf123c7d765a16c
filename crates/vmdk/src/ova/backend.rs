//! The router's built-in backend for OVA archives: it claims every name that runs through
//! a regular file called `*.ova` (or `*.ova.gz`, to refuse it by name), so `X.ova` and
//! `X.ova/DISK.vmdk` open in place in every command.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::namespace::OvaNamespace;
use crate::error::Result;
use crate::namespace::{Backend, Namespace};
use crate::paths;

/// Claims names inside OVA archives (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct OvaBackend;

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
    /// The archive `name` runs through: the shortest prefix of it whose last component is
    /// named `*.ova` and that is a regular host file. Names without such a component cost
    /// nothing (no system call).
    pub fn archive_of(name: &Path) -> Option<PathBuf> {
        if !name.components().any(|c| looks_like_ova(c.as_os_str())) {
            return None;
        }
        let norm = paths::normalize_lexically(name);
        let mut prefix = PathBuf::new();
        for c in norm.components() {
            prefix.push(c);
            if matches!(c, Component::Normal(s) if looks_like_ova(s))
                && std::fs::metadata(&prefix).is_ok_and(|m| m.is_file())
            {
                return Some(prefix);
            }
        }
        None
    }
}

impl Backend for OvaBackend {
    fn namespace_for(&self, name: &Path) -> Result<Option<Arc<dyn Namespace>>> {
        Ok(Self::archive_of(name).map(|a| Arc::new(OvaNamespace::new(a)) as Arc<dyn Namespace>))
    }
}
