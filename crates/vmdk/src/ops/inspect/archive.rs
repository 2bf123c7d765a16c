//! An OVA upload: a tar archive of an OVF descriptor, a manifest and disks. Importers
//! (vCenter, VirtualBox, `virt-v2v`, a cloud's own) extract it with tar or read members in
//! place, then hand each disk to QEMU or VMware; so every member is judged, not just the
//! first disk, and the archive's structure is held to what tar would extract:
//!
//! * the archive's structure, OVF references and manifest coverage, by the same vetting as
//!   `vmdk ova info` ([`crate::ova::vet`]) minus the digests (which would read every byte):
//!   duplicate names, links and devices, several descriptors or manifests, references
//!   missing or outside the archive, members and references the manifest does not list;
//! * an OVF reference that is a path rather than a member name;
//! * every member a disk could be (all but the `.ovf`, `.mf` and `.cert`) inspected as an
//!   upload of its own, its reasons carried over with its name;
//! * the archive's own bytes probed as `qemu-img` would probe them (in `ambiguity.rs`).

use std::io;
use std::path::Path;

use super::{inspect_file, shown, Counted, InspectPolicy, InspectReport, Nesting};
use crate::error::Result;
use crate::ova::manifest;
use crate::ova::ovf::{self, Envelope};
use crate::ova::tar::{self, MemberKind, TarIndex};
use crate::ova::vet;
use crate::storage::Storage;

/// Members that are not disks: the descriptor, the manifest, the signing certificate.
fn is_metadata(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    [".ovf", ".mf", ".cert"].iter().any(|s| lower.ends_with(s))
}

pub(super) fn inspect_archive(
    r: &Counted<'_>,
    name: &str,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) -> Result<()> {
    rep.format = "ova".into();
    let path = Path::new(name);
    let index = match tar::read_index(r, path) {
        Ok(i) => i,
        Err(e) => {
            rep.add("bad-archive", format!("{e:#}"));
            return Ok(());
        }
    };
    let env = descriptor(r, path, &index, rep);
    let checks = manifest_listing(r, path, &index, rep);
    let mf_name = index.files_ending(".mf").next().map(|m| m.name.as_str());
    let listing = mf_name.zip(checks.as_deref());
    for f in vet::findings(&index, env.as_ref(), listing) {
        rep.add(f.code.as_str(), f.message);
    }
    if let Some(env) = &env {
        for f in &env.files {
            let href = f.href.trim_start_matches("./");
            let path_like =
                href.contains('/') || href.contains('\\') || href.split('/').any(|c| c == "..");
            if path_like && !f.href.contains("://") {
                rep.add(
                    "external-reference",
                    format!(
                        "the OVF references \"{}\": a path, which importers open outside the \
                         archive or in a directory of it",
                        shown(f.href.as_bytes())
                    ),
                );
            }
            if f.chunk_size.is_some() || f.compression.as_deref().is_some_and(|c| c != "identity") {
                rep.add(
                    "unverifiable",
                    format!(
                        "file \"{}\" is stored split or compressed in the archive: its content \
                         cannot be inspected in place",
                        shown(f.href.as_bytes())
                    ),
                );
            }
        }
    }
    for m in &index.members {
        if m.kind != MemberKind::File || is_metadata(&m.name) {
            continue;
        }
        let view = MemberBytes {
            archive: r,
            offset: m.offset,
            size: m.size,
        };
        let member_name = format!("{name}/{}", m.name);
        let sub = inspect_file(&view, &member_name, policy, Nesting::Member)?;
        for reason in &sub.reasons {
            rep.add(
                reason.code,
                format!("{}: {}", shown(m.name.as_bytes()), reason.message),
            );
        }
        rep.members.push(sub);
    }
    if rep.members.is_empty() {
        rep.add("bad-ovf", "the archive holds no disk");
    }
    Ok(())
}

/// The OVF descriptor (the first `.ovf` member), or the reason there is none to go by.
fn descriptor(
    r: &Counted<'_>,
    path: &Path,
    index: &TarIndex,
    rep: &mut InspectReport,
) -> Option<Envelope> {
    let Some(m) = index.files_ending(".ovf").next() else {
        rep.add("bad-ovf", "the archive has no OVF descriptor (.ovf member)");
        return None;
    };
    let text = match read_whole(r, m.offset, m.size, ovf::MAX_OVF_SIZE) {
        Ok(t) => t,
        Err(why) => {
            rep.add("bad-ovf", format!("the OVF descriptor {why}"));
            return None;
        }
    };
    match ovf::parse(&text, &path.join(&m.name)) {
        Ok(e) => Some(e),
        Err(e) => {
            rep.add("bad-ovf", format!("{e:#}"));
            None
        }
    }
}

/// What the manifest (the first `.mf` member) lists, checked for presence, not digests.
fn manifest_listing(
    r: &Counted<'_>,
    path: &Path,
    index: &TarIndex,
    rep: &mut InspectReport,
) -> Option<Vec<manifest::Check>> {
    let m = index.files_ending(".mf").next()?;
    let text = match read_whole(r, m.offset, m.size, manifest::MAX_MANIFEST_SIZE) {
        Ok(t) => t,
        Err(why) => {
            rep.add("bad-manifest", format!("the manifest {why}"));
            return None;
        }
    };
    match manifest::parse(&text, &path.join(&m.name)) {
        Ok(entries) => Some(manifest::check_listing(index, &entries)),
        Err(e) => {
            rep.add("bad-manifest", format!("{e:#}"));
            None
        }
    }
}

/// A member's bytes, if it is no larger than `max` and all there.
fn read_whole(
    r: &Counted<'_>,
    offset: u64,
    size: u64,
    max: u64,
) -> std::result::Result<Vec<u8>, String> {
    if size > max {
        return Err(format!("is {size} bytes (at most {max})"));
    }
    match r.bytes(offset, size) {
        Ok(t) if t.len() as u64 == size => Ok(t),
        _ => Err("is cut short".into()),
    }
}

/// One member's bytes, read through the archive's counted reader.
#[derive(Debug)]
struct MemberBytes<'a> {
    archive: &'a Counted<'a>,
    offset: u64,
    size: u64,
}

impl Storage for MemberBytes<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let n = (self.size - offset).min(buf.len() as u64) as usize;
        self.archive.read_at(&mut buf[..n], self.offset + offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.size)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}
