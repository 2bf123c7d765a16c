//! `ova info`: what an appliance is, and whether its manifest matches its members.

use std::path::Path;

use super::archive::Archive;
use super::manifest::{self, Check};
use super::ovf::Envelope;
use super::tar::{Member, MemberKind};
use crate::error::Result;
use crate::lock::LockRequest;
use crate::namespace::RouterNamespace;

/// What [`inspect`] finds in an OVA.
#[derive(Debug, Clone)]
pub struct OvaInfo {
    /// Every member, in archive order.
    pub members: Vec<Member>,
    /// The OVF descriptor's member name.
    pub ovf_name: Option<String>,
    /// The parsed descriptor.
    pub envelope: Option<Envelope>,
    /// The manifest's member name.
    pub manifest_name: Option<String>,
    /// Each manifest line checked against the members.
    pub digests: Vec<Check>,
    /// The certificate's member name (`.cert`), if the appliance is signed.
    pub certificate_name: Option<String>,
}

impl OvaInfo {
    /// The regular file `name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.kind == MemberKind::File && m.name == name.trim_start_matches("./"))
    }
}

/// Read the OVA named `path` in the default namespace (a host file, or an object in object
/// storage when that backend is registered), holding `lock` while reading; parse its
/// descriptor and check its manifest on up to `threads` threads.
pub fn inspect(path: &Path, lock: Option<LockRequest>, threads: usize) -> Result<OvaInfo> {
    let arch = Archive::open_in(&RouterNamespace, path, lock)?;
    let envelope = arch.envelope()?;
    let first = |suffix: &str| {
        arch.index()
            .files_ending(suffix)
            .next()
            .map(|m| m.name.clone())
    };
    let manifest_name = first(".mf");
    let digests = match arch.index().files_ending(".mf").next() {
        Some(m) => {
            let text = arch.read_member(m, manifest::MAX_MANIFEST_SIZE)?;
            let entries = manifest::parse(&text, &path.join(&m.name))?;
            manifest::verify(&arch, &entries, threads)
        }
        None => Vec::new(),
    };
    Ok(OvaInfo {
        members: arch.index().members.clone(),
        ovf_name: arch.ovf_member().map(|m| m.name.clone()),
        envelope,
        manifest_name,
        digests,
        certificate_name: first(".cert"),
    })
}
