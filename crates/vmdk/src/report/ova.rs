//! `ova info`'s report: what an OVA appliance is, as a tree the CLI prints as JSON and the
//! Python module returns as a dict.

use super::node::Node;
use crate::ova::manifest::Status;
use crate::ova::OvaInfo;

/// How `ova info` names a digest's status.
pub fn status_name(s: &Status) -> &'static str {
    match s {
        Status::Match => "ok",
        Status::Mismatch(_) => "MISMATCH",
        Status::Missing => "missing member",
        Status::NotAFile(_) => "not a regular file",
        Status::UnknownAlgorithm => "unknown algorithm",
        Status::Unreadable(_) => "unreadable",
    }
}

/// `ova info --output=json`'s tree: the OVF's virtual system, disks and networks, the
/// manifest's digests and their status, the members and the findings. Every string in it
/// comes from the archive, and the tree's JSON printer escapes what a terminal must not see.
pub fn ova_info(info: &OvaInfo) -> Node {
    let mut n = Node::dict();
    n.put_opt("ovf", info.ovf_name.clone());
    n.put_opt("manifest", info.manifest_name.clone());
    n.put_opt("certificate", info.certificate_name.clone());
    if let Some(env) = &info.envelope {
        n.put("ovf-version", env.version.clone());
        if let Some(sys) = &env.system {
            let mut s = Node::dict();
            s.put("id", sys.id.clone());
            s.put_opt("name", sys.name.clone());
            s.put_opt("os-type", sys.os_type.clone());
            s.put_opt("os-cim-id", sys.os_id.clone());
            s.put_opt("cpus", env.cpus());
            s.put_opt("memory-mib", env.memory_mib());
            s.put_opt("hardware-family", sys.hardware_family.clone());
            if let Some((_, fw)) = sys.vmw_config.iter().find(|(k, _)| k == "firmware") {
                s.put("firmware", fw.clone());
            }
            n.put("virtual-system", s);
        }
        let controllers = env.controllers();
        let disks = env
            .disk_files()
            .map(|(d, f)| {
                let mut x = Node::dict();
                x.put("disk-id", d.disk_id.clone());
                x.put_opt("file", f.map(|f| f.href.clone()));
                x.put_opt(
                    "file-size",
                    f.and_then(|f| info.member(&f.href)).map(|m| m.size),
                );
                x.put_opt("capacity", d.capacity);
                x.put_opt("format", d.format.clone());
                x.put_opt("populated-size", d.populated_size);
                x.put_opt("controller", controllers.describe(d));
                x
            })
            .collect();
        n.put("disks", Node::List(disks));
        let nets = env
            .networks
            .iter()
            .map(|w| {
                let mut x = Node::dict();
                x.put("name", w.name.clone());
                x.put_opt("description", w.description.clone());
                x
            })
            .collect();
        n.put("networks", Node::List(nets));
    }
    let digests = info
        .digests
        .iter()
        .map(|c| {
            let mut x = Node::dict();
            x.put("file", c.entry.file.clone());
            x.put("algorithm", c.entry.algorithm.clone());
            x.put("expected", c.entry.digest.clone());
            x.put("status", status_name(&c.status));
            if let Status::Mismatch(d) = &c.status {
                x.put("actual", d.clone());
            }
            if let Status::Unreadable(e) | Status::NotAFile(e) = &c.status {
                x.put("error", e.clone());
            }
            x
        })
        .collect();
    n.put("digests", Node::List(digests));
    let members = info
        .members()
        .iter()
        .map(|m| {
            let mut x = Node::dict();
            x.put("name", m.name.clone())
                .put("kind", m.kind.short_name())
                .put("size", m.size);
            x
        })
        .collect();
    n.put("members", Node::List(members));
    let findings = info
        .findings
        .iter()
        .map(|f| {
            let mut x = Node::dict();
            x.put("code", f.code.as_str());
            x.put_opt("name", f.name.clone());
            x.put("message", f.message.clone());
            x
        })
        .collect();
    n.put("findings", Node::List(findings));
    n
}
