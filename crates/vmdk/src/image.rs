//! Opening an image: probing what a file is, following its descriptor to its extents and its
//! backing chain, and answering reads and mapping queries over the whole virtual disk.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::extent::budget::ExtentBudget;
use crate::extent::{Extent, ExtentKind, SparseExtent};
use crate::format::cowd_header::COWD_MAGIC;
use crate::format::descriptor::{
    Descriptor, ExtentAccess, ExtentLine, ExtentType, CID_NONE, MAX_DESCRIPTOR_SIZE,
};
use crate::format::foreign::{self, ForeignFormat};
use crate::format::sesparse_header;
use crate::format::sparse_header::{SparseHeader, SPARSE_MAGIC};
use crate::format::SECTOR_SIZE;
use crate::lock::{FileRole, LockRequest};
use crate::map::{ExtentFile, MapBuilder, MapEntry, MapTarget};
use crate::namespace::{Namespace, OpenMode};
use crate::paths::PathPolicy;
use crate::storage::{FileId, Storage};

/// Most memory the grain directories of an image and its backing chain may take together
/// (checked before each directory is allocated). 512 MiB is 128M four-byte entries: 4 PiB
/// of disk at 64 KiB grains, hundreds of times VMware's largest (62 TiB, 8 MiB with the
/// redundant copy), while leaving room under a 1 GiB address-space limit.
pub const MAX_DIRECTORY_MEMORY: u64 = 512 << 20;

pub use crate::format::MAX_VIRTUAL_SIZE;

/// Deepest backing chain we follow by default.
pub const DEFAULT_MAX_CHAIN_DEPTH: u32 = 64;

/// How to open an image.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open for writing (backing files are always opened read-only).
    pub writable: bool,
    /// Allow extent and backing files anywhere (outside the image's directory and every
    /// allowed directory) and device files. Off by default: only for trusted images.
    pub allow_unsafe_paths: bool,
    /// Directories, besides the image's own, whose files (and their subdirectories' files)
    /// an image may name as extents or backing files. The CLI fills this from
    /// `--allow-path` and `VMDK_ALLOW_PATHS` ([`PathPolicy::dirs_from_env`]).
    pub allow_paths: Vec<PathBuf>,
    /// Take QEMU-compatible image locks on every file the image uses (see [`crate::lock`]),
    /// so a `vmdk` and a QEMU process never write one image at once. On by default; turn it
    /// off only when the caller excludes other users itself.
    pub locking: bool,
    /// Open read-only without excluding writers (qemu-img's `-U`/`--force-share`): the
    /// image may change while it is read. Refused together with `writable`.
    pub force_share: bool,
    /// Open a child even when its `parentCID` differs from its parent's `CID`.
    pub ignore_cid_mismatch: bool,
    /// Follow `parentFileNameHint` to open the backing chain.
    pub open_backing: bool,
    /// Deepest backing chain accepted.
    pub max_chain_depth: u32,
    /// Bytes of grain tables cached, for the image and its backing chain together
    /// (shared by all their sparse extents, however many).
    pub grain_table_cache_bytes: usize,
    /// Durable writes: flush data to stable storage before the grain-table entry that points
    /// at it is written, so a power cut can never leave a table pointing at unwritten data.
    pub durable: bool,
    /// Where the image's files are: host files by default ([`crate::namespace::default`]); memory,
    /// an archive or an object store otherwise. Every file of the image and its backing
    /// chain is opened through it, and names inside the image are resolved by it.
    pub namespace: Option<Arc<dyn Namespace>>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            allow_unsafe_paths: false,
            allow_paths: Vec::new(),
            locking: true,
            force_share: false,
            ignore_cid_mismatch: false,
            open_backing: true,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
            grain_table_cache_bytes: crate::extent::grain_table::DEFAULT_CACHE_BYTES,
            durable: false,
            namespace: None,
        }
    }
}

impl OpenOptions {
    /// Default options (read-only, safe paths, CID checked).
    pub fn new() -> Self {
        Self::default()
    }
    /// Set [`OpenOptions::writable`].
    pub fn writable(mut self, v: bool) -> Self {
        self.writable = v;
        self
    }
    /// Set [`OpenOptions::allow_unsafe_paths`].
    pub fn allow_unsafe_paths(mut self, v: bool) -> Self {
        self.allow_unsafe_paths = v;
        self
    }
    /// Add a directory to [`OpenOptions::allow_paths`].
    pub fn allow_path(mut self, dir: impl Into<PathBuf>) -> Self {
        self.allow_paths.push(dir.into());
        self
    }
    /// Set [`OpenOptions::locking`].
    pub fn locking(mut self, v: bool) -> Self {
        self.locking = v;
        self
    }
    /// Set [`OpenOptions::force_share`].
    pub fn force_share(mut self, v: bool) -> Self {
        self.force_share = v;
        self
    }
    /// The path gate these options describe.
    pub fn path_policy(&self) -> PathPolicy {
        PathPolicy {
            allow_unsafe: self.allow_unsafe_paths,
            allowed_dirs: self.allow_paths.clone(),
        }
    }
    /// The namespace files are opened in ([`OpenOptions::namespace`], or host files).
    pub fn namespace(&self) -> Arc<dyn Namespace> {
        self.namespace
            .clone()
            .unwrap_or_else(crate::namespace::default)
    }
    /// Set [`OpenOptions::namespace`].
    pub fn in_namespace(mut self, ns: Arc<dyn Namespace>) -> Self {
        self.namespace = Some(ns);
        self
    }
    /// The locks to take on a file of `role` opened `writable`, if locking is on.
    fn lock_request(&self, role: FileRole, writable: bool) -> Option<LockRequest> {
        self.locking
            .then(|| LockRequest::for_open(role, writable, self.force_share))
    }
    /// Set [`OpenOptions::ignore_cid_mismatch`].
    pub fn ignore_cid_mismatch(mut self, v: bool) -> Self {
        self.ignore_cid_mismatch = v;
        self
    }
    /// Set [`OpenOptions::open_backing`].
    pub fn open_backing(mut self, v: bool) -> Self {
        self.open_backing = v;
        self
    }
    /// Set [`OpenOptions::durable`].
    pub fn durable(mut self, v: bool) -> Self {
        self.durable = v;
        self
    }
    /// Open `path` with these options.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Image> {
        Image::open_with(path, self)
    }
}

/// Where an image's descriptor text lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorLocation {
    /// The image file is the descriptor.
    File,
    /// Embedded in the (sparse) image file at this byte offset, with room for this many bytes.
    Embedded {
        /// Byte offset.
        offset: u64,
        /// Bytes reserved.
        capacity: u64,
    },
    /// No descriptor on disk (a bare COWD/seSparse/headerless sparse extent); one was made up.
    Synthesized,
}

/// What kind of file was probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A text descriptor.
    Descriptor,
    /// A VMDK4 (`KDMV`) sparse extent.
    Vmdk4Sparse,
    /// An ESX `COWD` sparse extent.
    Cowd,
    /// An seSparse extent.
    SeSparse,
    /// An image of another format (qcow2, VHD, ...), which this library does not read.
    Foreign(ForeignFormat),
}

impl FileFormat {
    /// Whether this is one of the VMDK file kinds.
    pub fn is_vmdk(self) -> bool {
        !matches!(self, FileFormat::Foreign(_))
    }
}

/// Look at the first bytes of a file and say what it is, if any format we know marks its
/// start: a VMDK file, or another image format's header. Content decides, never the file
/// name. Formats marked only at the end of the file need [`probe_storage`].
pub fn probe(head: &[u8]) -> Option<FileFormat> {
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == SPARSE_MAGIC {
            return Some(FileFormat::Vmdk4Sparse);
        }
        if magic == COWD_MAGIC {
            return Some(FileFormat::Cowd);
        }
    }
    if sesparse_header::is_sesparse(head) {
        return Some(FileFormat::SeSparse);
    }
    if Descriptor::probe(head) {
        return Some(FileFormat::Descriptor);
    }
    foreign::probe_head(head).map(FileFormat::Foreign)
}

/// What an open file holds: [`probe`] over its start, then the trailers of formats that
/// mark their end (fixed VHD, DMG). `None` means no known format: a raw disk.
pub fn probe_storage(storage: &dyn Storage) -> std::io::Result<Option<FileFormat>> {
    Ok(probe_storage_full(storage)?.0)
}

/// [`probe_storage`], also returning the head and tail it read (for `info`'s sizes).
pub(crate) fn probe_storage_full(
    storage: &dyn Storage,
) -> std::io::Result<(Option<FileFormat>, Vec<u8>, Vec<u8>)> {
    let mut head = vec![0u8; foreign::HEAD_BYTES];
    let n = storage.read_up_to(&mut head, 0)?;
    head.truncate(n);
    let len = storage.len()?;
    let tail_len = len.min(foreign::TAIL_BYTES as u64);
    let mut tail = vec![0u8; tail_len as usize];
    let n = storage.read_up_to(&mut tail, len - tail_len)?;
    tail.truncate(n);
    let format = probe(&head).or_else(|| foreign::probe_tail(&tail).map(FileFormat::Foreign));
    Ok((format, head, tail))
}

/// What the host file at `path` is, as [`probe_storage`] says; `None` for a raw disk.
pub fn probe_path(path: &Path) -> Result<Option<FileFormat>> {
    probe_in(&crate::namespace::RouterNamespace, path)
}

/// What the file `name` of `ns` is, as [`probe_storage`] says; `None` for a raw disk. The
/// file is opened without locks (probing reads two small pieces and keeps nothing), and may
/// be a device: the user named it, and a raw disk is a legitimate source.
pub fn probe_in(ns: &dyn Namespace, name: &Path) -> Result<Option<FileFormat>> {
    let mode = OpenMode {
        allow_devices: true,
        ..OpenMode::read_only()
    };
    let s = ns.open(name, mode)?;
    probe_storage(&*s).map_err(|e| Error::io(e, "reading header").with_path(name))
}

/// The virtual size a foreign image's header records, if it is in a fixed field.
pub fn foreign_virtual_size(path: &Path, format: ForeignFormat) -> Option<u64> {
    let s = crate::namespace::RouterNamespace
        .open(path, OpenMode::read_only())
        .ok()?;
    foreign_virtual_size_of(&*s, format)
}

/// [`foreign_virtual_size`] of an open file.
pub fn foreign_virtual_size_of(storage: &dyn Storage, format: ForeignFormat) -> Option<u64> {
    let (_, head, tail) = probe_storage_full(storage).ok()?;
    foreign::virtual_size(format, &head, &tail)
}

/// The error for a file that is an image of another format.
pub fn foreign_format_error(path: &Path, format: ForeignFormat) -> Error {
    Error::new(
        ErrorKind::ForeignFormat,
        format!(
            "this is a {} image, not VMDK; vmdk reads VMDK and raw images",
            format.description()
        ),
    )
    .with_path(path)
}

/// An open VMDK image: its descriptor, its extents and its backing chain.
///
/// `Image` is `Send + Sync`: share it (e.g. in an `Arc`) and read from many threads at once.
#[derive(Debug)]
pub struct Image {
    pub(crate) path: PathBuf,
    pub(crate) descriptor: Descriptor,
    pub(crate) desc_location: DescriptorLocation,
    pub(crate) format: FileFormat,
    pub(crate) extents: Vec<Extent>,
    pub(crate) size: u64,
    pub(crate) backing: Option<Box<Image>>,
    pub(crate) writable: bool,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) write_state: crate::write::WriteState,
    /// Where this image's files are (new extents of a resize go there too).
    pub(crate) namespace: Arc<dyn Namespace>,
}

/// Open one file of an image through the namespace. `role` decides which QEMU locks it
/// gets.
fn open_storage(
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

fn read_head(storage: &dyn Storage, path: &Path, n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let got = storage
        .read_up_to(&mut buf, 0)
        .map_err(|e| Error::io(e, "reading header").with_path(path))?;
    buf.truncate(got);
    Ok(buf)
}

impl Image {
    /// Open `path` read-only with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        Self::open_with(path, &OpenOptions::default())
    }

    /// Open `path` with `opts`.
    pub fn open_with(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Image> {
        if opts.force_share && opts.writable {
            return Err(
                Error::invalid("force-share=on can only be used with read-only images")
                    .with_path(path.as_ref()),
            );
        }
        let mut visited = HashSet::new();
        let budget = ExtentBudget::new(opts.grain_table_cache_bytes, MAX_DIRECTORY_MEMORY);
        Self::open_layer(path.as_ref(), opts, opts.writable, 0, &mut visited, &budget)
    }

    fn open_layer(
        path: &Path,
        opts: &OpenOptions,
        writable: bool,
        depth: u32,
        visited: &mut HashSet<FileId>,
        budget: &ExtentBudget,
    ) -> Result<Image> {
        let ns = opts.namespace();
        let id = ns.identity(path)?.ok_or_else(|| {
            Error::io(
                // The OS's own error (ENOENT), so messages and errno match a failed open.
                std::io::Error::from_raw_os_error(libc::ENOENT),
                "cannot open",
            )
            .with_path(path)
        })?;
        if !visited.insert(id) {
            return Err(Error::new(
                ErrorKind::BackingChain,
                "backing chain is cyclic (this file is its own ancestor)",
            )
            .with_path(path));
        }
        let storage = open_storage(
            path,
            writable,
            depth > 0 && opts.allow_unsafe_paths,
            FileRole::Metadata,
            opts,
        )?;
        let head = read_head(&*storage, path, 4096)?;
        let format = match probe(&head) {
            Some(f) if f.is_vmdk() => f,
            _ => {
                let probed = probe_storage(&*storage)
                    .map_err(|e| Error::io(e, "reading header").with_path(path))?;
                return Err(match probed {
                    Some(FileFormat::Foreign(f)) => foreign_format_error(path, f),
                    _ => Error::new(
                        ErrorKind::NotVmdk,
                        "not a VMDK image (no KDMV/COWD/seSparse magic and no descriptor)",
                    )
                    .with_path(path),
                });
            }
        };
        let mut image = match format {
            FileFormat::Descriptor => {
                let len = storage
                    .len()
                    .map_err(|e| Error::io(e, "getting file size").with_path(path))?;
                if len > MAX_DESCRIPTOR_SIZE as u64 {
                    return Err(Error::corrupt(format!(
                        "descriptor file is {len} bytes (at most {MAX_DESCRIPTOR_SIZE})"
                    ))
                    .with_path(path));
                }
                let text = read_head(&*storage, path, len as usize)?;
                let descriptor = parse_descriptor(&text, path)?;
                Self::from_descriptor(
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
                let header =
                    SparseHeader::parse(&head).map_err(|m| Error::corrupt(m).with_path(path))?;
                let embedded = Self::read_embedded_descriptor(&*storage, path, &header)?;
                if header.capacity == 0 {
                    // A KDMV header with no capacity is just a container for a descriptor
                    // that names the real extents (seen from ESX tools).
                    let Some((descriptor, loc)) = embedded else {
                        return Err(Error::corrupt(
                            "sparse header has zero capacity and no descriptor",
                        )
                        .with_path(path));
                    };
                    Self::from_descriptor(
                        path, storage, descriptor, loc, format, opts, writable, budget,
                    )?
                } else {
                    let file = Arc::new(ExtentFile::new(path, storage.clone()));
                    let sparse = SparseExtent::open_vmdk4(file, &head, budget)
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
                    Self::single_extent(path, storage, descriptor, loc, format, sparse, writable)
                }
            }
            FileFormat::Cowd | FileFormat::SeSparse => {
                let file = Arc::new(ExtentFile::new(path, storage.clone()));
                let (sparse, ct, kw) = if format == FileFormat::Cowd {
                    (
                        SparseExtent::open_cowd(file, &head, budget)
                            .map_err(|e| e.with_path(path))?,
                        "vmfsSparse",
                        ExtentType::VmfsSparse,
                    )
                } else {
                    (
                        SparseExtent::open_sesparse(file, &head, budget)
                            .map_err(|e| e.with_path(path))?,
                        "seSparse",
                        ExtentType::SeSparse,
                    )
                };
                let descriptor = synthesized_descriptor(ct, sparse.capacity(), kw, path);
                Self::single_extent(
                    path,
                    storage,
                    descriptor,
                    DescriptorLocation::Synthesized,
                    format,
                    sparse,
                    writable,
                )
            }
            FileFormat::Foreign(_) => unreachable!("refused above"),
        };
        image.check_writable_open()?;
        if image.size > MAX_VIRTUAL_SIZE {
            return Err(Error::unsupported(format!(
                "virtual size {} bytes is larger than the {} bytes (8 EiB - 1 GiB) QEMU and \
                 NBD clients can address",
                image.size, MAX_VIRTUAL_SIZE
            ))
            .with_path(path));
        }
        image.write_state.durable = opts.durable;
        image.namespace = ns.clone();
        if opts.open_backing {
            if let Some(hint) = image.descriptor.parent_file_name_hint.clone() {
                if depth + 1 >= opts.max_chain_depth {
                    return Err(Error::new(
                        ErrorKind::BackingChain,
                        format!("backing chain deeper than {} images", opts.max_chain_depth),
                    )
                    .with_path(path));
                }
                let bpath = ns.resolve(path, &hint, "backing file", &opts.path_policy())?;
                let backing = Self::open_layer(&bpath, opts, false, depth + 1, visited, budget)
                    .map_err(|e| {
                        if e.kind() == ErrorKind::Io && !ns.exists(&bpath) {
                            Error::new(
                                ErrorKind::BackingChain,
                                format!("backing file \"{hint}\" not found"),
                            )
                            .with_path(path)
                        } else {
                            e
                        }
                    })?;
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
                image.backing = Some(Box::new(backing));
            }
        }
        Ok(image)
    }

    fn read_embedded_descriptor(
        storage: &dyn Storage,
        path: &Path,
        header: &SparseHeader,
    ) -> Result<Option<(Descriptor, DescriptorLocation)>> {
        if header.desc_offset == 0 || header.desc_size == 0 {
            return Ok(None);
        }
        let max_sectors = MAX_DESCRIPTOR_SIZE as u64 / SECTOR_SIZE;
        if header.desc_size > max_sectors {
            return Err(Error::corrupt(format!(
                "embedded descriptor is {} sectors (at most {max_sectors})",
                header.desc_size
            ))
            .with_path(path));
        }
        let offset = header
            .desc_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| Error::corrupt("descriptor offset overflows").with_path(path))?;
        let capacity = header.desc_size * SECTOR_SIZE;
        let mut buf = vec![0u8; capacity as usize];
        storage.read_exact_at(&mut buf, offset).map_err(|_| {
            Error::corrupt("file is truncated: embedded descriptor lies past its end")
                .with_path(path)
        })?;
        let d = parse_descriptor(&buf, path)?;
        Ok(Some((d, DescriptorLocation::Embedded { offset, capacity })))
    }

    fn single_extent(
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
            namespace: crate::namespace::local(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn from_descriptor(
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
            .ok_or_else(|| {
                Error::corrupt("extents add up to more than 2^64 bytes").with_path(path)
            })?;
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
            namespace: crate::namespace::local(),
        })
    }

    /// The file the image was opened from (its descriptor, or its one sparse file).
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The namespace the image's files were opened in.
    pub fn namespace(&self) -> &Arc<dyn Namespace> {
        &self.namespace
    }

    /// Bytes of memory this image's (not its backing chain's) grain directories take.
    pub fn directory_memory(&self) -> u64 {
        let mut seen = HashSet::new();
        self.extents
            .iter()
            .map(|e| match &e.kind {
                // Lines naming one file share its extent: count it once.
                ExtentKind::Sparse(s) if seen.insert(Arc::as_ptr(s)) => s.directory_memory(),
                _ => 0,
            })
            .sum()
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The descriptor (from the file, embedded, or made up for bare extents).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }
    /// Where the descriptor lives.
    pub fn descriptor_location(&self) -> &DescriptorLocation {
        &self.desc_location
    }
    /// What the opened file itself is.
    pub fn file_format(&self) -> FileFormat {
        self.format
    }
    /// The `createType`.
    pub fn create_type(&self) -> &str {
        &self.descriptor.create_type
    }
    /// The extents in disk order.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }
    /// The backing image, if any.
    pub fn backing(&self) -> Option<&Image> {
        self.backing.as_deref()
    }
    /// Whether the image was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }
    /// The identities of every host file this image and its backing chain use (descriptor,
    /// extents, backing files), so a caller about to create or truncate a file can make sure
    /// it is none of them, whatever its name.
    pub fn file_ids(&self) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self.storage.file_id().into_iter().collect();
        for e in &self.extents {
            if let Some(id) = e.file().and_then(|f| f.storage.file_id()) {
                ids.push(id);
            }
        }
        if let Some(b) = &self.backing {
            ids.extend(b.file_ids());
        }
        ids.sort_by_key(|i| (i.dev, i.ino));
        ids.dedup();
        ids
    }

    /// Bytes the image's own files take on the host.
    pub fn allocated_bytes(&self) -> u64 {
        let mut seen = HashSet::new();
        let mut total = 0;
        if seen.insert(self.path.clone()) {
            total += self.storage.allocated_size().unwrap_or(0);
        }
        for e in &self.extents {
            if let Some(f) = e.file() {
                if seen.insert(f.path.clone()) {
                    total += f.storage.allocated_size().unwrap_or(0);
                }
            }
        }
        total
    }

    pub(crate) fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(Error::invalid(format!(
                "range {offset}+{len} is outside the {}-byte disk",
                self.size
            ))
            .with_path(&self.path));
        }
        Ok(())
    }

    /// Index of the extent containing virtual byte `offset` (which must be inside the disk).
    pub(crate) fn extent_index(&self, offset: u64) -> usize {
        self.extents
            .partition_point(|e| e.start + e.length <= offset)
            .min(self.extents.len() - 1)
    }

    /// What this image alone (not its backing chain) holds in `[offset, offset+len)`.
    /// Adjacent stretches with the same target are merged; data stretches are merged when
    /// they are contiguous in the same file, so callers can issue large reads.
    pub fn map_layer(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut b = MapBuilder::default();
        self.map_layer_into(offset, len, 0, &mut b)?;
        Ok(b.entries)
    }

    /// Like [`Image::map_layer`], but at most `max_entries` entries (at least one) covering
    /// a prefix of the range; see [`Image::map_prefix`].
    pub fn map_layer_prefix(
        &self,
        offset: u64,
        len: u64,
        max_entries: usize,
    ) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut b = MapBuilder::with_limit(max_entries);
        self.map_layer_into(offset, len, 0, &mut b)?;
        Ok(b.entries)
    }

    /// The one walk over the extents under `[offset, offset+len)`, for reads and writes
    /// alike: calls `f(index, extent, offset in the extent, length, offset from `offset`)`
    /// for each piece in order, until `f` returns `Ok(false)`.
    pub(crate) fn walk_extents(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(usize, &Extent, u64, u64, u64) -> Result<bool>,
    ) -> Result<()> {
        let end = offset + len;
        let mut pos = offset;
        let mut i = self.extent_index(offset);
        while pos < end && i < self.extents.len() {
            let e = &self.extents[i];
            let n = (e.start + e.length).min(end) - pos;
            if n > 0 && !f(i, e, pos - e.start, n, pos - offset)? {
                break;
            }
            pos += n;
            i += 1;
        }
        Ok(())
    }

    /// Map this layer into `b`, stopping when `b` refuses a stretch.
    fn map_layer_into(&self, offset: u64, len: u64, depth: u32, b: &mut MapBuilder) -> Result<()> {
        self.walk_extents(offset, len, |_, e, rel, n, _| {
            let pos = e.start + rel;
            if e.access == ExtentAccess::NoAccess {
                // VMware marks extents it must not touch; they read as zeros here rather
                // than shifting the data after them (QEMU's mistake) or failing the disk.
                b.push(pos, n, MapTarget::Zero, depth);
            } else {
                let mut at = pos;
                e.map(rel, n, &mut |l, t| {
                    let more = b.push(at, l, t, depth);
                    at += l;
                    more
                })?;
            }
            Ok(!b.stopped())
        })
    }

    /// What `[offset, offset+len)` resolves to through the backing chain. Stretches that no
    /// layer holds come back as [`MapTarget::Unallocated`] with the depth of the last layer.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut out = MapBuilder::default();
        self.map_resolved(offset, len, 0, &mut out)?;
        Ok(out.entries)
    }

    /// Like [`Image::map`], but stops after `max_entries` entries (at least one): the
    /// entries cover `[offset, offset + covered)` for some `covered <= len`, and are not
    /// empty when `len > 0`. Map a whole disk by calling it again from the end of the last
    /// entry: the cost is proportional to the entries and metadata met, not to the bytes
    /// covered, so a huge zero or unallocated stretch costs one step.
    pub fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        self.check_range(offset, len)?;
        let mut out = MapBuilder::with_limit(max_entries);
        self.map_resolved(offset, len, 0, &mut out)?;
        Ok(out.entries)
    }

    fn map_resolved(&self, offset: u64, len: u64, depth: u32, out: &mut MapBuilder) -> Result<()> {
        // Every entry of this layer becomes at least one entry of `out`: never map more of
        // the layer than `out` can take.
        let mut layer = MapBuilder::with_limit(out.room().saturating_add(1));
        self.map_layer_into(offset, len, depth, &mut layer)?;
        for e in layer.entries {
            match (&e.target, &self.backing) {
                (MapTarget::Unallocated, Some(b)) => {
                    // The part beyond a smaller parent reads as zeros.
                    let inside = b.size.saturating_sub(e.start).min(e.length);
                    if inside > 0 {
                        b.map_resolved(e.start, inside, depth + 1, out)?;
                    }
                    if out.stopped()
                        || !out.push(
                            e.start + inside,
                            e.length - inside,
                            MapTarget::Unallocated,
                            depth,
                        )
                    {
                        return Ok(());
                    }
                }
                _ => {
                    if !out.push(e.start, e.length, e.target, e.depth) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Fill `buf` with the virtual disk's bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        for e in self.map(offset, buf.len() as u64)? {
            let s = (e.start - offset) as usize;
            let dst = &mut buf[s..s + e.length as usize];
            e.target.read_into(dst)?;
        }
        Ok(())
    }
}

fn parse_descriptor(text: &[u8], path: &Path) -> Result<Descriptor> {
    Descriptor::parse(text)
        .map_err(|e| Error::corrupt(format!("invalid descriptor: {e}")).with_path(path))
}

fn synthesized_descriptor(
    create_type: &str,
    capacity: u64,
    kind: ExtentType,
    path: &Path,
) -> Descriptor {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Descriptor {
        version: 1,
        encoding: None,
        cid: CID_NONE,
        parent_cid: CID_NONE,
        create_type: create_type.to_string(),
        parent_file_name_hint: None,
        extents: vec![ExtentLine {
            access: ExtentAccess::ReadWrite,
            sectors: capacity / SECTOR_SIZE,
            kind,
            file: Some(name),
            offset: 0,
            extra: vec![],
        }],
        ddb: vec![],
        other: vec![],
    }
}

/// What the extents of one descriptor share while they are opened.
///
/// Many lines may name one file: FLAT lines for a partitioned device split into ranges, and
/// a hostile descriptor may repeat one sparse file thousands of times. Each file is opened
/// once (per writability) and shared, so descriptor lines cost no file descriptors, grain
/// directories or table cache of their own; a shared sparse extent also keeps one
/// allocator, so writes through two lines cannot hand out the same space twice.
struct OpenedFiles<'a> {
    /// Keyed by path and writability.
    flat: HashMap<(PathBuf, bool), Arc<ExtentFile>>,
    /// Keyed by path, whether the line says seSparse, and writability.
    sparse: HashMap<(PathBuf, bool, bool), Arc<SparseExtent>>,
    /// Directory memory and the grain-table cache, shared with the whole chain.
    budget: &'a ExtentBudget,
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
    let epath = opts
        .namespace()
        .resolve(desc_path, name, "extent file", &opts.path_policy())?;
    let ext_writable = writable && line.access == ExtentAccess::ReadWrite;
    let is_flat = matches!(
        line.kind,
        ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRdm | ExtentType::VmfsRaw
    );
    let shared = is_flat
        .then(|| files.flat.get(&(epath.clone(), ext_writable)).cloned())
        .flatten();
    let sparse_key = (
        epath.clone(),
        line.kind == ExtentType::SeSparse,
        ext_writable,
    );
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
        files
            .flat
            .insert((epath.clone(), ext_writable), file.clone());
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
