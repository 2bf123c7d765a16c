//! Creating new images of every subformat qemu-img can create, with the descriptor VMware
//! expects.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::descriptor::{Descriptor, ExtentAccess, ExtentLine, ExtentType};
use crate::format::grain_entry::preallocated_directory;
use crate::format::layout::{self, hw_version, NewDescriptor};
use crate::format::sparse_header::SparseHeader;
use crate::format::SECTOR_SIZE;
use crate::storage::namespace::Namespace;
use crate::storage::{FileId, Storage};

/// Refuse to create (and so truncate) `path` in `ns` when it is one of the files in `spare`,
/// however it is named: a symlink or hard link to an input is the input.
pub(crate) fn refuse_to_overwrite(
    ns: &dyn Namespace,
    path: &Path,
    spare: &[FileId],
    what: &str,
) -> Result<()> {
    let id = ns.identity(path)?;
    if id.is_some_and(|id| spare.contains(&id)) {
        return Err(
            Error::invalid(format!("this file is {what}; refusing to overwrite it"))
                .with_path(path),
        );
    }
    Ok(())
}

/// The layout of a new image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Subformat {
    /// One sparse file with an embedded descriptor (qemu-img's default).
    #[default]
    MonolithicSparse,
    /// A descriptor plus one flat data file.
    MonolithicFlat,
    /// A descriptor plus sparse extents of at most 2 GiB each.
    TwoGbMaxExtentSparse,
    /// A descriptor plus flat extents of at most 2 GiB each.
    TwoGbMaxExtentFlat,
    /// One compressed, marker-carrying sparse file (VMware's layout, for vSphere import).
    StreamOptimized,
    /// ESX flat: a descriptor plus one flat file, `createType="vmfs"`.
    Vmfs,
}

impl Subformat {
    /// Parse a qemu-img `subformat=` value.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "monolithicSparse" => Subformat::MonolithicSparse,
            "monolithicFlat" => Subformat::MonolithicFlat,
            "twoGbMaxExtentSparse" => Subformat::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Subformat::TwoGbMaxExtentFlat,
            "streamOptimized" => Subformat::StreamOptimized,
            "vmfs" => Subformat::Vmfs,
            _ => return Err(Error::invalid(format!("unknown subformat: {s}"))),
        })
    }
    /// The `createType` written to the descriptor.
    pub fn create_type(self) -> &'static str {
        match self {
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::MonolithicFlat => "monolithicFlat",
            Subformat::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Subformat::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::Vmfs => "vmfs",
        }
    }
    /// Whether data lives in flat (preallocated-style) files.
    pub fn is_flat(self) -> bool {
        matches!(
            self,
            Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat | Subformat::Vmfs
        )
    }
}

pub use crate::format::layout::AdapterType;

/// Options for [`create`], mirroring qemu-img's vmdk creation options.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Layout.
    pub subformat: Subformat,
    /// Controller type.
    pub adapter_type: AdapterType,
    /// `ddb.virtualHWVersion` (qemu default "4"; "6" with compat6).
    pub hwversion: Option<String>,
    /// `ddb.toolsVersion` (qemu default "2147483647").
    pub toolsversion: Option<String>,
    /// VMDK version 6 compatibility (hwversion 6).
    pub compat6: bool,
    /// Set the zeroed-grain flag so zero writes cost no space.
    pub zeroed_grain: bool,
    /// Backing file (as written into `parentFileNameHint`, relative to the new image).
    pub backing_file: Option<String>,
    /// Open the backing file's own extents and backing files wherever they are (see
    /// [`crate::OpenOptions::allow_unsafe_paths`]). The backing file itself is the user's
    /// choice and is opened wherever it is.
    pub allow_unsafe_paths: bool,
    /// Directories the backing file's own extents and backing files may lie in (see
    /// [`crate::OpenOptions::allow_paths`]).
    pub allow_paths: Vec<std::path::PathBuf>,
    /// Deflate level for streamOptimized data written later (0-9 as zlib's; default
    /// [`DEFAULT_COMPRESSION_LEVEL`]).
    pub compression_level: u32,
    /// Where the new files go (host files by default); the backing file is opened there too.
    pub namespace: Option<Arc<dyn Namespace>>,
}

impl CreateOptions {
    /// The namespace new files are created in ([`CreateOptions::namespace`], or the
    /// library's [`default_namespace`](crate::ova::default_namespace)).
    pub fn namespace(&self) -> Arc<dyn Namespace> {
        self.namespace
            .clone()
            .unwrap_or_else(|| crate::ova::default_namespace())
    }
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            subformat: Subformat::MonolithicSparse,
            adapter_type: AdapterType::Ide,
            hwversion: None,
            toolsversion: None,
            compat6: false,
            zeroed_grain: false,
            backing_file: None,
            allow_unsafe_paths: false,
            allow_paths: Vec::new(),
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            namespace: None,
        }
    }
}

/// The deflate level of compressed grains unless the user picks one.
///
/// qemu-img compresses at zlib's level 6. libdeflate's level 5 already makes streams no
/// larger than that (measured on the benchmark disks of real files: 1 GiB disk 245.7 MB
/// against qemu-img's 247.4 MB; 4 GiB disk 686.8 MB against 690.1 MB; level 4 is larger than
/// qemu-img's on both) and costs 6-20% less CPU than libdeflate's level 6, so it is the
/// fastest level that keeps the output no larger than qemu-img's.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 5;

pub use crate::format::layout::{geometry, random_cid, EMBEDDED_DESC_SECTORS, SPLIT_SIZE};
pub use crate::format::sparse_header::{DEFAULT_GRAIN_SECTORS, DEFAULT_GT_ENTRIES};

/// The descriptor qemu-img would write for these options (plus a `ddb.uuid`), with the
/// given extent lines and parent (see `NewDescriptor`).
pub(crate) fn default_descriptor(
    opts: &CreateOptions,
    size: u64,
    extents: Vec<ExtentLine>,
    parent: Option<(String, u32)>,
) -> Result<Descriptor> {
    let hw = hw_version(opts.hwversion.as_deref(), opts.compat6)
        .map_err(|e| Error::invalid(e.to_string()))?;
    Ok(NewDescriptor {
        create_type: opts.subformat.create_type(),
        size,
        adapter: opts.adapter_type,
        hw_version: &hw,
        tools_version: opts.toolsversion.as_deref(),
        parent,
    }
    .build(extents))
}

/// The header of a new hosted sparse extent (see `layout::sparse_layout`).
pub(crate) fn sparse_layout(
    capacity: u64,
    zeroed_grain: bool,
    compress: bool,
    embed_desc: bool,
) -> Result<SparseHeader> {
    layout::sparse_layout(capacity, zeroed_grain, compress, embed_desc)
        .map_err(|e| Error::invalid(e.to_string()))
}

/// Write a new sparse extent file laid out by [`sparse_layout`], with `desc` embedded.
pub(crate) fn write_sparse_extent(
    ns: &dyn Namespace,
    path: &Path,
    header: &SparseHeader,
    desc: Option<&str>,
) -> Result<Arc<dyn Storage>> {
    let f = ns.create(path, true)?;
    let io = |e| Error::io(e, "writing new extent").with_path(path);
    f.write_at(&header.serialize(), 0).map_err(io)?;
    f.set_len(header.overhead * SECTOR_SIZE).map_err(io)?;
    if let Some(d) = desc {
        if d.len() as u64 > header.desc_size * SECTOR_SIZE {
            return Err(Error::invalid("descriptor too long to embed").with_path(path));
        }
        f.write_at(d.as_bytes(), header.desc_offset * SECTOR_SIZE)
            .map_err(io)?;
    }
    let gt_count = header.gd_entries();
    let gt_sectors = layout::table_sectors(header.num_gtes_per_gt as u64);
    let gd_sectors = layout::table_sectors(gt_count);
    for gd_start in [header.rgd_offset, header.gd_offset] {
        let gd = preallocated_directory(gt_count, gd_start + gd_sectors, gt_sectors)
            .map_err(|e| Error::invalid(e.to_string()))?;
        f.write_at(&gd, gd_start * SECTOR_SIZE).map_err(io)?;
    }
    Ok(f)
}

/// Create a flat extent file of `size` bytes (a hole until written).
pub(crate) fn flat_extent(ns: &dyn Namespace, path: &Path, size: u64) -> Result<Arc<dyn Storage>> {
    let f = ns.create(path, true)?;
    f.set_len(size)
        .map_err(|e| Error::io(e, "could not resize file").with_path(path))?;
    Ok(f)
}

/// Create a new, empty image of `size` bytes (rounded up to 512) at `path`.
///
/// A backing file is named as the user gave it (`parentFileNameHint`), relative to the new
/// image's directory, and opened to read its CID wherever it is; whether the new image can
/// later be opened with its backing depends on the path gate then (see [`crate::storage::paths`]).
/// Refuses to overwrite any file the backing chain uses.
pub fn create(path: &Path, size: u64, opts: &CreateOptions) -> Result<()> {
    create_sparing(path, size, opts, &[])
}

/// [`create`], refusing also to overwrite or truncate any of the files `spare` (typically
/// the files of the image being converted into the new one).
pub(crate) fn create_sparing(
    path: &Path,
    size: u64,
    opts: &CreateOptions,
    spare: &[FileId],
) -> Result<()> {
    let size = size
        .checked_next_multiple_of(SECTOR_SIZE)
        .filter(|s| *s <= crate::format::MAX_VIRTUAL_SIZE)
        .ok_or_else(|| {
            Error::invalid(format!(
                "image size too large (at most {} bytes, what QEMU and NBD clients can address)",
                crate::format::MAX_VIRTUAL_SIZE
            ))
        })?;
    let sub = opts.subformat;
    // Named after the image, as qemu-img names it ("qemu-img: t.vmdk: Flat image ...").
    if sub.is_flat() && opts.backing_file.is_some() {
        return Err(Error::invalid("Flat image can't have backing file").with_path(path));
    }
    if sub.is_flat() && opts.zeroed_grain {
        return Err(Error::invalid("Flat image can't enable zeroed grain").with_path(path));
    }
    // Validate option combinations before touching the file system.
    default_descriptor(opts, size, vec![], None)?;
    let ns = opts.namespace();
    let ns = &*ns;
    let parent = match &opts.backing_file {
        None => None,
        Some(b) => {
            let bpath = super::create_options::backing_path(path, b)?;
            let open = super::create_options::backing_open_options(opts);
            let parent = open.open(&bpath).map_err(|e| {
                Error::new(e.kind(), "could not open backing file")
                    .with_path(path)
                    .with_source(e)
            })?;
            let mut spare = spare.to_vec();
            spare.extend(parent.file_ids());
            refuse_to_overwrite(ns, path, &spare, "the backing file (or one of its files)")?;
            Some((b.clone(), parent.descriptor().cid))
        }
    };
    refuse_to_overwrite(ns, path, spare, "the source image (or one of its files)")?;
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::invalid("image path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let (stem, ext) = match file_name.rfind('.') {
        Some(i) if i > 0 => (&file_name[..i], &file_name[i..]),
        _ => (&file_name[..], ""),
    };
    let sibling = |name: &str| path.with_file_name(name);
    let line = |sectors: u64, kind: ExtentType, file: &str| ExtentLine {
        access: ExtentAccess::ReadWrite,
        sectors,
        kind,
        file: Some(file.to_string()),
        offset: 0,
        extra: vec![],
    };
    match sub {
        Subformat::MonolithicSparse | Subformat::StreamOptimized => {
            let compress = sub == Subformat::StreamOptimized;
            let header = sparse_layout(size, opts.zeroed_grain, compress, true)?;
            let desc = default_descriptor(
                opts,
                size,
                vec![line(size / SECTOR_SIZE, ExtentType::Sparse, &file_name)],
                parent,
            )?;
            let f = write_sparse_extent(ns, path, &header, Some(&desc.serialize()))?;
            sync(&*f, path)
        }
        _ => {
            let (kind, split) = match sub {
                Subformat::MonolithicFlat => (ExtentType::Flat, false),
                Subformat::Vmfs => (ExtentType::Vmfs, false),
                Subformat::TwoGbMaxExtentFlat => (ExtentType::Flat, true),
                _ => (ExtentType::Sparse, true),
            };
            let mut lines = Vec::new();
            let mut done = 0u64;
            let mut idx = 1;
            while done < size || (size == 0 && idx == 1) {
                let cur = if split {
                    (size - done).min(SPLIT_SIZE)
                } else {
                    size - done
                };
                let name = match (split, kind) {
                    (false, _) => format!("{stem}-flat{ext}"),
                    (true, ExtentType::Flat) => format!("{stem}-f{idx:03}{ext}"),
                    _ => format!("{stem}-s{idx:03}{ext}"),
                };
                refuse_to_overwrite(ns, &sibling(&name), spare, "a file of the source image")?;
                let f = if kind == ExtentType::Sparse {
                    let h = sparse_layout(cur, opts.zeroed_grain, false, false)?;
                    write_sparse_extent(ns, &sibling(&name), &h, None)?
                } else {
                    flat_extent(ns, &sibling(&name), cur)?
                };
                // Durable before the descriptor names it.
                sync(&*f, &sibling(&name))?;
                lines.push(line(cur / SECTOR_SIZE, kind, &name));
                done += cur;
                idx += 1;
                if size == 0 {
                    break;
                }
            }
            let desc = default_descriptor(opts, size, lines, parent)?;
            let f = ns.create(path, true)?;
            f.write_at(desc.serialize().as_bytes(), 0)
                .map_err(|e| Error::io(e, "writing descriptor").with_path(path))?;
            sync(&*f, path)
        }
    }
}

/// Flush a new file: an image is durable when `create` returns (as qemu-img's, which
/// flushes when it closes the image), its extents before the descriptor that names them.
fn sync(f: &dyn Storage, path: &Path) -> Result<()> {
    f.flush()
        .map_err(|e| Error::io(e, "flushing the new image").with_path(path))
}
