//! `ova info`: what an appliance is, whether its manifest matches its members, and what an
//! importer would trip over ([`super::vet`]).

use std::path::Path;

use super::archive::Archive;
use super::manifest::{self, Check};
use super::ovf::Envelope;
use super::tar::{Member, TarIndex};
use super::vet::{self, Finding};
use crate::error::Result;
use crate::storage::lock::LockRequest;
use crate::storage::namespace::{OpenMode, RouterNamespace};

/// What [`inspect`] finds in an OVA.
#[derive(Debug, Clone)]
pub struct OvaInfo {
    /// Every member, in archive order, with a lookup by name.
    pub index: TarIndex,
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
    /// Everything wrong with the archive as an importer would unpack it (digest problems
    /// included); empty for a sound appliance. See [`super::vet`].
    pub findings: Vec<Finding>,
}

impl OvaInfo {
    /// Every member, in archive order.
    pub fn members(&self) -> &[Member] {
        &self.index.members
    }

    /// The regular file `name` (the last of that name, the one tar extracts).
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.index.file(name)
    }
}

/// Read the OVA named `path` in the library's [`default_namespace`](super::default_namespace)
/// (a host file), holding `lock` while reading; see [`inspect_in`].
pub fn inspect(path: &Path, lock: Option<LockRequest>, threads: usize) -> Result<OvaInfo> {
    inspect_in(&super::default_namespace(), path, lock, threads)
}

/// Read the OVA named `path` in `ns` (a host file, or an object when `ns` has an
/// object-storage backend), holding `lock` while reading; see [`inspect_archive`]. The
/// archive itself is read ([`RouterNamespace::open_file`]), not the disk its name stands
/// for elsewhere.
pub fn inspect_in(
    ns: &RouterNamespace,
    path: &Path,
    lock: Option<LockRequest>,
    threads: usize,
) -> Result<OvaInfo> {
    let mode = OpenMode {
        lock,
        ..OpenMode::read_only()
    };
    let arch = Archive::from_storage(path, ns.open_file(path, mode)?)?;
    inspect_archive(&arch, threads)
}

/// Parse `arch`'s descriptor, check its manifest on up to `threads` threads (0: one per
/// CPU), each member hashed at most once per algorithm, and vet it. An OVF or manifest
/// that cannot be parsed is an error; everything else wrong is a finding.
pub fn inspect_archive(arch: &Archive, threads: usize) -> Result<OvaInfo> {
    let envelope = arch.envelope()?.cloned();
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
            let entries = manifest::parse(&text, &arch.path().join(&m.name))?;
            manifest::verify(arch, &entries, threads)
        }
        None => Vec::new(),
    };
    let findings = vet::findings(
        arch.index(),
        envelope.as_ref(),
        manifest_name.as_deref().map(|m| (m, &digests[..])),
    );
    Ok(OvaInfo {
        index: arch.index().clone(),
        ovf_name: arch.ovf_member().map(|m| m.name.clone()),
        envelope,
        manifest_name,
        digests,
        certificate_name: first(".cert"),
        findings,
    })
}
