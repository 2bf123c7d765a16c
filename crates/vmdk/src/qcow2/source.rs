//! A qcow2 image as a convert/compare [`Disk`]: its L1/L2 tables answer the one mapping
//! question (data at an offset of the file, a compressed cluster, zeros, or unallocated,
//! with the depth of the layer that answered), so qcow2 goes through the same planner and
//! workers as VMDK: holes stay holes, zero clusters become zero grains, and compressed
//! clusters are inflated on the workers.
//!
//! The file and every backing file are opened through the [`OpenOptions`]' namespace, so
//! locks and the path gate apply; every table is bounded before it is read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::header::{parse_extensions, Extensions, Header};
use super::l2::{self, Cluster, Entry, SUBCLUSTERS};
use super::l2_cache::L2Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::extent::CompressedGrain;
use crate::extent::{ExtentFile, MapBuilder, MapEntry, MapTarget};
use crate::image::raw::RawFile;
use crate::image::Disk;
use crate::image::{Image, ImageFormat, OpenOptions};
use crate::storage::lock::{FileRole, LockRequest};
use crate::storage::namespace::OpenMode;
use crate::storage::FileId;

/// Bytes of L2 tables kept in memory per image.
const L2_CACHE_BYTES: u64 = 16 << 20;

/// An open qcow2 image (read-only) with its backing chain.
pub struct Qcow2Image {
    path: PathBuf,
    file: Arc<ExtentFile>,
    header: Header,
    ext: Extensions,
    file_len: u64,
    l1: Vec<u64>,
    /// Recently used L2 tables.
    l2_cache: Mutex<L2Cache>,
    backing_name: Option<String>,
    backing_path: Option<PathBuf>,
    backing: Option<Box<dyn Disk>>,
}

impl std::fmt::Debug for Qcow2Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("backing_name", &self.backing_name)
            .finish_non_exhaustive()
    }
}

fn corrupt(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::corrupt(msg.to_string()).with_path(path)
}

impl Qcow2Image {
    /// Open the qcow2 image `path` read-only in `opts`'s namespace, with its backing chain
    /// (when `opts.open_backing`), each backing file passing the path gate.
    pub fn open_with(path: &Path, opts: &OpenOptions) -> Result<Qcow2Image> {
        let mut visited = HashSet::new();
        Self::open_layer(path, opts, 0, &mut visited)
    }

    fn open_layer(
        path: &Path,
        opts: &OpenOptions,
        depth: u32,
        visited: &mut HashSet<FileId>,
    ) -> Result<Qcow2Image> {
        let ns = opts.namespace();
        let lock = opts
            .locking
            .then(|| LockRequest::for_open(FileRole::Metadata, false, opts.force_share));
        let storage = ns.open(
            path,
            OpenMode {
                writable: false,
                lock,
                allow_devices: depth == 0 || opts.allow_unsafe_paths,
            },
        )?;
        if let Some(id) = storage.file_id() {
            if !visited.insert(id) {
                return Err(Error::new(
                    ErrorKind::BackingChain,
                    "backing chain is cyclic (this file is its own ancestor)",
                )
                .with_path(path));
            }
        }
        let file_len = storage
            .len()
            .map_err(|e| Error::io(e, "getting size").with_path(path))?;
        // The header and its extensions live in the first cluster; read the fixed part
        // first to learn the cluster size (bounded to 2 MiB).
        let mut head = vec![0u8; 4096];
        let got = storage
            .read_up_to(&mut head, 0)
            .map_err(|e| Error::io(e, "reading header").with_path(path))?;
        head.truncate(got);
        let header = Header::parse(&head, file_len).map_err(|m| corrupt(path, m))?;
        let cs = header.cluster_size();
        if cs > head.len() as u64 {
            head.resize(cs as usize, 0);
            let got = storage
                .read_up_to(&mut head, 0)
                .map_err(|e| Error::io(e, "reading header").with_path(path))?;
            head.truncate(got);
        }
        let ext =
            parse_extensions(&head, header.extensions_offset()).map_err(|m| corrupt(path, m))?;
        let backing_name = if header.backing_file_offset != 0 && header.backing_file_size > 0 {
            let s = header.backing_file_offset as usize;
            let e = s + header.backing_file_size as usize;
            let bytes = head
                .get(s..e)
                .ok_or_else(|| corrupt(path, "backing file name lies past the end of the file"))?;
            Some(String::from_utf8_lossy(bytes).into_owned())
        } else {
            None
        };
        // The L1 table (bounded to 32 MiB by the header check, and inside the file).
        let mut raw = vec![0u8; header.l1_size as usize * 8];
        storage
            .read_exact_at(&mut raw, header.l1_table_offset)
            .map_err(|e| Error::io(e, "reading the L1 table").with_path(path))?;
        let l1: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let file = Arc::new(ExtentFile::new(path, storage));
        let l2_cache_tables = (L2_CACHE_BYTES / cs) as usize;
        let mut img = Qcow2Image {
            path: path.to_path_buf(),
            file,
            header,
            ext,
            file_len,
            l1,
            l2_cache: Mutex::new(L2Cache::new(l2_cache_tables)),
            backing_name: backing_name.clone(),
            backing_path: None,
            backing: None,
        };
        if let (Some(name), true) = (backing_name, opts.open_backing) {
            if depth + 1 >= opts.max_chain_depth {
                return Err(Error::new(
                    ErrorKind::BackingChain,
                    format!("backing chain deeper than {} images", opts.max_chain_depth),
                )
                .with_path(path));
            }
            let bpath = ns.resolve(path, &name, "backing file", &opts.path_policy())?;
            if !ns.exists(&bpath) {
                return Err(Error::new(
                    ErrorKind::BackingChain,
                    format!("backing file \"{name}\" not found"),
                )
                .with_path(path));
            }
            img.backing_path = Some(bpath.clone());
            img.backing = Some(Self::open_backing(
                &bpath,
                img.ext.backing_format.as_deref(),
                opts,
                depth + 1,
                visited,
            )?);
        }
        Ok(img)
    }

    /// Open a backing file: of the format the header names, or probed from its content.
    ///
    /// The same choice as [`open_disk`](fn@crate::ops::open_disk), which cannot be called
    /// from here (it is an operation, above this layer); this one also carries the chain's
    /// depth and the files already visited into a qcow2 backing file.
    fn open_backing(
        path: &Path,
        format: Option<&str>,
        opts: &OpenOptions,
        depth: u32,
        visited: &mut HashSet<FileId>,
    ) -> Result<Box<dyn Disk>> {
        let format = match format {
            Some(name) => name.parse::<ImageFormat>().map_err(|_| {
                Error::unsupported(format!("backing file format '{name}' is not supported"))
                    .with_path(path)
            })?,
            None => ImageFormat::probe_in(&*opts.namespace(), path)?,
        };
        let ro = OpenOptions {
            writable: false,
            ..opts.clone()
        };
        Ok(match format {
            ImageFormat::Qcow2 => Box::new(Self::open_layer(path, &ro, depth, visited)?),
            ImageFormat::Vmdk => Box::new(Image::open_with(path, &ro)?),
            ImageFormat::Raw => Box::new(RawFile::open_with(path, &ro)?),
        })
    }

    /// The path the image was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The header extensions a reader uses (backing format, ...).
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }
    /// The backing file name as written in the header.
    pub fn backing_name(&self) -> Option<&str> {
        self.backing_name.as_deref()
    }
    /// Where the backing file was found (when the chain was opened).
    pub fn backing_path(&self) -> Option<&Path> {
        self.backing_path.as_deref()
    }
    /// The opened backing image, if any.
    pub fn backing(&self) -> Option<&dyn Disk> {
        self.backing.as_deref()
    }
    /// Bytes the file takes on its host, if known.
    pub fn allocated_size(&self) -> Option<u64> {
        self.file.storage.allocated_size()
    }
    /// The image file (the host file data clusters point into).
    pub fn image_file(&self) -> &Arc<ExtentFile> {
        &self.file
    }
    /// Length of the image file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The entries of the L2 table that L1 entry `l1i` points at (`off`), two per cluster
    /// with extended L2, cached.
    fn l2_table(&self, l1i: usize, off: u64) -> Result<Arc<Vec<u64>>> {
        if let Some(t) = self
            .l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(off)
        {
            return Ok(t);
        }
        let cs = self.header.cluster_size();
        let guest = l1i as u64 * self.header.l2_entries() * cs;
        if !off.is_multiple_of(cs) {
            return Err(corrupt(
                &self.path,
                format!(
                    "L2 table offset {off:#x} of L1 entry {l1i} (guest offset {guest}) \
                     is not cluster-aligned"
                ),
            ));
        }
        if off.checked_add(cs).is_none_or(|e| e > self.file_len) {
            return Err(corrupt(
                &self.path,
                format!(
                    "L2 table at {off:#x} of L1 entry {l1i} (guest offset {guest}) lies past \
                     the end of the file"
                ),
            ));
        }
        let mut raw = vec![0u8; cs as usize];
        self.file
            .storage
            .read_exact_at(&mut raw, off)
            .map_err(|e| Error::io(e, "reading an L2 table").with_path(&self.path))?;
        let t: Arc<Vec<u64>> = Arc::new(
            raw.chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        );
        self.l2_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(off, t.clone());
        Ok(t)
    }

    /// Call `emit(start, len, cluster)` with what this layer alone says about
    /// `[offset, offset+len)`, in order, until it returns `false`. Neighbouring clusters of
    /// the same kind (data: contiguous in the file) come as one piece, but a piece is handed
    /// on at least every [`FLUSH_STEPS`] clusters or tables: when `emit` stops early (its
    /// map is full), the walk has gone at most that far past the last piece it used.
    /// Gathering whole runs first made each batch of a walk rescan the rest of an empty
    /// layer: batches × layer size, over a backing file of many entries.
    fn walk_layer(
        &self,
        offset: u64,
        len: u64,
        emit: &mut dyn FnMut(u64, u64, Cluster) -> Result<bool>,
    ) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let per_l1 = h.l2_entries() * cs;
        let end = offset + len;
        let mut pos = offset;
        let ext = h.extended_l2();
        let sub = cs / u64::from(SUBCLUSTERS);
        let mut run = Run::default();
        while pos < end {
            let l1i = (pos / per_l1) as usize;
            let table_end = end.min((pos / per_l1 + 1) * per_l1);
            let l2off = self.l1.get(l1i).copied().unwrap_or(0) & l2::OFFSET_MASK;
            if l2off == 0 {
                if !run.add(pos, table_end - pos, Cluster::Unallocated, cs, 1, emit)? {
                    return Ok(());
                }
                pos = table_end;
                continue;
            }
            let table = self.l2_table(l1i, l2off)?;
            while pos < table_end {
                let ci = ((pos % per_l1) / cs) as usize;
                let cl_start = pos / cs * cs;
                let cl_end = table_end.min(cl_start + cs);
                let entry = if ext {
                    l2::decode(table[2 * ci], Some(table[2 * ci + 1]), h.cluster_bits, h.version)
                } else {
                    l2::decode(table[ci], None, h.cluster_bits, h.version)
                }
                .map_err(|m| {
                    corrupt(
                        &self.path,
                        format!(
                            "L2 entry {ci} of the table at {l2off:#x} (guest offset {cl_start}): {m}"
                        ),
                    )
                })?;
                match entry {
                    Entry::Whole(c @ (Cluster::Unallocated | Cluster::Zero)) if !ext => {
                        // Equal entries decode alike: a run of empty or zero clusters is
                        // one step, so an empty table costs a scan, not a decode per cluster.
                        let last = ((table_end - 1) % per_l1 / cs) as usize;
                        let mut next = ci + 1;
                        while next <= last && table[next] == table[ci] {
                            next += 1;
                        }
                        let run_end = table_end.min(cl_start + (next - ci) as u64 * cs);
                        let weight = (next - ci) as u32;
                        if !run.add(pos, run_end - pos, c, cs, weight, emit)? {
                            return Ok(());
                        }
                        pos = run_end;
                        continue;
                    }
                    Entry::Whole(c) => {
                        if !run.add(pos, cl_end - pos, c, cs, 1, emit)? {
                            return Ok(());
                        }
                    }
                    Entry::Sub { .. } => {
                        let mut p = pos;
                        while p < cl_end {
                            let i = ((p - cl_start) / sub) as u32;
                            let s_end = cl_end.min(cl_start + (u64::from(i) + 1) * sub);
                            if !run.add(p, s_end - p, entry.subcluster(i), cs, 1, emit)? {
                                return Ok(());
                            }
                            p = s_end;
                        }
                    }
                }
                pos = cl_end;
            }
        }
        run.flush(emit)?;
        Ok(())
    }

    /// Like [`Disk::map_prefix`]: at most `max_entries` entries covering a prefix of the
    /// range, resolved through the backing chain.
    pub fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        let size = self.header.size;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::invalid(format!(
                "range {offset}+{len} is outside the {size}-byte disk"
            ))
            .with_path(&self.path));
        }
        let mut b = MapBuilder::with_limit(max_entries);
        let cs = self.header.cluster_size();
        self.walk_layer(offset, len, &mut |s, n, c| {
            Ok(match c {
                Cluster::Data(host) => b.push(
                    s,
                    n,
                    MapTarget::Data {
                        file: self.file.clone(),
                        offset: host,
                    },
                    0,
                ),
                Cluster::Zero => b.push(s, n, MapTarget::Zero, 0),
                Cluster::Compressed {
                    offset,
                    len: stored,
                } => {
                    let cl_start = s / cs * cs;
                    // Compressed clusters are never merged, so one piece is one cluster.
                    let g = CompressedGrain::raw_deflate(
                        self.file.clone(),
                        offset,
                        cs,
                        s - cl_start,
                        stored,
                        cl_start,
                    );
                    b.push(s, n, MapTarget::Compressed(g), 0)
                }
                Cluster::Unallocated => self.push_below(&mut b, s, n)?,
            })
        })?;
        Ok(b.entries)
    }

    /// Push what the backing chain holds for `[s, s+n)`, one layer deeper; `false` when the
    /// builder is full (or the backing answered only a prefix).
    fn push_below(&self, b: &mut MapBuilder, s: u64, n: u64) -> Result<bool> {
        let Some(back) = &self.backing else {
            return Ok(b.push(s, n, MapTarget::Unallocated, 0));
        };
        let bsize = back.size();
        let inside = n.min(bsize.saturating_sub(s));
        if inside > 0 {
            let mut covered = s;
            for e in back.map_prefix(s, inside, b.room().max(1))? {
                covered = e.start + e.length;
                if !b.push(e.start, e.length, e.target, e.depth + 1) {
                    return Ok(false);
                }
            }
            if covered < s + inside {
                return Ok(false);
            }
        }
        if inside < n {
            // Past the end of a shorter backing file: zeros, nothing allocated.
            return Ok(b.push(s + inside, n - inside, MapTarget::Unallocated, 1));
        }
        Ok(true)
    }

    /// Read `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let entries = self.map_prefix(pos, end - pos, 1024)?;
            for e in &entries {
                let at = (e.start - offset) as usize;
                e.target.read_into(&mut buf[at..at + e.length as usize])?;
                pos = e.start + e.length;
            }
            if entries.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Every host file this image and its backing chain read.
    pub fn file_ids(&self) -> Vec<FileId> {
        let mut v: Vec<FileId> = self.file.storage.file_id().into_iter().collect();
        if let Some(b) = &self.backing {
            v.extend(b.file_ids());
        }
        v
    }
}

/// Clusters or tables walked into one piece before it is handed on (see
/// [`Qcow2Image::walk_layer`]).
const FLUSH_STEPS: u32 = 4096;

/// The piece [`Qcow2Image::walk_layer`] is gathering: neighbouring clusters of one kind.
#[derive(Default)]
struct Run {
    /// `(start, len, cluster)`; data carries the host offset of the piece's first byte.
    piece: Option<(u64, u64, Cluster)>,
    /// Clusters or tables walked into the piece since it was last handed on.
    steps: u32,
}

impl Run {
    /// Add `[s, s+n)` holding `c` (data: the host offset of its cluster), found by walking
    /// `weight` clusters or tables; `false` once `emit` refused a piece.
    fn add(
        &mut self,
        s: u64,
        n: u64,
        c: Cluster,
        cs: u64,
        weight: u32,
        emit: &mut dyn FnMut(u64, u64, Cluster) -> Result<bool>,
    ) -> Result<bool> {
        let c = match c {
            Cluster::Data(h) => Cluster::Data(h + s % cs),
            c => c,
        };
        if let Some((start, len, last)) = &mut self.piece {
            let joins = *start + *len == s
                && match (*last, c) {
                    (Cluster::Unallocated, Cluster::Unallocated) => true,
                    (Cluster::Zero, Cluster::Zero) => true,
                    (Cluster::Data(a), Cluster::Data(b)) => a + *len == b,
                    _ => false,
                };
            if joins {
                *len += n;
                self.steps = self.steps.saturating_add(weight);
                if self.steps >= FLUSH_STEPS {
                    return self.flush(emit);
                }
                return Ok(true);
            }
            if !self.flush(emit)? {
                return Ok(false);
            }
        }
        self.piece = Some((s, n, c));
        self.steps = weight;
        Ok(true)
    }

    /// Hand on the piece gathered so far.
    fn flush(&mut self, emit: &mut dyn FnMut(u64, u64, Cluster) -> Result<bool>) -> Result<bool> {
        self.steps = 0;
        match self.piece.take() {
            Some((s, n, c)) => emit(s, n, c),
            None => Ok(true),
        }
    }
}

impl Disk for Qcow2Image {
    fn size(&self) -> u64 {
        self.header.size
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        Qcow2Image::map_prefix(self, offset, len, usize::MAX)
    }
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        Qcow2Image::map_prefix(self, offset, len, max_entries)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Qcow2Image::read_at(self, buf, offset)
    }
    fn file_ids(&self) -> Vec<FileId> {
        Qcow2Image::file_ids(self)
    }
}
