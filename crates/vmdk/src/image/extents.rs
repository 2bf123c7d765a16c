//! An image's extents: each line of a descriptor opened as a flat, zero or sparse extent
//! (files named by several lines opened once and shared), or a sparse file as the one
//! extent of its image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::open::{open_storage, read_head};
use super::{probe, DescriptorLocation, FileFormat, Image, OpenOptions, MAX_VIRTUAL_SIZE};
use crate::error::{Error, Result};
use crate::extent::ExtentBudget;
use crate::extent::ExtentFile;
use crate::extent::{Extent, ExtentKind, SparseExtent};
use crate::format::descriptor::{Descriptor, ExtentAccess, ExtentLine, ExtentType};
use crate::format::SECTOR_SIZE;
use crate::storage::lock::FileRole;
use crate::storage::{FileId, Storage};

/// An image whose one extent is the sparse file it was opened from.
pub(super) fn single_extent(
    path: &Path,
    storage: Arc<dyn Storage>,
    descriptor: Descriptor,
    desc_location: DescriptorLocation,
    format: FileFormat,
    sparse: SparseExtent,
    writable: bool,
) -> Image {
    let length = sparse.capacity();
    // The embedded extent line's name is ignored (see the caller), but its access is
    // not: VirtualBox, ovftool and vmdktool mark their stream files RDONLY, and `info`
    // and writes must agree with what the file says. NOACCESS would hide the data the
    // file itself holds, so only RDONLY is taken.
    let access = match &descriptor.extents[..] {
        [line] if line.access == ExtentAccess::ReadOnly => ExtentAccess::ReadOnly,
        _ => ExtentAccess::ReadWrite,
    };
    let keyword = match sparse.flavor() {
        crate::extent::SparseFlavor::Vmdk4 => ExtentType::Sparse,
        crate::extent::SparseFlavor::Cowd => ExtentType::VmfsSparse,
        crate::extent::SparseFlavor::SeSparse => ExtentType::SeSparse,
    };
    Image {
        path: path.to_path_buf(),
        descriptor,
        desc_location,
        format,
        extents: vec![Extent {
            start: 0,
            length,
            access,
            kind_keyword: keyword,
            kind: ExtentKind::Sparse(Arc::new(sparse)),
        }],
        size: length,
        backing: None,
        writable,
        storage,
        write_state: Default::default(),
        namespace: crate::storage::namespace::local(),
    }
}

/// An image whose extents are the lines of `descriptor`, each opened (see [`open_extent`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn from_descriptor(
    path: &Path,
    storage: Arc<dyn Storage>,
    descriptor: Descriptor,
    desc_location: DescriptorLocation,
    format: FileFormat,
    opts: &OpenOptions,
    writable: bool,
    budget: &ExtentBudget,
) -> Result<Image> {
    // Refuse an absurd size before opening anything.
    let total = descriptor
        .extents
        .iter()
        .try_fold(0u64, |t, l| {
            l.sectors.checked_mul(SECTOR_SIZE)?.checked_add(t)
        })
        .ok_or_else(|| Error::corrupt("extents add up to more than 2^64 bytes").with_path(path))?;
    if total > MAX_VIRTUAL_SIZE {
        return Err(Error::unsupported(format!(
            "extents add up to {total} bytes, more than the {MAX_VIRTUAL_SIZE} bytes \
             (8 EiB - 1 GiB) QEMU and NBD clients can address"
        ))
        .with_path(path));
    }
    let mut extents = Vec::with_capacity(descriptor.extents.len());
    let mut files = OpenedFiles {
        flat: HashMap::new(),
        sparse: HashMap::new(),
        budget,
    };
    let mut start = 0u64;
    for (i, line) in descriptor.extents.iter().enumerate() {
        let extent = open_extent(path, line, i, start, opts, writable, &mut files)
            .map_err(|e| e.with_path(path))?;
        start += extent.length;
        extents.push(extent);
    }
    if extents.is_empty() {
        return Err(Error::corrupt("descriptor lists no extents").with_path(path));
    }
    Ok(Image {
        path: path.to_path_buf(),
        descriptor,
        desc_location,
        format,
        extents,
        size: start,
        backing: None,
        writable,
        storage,
        write_state: Default::default(),
        namespace: crate::storage::namespace::local(),
    })
}

/// What the extents of one descriptor share while they are opened.
///
/// Many lines may name one file: FLAT lines for a partitioned device split into ranges, and
/// a hostile descriptor may repeat one sparse file thousands of times. Each file is opened
/// once (per writability) and shared, so descriptor lines cost no file descriptors, grain
/// directories or table cache of their own; a shared sparse extent also keeps one
/// allocator, so writes through two lines cannot hand out the same space twice.
struct OpenedFiles<'a> {
    /// Keyed by file and writability.
    flat: HashMap<(FileKey, bool), Arc<ExtentFile>>,
    /// Keyed by file, whether the line says seSparse, and writability.
    sparse: HashMap<(FileKey, bool, bool), Arc<SparseExtent>>,
    /// Directory memory and the grain-table cache, shared with the whole chain.
    budget: &'a ExtentBudget,
}

/// Which file a line names: its identity where the namespace knows one, so hard links and
/// other spellings of one file are opened once too (10,000 lines naming links to one file
/// would otherwise take 10,000 sets of lock bytes on one inode, and the kernel checks each
/// new lock against all of them: minutes of system time), else its resolved name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileKey {
    Id(FileId),
    Name(PathBuf),
}

fn open_extent(
    desc_path: &Path,
    line: &ExtentLine,
    index: usize,
    start: u64,
    opts: &OpenOptions,
    writable: bool,
    files: &mut OpenedFiles,
) -> Result<Extent> {
    let length = line.sectors.checked_mul(SECTOR_SIZE).ok_or_else(|| {
        Error::corrupt(format!("extent {index} size overflows")).with_path(desc_path)
    })?;
    let mk = |kind| Extent {
        start,
        length,
        access: line.access,
        kind_keyword: line.kind,
        kind,
    };
    if line.kind == ExtentType::Zero || line.access == ExtentAccess::NoAccess {
        return Ok(mk(ExtentKind::Zero));
    }
    let name = line.file.as_deref().ok_or_else(|| {
        Error::corrupt(format!("extent {index} has no file name")).with_path(desc_path)
    })?;
    let ns = opts.namespace();
    let epath = ns.resolve(desc_path, name, "extent file", &opts.path_policy())?;
    // A file that cannot be identified is opened below, which reports why.
    let key = match ns.identity(&epath) {
        Ok(Some(id)) => FileKey::Id(id),
        _ => FileKey::Name(epath.clone()),
    };
    let ext_writable = writable && line.access == ExtentAccess::ReadWrite;
    let is_flat = matches!(
        line.kind,
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRdm | ExtentType::VmfsRaw
    );
    let shared = is_flat
        .then(|| files.flat.get(&(key.clone(), ext_writable)).cloned())
        .flatten();
    let sparse_key = (key.clone(), line.kind == ExtentType::SeSparse, ext_writable);
    if let Some(sparse) = files.sparse.get(&sparse_key) {
        return Ok(mk(ExtentKind::Sparse(sparse.clone())));
    }
    // The whole extent must be addressable: reads add offsets inside it.
    let flat_offset = || {
        line.offset
            .checked_mul(SECTOR_SIZE)
            .filter(|o| o.checked_add(length).is_some())
            .ok_or_else(|| {
                Error::corrupt(format!("extent {index} offset overflows")).with_path(desc_path)
            })
    };
    if let Some(file) = shared {
        let offset = flat_offset()?;
        return Ok(mk(ExtentKind::Flat { file, offset }));
    }
    let role = if is_flat {
        FileRole::Data
    } else {
        FileRole::Metadata
    };
    let storage = open_storage(&epath, ext_writable, opts.allow_unsafe_paths, role, opts)?;
    let file = Arc::new(ExtentFile::new(&epath, storage.clone()));
    if is_flat {
        files.flat.insert((key, ext_writable), file.clone());
    }
    let budget = files.budget;
    match line.kind {
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRdm | ExtentType::VmfsRaw => {
            let offset = flat_offset()?;
            Ok(mk(ExtentKind::Flat { file, offset }))
        }
        ExtentType::Sparse | ExtentType::VmfsSparse | ExtentType::SeSparse => {
            let head = read_head(&*storage, &epath, 4096)?;
            let sparse = match probe(&head) {
                Some(FileFormat::Vmdk4Sparse) if line.kind != ExtentType::SeSparse => {
                    SparseExtent::open_vmdk4(file, &head, budget)?
                }
                Some(FileFormat::Cowd) if line.kind != ExtentType::SeSparse => {
                    SparseExtent::open_cowd(file, &head, budget)?
                }
                Some(FileFormat::SeSparse) if line.kind == ExtentType::SeSparse => {
                    SparseExtent::open_sesparse(file, &head, budget)?
                }
                _ => {
                    return Err(Error::corrupt(format!(
                        "extent file is not a {} extent",
                        line.kind.keyword()
                    ))
                    .with_path(&epath))
                }
            };
            let sparse = Arc::new(sparse);
            files.sparse.insert(sparse_key, sparse.clone());
            Ok(mk(ExtentKind::Sparse(sparse)))
        }
        ExtentType::Zero => unreachable!("handled above"),
    }
}
