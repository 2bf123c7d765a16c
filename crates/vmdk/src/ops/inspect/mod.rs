//! Is this upload a safe, self-contained VMDK? A verdict on one file, for services that
//! accept disk images from users (OpenStack Glance/Nova/Cinder after CVE-2022-47951) and
//! must decide before anything — QEMU included — opens it.
//!
//! [`inspect_path`] opens the file and nothing else: no extent, no backing file, no name
//! written inside it is ever followed. It reads bounded amounts (the probe window, the
//! header, QEMU's descriptor window, the embedded descriptor, the stream footer, the grain
//! directories and a sample of grain tables: at most a few MiB whatever the file's size)
//! and reports every reason the file is unsafe, not just the first.
//!
//! The verdict models what each reader will really do with the bytes, QEMU above all
//! ([`crate::format::qemu_view`]): QEMU finds `parentFileNameHint` and the CIDs by
//! substring search over a fixed window at sector 1 (whatever the header says, up to the
//! first NUL, comments included), opens a capacity-0 header's descriptor as a descriptor
//! file, and picks a format by probing the first 2 KiB. So the rules are:
//!
//! * what the file is, to us and to `qemu-img`'s probe: a VMDK subformat, an OVA (every
//!   disk member judged the same way, the archive's own bytes probed as `qemu-img` would
//!   probe them), another format (qcow2, VHD, ISO, ...) or a raw disk carrying a `.vmdk`
//!   name; and any second format the same bytes also are (a polyglot);
//! * references to other files, as QEMU, VMware and this library find them: extents of a
//!   descriptor, a second extent in an embedded descriptor, `parentFileNameHint` anywhere
//!   QEMU's scan reaches, the capacity-0 header that makes QEMU open the embedded
//!   descriptor's extents;
//! * a `createType` the policy does not allow;
//! * readers that would disagree: a descriptor elsewhere than sector 1, a descriptor that
//!   disagrees with the header, a stream footer that disagrees with it, text QEMU cannot
//!   open;
//! * metadata (descriptor, grain directories, grain tables, grains) past the end of the
//!   file or overlapping other metadata, grains shared by two table entries;
//! * a virtual size over the policy's limit.
//!
//! [`InspectPolicy::strict`] also applies the line rules of OpenStack's
//! `format_inspector` (every descriptor line a comment, a `ddb` entry, `key=value` or an
//! extent; no `/` in extent lines) and refuses what is legal but unusual for an upload: a
//! sparse file without an embedded descriptor, header flags that contradict the
//! `createType`, an unclean-shutdown flag.
//!
//! ```text
//! mod.rs         policy, report, and what the file is (the dispatch)
//! sparse.rs      hosted sparse (KDMV) files: header, footer, QEMU's scans, tables
//! descriptor.rs  descriptor text: files it names, createType, strict line rules
//! archive.rs     OVAs: members, OVF references, every disk inspected
//! ambiguity.rs   polyglots: bytes that are a second format as well
//! ```

mod ambiguity;
mod archive;
mod descriptor;
mod sparse;

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::foreign;
use crate::format::qemu_view;
use crate::image::FileFormat;
use crate::storage::namespace::{OpenMode, RouterNamespace};
use crate::storage::Storage;

/// Bytes of one grain directory (primary or redundant) read at most: 1 MiB of entries
/// covers 8 TiB of virtual disk at the usual geometry (64 KiB grains, 512-entry tables).
pub(crate) const MAX_GD_BYTES: u64 = 1 << 20;
/// Grain tables read at most, spread evenly over the directory.
pub(crate) const MAX_SAMPLED_TABLES: usize = 256;
/// Reasons of one kind listed one by one; the rest are counted in one more reason.
const MAX_REASONS_PER_CODE: usize = 8;

/// What an upload may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectPolicy {
    /// `createType`s accepted (compared case-insensitively). OpenStack's default allows only
    /// the two single-file sparse layouts.
    pub allowed_create_types: Vec<String>,
    /// Largest virtual size accepted, if any.
    pub max_virtual_size: Option<u64>,
    /// Also refuse what is legal but unusual for an upload (see the module notes).
    pub strict: bool,
}

impl Default for InspectPolicy {
    /// OpenStack's default: monolithicSparse and streamOptimized, no size limit.
    fn default() -> Self {
        InspectPolicy {
            allowed_create_types: vec!["monolithicSparse".into(), "streamOptimized".into()],
            max_virtual_size: None,
            strict: false,
        }
    }
}

impl InspectPolicy {
    /// The default policy plus the strict rules.
    pub fn strict() -> Self {
        InspectPolicy {
            strict: true,
            ..InspectPolicy::default()
        }
    }
    /// Set [`InspectPolicy::max_virtual_size`].
    pub fn max_virtual_size(mut self, size: Option<u64>) -> Self {
        self.max_virtual_size = size;
        self
    }
    fn allows(&self, create_type: &str) -> bool {
        self.allowed_create_types
            .iter()
            .any(|t| t.eq_ignore_ascii_case(create_type))
    }
}

/// One reason a file is unsafe: a stable code for programs and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// Stable identifier (`external-extent`, `past-eof`, ...; listed in the README).
    pub code: &'static str,
    /// What exactly is wrong, with the offsets and names involved (names from the file
    /// with control characters escaped).
    pub message: String,
}

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No reason found: a self-contained VMDK the policy allows.
    Safe,
    /// At least one reason.
    Unsafe,
}

impl Verdict {
    /// `safe` or `unsafe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Safe => "safe",
            Verdict::Unsafe => "unsafe",
        }
    }
}

/// What [`inspect_path`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectReport {
    /// The name inspected, as given.
    pub filename: String,
    /// `vmdk`, `ova`, `raw`, or another format's qemu name (`qcow2`, `vpc`, ...).
    pub format: String,
    /// What `qemu-img` without `-f` takes the file for (its probe of the first 2 KiB):
    /// `vmdk`, `raw`, another driver's name, or several joined by `+` when drivers tie.
    pub qemu_format: String,
    /// For VMDK, the `createType` (or `vmfsSparse`/`seSparse` for bare extents).
    pub subformat: Option<String>,
    /// The virtual disk size, where the file states one.
    pub virtual_size: Option<u64>,
    /// The file's length.
    pub file_size: u64,
    /// Bytes read from the file to reach the verdict.
    pub bytes_read: u64,
    /// Grain tables the grain directory points at (sparse files).
    pub grain_tables: u64,
    /// Grain tables read and checked entry by entry.
    pub grain_tables_checked: u64,
    /// Allocated grains in the tables checked.
    pub grains_allocated: u64,
    /// Every reason the file is unsafe; empty when it is safe. For an OVA this includes
    /// every member's reasons, each message starting with the member's name.
    pub reasons: Vec<Reason>,
    /// For an OVA, the report of each member inspected as a disk.
    pub members: Vec<InspectReport>,
}

impl InspectReport {
    fn new(filename: &str, file_size: u64) -> InspectReport {
        InspectReport {
            filename: filename.to_string(),
            format: "raw".into(),
            qemu_format: "raw".into(),
            subformat: None,
            virtual_size: None,
            file_size,
            bytes_read: 0,
            grain_tables: 0,
            grain_tables_checked: 0,
            grains_allocated: 0,
            reasons: Vec::new(),
            members: Vec::new(),
        }
    }
    /// Safe exactly when there is no reason.
    pub fn verdict(&self) -> Verdict {
        if self.reasons.is_empty() {
            Verdict::Safe
        } else {
            Verdict::Unsafe
        }
    }
    /// Whether a reason with this code was given.
    pub fn has(&self, code: &str) -> bool {
        self.reasons.iter().any(|r| r.code == code)
    }
    fn add(&mut self, code: &'static str, message: impl Into<String>) {
        let same = self.reasons.iter().filter(|r| r.code == code).count();
        if same < MAX_REASONS_PER_CODE {
            self.reasons.push(Reason {
                code,
                message: message.into(),
            });
        } else if same == MAX_REASONS_PER_CODE {
            self.reasons.push(Reason {
                code,
                message: "and more of the same kind".into(),
            });
        }
    }
}

/// Bytes read from a file shown in a message, so a name cannot drive a terminal or forge a
/// line of the report.
pub(crate) fn shown(bytes: &[u8]) -> String {
    crate::text::escape_bytes(bytes)
}

/// The files a descriptor-file open takes, for a message: distinct names, at most eight.
pub(crate) fn extent_names(open: &crate::format::qemu_view::DescriptorFileOpen) -> String {
    let mut names: Vec<&[u8]> = Vec::new();
    for e in &open.extents {
        if !names.contains(&e.file.as_slice()) {
            names.push(&e.file);
        }
    }
    let more = names.len() > 8 || open.more_extents;
    let mut out: Vec<String> = names
        .iter()
        .take(8)
        .map(|n| format!("\"{}\"", shown(n)))
        .collect();
    if more {
        out.push("and more".into());
    }
    out.join(", ")
}

/// Inspect the file `path` names in the library's
/// [`default_namespace`](crate::ova::default_namespace) (a host file, an archive member):
/// [`inspect_in`] that namespace.
pub fn inspect_path(path: &Path, policy: &InspectPolicy) -> Result<InspectReport> {
    inspect_in(&crate::ova::default_namespace(), path, policy)
}

/// Inspect the file `path` names in `ns` (a host file, an archive member, an object when
/// `ns` has an object-storage backend), opening only it and taking no lock. An archive
/// named as a whole (`X.ova`) is inspected as an archive, not as its first disk
/// ([`RouterNamespace::open_file`]). A FIFO, device or directory is refused before it is
/// opened (reading one could block or read a host disk).
pub fn inspect_in(
    ns: &RouterNamespace,
    path: &Path,
    policy: &InspectPolicy,
) -> Result<InspectReport> {
    let storage = ns.open_file(path, OpenMode::read_only())?;
    inspect_storage(&*storage, &path.display().to_string(), policy).map_err(|e| e.with_path(path))
}

/// Inspect the file at `path`: the same as [`inspect_path`].
pub fn inspect(path: impl AsRef<Path>, policy: &InspectPolicy) -> Result<InspectReport> {
    inspect_path(path.as_ref(), policy)
}

/// [`inspect_path`] over already-open storage (`name` is only reported, and its last
/// component given to QEMU's name-based probes).
pub fn inspect_storage(
    storage: &dyn Storage,
    name: &str,
    policy: &InspectPolicy,
) -> Result<InspectReport> {
    inspect_file(storage, name, policy, Nesting::Top)
}

/// Whether the file is an upload of its own or a member of an archive being inspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nesting {
    Top,
    Member,
}

fn inspect_file(
    storage: &dyn Storage,
    name: &str,
    policy: &InspectPolicy,
    nesting: Nesting,
) -> Result<InspectReport> {
    let r = Counted {
        inner: storage,
        read: AtomicU64::new(0),
    };
    let file_size = r
        .len()
        .map_err(|e| Error::io(e, "cannot get the file size"))?;
    let mut rep = InspectReport::new(name, file_size);
    let (format, head, tail) = crate::image::probe_storage_full(&r)
        .map_err(|e| Error::io(e, "reading the file's start"))?;
    let base_name = name.rsplit('/').next().unwrap_or(name);
    rep.qemu_format = qemu_view::probed_formats(&head, base_name).join("+");
    let is_tar = crate::ova::tar::is_tar_header(&head);
    match format {
        Some(FileFormat::Vmdk4Sparse) => {
            rep.format = "vmdk".into();
            sparse::inspect_sparse(&r, file_size, policy, &mut rep)?;
        }
        _ if is_tar => match nesting {
            Nesting::Top => archive::inspect_archive(&r, name, policy, &mut rep)?,
            Nesting::Member => {
                rep.format = "ova".into();
                rep.add(
                    "archive-member",
                    "a tar archive inside the archive: nothing in it is vouched for",
                );
            }
        },
        None => {
            rep.virtual_size = Some(file_size);
            rep.add(
                "not-vmdk",
                "no VMDK header or descriptor (nor any other image format): a raw disk",
            );
        }
        Some(FileFormat::Foreign(f)) => {
            rep.format = f.name().into();
            rep.virtual_size = foreign::virtual_size(f, &head, &tail);
            rep.add(
                "foreign-format",
                format!("this is a {} image, not VMDK", f.description()),
            );
        }
        Some(FileFormat::Descriptor) => {
            rep.format = "vmdk".into();
            descriptor::inspect_descriptor_file(&r, file_size, policy, &mut rep)?;
        }
        Some(FileFormat::Cowd) | Some(FileFormat::SeSparse) => {
            rep.format = "vmdk".into();
            let sub = if format == Some(FileFormat::Cowd) {
                "vmfsSparse"
            } else {
                "seSparse"
            };
            rep.subformat = Some(sub.into());
            rep.add(
                "create-type",
                format!(
                    "a bare {sub} extent (an ESX delta or snapshot layer, which only makes \
                     sense on top of a parent disk) is not allowed (allowed: {})",
                    policy.allowed_create_types.join(", ")
                ),
            );
        }
    }
    ambiguity::check(&r, &head, &tail, format, is_tar, &mut rep)?;
    if let (Some(limit), Some(size)) = (policy.max_virtual_size, rep.virtual_size) {
        if size > limit {
            rep.add(
                "virtual-size-limit",
                format!("virtual size {size} bytes is over the limit of {limit} bytes"),
            );
        }
    }
    rep.bytes_read += r.read.load(Ordering::Relaxed);
    Ok(rep)
}

/// Every read of the inspection goes through here and is counted.
#[derive(Debug)]
struct Counted<'a> {
    inner: &'a dyn Storage,
    read: AtomicU64,
}

impl Counted<'_> {
    /// Up to `len` bytes at `offset` (fewer at the end of the file).
    fn bytes(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let size = self
            .len()
            .map_err(|e| Error::io(e, "cannot get the file size"))?;
        let len = len.min(size.saturating_sub(offset));
        let mut buf = vec![0u8; len as usize];
        let n = self
            .read_up_to(&mut buf, offset)
            .map_err(|e| Error::io(e, format!("reading {len} bytes at offset {offset}")))?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl Storage for Counted<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::create::{create, CreateOptions, Subformat};
    use crate::storage::MemStorage;

    fn inspect_bytes(data: Vec<u8>, policy: &InspectPolicy) -> InspectReport {
        inspect_storage(&MemStorage::new(data), "t.vmdk", policy).unwrap()
    }

    fn made(sub: Subformat, size: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.vmdk");
        let opts = CreateOptions {
            subformat: sub,
            ..CreateOptions::default()
        };
        create(&p, size, &opts).unwrap();
        (d, p)
    }

    #[test]
    fn library_made_single_files_are_safe() {
        for sub in [Subformat::MonolithicSparse, Subformat::StreamOptimized] {
            let (_d, p) = made(sub, 64 << 20);
            let rep = inspect_path(&p, &InspectPolicy::default()).unwrap();
            assert_eq!(rep.verdict(), Verdict::Safe, "{sub:?}: {:?}", rep.reasons);
            assert_eq!(rep.virtual_size, Some(64 << 20));
            assert_eq!(rep.format, "vmdk");
            let strict = inspect_path(&p, &InspectPolicy::strict()).unwrap();
            assert_eq!(
                strict.verdict(),
                Verdict::Safe,
                "{sub:?}: {:?}",
                strict.reasons
            );
        }
    }

    #[test]
    fn descriptor_files_name_their_extents() {
        let (_d, p) = made(Subformat::MonolithicFlat, 1 << 20);
        let rep = inspect_path(&p, &InspectPolicy::default()).unwrap();
        assert!(rep.has("external-extent"), "{:?}", rep.reasons);
        assert!(rep.has("create-type"));
        assert_eq!(rep.subformat.as_deref(), Some("monolithicFlat"));
    }

    /// A multi-terabyte sparse file: the verdict costs a bounded read, counted by a
    /// Storage wrapper independent of the report's own count.
    #[test]
    fn huge_sparse_file_reads_little() {
        #[derive(Debug)]
        struct Counting(crate::storage::FileStorage, AtomicU64);
        impl Storage for Counting {
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                let n = self.0.read_at(buf, offset)?;
                self.1.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            fn write_at(&self, b: &[u8], o: u64) -> io::Result<()> {
                self.0.write_at(b, o)
            }
            fn len(&self) -> io::Result<u64> {
                self.0.len()
            }
            fn set_len(&self, l: u64) -> io::Result<()> {
                self.0.set_len(l)
            }
            fn flush(&self) -> io::Result<()> {
                Ok(())
            }
        }
        let (_d, p) = made(Subformat::MonolithicSparse, 4 << 40);
        let s = Counting(
            crate::storage::FileStorage::open(&p, false).unwrap(),
            AtomicU64::new(0),
        );
        let rep = inspect_storage(&s, "big.vmdk", &InspectPolicy::default()).unwrap();
        assert_eq!(rep.verdict(), Verdict::Safe, "{:?}", rep.reasons);
        assert_eq!(rep.virtual_size, Some(4 << 40));
        let read = s.1.load(Ordering::Relaxed);
        assert_eq!(read, rep.bytes_read);
        assert!(read < 4 << 20, "read {read} bytes of a 4 TiB image's file");
        assert!(rep.grain_tables_checked <= MAX_SAMPLED_TABLES as u64);
    }

    #[test]
    fn raw_and_foreign_are_named() {
        let rep = inspect_bytes(vec![0u8; 4096], &InspectPolicy::default());
        assert_eq!(rep.format, "raw");
        assert!(rep.has("not-vmdk"));
        let mut q = vec![0u8; 4096];
        q[..4].copy_from_slice(b"QFI\xfb");
        q[4..8].copy_from_slice(&3u32.to_be_bytes());
        let rep = inspect_bytes(q, &InspectPolicy::default());
        assert_eq!(rep.format, "qcow2");
        assert!(rep.has("foreign-format"));
    }

    #[test]
    fn size_limit_applies() {
        let (_d, p) = made(Subformat::MonolithicSparse, 2 << 30);
        let pol = InspectPolicy::default().max_virtual_size(Some(1 << 30));
        let rep = inspect_path(&p, &pol).unwrap();
        assert!(rep.has("virtual-size-limit"), "{:?}", rep.reasons);
    }

    #[test]
    fn overlaps_are_found() {
        use super::sparse::{check_overlaps, Region};
        let mut regions = vec![
            Region {
                start: 0,
                end: 512,
                what: "a".into(),
            },
            Region {
                start: 1024,
                end: 4096,
                what: "b".into(),
            },
            Region {
                start: 2048,
                end: 2560,
                what: "c".into(),
            },
            Region {
                start: 4096,
                end: 5000,
                what: "d".into(),
            },
        ];
        let mut rep = inspect_bytes(vec![0u8; 16], &InspectPolicy::default());
        rep.reasons.clear();
        check_overlaps(&mut regions, "metadata-overlap", &mut rep);
        assert_eq!(rep.reasons.len(), 1, "{:?}", rep.reasons);
        assert!(rep.reasons[0]
            .message
            .contains("c (bytes 2048..2560) overlaps b"));
    }
}
