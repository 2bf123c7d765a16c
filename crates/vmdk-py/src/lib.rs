//! `vmdk._vmdk`: the native half of the `vmdk` Python package.
//!
//! Everything here is a thin layer over the `vmdk` library: the Python-facing `Image`
//! ([`image`]), creation and conversion ([`convert`]), the dicts `map`, `info` and `check`
//! return, built by the library's [`vmdk::report`] as the CLI's are ([`info`]), the exceptions
//! ([`errors`]), and what the libyal-compatible `vmdk.pyvmdk` module needs: descriptor
//! parsing without opening extents ([`descriptor`]) and reading through Python file
//! objects ([`pyfile`]); and whole objects in object storage for `vmdk.files`
//! ([`objects`]). `s3://` and `http(s)://` names open like files everywhere (through
//! [`namespace`], which the calls taking names are given). The pure-Python half (`python/vmdk`) adds
//! file-object views, context managers and the pyvmdk surface.

mod convert;
mod descriptor;
mod errors;
mod image;
mod info;
mod inspect;
mod objects;
mod pyfile;

use std::sync::{Arc, OnceLock};

use pyo3::prelude::*;
use vmdk::ova::OvaBackend;
use vmdk::storage::namespace::RouterNamespace;

/// Where the module opens, probes and creates images, as the CLI does: `s3://` and
/// `http(s)://` objects, names inside OVA archives, host files. Built once per process
/// (one object-storage client, the one `vmdk.files` uses too: `vmdk_object::shared()`),
/// and handed to every library call that takes a name.
pub(crate) fn namespace() -> Arc<RouterNamespace> {
    static NS: OnceLock<Arc<RouterNamespace>> = OnceLock::new();
    NS.get_or_init(|| {
        Arc::new(RouterNamespace::new(vec![
            Arc::new(vmdk_object::shared().clone()),
            Arc::new(OvaBackend::default()),
        ]))
    })
    .clone()
}

/// The native module. Its name must match `module-name` in pyproject.toml.
#[pymodule]
fn _vmdk(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<image::Image>()?;
    m.add_function(wrap_pyfunction!(convert::create, m)?)?;
    m.add_function(wrap_pyfunction!(convert::convert, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::inspect, m)?)?;
    m.add_function(wrap_pyfunction!(inspect::ova_info, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor::parse_descriptor, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor::embedded_descriptor_range, m)?)?;
    m.add_function(wrap_pyfunction!(descriptor::probe, m)?)?;
    m.add_function(wrap_pyfunction!(pyfile::open_file_objects, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_list, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_stat, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_read, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_write, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_remove, m)?)?;
    m.add_function(wrap_pyfunction!(objects::object_stats, m)?)?;
    m.add(
        "MAX_DESCRIPTOR_SIZE",
        vmdk::format::descriptor::MAX_DESCRIPTOR_SIZE,
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
