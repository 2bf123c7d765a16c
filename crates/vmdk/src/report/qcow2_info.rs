//! `info` of a qcow2 image: the fields `qemu-img info` prints for qcow2, in its order.

use super::info::file_child;
use super::names::path_combine;
use super::Node;
use crate::qcow2::header::INCOMPAT_CORRUPT;
use crate::qcow2::header::INCOMPAT_DIRTY;
use crate::qcow2::Qcow2Image;

/// qemu-img info's tree for the qcow2 image `img`, shown as `name`.
pub fn qcow2_info(img: &Qcow2Image, name: &str) -> Node {
    let h = img.header();
    let alloc = img.allocated_size().unwrap_or(0);
    let mut n = Node::dict();
    n.put(
        "children",
        Node::List(vec![file_child("file", name, img.file_len(), alloc)]),
    );
    if img.backing_name().is_some() {
        n.put_opt(
            "backing-filename-format",
            img.extensions().backing_format.as_deref(),
        );
    }
    n.put("virtual-size", h.size)
        .put("filename", name)
        .put("cluster-size", h.cluster_size())
        .put("format", "qcow2")
        .put("actual-size", alloc);
    let mut data = Node::dict();
    if h.version == 2 {
        data.put("compat", "0.10")
            .put("compression-type", "zlib")
            .put("refcount-bits", 1u64 << h.refcount_order);
    } else {
        data.put("compat", "1.1")
            .put("compression-type", "zlib")
            .put("lazy-refcounts", h.lazy_refcounts())
            .put("refcount-bits", 1u64 << h.refcount_order)
            .put("corrupt", h.incompatible_features & INCOMPAT_CORRUPT != 0)
            .put("extended-l2", h.extended_l2());
    }
    let mut spec = Node::dict();
    spec.put("type", "qcow2").put("data", data);
    n.put("format-specific", spec);
    if let Some(b) = img.backing_name() {
        n.put("full-backing-filename", path_combine(name, b))
            .put("backing-filename", b);
    }
    n.put("dirty-flag", h.incompatible_features & INCOMPAT_DIRTY != 0);
    n
}
