//! What is wrong with an OVA as an importer would unpack it: the checks an upload vetter
//! runs before handing the archive to anything that extracts it (`tar -x`, a cloud import
//! service) or trusts its manifest.
//!
//! The archive is read as GNU tar extracts it ([`super::tar`]). The findings are what a
//! clean appliance never has and an attacker might use: two members of one name (tar keeps
//! the last, a reader that took the first checked other bytes), links and devices, members
//! or OVF files the manifest does not cover (so their digests vouch for nothing), manifest
//! lines with no member, digests that do not match, files the OVF references that are not
//! in the archive or lie outside it, and several descriptors or manifests (each reader may
//! pick another). An archive that cannot be indexed at all, or whose OVF or manifest does
//! not parse, is an error instead.

use std::collections::HashSet;

use super::archive::Archive;
use super::manifest::{Check, Status};
use super::ovf::Envelope;
use super::tar::{self, MemberKind, TarIndex};
use crate::error::Result;
use crate::text::escape;

/// What kind of problem a [`Finding`] reports. [`FindingCode::as_str`] is its stable name
/// (as `vmdk ova info` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FindingCode {
    /// Several members have one name (after `./`, `//` and trailing `/` are folded as tar
    /// folds them): tar extracts the last.
    DuplicateMember,
    /// A member that is not a regular file or directory: a link, a device, a FIFO, a
    /// volume label, an unknown type (which tar extracts as a regular file).
    SpecialMember,
    /// More than one `.ovf` member.
    SeveralDescriptors,
    /// More than one `.mf` member.
    SeveralManifests,
    /// The OVF references a file the archive does not hold as a regular file.
    MissingReference,
    /// The OVF references a file outside the archive (a URL).
    ExternalReference,
    /// The OVF references a file the manifest has no line for.
    UnlistedReference,
    /// A member (other than the manifest and the certificate) the manifest has no line for.
    /// Directories are not listed by anyone and are not reported.
    UnlistedMember,
    /// A manifest line names no member, or one that is not a regular file.
    MissingMember,
    /// A member's digest is not the one its manifest line gives.
    DigestMismatch,
    /// A manifest line's algorithm is not one this library computes (SHA1, SHA256, SHA512).
    UnknownAlgorithm,
    /// A member named by the manifest could not be read.
    UnreadableMember,
}

impl FindingCode {
    /// The code's stable name: `duplicate-member`, `unlisted-member`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            FindingCode::DuplicateMember => "duplicate-member",
            FindingCode::SpecialMember => "special-member",
            FindingCode::SeveralDescriptors => "several-descriptors",
            FindingCode::SeveralManifests => "several-manifests",
            FindingCode::MissingReference => "missing-reference",
            FindingCode::ExternalReference => "external-reference",
            FindingCode::UnlistedReference => "unlisted-reference",
            FindingCode::UnlistedMember => "unlisted-member",
            FindingCode::MissingMember => "missing-member",
            FindingCode::DigestMismatch => "digest-mismatch",
            FindingCode::UnknownAlgorithm => "unknown-algorithm",
            FindingCode::UnreadableMember => "unreadable-member",
        }
    }
}

/// One problem found in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of problem.
    pub code: FindingCode,
    /// The member or file it concerns, as the archive, OVF or manifest spells it (raw: it
    /// may hold anything; escape it before printing, see [`crate::text`]).
    pub name: Option<String>,
    /// The problem for people, names already escaped.
    pub message: String,
}

/// Everything wrong with `arch` (see the [module docs](self)), in a stable order: archive
/// structure first, then the OVF's references, then the manifest's coverage and lines.
/// Empty for a sound appliance. Digests are computed on up to `threads` threads (0: one per
/// CPU), each member at most once per algorithm. Errors: the OVF or the manifest cannot be
/// read or parsed.
pub fn vet(arch: &Archive, threads: usize) -> Result<Vec<Finding>> {
    Ok(super::inspect_archive(arch, threads)?.findings)
}

/// The findings for an archive of `index` with descriptor `env` and manifest `manifest`
/// (its member name and its checked lines).
pub(crate) fn findings(
    index: &TarIndex,
    env: Option<&Envelope>,
    manifest: Option<(&str, &[Check])>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |code, name: &str, message: String| {
        out.push(Finding {
            code,
            name: Some(name.to_string()),
            message,
        })
    };

    for dups in index.duplicates() {
        let offsets: Vec<String> = dups.iter().map(|m| m.header_offset.to_string()).collect();
        add(
            FindingCode::DuplicateMember,
            &dups[0].name,
            format!(
                "\"{}\" names {} members (headers at offsets {}): tar extracts the last, \
                 other readers may take another",
                escape(&dups[0].name),
                dups.len(),
                offsets.join(", ")
            ),
        );
    }
    for m in &index.members {
        if let MemberKind::Other(_) = m.kind {
            add(
                FindingCode::SpecialMember,
                &m.name,
                format!(
                    "\"{}\" is {}; an appliance holds regular files only",
                    escape(&m.name),
                    m.kind.describe()
                ),
            );
        }
    }
    for (suffix, code, what) in [
        (".ovf", FindingCode::SeveralDescriptors, "OVF descriptors"),
        (".mf", FindingCode::SeveralManifests, "manifests"),
    ] {
        let all: Vec<&str> = index
            .files_ending(suffix)
            .map(|m| m.name.as_str())
            .collect();
        if all.len() > 1 {
            let names: Vec<String> = all.iter().map(|n| format!("\"{}\"", escape(n))).collect();
            add(
                code,
                all[1],
                format!(
                    "the archive holds {} {what} ({}); this report reads the first, an \
                     importer may read another",
                    all.len(),
                    names.join(", ")
                ),
            );
        }
    }

    // What the manifest covers, by the path tar extracts each line's file to.
    let listed: Option<HashSet<String>> = manifest.map(|(_, checks)| {
        checks
            .iter()
            .filter_map(|c| tar::lookup_key(&c.entry.file))
            .collect()
    });

    if let Some(env) = env {
        for f in &env.files {
            let href = escape(&f.href);
            if f.href.contains("://") {
                add(
                    FindingCode::ExternalReference,
                    &f.href,
                    format!(
                        "the OVF references \"{href}\", outside the archive: an importer \
                         would fetch it"
                    ),
                );
                continue;
            }
            if f.chunk_size.is_some() {
                // Split by ovftool into `href.000000000`, ...: the manifest lists the
                // chunks, which are members like any other.
                if index.file(&format!("{}.000000000", f.href)).is_none() {
                    add(
                        FindingCode::MissingReference,
                        &f.href,
                        format!(
                            "the OVF references \"{href}\" in chunks, and the archive holds \
                             no \"{href}.000000000\""
                        ),
                    );
                }
                continue;
            }
            match index.member(&f.href) {
                None => add(
                    FindingCode::MissingReference,
                    &f.href,
                    format!("the OVF references \"{href}\", which is not in the archive"),
                ),
                Some(m) if m.kind != MemberKind::File => add(
                    FindingCode::MissingReference,
                    &f.href,
                    format!(
                        "the OVF references \"{href}\", which is {}",
                        m.kind.describe()
                    ),
                ),
                Some(_) => {}
            }
            if let (Some(listed), Some(key)) = (&listed, tar::lookup_key(&f.href)) {
                if !listed.contains(&key) {
                    add(
                        FindingCode::UnlistedReference,
                        &f.href,
                        format!(
                            "the OVF references \"{href}\", for which the manifest has no \
                             digest"
                        ),
                    );
                }
            }
        }
    }

    let Some((mf_name, checks)) = manifest else {
        return out;
    };
    let listed = listed.unwrap_or_default();
    // The manifest cannot list itself, nor the certificate that signs it (the first
    // `.cert`, the one `ova info` reports); any other member is payload.
    let certificate = index.files_ending(".cert").next().map(|m| m.name.as_str());
    let mut seen = HashSet::new();
    for m in &index.members {
        let exempt = m.name == mf_name
            || Some(m.name.as_str()) == certificate
            || m.kind == MemberKind::Directory;
        if exempt || listed.contains(&m.name) || !seen.insert(m.name.as_str()) {
            continue;
        }
        add(
            FindingCode::UnlistedMember,
            &m.name,
            format!(
                "\"{}\" is not listed in the manifest \"{}\": no digest vouches for it",
                escape(&m.name),
                escape(mf_name)
            ),
        );
    }
    for c in checks {
        let file = escape(&c.entry.file);
        let alg = escape(&c.entry.algorithm);
        let (code, message) = match &c.status {
            Status::Match => continue,
            Status::Missing => (
                FindingCode::MissingMember,
                format!("the manifest lists \"{file}\", which is not in the archive"),
            ),
            Status::NotAFile(what) => (
                FindingCode::MissingMember,
                format!("the manifest lists \"{file}\", which is {what}"),
            ),
            Status::Mismatch(actual) => (
                FindingCode::DigestMismatch,
                format!(
                    "\"{file}\" has {alg} digest {actual}, the manifest says {}",
                    escape(&c.entry.digest)
                ),
            ),
            Status::UnknownAlgorithm => (
                FindingCode::UnknownAlgorithm,
                format!("the manifest's line for \"{file}\" uses \"{alg}\", which is not checked"),
            ),
            Status::Unreadable(e) => (
                FindingCode::UnreadableMember,
                format!("\"{file}\" could not be read: {}", escape(e)),
            ),
        };
        add(code, &c.entry.file, message);
    }
    out
}
