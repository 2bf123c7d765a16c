//! `check`'s report: qemu-img check's JSON fields.

use super::Node;
use crate::ops::check::CheckReport;

/// What `qemu-img check --output=json` prints for `r` on the image shown as `name`
/// (counts that are zero are left out, as qemu does).
pub fn check_json(r: &CheckReport, name: &str) -> Node {
    let nz = |v: u64| (v != 0).then_some(v);
    let mut n = Node::dict();
    n.put("check-errors", r.check_errors)
        .put("filename", name)
        .put("format", "vmdk")
        .put_opt("image-end-offset", r.image_end_offset.filter(|v| *v != 0))
        .put_opt("corruptions", nz(r.corruption_count()))
        .put_opt("leaks", nz(r.leaked_clusters))
        .put_opt("leaks-fixed", nz(r.leaks_fixed))
        .put_opt("corruptions-fixed", nz(r.corruptions_fixed))
        .put_opt("total-clusters", nz(r.total_clusters))
        .put_opt("allocated-clusters", nz(r.allocated_clusters))
        .put_opt("fragmented-clusters", nz(r.fragmented_clusters))
        .put_opt("compressed-clusters", nz(r.compressed_clusters));
    n
}
