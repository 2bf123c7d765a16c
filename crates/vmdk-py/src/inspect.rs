//! `vmdk.inspect()`: is this upload a safe, self-contained VMDK? In-process, for services
//! (Glance-style) that vet user files before anything opens them.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use vmdk::ops::inspect::InspectPolicy;

use crate::errors::to_py;
use crate::info::ToPy;

/// Inspect the file at `path` without following any name inside it; the dict `vmdk inspect
/// --output=json` prints (`verdict` is "safe" or "unsafe", `reasons` lists every problem).
#[pyfunction]
#[pyo3(signature = (path, *, policy="default", max_size=None))]
pub fn inspect<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    policy: &str,
    max_size: Option<u64>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut pol = match policy {
        "default" => InspectPolicy::default(),
        "strict" => InspectPolicy::strict(),
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown policy '{other}' (expected 'default' or 'strict')"
            )))
        }
    };
    if max_size.is_some() {
        pol.max_virtual_size = max_size;
    }
    let rep = py
        .allow_threads(|| vmdk::ops::inspect::inspect_path(&path, &pol))
        .map_err(to_py)?;
    vmdk::report::inspect::inspect_json(&rep).to_py(py)
}

/// What the OVA at `path` is: the dict `vmdk ova info --output=json` prints (the OVF's
/// virtual system, disks and networks, each manifest digest checked on `threads` threads
/// (0: one per core), the members, and `findings`, empty for an archive fit to import).
#[pyfunction]
#[pyo3(signature = (path, *, threads=0))]
pub fn ova_info<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    threads: usize,
) -> PyResult<Bound<'py, PyAny>> {
    use vmdk::storage::lock::{FileRole, LockRequest};
    let lock = LockRequest::for_open(FileRole::Metadata, false, false);
    let info = py
        .allow_threads(|| vmdk::ova::inspect_in(&crate::namespace(), &path, Some(lock), threads))
        .map_err(to_py)?;
    vmdk::report::ova::ova_info(&info).to_py(py)
}
