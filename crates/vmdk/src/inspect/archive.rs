//! An OVA upload: a tar archive of an OVF descriptor, a manifest and disks. Importers
//! (vCenter, VirtualBox, `virt-v2v`, a cloud's own) extract it with tar or read members in
//! place, then hand each disk to QEMU or VMware; so every member is judged, not just the
//! first disk, and the archive's structure is held to what tar would extract:
//!
//! * every member a disk could be (all but the `.ovf`, `.mf` and `.cert`) is inspected as
//!   an upload of its own, its reasons carried over with its name;
//! * links, devices and FIFOs are refused: extracting the archive would create them, and a
//!   link named like a disk makes the importer read whatever it points at;
//! * the OVF must parse, and every file it references must be a member of the archive
//!   (an `ovf:href` may be a URL or a path, which importers fetch or open);
//! * the archive's own bytes are probed as `qemu-img` would probe them (in `ambiguity.rs`).

use std::io;
use std::path::Path;

use super::{inspect_file, shown, Counted, InspectPolicy, InspectReport, Nesting};
use crate::error::Result;
use crate::ova::ovf;
use crate::ova::tar::{self, Member, MemberKind};
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
    let index = match tar::read_index(r, Path::new(name)) {
        Ok(i) => i,
        Err(e) => {
            rep.add("bad-archive", format!("{e:#}"));
            return Ok(());
        }
    };
    for m in &index.members {
        if let MemberKind::Other(t) = m.kind {
            let what = match t {
                b'1' => "a hard link",
                b'2' => "a symbolic link",
                b'3' | b'4' => "a device",
                b'6' => "a FIFO",
                _ => "not a regular file",
            };
            rep.add(
                "archive-member",
                format!(
                    "member \"{}\" is {what} (tar type '{}'): extracting the archive creates \
                     it, and an importer reading it reads whatever it stands for",
                    shown(m.name.as_bytes()),
                    shown(&[t])
                ),
            );
        }
    }
    check_ovf(r, name, &index.members, rep);
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

/// The OVF descriptor: present, readable, and referencing only members of the archive.
fn check_ovf(r: &Counted<'_>, name: &str, members: &[Member], rep: &mut InspectReport) {
    let ovfs: Vec<&Member> = members
        .iter()
        .filter(|m| m.kind == MemberKind::File && m.name.to_ascii_lowercase().ends_with(".ovf"))
        .collect();
    let Some(first) = ovfs.first() else {
        rep.add("bad-ovf", "the archive has no OVF descriptor (.ovf member)");
        return;
    };
    if ovfs.len() > 1 {
        rep.add(
            "bad-ovf",
            format!(
                "the archive has {} OVF descriptors: importers differ in which one they read",
                ovfs.len()
            ),
        );
    }
    if first.size > ovf::MAX_OVF_SIZE {
        rep.add(
            "bad-ovf",
            format!(
                "the OVF descriptor is {} bytes (at most {})",
                first.size,
                ovf::MAX_OVF_SIZE
            ),
        );
        return;
    }
    let text = match r.bytes(first.offset, first.size) {
        Ok(t) if t.len() as u64 == first.size => t,
        _ => {
            rep.add("bad-ovf", "the OVF descriptor is cut short");
            return;
        }
    };
    let env = match ovf::parse(&text, &Path::new(name).join(&first.name)) {
        Ok(e) => e,
        Err(e) => {
            rep.add("bad-ovf", format!("{e:#}"));
            return;
        }
    };
    for f in &env.files {
        let href = f.href.trim_start_matches("./");
        let plain = !href.is_empty()
            && !href.contains('/')
            && !href.contains('\\')
            && !href.contains(':')
            && href != ".."
            && href != ".";
        if !plain {
            rep.add(
                "external-file",
                format!(
                    "the OVF references file \"{}\": a path or URL, which importers open or \
                     fetch from outside the archive",
                    shown(f.href.as_bytes())
                ),
            );
            continue;
        }
        let present = |n: &str| {
            members
                .iter()
                .any(|m| m.kind == MemberKind::File && m.name == n)
        };
        let chunked = f.chunk_size.is_some() && present(&format!("{href}.000000000"));
        if !present(href) && !chunked {
            rep.add(
                "bad-ovf",
                format!(
                    "the OVF references file \"{}\", which the archive does not hold",
                    shown(f.href.as_bytes())
                ),
            );
        }
        if chunked || f.compression.as_deref().is_some_and(|c| c != "identity") {
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
