//! `Image.info()` and `Image.check()`: the dicts `vmdk info --output=json` and `vmdk check
//! --output=json` print (qemu-img's field names). The CLI builds them in its private
//! `cmd/info.rs` and `cmd/check.rs`; this follows them field by field, and the tests compare
//! the two outputs.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use vmdk::extent::ExtentKind;
use vmdk::format::descriptor::CID_NONE;
use vmdk::{CheckReport, Image};

use crate::names::{display, extent_name, path_combine};

/// A JSON-like value whose object keys keep their insertion order (Python dicts do too).
#[derive(Debug, Clone)]
pub enum Node {
    Str(String),
    Int(u64),
    Bool(bool),
    List(Vec<Node>),
    Dict(Vec<(String, Node)>),
}

impl From<&str> for Node {
    fn from(s: &str) -> Node {
        Node::Str(s.to_string())
    }
}
impl From<String> for Node {
    fn from(s: String) -> Node {
        Node::Str(s)
    }
}
impl From<u64> for Node {
    fn from(n: u64) -> Node {
        Node::Int(n)
    }
}
impl From<u32> for Node {
    fn from(n: u32) -> Node {
        Node::Int(n.into())
    }
}
impl From<bool> for Node {
    fn from(b: bool) -> Node {
        Node::Bool(b)
    }
}
impl From<Vec<Node>> for Node {
    fn from(v: Vec<Node>) -> Node {
        Node::List(v)
    }
}

impl Node {
    pub fn dict() -> Node {
        Node::Dict(Vec::new())
    }

    pub fn put(&mut self, key: &str, value: impl Into<Node>) -> &mut Self {
        if let Node::Dict(v) = self {
            v.push((key.to_string(), value.into()));
        }
        self
    }

    pub fn put_opt(&mut self, key: &str, value: Option<impl Into<Node>>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }

    /// The Python value: dicts, lists, str, int, bool.
    pub fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self {
            Node::Str(s) => s.into_pyobject(py)?.into_any(),
            Node::Int(n) => n.into_pyobject(py)?.into_any(),
            Node::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
            Node::List(v) => {
                let l = PyList::empty(py);
                for n in v {
                    l.append(n.to_py(py)?)?;
                }
                l.into_any()
            }
            Node::Dict(v) => {
                let d = PyDict::new(py);
                for (k, n) in v {
                    d.set_item(k, n.to_py(py)?)?;
                }
                d.into_any()
            }
        })
    }
}

/// The cluster size qemu reports: the first extent's grain size, when every extent is of
/// the same kind (flat or sparse, compressed or not) and the first one is sparse.
fn cluster_size(img: &Image) -> Option<u64> {
    let kind = |k: &ExtentKind| match k {
        ExtentKind::Sparse(s) => (false, s.is_compressed()),
        _ => (true, false),
    };
    let first = img.extents().first()?;
    if img
        .extents()
        .iter()
        .any(|e| kind(&e.kind) != kind(&first.kind))
    {
        return None;
    }
    match &first.kind {
        ExtentKind::Sparse(s) => Some(s.grain_size()),
        _ => None,
    }
}

/// ddb keys shown in their own fields (or well known to VMware); others are "unknown".
const KNOWN_DDB: [&str; 12] = [
    "adapterType",
    "virtualHWVersion",
    "toolsVersion",
    "toolsInstallType",
    "longContentID",
    "thinProvisioned",
    "deletable",
    "encoding",
    "geometry.",
    "uuid",
    "sidecars",
    "iofilters",
];

/// One of qemu's child nodes: a host file under the format driver.
fn file_child(name: &str, filename: &str, len: u64, allocated: u64) -> Node {
    // qemu's file driver counts whole sectors: a 341-byte descriptor is 512 bytes long.
    let len = len.next_multiple_of(512);
    let mut info = Node::dict();
    let mut spec = Node::dict();
    spec.put("type", "file").put("data", Node::dict());
    info.put("children", Node::List(vec![]))
        .put("virtual-size", len)
        .put("filename", filename)
        .put("format", "file")
        .put("actual-size", allocated)
        .put("format-specific", spec)
        .put("dirty-flag", false);
    let mut c = Node::dict();
    c.put("name", name).put("info", info);
    c
}

/// qemu's `children`: the extent files a descriptor names (`extents.N`, last first, as
/// qemu lists them), then the image's own file (`file`).
fn children(img: &Image, name: &str) -> Node {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for (i, e) in img.extents().iter().enumerate().rev() {
        let Some(f) = e.file() else { continue };
        if f.path() == img.path() {
            continue;
        }
        let fname = extent_name(img, name, i).unwrap_or_else(|| display(f.path()));
        let len = f.storage.len().unwrap_or(0);
        let alloc = f.storage.allocated_size().unwrap_or(0);
        out.push(file_child(&format!("extents.{i}"), &fname, len, alloc));
    }
    let (len, alloc) =
        std::fs::metadata(img.path()).map_or((0, 0), |m| (m.len(), m.blocks() * 512));
    out.push(file_child("file", name, len, alloc));
    Node::List(out)
}

/// `vmdk info --output=json` of one image (no backing chain), shown as `name`.
pub fn image_info(img: &Image, name: &str) -> Node {
    let d = img.descriptor();
    let mut n = Node::dict();
    n.put("children", children(img, name));
    n.put("virtual-size", img.size())
        .put("filename", name)
        .put_opt("cluster-size", cluster_size(img))
        .put("format", "vmdk")
        .put("actual-size", img.allocated_bytes())
        .put("dirty-flag", false);
    if let Some(hint) = &d.parent_file_name_hint {
        n.put("backing-filename", hint.as_str())
            .put("full-backing-filename", path_combine(name, hint))
            .put("backing-filename-format", "vmdk");
    }

    let mut extents = Vec::new();
    for (i, e) in img.extents().iter().enumerate() {
        let mut x = Node::dict();
        let sparse = match &e.kind {
            ExtentKind::Sparse(s) => Some(s),
            _ => None,
        };
        if sparse.is_some_and(|s| s.is_compressed()) {
            x.put("compressed", true);
        }
        let fname = extent_name(img, name, i);
        // qemu names the type only for extents listed in a descriptor file.
        let listed = e.file().is_none_or(|f| f.path() != img.path());
        x.put("virtual-size", e.length)
            .put_opt("filename", fname)
            .put_opt("cluster-size", sparse.map(|s| s.grain_size()))
            .put("format", if listed { e.kind_keyword.keyword() } else { "" })
            .put("access", e.access.keyword())
            .put("type", e.kind_keyword.keyword());
        if let ExtentKind::Flat { offset, .. } = &e.kind {
            x.put("offset", *offset);
        }
        extents.push(x);
    }

    let mut data = Node::dict();
    data.put("cid", d.cid)
        .put("parent-cid", d.parent_cid)
        .put("create-type", d.create_type.as_str())
        .put("extents", extents)
        .put_opt("adapter-type", d.ddb("adapterType"))
        .put_opt("hwversion", d.ddb("virtualHWVersion"))
        .put_opt("toolsversion", d.ddb("toolsVersion"));
    let geo: Vec<(&str, Option<&str>)> = ["cylinders", "heads", "sectors"]
        .iter()
        .map(|k| (*k, d.ddb(&format!("geometry.{k}"))))
        .collect();
    if geo.iter().all(|(_, v)| v.is_some()) {
        let mut g = Node::dict();
        for (k, v) in geo {
            let v = v.expect("checked");
            match v.parse::<u64>() {
                Ok(num) => g.put(k, num),
                Err(_) => g.put(k, v),
            };
        }
        data.put("geometry", g);
    }
    // VMware's key first: a descriptor VirtualBox has opened carries both.
    data.put_opt("uuid", d.ddb("uuid").or_else(|| d.ddb("uuid.image")));
    if d.parent_cid != CID_NONE || d.parent_file_name_hint.is_some() {
        data.put_opt("parent-uuid", d.ddb("uuid.parent"));
    }
    let mut unknown = Node::dict();
    let mut any = false;
    for (k, v) in &d.other {
        unknown.put(k, v.trim_matches('"'));
        any = true;
    }
    for (k, v) in &d.ddb {
        let bare = k.strip_prefix("ddb.").unwrap_or(k);
        if !KNOWN_DDB.iter().any(|p| bare.starts_with(p)) {
            unknown.put(k, v.as_str());
            any = true;
        }
    }
    if any {
        data.put("unknown-keys", unknown);
    }

    let mut spec = Node::dict();
    spec.put("type", "vmdk").put("data", data);
    n.put("format-specific", spec);
    n
}

/// `vmdk check --output=json` for image `name`, plus what the CLI prints on stderr, under
/// keys of their own: `messages` (the descriptions of corruptions, leaks, warnings and
/// check errors), `clean` and `exit-code` (qemu-img check's exit status).
pub fn check_report(r: &CheckReport, name: &str) -> Node {
    let nz = |v: u64| (v != 0).then_some(v);
    let mut n = Node::dict();
    n.put("check-errors", r.check_errors)
        .put("filename", name)
        .put("format", "vmdk")
        .put_opt("image-end-offset", r.image_end_offset.filter(|v| *v != 0))
        .put_opt("corruptions", nz(r.corruption_count()))
        .put_opt("leaks", nz(r.leaked_clusters))
        .put_opt("total-clusters", nz(r.total_clusters))
        .put_opt("allocated-clusters", nz(r.allocated_clusters))
        .put_opt("fragmented-clusters", nz(r.fragmented_clusters))
        .put_opt("compressed-clusters", nz(r.compressed_clusters));
    let strs = |v: &[String]| Node::List(v.iter().map(|s| Node::from(s.as_str())).collect());
    let mut m = Node::dict();
    m.put("corruptions", strs(&r.corruptions))
        .put("leaks", strs(&r.leaks))
        .put("warnings", strs(&r.warnings))
        .put("errors", strs(&r.errors));
    n.put("messages", m)
        .put("clean", r.is_clean())
        .put("exit-code", r.exit_code() as u64);
    n
}
