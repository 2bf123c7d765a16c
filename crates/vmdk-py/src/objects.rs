//! Whole objects in object storage, for `vmdk.files` (which does host files itself):
//! listing a prefix, looking an object up, reading a range with one request, storing a
//! small object, removing one, and the request counters. They go through the same stores
//! (credentials, endpoint, retries) as the images the module opens by `s3://` name.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use vmdk::storage::namespace::Namespace;
use vmdk_object::ObjectInfo;

use crate::errors::to_py;

fn ns() -> &'static vmdk_object::ObjectNamespace {
    vmdk_object::shared().namespace()
}

fn info_dict<'py>(py: Python<'py>, o: &ObjectInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &o.name)?;
    d.set_item("size", o.size)?;
    d.set_item("etag", o.e_tag.as_deref())?;
    d.set_item("modified_ms", o.modified_ms)?;
    Ok(d)
}

/// Every object whose name starts with `prefix` (`s3://bucket/dir/`), in name order: dicts
/// with `name`, `size`, `etag` and `modified_ms`.
#[pyfunction]
pub fn object_list<'py>(py: Python<'py>, prefix: String) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let list = py.allow_threads(|| ns().list(&prefix)).map_err(to_py)?;
    list.iter().map(|o| info_dict(py, o)).collect()
}

/// The object `name` as `object_list` shows it, or `None` when there is none.
#[pyfunction]
pub fn object_stat<'py>(py: Python<'py>, name: PathBuf) -> PyResult<Option<Bound<'py, PyDict>>> {
    let o = py.allow_threads(|| ns().stat(&name)).map_err(to_py)?;
    o.map(|o| info_dict(py, &o)).transpose()
}

/// Up to `length` bytes of the object `name` from `offset` (which must lie inside it).
#[pyfunction]
pub fn object_read<'py>(
    py: Python<'py>,
    name: PathBuf,
    offset: u64,
    length: u64,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = py
        .allow_threads(|| ns().read_range(&name, offset, length))
        .map_err(to_py)?;
    Ok(PyBytes::new(py, &data))
}

/// Store `data` as the object `name`.
#[pyfunction]
pub fn object_write(py: Python<'_>, name: PathBuf, data: &[u8]) -> PyResult<()> {
    let data = data.to_vec();
    py.allow_threads(|| ns().put(&name, data)).map_err(to_py)
}

/// Remove the object `name` (no error when there is none: S3 deletes are idempotent).
#[pyfunction]
pub fn object_remove(py: Python<'_>, name: PathBuf) -> PyResult<()> {
    py.allow_threads(|| ns().remove(&name)).map_err(to_py)
}

/// What this process asked of object storage so far: `requests`, `bytes_fetched` and
/// `retries` (failed attempts that were retried).
#[pyfunction]
pub fn object_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = vmdk_object::stats();
    let d = PyDict::new(py);
    d.set_item("requests", s.requests)?;
    d.set_item("bytes_fetched", s.bytes_fetched)?;
    d.set_item("retries", s.retries)?;
    Ok(d)
}
