//! What `vmdk.pyvmdk` needs before any extent is opened: libyal's `open()` reads only the
//! descriptor (media size, CIDs, parent name, extent list), and `open_extent_data_files()`
//! opens the rest. These functions parse with the library's own parsers.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vmdk::format::descriptor::Descriptor;
use vmdk::format::sparse_header::SparseHeader;
use vmdk::{Error, FileFormat};

use crate::errors::to_py;
use crate::info::ToPy;
use vmdk::report::Node;

/// The parts of a descriptor pyvmdk reports.
pub fn descriptor_node(d: &Descriptor) -> Node {
    let mut extents = Vec::new();
    for e in &d.extents {
        let mut x = Node::dict();
        x.put("access", e.access.keyword())
            .put("sectors", e.sectors)
            .put("type", e.kind.keyword())
            .put_opt("file", e.file.clone())
            .put("offset", e.offset);
        extents.push(x);
    }
    let mut n = Node::dict();
    n.put("cid", d.cid)
        .put("parent_cid", d.parent_cid)
        .put("create_type", d.create_type.as_str())
        .put_opt("parent_file_name_hint", d.parent_file_name_hint.clone())
        .put("extents", extents)
        .put("total_sectors", d.total_sectors());
    n
}

/// Parse descriptor text (NUL padding of an embedded descriptor allowed) into a dict:
/// `cid`, `parent_cid`, `create_type`, `parent_file_name_hint`, `extents` (dicts with
/// `access`, `sectors`, `type`, `file`, `offset`) and `total_sectors`.
#[pyfunction]
pub fn parse_descriptor<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
) -> PyResult<Bound<'py, PyAny>> {
    let d = Descriptor::parse(data.as_bytes())
        .map_err(|e| to_py(Error::corrupt(format!("invalid descriptor: {e}"))))?;
    descriptor_node(&d).to_py(py)
}

/// For the first 512 bytes of a `KDMV` sparse extent: `(byte offset, byte length)` of its
/// embedded descriptor, or `None` when it has none.
#[pyfunction]
pub fn embedded_descriptor_range(head: &Bound<'_, PyBytes>) -> PyResult<Option<(u64, u64)>> {
    let h =
        SparseHeader::parse(head.as_bytes()).map_err(|m| to_py(Error::corrupt(m.to_string())))?;
    let range = h
        .checked_embedded_descriptor_range()
        .map_err(|m| to_py(Error::corrupt(m.to_string())))?;
    Ok(range.map(|r| (r.start, r.end - r.start)))
}

/// What the bytes at the start of a file are: `"descriptor"`, `"sparse"` (KDMV),
/// `"cowd"`, `"sesparse"`, another image format's qemu name (e.g. `"qcow2"`), or `None`.
#[pyfunction]
pub fn probe(head: &Bound<'_, PyBytes>) -> Option<&'static str> {
    Some(match vmdk::probe(head.as_bytes())? {
        FileFormat::Descriptor => "descriptor",
        FileFormat::Vmdk4Sparse => "sparse",
        FileFormat::Cowd => "cowd",
        FileFormat::SeSparse => "sesparse",
        FileFormat::Foreign(f) => f.name(),
    })
}
