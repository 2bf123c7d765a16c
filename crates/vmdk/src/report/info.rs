//! `info`'s report: qemu-img info's fields (same JSON names), plus what qemu leaves out:
//! extent access and type, adapter type, hardware version, geometry, UUID and unknown keys.
//! The CLI prints it; the Python module returns it as a dict.

use std::path::Path;

use super::names::{display, extent_name, path_combine};
use super::Node;
use crate::error::Result;
use crate::extent::ExtentKind;
use crate::format::descriptor::CID_NONE;
use crate::format::foreign::ForeignFormat;
use crate::image::{Image, OpenOptions};
use crate::storage::namespace::OpenMode;

/// `info` of a raw image: its size and the space its file takes.
pub fn raw_info(path: &Path, name: &str, opts: &OpenOptions) -> Result<Node> {
    let raw = crate::image::raw::RawFile::open_with(path, opts)?;
    let mut n = Node::dict();
    if let Some(proto) = remote_protocol(name) {
        // As qemu shows a raw image through its curl driver: no allocation to report.
        n.put(
            "children",
            Node::List(vec![remote_child("file", name, proto, raw.size())]),
        );
        n.put("virtual-size", raw.size())
            .put("filename", name)
            .put("format", "raw");
        return Ok(n);
    }
    n.put("virtual-size", raw.size())
        .put("filename", name)
        .put("format", "raw")
        .put("actual-size", raw.allocated_size().unwrap_or(raw.size()))
        .put("dirty-flag", false);
    Ok(n)
}

/// The protocol qemu's child node names for a file read over the network (`http`,
/// `https`; `s3` for S3 objects, which qemu cannot open), or `None` for other names. A
/// member of a remote OVA is remote too.
pub(crate) fn remote_protocol(name: &str) -> Option<&'static str> {
    let (scheme, _) = name.split_once("://")?;
    ["http", "https", "s3"]
        .into_iter()
        .find(|p| scheme.eq_ignore_ascii_case(p))
}

/// qemu's child node for a file read through its curl driver: the protocol as its format,
/// its length, and no allocation ("disk size: unavailable"), nor format-specific data.
fn remote_child(name: &str, filename: &str, protocol: &str, len: u64) -> Node {
    let mut info = Node::dict();
    info.put("children", Node::List(vec![]))
        .put("virtual-size", len.next_multiple_of(512))
        .put("filename", filename)
        .put("format", protocol);
    let mut c = Node::dict();
    c.put("name", name).put("info", info);
    c
}

/// A child node for the file `filename`: a host file's, or a remote one's.
fn any_child(name: &str, filename: &str, storage: &dyn crate::storage::Storage) -> Node {
    let len = storage.len().unwrap_or(0);
    match remote_protocol(filename) {
        Some(p) => remote_child(name, filename, p, len),
        None => file_child(name, filename, len, storage.allocated_size().unwrap_or(len)),
    }
}

/// `info` of an image of another format: say honestly what it is (qemu-img's field
/// names), with the virtual size where its header keeps it in a fixed field.
pub fn foreign_info(
    path: &Path,
    name: &str,
    format: ForeignFormat,
    opts: &OpenOptions,
) -> Result<Node> {
    let storage = opts.namespace().open(
        path,
        OpenMode {
            allow_devices: true,
            ..OpenMode::read_only()
        },
    )?;
    let mut n = Node::dict();
    if let Some(size) = crate::image::foreign_virtual_size_of(&*storage, format) {
        n.put("virtual-size", size);
    }
    n.put("filename", name).put("format", format.name()).put(
        "actual-size",
        storage
            .allocated_size()
            .unwrap_or_else(|| storage.len().unwrap_or(0)),
    );
    Ok(n)
}

/// The cluster size qemu reports: the first extent's grain size, when every extent is of
/// the same kind (flat or sparse, compressed or not) and the first one is sparse.
pub fn cluster_size(img: &Image) -> Option<u64> {
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
pub(crate) fn file_child(name: &str, filename: &str, len: u64, allocated: u64) -> Node {
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
    let mut out = Vec::new();
    for (i, e) in img.extents().iter().enumerate().rev() {
        let Some(f) = e.file() else { continue };
        if f.path() == img.path() {
            continue;
        }
        let fname = extent_name(img, name, i).unwrap_or_else(|| display(f.path()));
        if remote_protocol(&fname).is_some() {
            out.push(any_child(&format!("extents.{i}"), &fname, &*f.storage));
            continue;
        }
        let len = f.storage.len().unwrap_or(0);
        let alloc = f.storage.allocated_size().unwrap_or(0);
        out.push(file_child(&format!("extents.{i}"), &fname, len, alloc));
    }
    out.push(any_child("file", name, &**img.storage()));
    Node::List(out)
}

pub fn image_info(img: &Image, name: &str) -> Node {
    let d = img.descriptor();
    let mut n = Node::dict();
    n.put("children", children(img, name));
    n.put("virtual-size", img.size())
        .put("filename", name)
        .put_opt("cluster-size", cluster_size(img))
        .put("format", "vmdk");
    // Remote files have no allocation to report (qemu: "disk size: unavailable").
    if remote_protocol(name).is_none() {
        n.put("actual-size", img.allocated_bytes());
    }
    n.put("dirty-flag", false);
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

/// The format-specific lines qemu-io's `info` prints, for `vmdk io`.
pub fn format_specific(img: &Image) -> Node {
    let info = image_info(img, &display(img.path()));
    info.get("format-specific")
        .and_then(|f| f.get("data"))
        .cloned()
        .unwrap_or_else(Node::dict)
}

/// The cluster size `vmdk io`'s `info` prints (0 when qemu would report none).
pub fn io_cluster_size(img: &Image) -> u64 {
    cluster_size(img).unwrap_or(0)
}
