//! `inspect`'s report: the verdict and every reason, as `vmdk inspect --output=json` prints
//! it and `vmdk.inspect()` returns it.

use super::Node;
use crate::ops::inspect::InspectReport;

/// The report tree of an inspection.
pub fn inspect_json(rep: &InspectReport) -> Node {
    let reasons = rep
        .reasons
        .iter()
        .map(|r| {
            let mut n = Node::dict();
            n.put("code", r.code).put("message", r.message.as_str());
            n
        })
        .collect::<Vec<_>>();
    let mut n = Node::dict();
    n.put("filename", rep.filename.as_str())
        .put("format", rep.format.as_str())
        .put("qemu-format", rep.qemu_format.as_str())
        .put("subformat", rep.subformat.as_deref())
        .put("virtual-size", rep.virtual_size)
        .put("file-size", rep.file_size)
        .put("bytes-read", rep.bytes_read)
        .put("grain-tables", rep.grain_tables)
        .put("grain-tables-checked", rep.grain_tables_checked)
        .put("grains-allocated", rep.grains_allocated)
        .put("verdict", rep.verdict().as_str())
        .put("reasons", reasons);
    if rep.format == "ova" {
        let members = rep.members.iter().map(inspect_json).collect::<Vec<_>>();
        n.put("members", members);
    }
    n
}
