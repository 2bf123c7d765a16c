//! Descriptor text: a descriptor file, and the rules every descriptor (embedded or not)
//! is held to. Two readers are modelled side by side: our own line parser (which VMware's
//! reading resembles) and QEMU's substring and `sscanf` scans
//! ([`crate::format::qemu_view`]); a file named by either is a file someone would open.

use super::{shown, Counted, InspectPolicy, InspectReport};
use crate::error::Result;
use crate::format::descriptor::{Descriptor, MAX_DESCRIPTOR_SIZE};
use crate::format::qemu_view::{self, ParentHint};
use crate::format::SECTOR_SIZE;

/// A text descriptor: every extent it lists is another file.
pub(super) fn inspect_descriptor_file(
    r: &Counted<'_>,
    file_size: u64,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) -> Result<()> {
    // What QEMU opens: it reads at most 1 MiB - 1 bytes, whatever the file's size.
    let qemu_text = r.bytes(0, qemu_view::READ_DESC_MAX as u64)?;
    let qemu = qemu_view::open_descriptor_file(&qemu_text);
    for e in &qemu.extents {
        rep.add(
            "external-extent",
            format!(
                "QEMU opens the {} extent file \"{}\" that the descriptor names (at byte {})",
                shown(e.kind.as_bytes()),
                shown(&e.file),
                e.line_offset
            ),
        );
    }
    let qemu_found = qemu_hint(&qemu_text, 0, rep);
    if file_size > MAX_DESCRIPTOR_SIZE as u64 {
        rep.add(
            "descriptor-too-large",
            format!(
                "a {file_size}-byte descriptor file (this library reads at most \
                 {MAX_DESCRIPTOR_SIZE})"
            ),
        );
        return Ok(());
    }
    let text = r.bytes(0, file_size)?;
    let desc = match Descriptor::parse(&text) {
        Ok(d) => d,
        Err(e) => {
            rep.add("bad-descriptor", format!("descriptor file: {e}"));
            return Ok(());
        }
    };
    rep.subformat = Some(desc.create_type.clone());
    rep.virtual_size = Some(desc.total_sectors().saturating_mul(SECTOR_SIZE));
    check_create_type(&desc.create_type, policy, rep);
    for e in &desc.extents {
        if let Some(f) = &e.file {
            if qemu.extents.iter().any(|q| q.file == f.as_bytes()) {
                continue;
            }
            rep.add(
                "external-extent",
                format!(
                    "the descriptor names {} extent file \"{}\": the disk's data is in other \
                     files, which whoever opens it would open",
                    e.kind.keyword(),
                    shown(f.as_bytes())
                ),
            );
        }
    }
    check_descriptor_hint(&desc, qemu_found.as_deref(), policy, rep);
    if policy.strict {
        strict_descriptor_lines(&text, rep);
    }
    Ok(())
}

pub(super) fn check_create_type(
    create_type: &str,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) {
    if !policy.allows(create_type) {
        rep.add(
            "create-type",
            format!(
                "createType \"{}\" is not allowed (allowed: {})",
                shown(create_type.as_bytes()),
                policy.allowed_create_types.join(", ")
            ),
        );
    }
}

/// QEMU's backing-file scan (`vmdk_parent_open`) over the descriptor text at `offset` of
/// the file: a `parentFileNameHint` anywhere before the first NUL in its window, comments
/// and other keys' names included. Returns the name QEMU takes, if it finds one.
pub(super) fn qemu_hint(text: &[u8], offset: u64, rep: &mut InspectReport) -> Option<Vec<u8>> {
    let (at, hint) = qemu_view::parent_hint(text)?;
    let at = offset + at as u64;
    match hint {
        ParentHint::Name(name) => {
            rep.add(
                "backing-file",
                format!(
                    "QEMU finds parentFileNameHint at byte {at} (it searches the text at byte \
                     {offset} for the key, comments and other keys' names included) and opens \
                     \"{}\" as the backing file",
                    shown(&name)
                ),
            );
            Some(name)
        }
        ParentHint::Unusable => {
            rep.add(
                "backing-file",
                format!(
                    "QEMU finds parentFileNameHint at byte {at} with no usable name after it \
                     (it then refuses the file)"
                ),
            );
            None
        }
    }
}

/// The backing file our line parser (and VMware's) finds, unless QEMU's scan reported the
/// same name; in strict mode, any parentCID.
pub(super) fn check_descriptor_hint(
    desc: &Descriptor,
    qemu_found: Option<&[u8]>,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) {
    if let Some(p) = &desc.parent_file_name_hint {
        if qemu_found != Some(p.as_bytes()) {
            rep.add(
                "backing-file",
                format!(
                    "parentFileNameHint=\"{}\": a backing file whoever opens it would open",
                    shown(p.as_bytes())
                ),
            );
        }
    } else if desc.has_parent() && policy.strict {
        rep.add(
            "backing-file",
            format!(
                "parentCID={:08x} says this is a delta disk of some parent",
                desc.parent_cid
            ),
        );
    }
}

/// OpenStack format_inspector's descriptor rules: ASCII only; each line a comment, blank,
/// a `ddb` entry, a `key=value` header field or an extent line; no `/` in extent lines;
/// at least one extent.
pub(super) fn strict_descriptor_lines(text: &[u8], rep: &mut InspectReport) {
    let text = qemu_view::c_str(text);
    let Ok(s) = std::str::from_utf8(text) else {
        rep.add("descriptor-line", "the descriptor is not ASCII text");
        return;
    };
    if !s.is_ascii() {
        rep.add("descriptor-line", "the descriptor is not ASCII text");
    }
    let mut extents = 0;
    for (i, line) in s.lines().enumerate() {
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() || l.starts_with('#') || l.starts_with("ddb") {
            continue;
        }
        let first = l.split(' ').next().unwrap_or("");
        if matches!(first, "rw" | "rdonly" | "noaccess") {
            extents += 1;
            if l.contains('/') {
                rep.add(
                    "descriptor-line",
                    format!("line {}: an extent line with a '/' in it", i + 1),
                );
            }
        } else if !l.contains('=') || l.split('=').next().unwrap_or("").contains(' ') {
            rep.add(
                "descriptor-line",
                format!("line {}: neither a field, an extent nor a comment", i + 1),
            );
        }
    }
    if extents == 0 {
        rep.add("descriptor-line", "the descriptor lists no extent");
    }
}
