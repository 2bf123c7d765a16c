//! Is this upload a safe, self-contained VMDK? A verdict on one file, for services that
//! accept disk images from users (OpenStack Glance/Nova/Cinder after CVE-2022-47951) and
//! must decide before anything — QEMU included — opens it.
//!
//! [`inspect_path`] opens the file and nothing else: no extent, no backing file, no name
//! written inside it is ever followed. It reads bounded amounts (the probe window, the
//! header, the embedded descriptor, the stream footer, the grain directories and a sample of
//! grain tables: at most about 4 MiB whatever the file's size) and reports every reason
//! the file is unsafe, not just the first:
//!
//! * what the file is: a VMDK subformat, or another format (qcow2, VHD, ISO, ...) or a
//!   raw disk carrying a `.vmdk` name;
//! * references to other files: extents of a descriptor, a second extent in an embedded
//!   descriptor, `parentFileNameHint`, and the capacity-0 sparse header that makes QEMU
//!   treat the embedded descriptor as a descriptor file and open its extents;
//! * a `createType` the policy does not allow;
//! * a descriptor that disagrees with the header, a stream footer that disagrees with it;
//! * metadata (descriptor, grain directories, grain tables, grains) past the end of the
//!   file or overlapping other metadata, grains shared by two table entries;
//! * a virtual size over the policy's limit.
//!
//! [`InspectPolicy::strict`] also applies the line rules of OpenStack's
//! `format_inspector` (every descriptor line a comment, a `ddb` entry, `key=value` or an
//! extent; no `/` in extent lines) and refuses what is legal but unusual for an upload: a
//! sparse file without an embedded descriptor, header flags that contradict the
//! `createType`, an unclean-shutdown flag.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::format::descriptor::{Descriptor, ExtentType, MAX_DESCRIPTOR_SIZE};
use crate::format::foreign;
use crate::format::marker::{MetadataMarker, MARKER_EOS, MARKER_FOOTER};
use crate::format::sparse_header::{SparseHeader, GD_AT_END};
use crate::format::SECTOR_SIZE;
use crate::image::FileFormat;
use crate::storage::Storage;

/// Bytes of one grain directory (primary or redundant) read at most: 1 MiB of entries
/// covers 8 TiB of virtual disk at the usual geometry (64 KiB grains, 512-entry tables).
pub const MAX_GD_BYTES: u64 = 1 << 20;
/// Grain tables read at most, spread evenly over the directory.
pub const MAX_SAMPLED_TABLES: usize = 256;
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
    /// What exactly is wrong, with the offsets and names involved.
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
    /// `vmdk`, `raw`, or another format's qemu name (`qcow2`, `vpc`, ...).
    pub format: String,
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
    /// Every reason the file is unsafe; empty when it is safe.
    pub reasons: Vec<Reason>,
}

impl InspectReport {
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

/// Inspect the file `path` names (in the default namespace: a host file, an archive
/// member, an object), opening only it and taking no lock. A FIFO, device or directory is
/// refused before it is opened (reading one could block or read a host disk).
pub fn inspect_path(path: &Path, policy: &InspectPolicy) -> Result<InspectReport> {
    let storage =
        crate::namespace::default().open(path, crate::namespace::OpenMode::read_only())?;
    inspect_storage(&*storage, &path.display().to_string(), policy).map_err(|e| e.with_path(path))
}

/// Inspect the file at `path`: the same as [`inspect_path`].
pub fn inspect(path: impl AsRef<Path>, policy: &InspectPolicy) -> Result<InspectReport> {
    inspect_path(path.as_ref(), policy)
}

/// [`inspect_path`] over already-open storage (`name` is only reported).
pub fn inspect_storage(
    storage: &dyn Storage,
    name: &str,
    policy: &InspectPolicy,
) -> Result<InspectReport> {
    let r = Counted {
        inner: storage,
        read: AtomicU64::new(0),
    };
    let file_size = r
        .len()
        .map_err(|e| Error::io(e, "cannot get the file size"))?;
    let mut rep = InspectReport {
        filename: name.to_string(),
        format: "raw".into(),
        subformat: None,
        virtual_size: None,
        file_size,
        bytes_read: 0,
        grain_tables: 0,
        grain_tables_checked: 0,
        grains_allocated: 0,
        reasons: Vec::new(),
    };
    let (format, head, tail) = crate::image::probe_storage_full(&r)
        .map_err(|e| Error::io(e, "reading the file's start"))?;
    match format {
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
            inspect_descriptor_file(&r, file_size, policy, &mut rep)?;
        }
        Some(FileFormat::Vmdk4Sparse) => {
            rep.format = "vmdk".into();
            inspect_sparse(&r, file_size, policy, &mut rep)?;
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
    if let (Some(limit), Some(size)) = (policy.max_virtual_size, rep.virtual_size) {
        if size > limit {
            rep.add(
                "virtual-size-limit",
                format!("virtual size {size} bytes is over the limit of {limit} bytes"),
            );
        }
    }
    rep.bytes_read = r.read.load(Ordering::Relaxed);
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

/// A text descriptor: every extent it lists is another file.
fn inspect_descriptor_file(
    r: &Counted<'_>,
    file_size: u64,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) -> Result<()> {
    if file_size > MAX_DESCRIPTOR_SIZE as u64 {
        rep.add(
            "descriptor-too-large",
            format!(
                "a {file_size}-byte descriptor file (QEMU and this library read at most \
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
            rep.add(
                "external-extent",
                format!(
                    "the descriptor names {} extent file \"{f}\": the disk's data is in other \
                     files, which whoever opens it would open",
                    e.kind.keyword()
                ),
            );
        }
    }
    check_descriptor_common(&desc, &text, policy, rep);
    Ok(())
}

fn check_create_type(create_type: &str, policy: &InspectPolicy, rep: &mut InspectReport) {
    if !policy.allows(create_type) {
        rep.add(
            "create-type",
            format!(
                "createType \"{create_type}\" is not allowed (allowed: {})",
                policy.allowed_create_types.join(", ")
            ),
        );
    }
}

/// Rules for any descriptor, embedded or not: the backing file, and in strict mode the
/// line rules of OpenStack's format_inspector.
fn check_descriptor_common(
    desc: &Descriptor,
    text: &[u8],
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) {
    if let Some(p) = &desc.parent_file_name_hint {
        rep.add(
            "backing-file",
            format!("parentFileNameHint=\"{p}\": a backing file whoever opens it would open"),
        );
    } else if desc.has_parent() && policy.strict {
        rep.add(
            "backing-file",
            format!(
                "parentCID={:08x} says this is a delta disk of some parent",
                desc.parent_cid
            ),
        );
    }
    if policy.strict {
        strict_descriptor_lines(text, rep);
    }
}

/// OpenStack format_inspector's descriptor rules: ASCII only; each line a comment, blank,
/// a `ddb` entry, a `key=value` header field or an extent line; no `/` in extent lines;
/// at least one extent.
fn strict_descriptor_lines(text: &[u8], rep: &mut InspectReport) {
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let Ok(s) = std::str::from_utf8(&text[..end]) else {
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

/// One stretch of the file holding metadata, for the overlap checks.
#[derive(Debug, Clone)]
struct Region {
    start: u64,
    end: u64,
    what: String,
}

/// A hosted sparse (`KDMV`) file: monolithicSparse or streamOptimized when it is safe.
fn inspect_sparse(
    r: &Counted<'_>,
    file_size: u64,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) -> Result<()> {
    let head = r.bytes(0, SECTOR_SIZE)?;
    let mut h = match SparseHeader::parse(&head) {
        Ok(h) => h,
        Err(e) => {
            rep.add("bad-header", format!("sparse header: {e}"));
            return Ok(());
        }
    };
    let mut regions = vec![Region {
        start: 0,
        end: SECTOR_SIZE,
        what: "the header".into(),
    }];
    if h.gd_offset == GD_AT_END {
        // A stream: the footer near the end holds the real header (QEMU uses it whole).
        match read_footer(r, file_size)? {
            Err(why) => {
                rep.add("footer-missing", why);
                return Ok(());
            }
            Ok(f) => {
                let diffs = footer_differences(&h, &f);
                if !diffs.is_empty() {
                    rep.add(
                        "footer-mismatch",
                        format!(
                            "the stream footer disagrees with the header on {}; readers that \
                             trust the footer see another disk than those that trust the header",
                            diffs.join(", ")
                        ),
                    );
                }
                regions.push(Region {
                    start: file_size - 3 * SECTOR_SIZE,
                    end: file_size,
                    what: "the footer".into(),
                });
                h = f;
            }
        }
    }
    if let Err(e) = h.validate() {
        rep.add("bad-header", format!("sparse header: {e}"));
        return Ok(());
    }
    let capacity = h.capacity.saturating_mul(SECTOR_SIZE);
    rep.virtual_size = Some(capacity);
    if policy.strict && h.unclean_shutdown {
        rep.add(
            "unclean-shutdown",
            "the header says the image was not closed cleanly",
        );
    }

    // The embedded descriptor.
    let mut create_type = None;
    if h.desc_offset == 0 || h.desc_size == 0 {
        if policy.strict {
            rep.add(
                "no-descriptor",
                "a sparse file without an embedded descriptor",
            );
        }
        if h.capacity == 0 {
            rep.add("bad-header", "capacity 0 and no descriptor");
        }
    } else {
        let start = h.desc_offset.saturating_mul(SECTOR_SIZE);
        let len = h.desc_size.saturating_mul(SECTOR_SIZE);
        let end = start.saturating_add(len);
        if len > MAX_DESCRIPTOR_SIZE as u64 {
            rep.add(
                "descriptor-too-large",
                format!(
                    "the embedded descriptor is {len} bytes (QEMU and this library read at \
                     most {MAX_DESCRIPTOR_SIZE})"
                ),
            );
        } else if end > file_size {
            rep.add(
                "past-eof",
                format!(
                    "the embedded descriptor ({len} bytes at offset {start}) ends past the \
                     end of the {file_size}-byte file"
                ),
            );
        } else {
            regions.push(Region {
                start,
                end,
                what: "the embedded descriptor".into(),
            });
            let text = r.bytes(start, len)?;
            match Descriptor::parse(&text) {
                Err(e) => rep.add("bad-descriptor", format!("embedded descriptor: {e}")),
                Ok(desc) => {
                    create_type = Some(desc.create_type.clone());
                    check_embedded(&h, &desc, policy, rep);
                    check_descriptor_common(&desc, &text, policy, rep);
                }
            }
        }
    }
    let ct = create_type.unwrap_or_else(|| "monolithicSparse".into());
    check_create_type(&ct, policy, rep);
    if policy.strict {
        let stream_layout = h.compressed() && h.has_markers();
        let is_stream = ct.eq_ignore_ascii_case("streamOptimized");
        if stream_layout != is_stream || (h.compressed() != h.has_markers()) {
            rep.add(
                "flags-mismatch",
                format!(
                    "header flags (compressed: {}, markers: {}) do not fit createType \"{ct}\"",
                    h.compressed(),
                    h.has_markers()
                ),
            );
        }
    }
    rep.subformat = Some(ct);
    if h.capacity == 0 {
        return Ok(());
    }
    check_tables(r, file_size, &h, regions, rep)
}

/// The embedded descriptor against the header: QEMU follows the extents of an embedded
/// descriptor when the header's capacity is 0; VMware follows every extent it lists.
fn check_embedded(
    h: &SparseHeader,
    desc: &Descriptor,
    policy: &InspectPolicy,
    rep: &mut InspectReport,
) {
    let _ = policy;
    if h.capacity == 0 {
        rep.add(
            "capacity-zero-descriptor",
            format!(
                "the header's capacity is 0, so QEMU reads the embedded descriptor as a \
                 descriptor file and opens the {} extent file(s) it names",
                desc.extents.len()
            ),
        );
    }
    for (i, e) in desc.extents.iter().enumerate() {
        let external = i > 0 || e.kind != ExtentType::Sparse;
        match (&e.file, external) {
            (Some(f), true) => rep.add(
                "external-extent",
                format!(
                    "the embedded descriptor names a further {} extent \"{f}\": a file \
                     besides this one",
                    e.kind.keyword()
                ),
            ),
            (Some(f), false) if f.contains('/') || f.contains('\\') => rep.add(
                "external-extent",
                format!("the embedded descriptor's extent \"{f}\" names a path"),
            ),
            (None, true) => rep.add(
                "extent-layout",
                format!(
                    "the embedded descriptor lists a {} extent besides the sparse one",
                    e.kind.keyword()
                ),
            ),
            _ => {}
        }
    }
    if desc.extents.is_empty() {
        rep.add("extent-layout", "the embedded descriptor lists no extent");
    }
    let described = desc.total_sectors();
    if h.capacity != 0 && described != h.capacity {
        rep.add(
            "size-mismatch",
            format!(
                "the descriptor's extents add up to {described} sectors but the header's \
                 capacity is {} sectors",
                h.capacity
            ),
        );
    }
}

/// The footer of a stream (marker, header copy, end-of-stream marker in the last three
/// sectors), or why there is none.
fn read_footer(
    r: &Counted<'_>,
    file_size: u64,
) -> Result<std::result::Result<SparseHeader, String>> {
    if file_size < 4 * SECTOR_SIZE {
        return Ok(Err(format!(
            "the header says the grain directory is in a footer, but the {file_size}-byte \
             file is too short to have one"
        )));
    }
    let b = r.bytes(file_size - 3 * SECTOR_SIZE, 3 * SECTOR_SIZE)?;
    let marker = MetadataMarker::parse(&b[..512]);
    let eos = MetadataMarker::parse(&b[1024..]);
    if !matches!(marker, Some(m) if m.kind == MARKER_FOOTER)
        || !matches!(eos, Some(m) if m.kind == MARKER_EOS && m.num_sectors == 0)
    {
        return Ok(Err(
            "the header says the grain directory is in a footer, but the file does not end \
             with a footer marker, footer and end-of-stream marker (cut short?)"
                .into(),
        ));
    }
    Ok(match SparseHeader::parse(&b[512..1024]) {
        Ok(f) if f.gd_offset != GD_AT_END => Ok(f),
        Ok(_) => Err("the stream footer does not say where the grain directory is".into()),
        Err(e) => Err(format!("stream footer: {e}")),
    })
}

fn footer_differences(h: &SparseHeader, f: &SparseHeader) -> Vec<&'static str> {
    let mut d = Vec::new();
    if h.version != f.version {
        d.push("version");
    }
    if h.capacity != f.capacity {
        d.push("capacity");
    }
    if h.grain_size != f.grain_size {
        d.push("grain size");
    }
    if h.num_gtes_per_gt != f.num_gtes_per_gt {
        d.push("grain table size");
    }
    if h.desc_offset != f.desc_offset || h.desc_size != f.desc_size {
        d.push("descriptor location");
    }
    if h.compress_algorithm != f.compress_algorithm {
        d.push("compression");
    }
    d
}

/// The grain directories, a bounded sample of grain tables and the grains they point at:
/// inside the file, not overlapping each other or other metadata, no grain pointed at twice.
fn check_tables(
    r: &Counted<'_>,
    file_size: u64,
    h: &SparseHeader,
    mut regions: Vec<Region>,
    rep: &mut InspectReport,
) -> Result<()> {
    let entries = h.gd_entries();
    let gd_bytes = entries.saturating_mul(4);
    let gt_bytes = u64::from(h.num_gtes_per_gt) * 4;
    if gd_bytes > MAX_GD_BYTES {
        rep.add(
            "metadata-too-large",
            format!(
                "a {gd_bytes}-byte grain directory is more than this inspector reads \
                 ({MAX_GD_BYTES}); it cannot vouch for the image"
            ),
        );
        return Ok(());
    }
    let mut dirs = vec![("grain directory", h.gd_offset)];
    if h.rgd_offset != 0 && h.rgd_offset != GD_AT_END && h.rgd_offset != h.gd_offset {
        dirs.push(("redundant grain directory", h.rgd_offset));
    }
    let mut tables: Vec<(u64, &'static str)> = Vec::new();
    for (what, sector) in dirs {
        let start = sector.saturating_mul(SECTOR_SIZE);
        let end = start.saturating_add(gd_bytes);
        if sector == 0 {
            rep.add("bad-header", format!("the {what} is at offset 0"));
            continue;
        }
        if end > file_size {
            rep.add(
                "past-eof",
                format!(
                    "the {what} ({gd_bytes} bytes at offset {start}) ends past the end of the \
                     {file_size}-byte file"
                ),
            );
            continue;
        }
        regions.push(Region {
            start,
            end,
            what: format!("the {what}"),
        });
        let gd = r.bytes(start, gd_bytes)?;
        for (i, e) in gd.chunks_exact(4).enumerate() {
            let gt = u64::from(u32::from_le_bytes(e.try_into().unwrap()));
            if gt == 0 {
                continue;
            }
            let off = gt * SECTOR_SIZE;
            if off.saturating_add(gt_bytes) > file_size {
                rep.add(
                    "past-eof",
                    format!(
                        "{what} entry {i} points at a grain table at offset {off}, past the \
                         end of the {file_size}-byte file"
                    ),
                );
                continue;
            }
            regions.push(Region {
                start: off,
                end: off + gt_bytes,
                what: format!("grain table {i} of the {what}"),
            });
            if what == "grain directory" {
                tables.push((off, what));
            }
        }
    }
    rep.grain_tables = tables.len() as u64;
    check_overlaps(&mut regions, "metadata-overlap", rep);

    // A sample of the primary tables, spread evenly; the grains they point at.
    let n = tables.len();
    let picks: Vec<usize> = if n <= MAX_SAMPLED_TABLES {
        (0..n).collect()
    } else {
        (0..MAX_SAMPLED_TABLES)
            .map(|k| k * (n - 1) / (MAX_SAMPLED_TABLES - 1))
            .collect()
    };
    let grain_bytes = h.grain_size * SECTOR_SIZE;
    let compressed = h.compressed();
    let mut seen = HashSet::new();
    let mut grains: Vec<Region> = Vec::new();
    for k in picks {
        let (off, _) = tables[k];
        let gt = r.bytes(off, gt_bytes)?;
        rep.grain_tables_checked += 1;
        for (j, e) in gt.chunks_exact(4).enumerate() {
            let g = u64::from(u32::from_le_bytes(e.try_into().unwrap()));
            // 0: unallocated; 1: a zeroed grain (with the zero-grain flag, and harmless
            // without it: QEMU reads the sector-1 grain, i.e. the descriptor, only if the
            // flag is off; it is flagged as an overlap below then).
            if g == 0 || (g == 1 && h.zero_grain()) {
                continue;
            }
            rep.grains_allocated += 1;
            let start = g * SECTOR_SIZE;
            // A compressed grain's length is in its marker, which is not read: only its
            // start is checked.
            let end = if compressed {
                start + 1
            } else {
                start + grain_bytes
            };
            if end > file_size {
                rep.add(
                    "past-eof",
                    format!(
                        "grain table at offset {off}, entry {j}: a grain at offset {start} \
                         ends past the end of the {file_size}-byte file"
                    ),
                );
                continue;
            }
            if !seen.insert(g) {
                rep.add(
                    "grain-shared",
                    format!("grain at offset {start} is pointed at by two table entries"),
                );
                continue;
            }
            grains.push(Region {
                start,
                end,
                what: format!("the grain at offset {start}"),
            });
        }
    }
    // Grains against metadata (grains against grains are the shared case above, or an
    // overlap of two uncompressed grains).
    grains.extend(regions);
    check_overlaps(&mut grains, "grain-overlap", rep);
    Ok(())
}

/// Report every pair of regions that share bytes.
fn check_overlaps(regions: &mut [Region], code: &'static str, rep: &mut InspectReport) {
    regions.sort_by_key(|g| (g.start, g.end));
    let mut reach: Option<&Region> = None;
    for g in regions.iter() {
        if let Some(prev) = reach {
            if g.start < prev.end {
                rep.add(
                    code,
                    format!(
                        "{} (bytes {}..{}) overlaps {} (bytes {}..{})",
                        g.what, g.start, g.end, prev.what, prev.start, prev.end
                    ),
                );
            }
        }
        if reach.is_none_or(|p| g.end > p.end) {
            reach = Some(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use crate::{create, CreateOptions, Subformat};

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
        struct Counting(crate::FileStorage, AtomicU64);
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
            crate::FileStorage::open(&p, false).unwrap(),
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
