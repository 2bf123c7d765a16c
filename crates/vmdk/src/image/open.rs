//! Opening an image, in named steps per layer of the chain: open the file (its identity
//! checked against the chain so far, its locks taken), probe what it is, attach its extents
//! (from its descriptor, embedded or not, or as the one bare sparse extent it is), check the
//! size, then open and attach its backing file and check the parent's CID.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use super::descriptor::{read_descriptor_file, read_embedded_descriptor, synthesized_descriptor};
use super::extents::{from_descriptor, single_extent};
use super::{
    foreign_format_error, probe, probe_storage, DescriptorLocation, FileFormat, Image, OpenOptions,
    MAX_DIRECTORY_MEMORY, MAX_VIRTUAL_SIZE,
};
use crate::error::{Error, ErrorKind, Result};
use crate::extent::ExtentBudget;
use crate::extent::ExtentFile;
use crate::extent::SparseExtent;
use crate::format::descriptor::{ExtentType, CID_NONE};
use crate::format::sparse_header::SparseHeader;
use crate::storage::lock::FileRole;
use crate::storage::namespace::{Namespace, OpenMode};
use crate::storage::{FileId, Storage};

impl Image {
    /// Open `path` read-only with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Open `path` with `opts`.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        if opts.writable {
            opts.refuse_force_share(path.as_ref())?;
        }
        let mut chain = ChainOpener {
            opts,
            ns: opts.namespace(),
            visited: HashSet::new(),
            budget: ExtentBudget::new(opts.grain_table_cache_bytes, MAX_DIRECTORY_MEMORY),
        };
        chain.open_layer(path.as_ref(), opts.writable, 0)
    }
}

/// What the layers of one chain share while they are opened.
struct ChainOpener<'a> {
    opts: &'a OpenOptions,
    /// Where every file of the chain is opened and every name in it resolved.
    ns: Arc<dyn Namespace>,
    /// The files of the chain so far: one met again makes the chain cyclic.
    visited: HashSet<FileId>,
    /// Directory memory and the grain-table cache, for the whole chain together.
    budget: ExtentBudget,
}

impl ChainOpener<'_> {
    /// Open the image at `path`, `depth` layers below the one the caller named, and
    /// (unless the options say not to) its backing chain.
    fn open_layer(&mut self, path: &Path, writable: bool, depth: u32) -> Result<Image> {
        let storage = self.open_file(path, writable, depth)?;
        let (format, head) = probe_vmdk(&*storage, path)?;
        let mut image = self.attach_extents(path, storage, format, &head, writable)?;
        image.check_writable_open()?;
        check_virtual_size(&image, path)?;
        image.write_state.durable = self.opts.durable;
        image.namespace = self.ns.clone();
        if self.opts.open_backing {
            self.attach_backing(&mut image, path, depth)?;
        }
        Ok(image)
    }

    /// Open the layer's own file (its descriptor or its one sparse file), refusing a file
    /// already in the chain before anything is locked.
    fn open_file(&mut self, path: &Path, writable: bool, depth: u32) -> Result<Arc<dyn Storage>> {
        let id = self.ns.identity(path)?.ok_or_else(|| {
            Error::io(
                // The OS's own error (ENOENT), so messages and errno match a failed open.
                std::io::Error::from_raw_os_error(libc::ENOENT),
                "cannot open",
            )
            .with_path(path)
        })?;
        if !self.visited.insert(id) {
            return Err(Error::new(
                ErrorKind::BackingChain,
                "backing chain is cyclic (this file is its own ancestor)",
            )
            .with_path(path));
        }
        open_storage(
            path,
            writable,
            depth > 0 && self.opts.allow_unsafe_paths,
            FileRole::Metadata,
            self.opts,
        )
    }

    /// The layer's extents: a descriptor file's lines, a sparse file's embedded descriptor
    /// (or, with none, the file itself as the one extent), or a bare COWD/seSparse file.
    fn attach_extents(
        &self,
        path: &Path,
        storage: Arc<dyn Storage>,
        format: FileFormat,
        head: &[u8],
        writable: bool,
    ) -> Result<Image> {
        let (opts, budget) = (self.opts, &self.budget);
        Ok(match format {
            FileFormat::Descriptor => {
                let descriptor = read_descriptor_file(&*storage, path)?;
                from_descriptor(
                    path,
                    storage,
                    descriptor,
                    DescriptorLocation::File,
                    format,
                    opts,
                    writable,
                    budget,
                )?
            }
            FileFormat::Vmdk4Sparse => {
                let header = SparseHeader::parse(head)
                    .map_err(|m| Error::corrupt(m.to_string()).with_path(path))?;
                let embedded = read_embedded_descriptor(&*storage, path, &header)?;
                if header.capacity == 0 {
                    // A KDMV header with no capacity is just a container for a descriptor
                    // that names the real extents (seen from ESX tools).
                    let Some((descriptor, loc)) = embedded else {
                        return Err(Error::corrupt(
                            "sparse header has zero capacity and no descriptor",
                        )
                        .with_path(path));
                    };
                    from_descriptor(
                        path, storage, descriptor, loc, format, opts, writable, budget,
                    )?
                } else {
                    let file = Arc::new(ExtentFile::new(path, storage.clone()));
                    let sparse = SparseExtent::open_vmdk4(file, head, budget)
                        .map_err(|e| e.with_path(path))?;
                    let (descriptor, loc) = match embedded {
                        Some(d) => d,
                        None => (
                            synthesized_descriptor(
                                if sparse.is_compressed() {
                                    "streamOptimized"
                                } else {
                                    "monolithicSparse"
                                },
                                sparse.capacity(),
                                ExtentType::Sparse,
                                path,
                            ),
                            DescriptorLocation::Synthesized,
                        ),
                    };
                    // The embedded descriptor names this very file; people rename files, so
                    // the name in it is ignored and the file itself is the one extent.
                    single_extent(path, storage, descriptor, loc, format, sparse, writable)
                }
            }
            FileFormat::Cowd | FileFormat::SeSparse => {
                let file = Arc::new(ExtentFile::new(path, storage.clone()));
                let (sparse, ct, kw) = if format == FileFormat::Cowd {
                    (
                        SparseExtent::open_cowd(file, head, budget)
                            .map_err(|e| e.with_path(path))?,
                        "vmfsSparse",
                        ExtentType::VmfsSparse,
                    )
                } else {
                    (
                        SparseExtent::open_sesparse(file, head, budget)
                            .map_err(|e| e.with_path(path))?,
                        "seSparse",
                        ExtentType::SeSparse,
                    )
                };
                let descriptor = synthesized_descriptor(ct, sparse.capacity(), kw, path);
                single_extent(
                    path,
                    storage,
                    descriptor,
                    DescriptorLocation::Synthesized,
                    format,
                    sparse,
                    writable,
                )
            }
            FileFormat::Foreign(_) => unreachable!("refused by probe_vmdk"),
        })
    }

    /// Follow the descriptor's `parentFileNameHint`, if any, open the parent read-only and
    /// check that it is the parent this image was made on.
    fn attach_backing(&mut self, image: &mut Image, path: &Path, depth: u32) -> Result<()> {
        let Some(hint) = image.descriptor.parent_file_name_hint.clone() else {
            return Ok(());
        };
        if depth + 1 >= self.opts.max_chain_depth {
            return Err(Error::new(
                ErrorKind::BackingChain,
                format!(
                    "backing chain deeper than {} images",
                    self.opts.max_chain_depth
                ),
            )
            .with_path(path));
        }
        let bpath = self
            .ns
            .resolve(path, &hint, "backing file", &self.opts.path_policy())?;
        let backing = self.open_layer(&bpath, false, depth + 1).map_err(|e| {
            if e.kind() == ErrorKind::Io && !self.ns.exists(&bpath) {
                Error::new(
                    ErrorKind::BackingChain,
                    format!("backing file \"{hint}\" not found"),
                )
                .with_path(path)
            } else {
                e
            }
        })?;
        check_cid(image, &backing, &bpath, path, self.opts)?;
        image.backing = Some(Box::new(backing));
        Ok(())
    }
}

/// What the file is, from its first 4 KiB (returned too: the sparse headers are in it).
/// Anything but a VMDK kind is refused, naming another image format when it is one.
fn probe_vmdk(storage: &dyn Storage, path: &Path) -> Result<(FileFormat, Vec<u8>)> {
    let head = read_head(storage, path, 4096)?;
    match probe(&head) {
        Some(f) if f.is_vmdk() => Ok((f, head)),
        _ => {
            let probed = probe_storage(storage)
                .map_err(|e| Error::io(e, "reading header").with_path(path))?;
            Err(match probed {
                Some(FileFormat::Foreign(f)) => foreign_format_error(path, f, "VMDK"),
                _ => Error::new(
                    ErrorKind::NotVmdk,
                    "not a VMDK image (no KDMV/COWD/seSparse magic and no descriptor)",
                )
                .with_path(path),
            })
        }
    }
}

/// Refuse a virtual disk larger than QEMU and NBD clients can address.
fn check_virtual_size(image: &Image, path: &Path) -> Result<()> {
    if image.size > MAX_VIRTUAL_SIZE {
        return Err(Error::unsupported(format!(
            "virtual size {} bytes is larger than the {} bytes (8 EiB - 1 GiB) QEMU and \
             NBD clients can address",
            image.size, MAX_VIRTUAL_SIZE
        ))
        .with_path(path));
    }
    Ok(())
}

/// Refuse a parent whose `CID` is not the child's `parentCID` (unless told to ignore it):
/// the parent changed after the child was made, so the child's grains no longer fit it.
fn check_cid(
    image: &Image,
    backing: &Image,
    bpath: &Path,
    path: &Path,
    opts: &OpenOptions,
) -> Result<()> {
    let pcid = image.descriptor.parent_cid;
    if pcid != CID_NONE && pcid != backing.descriptor.cid && !opts.ignore_cid_mismatch {
        return Err(Error::new(
            ErrorKind::CidMismatch,
            format!(
                "parentCID {:08x} does not match CID {:08x} of backing file '{}': \
                 the parent changed after this image was made",
                pcid,
                backing.descriptor.cid,
                bpath.display()
            ),
        )
        .with_path(path));
    }
    Ok(())
}

/// Open one file of an image through the namespace. `role` decides which QEMU locks it
/// gets.
pub(super) fn open_storage(
    path: &Path,
    writable: bool,
    allow_devices: bool,
    role: FileRole,
    opts: &OpenOptions,
) -> Result<Arc<dyn Storage>> {
    opts.namespace().open(
        path,
        OpenMode {
            writable,
            lock: opts.lock_request(role, writable),
            allow_devices,
        },
    )
}

/// The first `n` bytes of a file (fewer if it is shorter).
pub(super) fn read_head(storage: &dyn Storage, path: &Path, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let got = storage
        .read_up_to(&mut buf, 0)
        .map_err(|e| Error::io(e, "reading header").with_path(path))?;
    buf.truncate(got);
    Ok(buf)
}
