//! OVA appliances: a tar archive of an OVF descriptor, a manifest and the disks.
//!
//! Reading: [`OvaBackend`] is a backend of a [`RouterNamespace`]; with it every command
//! that takes an image accepts `X.ova` (its first disk) and `X.ova/DISK.vmdk`, read in
//! place as a byte range of the archive ([`MemberStorage`]), never extracted. [`default_namespace`], the
//! namespace the library opens in when its caller gives none, is a router holding it.
//! [`inspect`] reports what an appliance is and checks its manifest; [`vet`] lists what is
//! wrong with it as an importer would unpack it.
//!
//! This layer sits on the storage layer only (an archive is a namespace of byte ranges),
//! below extents and images: so the image layer's default namespace can hold the OVA
//! backend as a value, with no registry for this module to fill in from above.
//!
//! Writing: the primitives `layout` (the descriptor's and manifest's space reserved at
//! the front and filled in last, members written in place and hashed), `compose` and
//! [`Template`]. Converting disks into members is the operation
//! [`ops::ova_create`](crate::ops::ova_create), above this layer.
//!
//! ```text
//! tar.rs             member index (ustar, GNU, pax; names as GNU tar extracts them; hostile
//!                    archives refused) + GNU headers
//! member_storage.rs  one member as read-only Storage
//! archive.rs         an opened OVA: index, OVF, which member is the first disk
//! open_archives.rs   opened archives shared while a member of theirs is in use
//! namespace.rs       OvaNamespace: names X.ova/MEMBER
//! backend.rs         OvaBackend: which names are inside an OVA
//! ovf.rs             reading OVF descriptors (roxmltree, DTDs refused)
//! manifest.rs        .mf lines, digests checked in parallel, each member hashed once
//! inspect.rs         `ova info`
//! vet.rs             what an importer would trip over: duplicate or unlisted members, ...
//! compose.rs         writing an OVF vSphere imports
//! template.rs        a user's OVF with the disk sizes filled in
//! layout.rs          writing: the front reserved and filled in last, members hashed
//! ```

mod archive;
mod backend;
pub(crate) mod compose;
mod inspect;
pub(crate) mod layout;
pub mod manifest;
mod member_storage;
mod namespace;
mod open_archives;
pub mod ovf;
pub mod tar;
mod template;
pub(crate) mod vet;

pub use archive::Archive;
pub use backend::{is_ova_name, OvaBackend};
pub use compose::{ApplianceSpec, Controller, DiskFacts, Firmware};
pub use inspect::{inspect, inspect_archive, inspect_in, OvaInfo};
pub use layout::OvfSource;
pub use member_storage::{member_id, MemberStorage};
pub use namespace::OvaNamespace;
pub use template::Template;
pub use vet::{vet, Finding, FindingCode};

use std::sync::Arc;

use crate::storage::namespace::RouterNamespace;

/// The namespace the library opens, probes and creates in when its caller gives none:
/// host files, and names inside OVA archives among them ([`OvaBackend`]). A new value on
/// every call (no registry, nothing to fill in at start-up): a caller that wants other
/// backends too (object storage: `vmdk-object`) builds its own [`RouterNamespace`] and
/// passes it in `OpenOptions::in_namespace` and the operations' options.
///
/// It lives here, the lowest layer that knows both the router and the OVA backend, so that
/// `OpenOptions` (the image layer) can default to it: `Image::open("x.ova/disk.vmdk")`
/// works as it did when the OVA backend was built into the router.
pub fn default_namespace() -> Arc<RouterNamespace> {
    Arc::new(RouterNamespace::new(vec![Arc::new(OvaBackend::default())]))
}
