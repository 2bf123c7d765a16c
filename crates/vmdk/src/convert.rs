//! Whole-disk operations shared by the CLI and exports: convert to raw or VMDK, compare.
//! Everything is driven by the mapping primitive so holes and zero grains cost nothing.
//!
//! # How a conversion runs
//!
//! A *planner* walks the source's map in batches of entries (so a huge zero stretch costs one
//! step) and cuts the stretches that hold data into *tasks*: grain-aligned virtual ranges of
//! at most 512 KiB (4 MiB when writing a sparse VMDK, where bigger runs mean fewer
//! allocations), numbered in disk order.
//! Zero and unallocated stretches never become tasks. Worker threads (one per core by
//! default) take the next task, read it into a pooled buffer (one positional read per
//! contiguous data run; compressed grains that lie next to each other in the file are fetched
//! with one read and inflated from memory), find the all-zero 4 KiB blocks or grains, and for
//! streamOptimized output compress the non-zero grains. The calling thread is the single
//! writer: it takes finished tasks in disk order (a small reorder buffer), writes them, and
//! returns the buffers to the pool. Workers may run at most a fixed number of tasks ahead of
//! the writer, so memory is bounded (tens of MiB) whatever the disk size.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use crate::create::refuse_to_overwrite;
use crate::create::{CreateOptions, Subformat};
use crate::error::{Error, Result};
use crate::extent::compressed::GrainEncoder;
use crate::format::SECTOR_SIZE;
use crate::image::{FileFormat, Image, OpenOptions};
use crate::map::{MapEntry, MapTarget};
use crate::namespace::Namespace;
use crate::raw::RawFile;
use crate::storage::FileId;
use crate::stream_writer::{is_zero, StreamWriter, GRAIN_SECTORS};
use crate::walk::MapWalker;

/// Anything convert and compare can read: a VMDK image or a raw file.
pub trait Source: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// What `[offset, offset+len)` holds (resolved through any backing chain).
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>>;
    /// Like [`Source::map`], but at most `max_entries` entries (at least one) covering a
    /// prefix of the range, at a cost proportional to the entries rather than the bytes.
    ///
    /// The default maps at most 1 GiB and keeps the first entries: correct, but a huge
    /// zero stretch then costs one call per GiB. Images and raw files do better.
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        let mut v = self.map(offset, len.min(1 << 30))?;
        v.truncate(max_entries.max(1));
        Ok(v)
    }
    /// Read bytes.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    /// Every host file the source reads (so an output never overwrites one of them).
    fn file_ids(&self) -> Vec<FileId>;
}

impl Source for Image {
    fn size(&self) -> u64 {
        Image::size(self)
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        Image::map(self, offset, len)
    }
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        Image::map_prefix(self, offset, len, max_entries)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Image::read_at(self, buf, offset)
    }
    fn file_ids(&self) -> Vec<FileId> {
        Image::file_ids(self)
    }
}

impl Source for RawFile {
    fn size(&self) -> u64 {
        RawFile::size(self)
    }
    fn map(&self, offset: u64, len: u64) -> Result<Vec<MapEntry>> {
        RawFile::map(self, offset, len)
    }
    fn map_prefix(&self, offset: u64, len: u64, max_entries: usize) -> Result<Vec<MapEntry>> {
        RawFile::map_prefix(self, offset, len, max_entries)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        RawFile::read_at(self, buf, offset)
    }
    fn file_ids(&self) -> Vec<FileId> {
        RawFile::file_id(self).into_iter().collect()
    }
}

/// Open `path` as a source: `format` "raw" or "vmdk", or probed from content when `None`:
/// a VMDK file opens as an image, an image of another format (qcow2, VHD, ...) is refused
/// with its name rather than read as raw bytes, and anything else is a raw disk.
pub fn open_source(
    path: &Path,
    format: Option<&str>,
    opts: &OpenOptions,
) -> Result<Box<dyn Source>> {
    let is_vmdk = match format {
        Some("vmdk") => true,
        Some("raw") => false,
        Some("qcow2") => return Ok(Box::new(crate::qcow2::Qcow2Image::open_with(path, opts)?)),
        Some(other) => {
            return Err(Error::invalid(format!(
                "unknown source format '{other}' (expected raw, vmdk or qcow2)"
            )))
        }
        None => match crate::image::probe_in(&*opts.namespace(), path)? {
            Some(FileFormat::Foreign(crate::format::foreign::ForeignFormat::Qcow2)) => {
                return Ok(Box::new(crate::qcow2::Qcow2Image::open_with(path, opts)?))
            }
            Some(FileFormat::Foreign(f)) => {
                return Err(crate::image::foreign_format_error(path, f))
            }
            Some(_) => true,
            None => false,
        },
    };
    if is_vmdk {
        Ok(Box::new(Image::open_with(path, opts)?))
    } else {
        Ok(Box::new(RawFile::open_with(path, opts)?))
    }
}

/// Options for conversions.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Worker threads (compression, reading); 0 = number of CPUs.
    pub threads: usize,
    /// Compress output grains (streamOptimized is always compressed).
    pub compress: bool,
    /// zlib level for compressed output.
    pub compression_level: u32,
    /// Runs of zeros at least this long (and aligned to it) become holes in raw output
    /// (qemu-img's `-S`, default 4 KiB); 0 writes every byte, and every grain of sparse VMDK
    /// output, so the output is fully allocated.
    pub min_sparse: u64,
    /// Write into an existing image instead of creating one (`-n`): nothing is created or
    /// truncated, and zeros are written wherever the source reads as zeros.
    pub target_exists: bool,
    /// With `target_exists`: the target already reads as zeros, so zeros need no writing.
    pub target_is_zero: bool,
    /// Read errors become zeros, counted in `salvaged`, instead of failing the conversion.
    pub salvage: bool,
    /// How many stretches `salvage` turned into zeros.
    pub salvaged: Arc<AtomicU64>,
    /// Where the output goes (host files by default). For VMDK output,
    /// [`CreateOptions::namespace`] is used when this is unset.
    pub target_namespace: Option<Arc<dyn Namespace>>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            threads: 0,
            compress: false,
            compression_level: 6,
            min_sparse: RAW_ZERO_BLOCK,
            target_exists: false,
            target_is_zero: false,
            salvage: false,
            salvaged: Arc::new(AtomicU64::new(0)),
            target_namespace: None,
        }
    }
}

impl ConvertOptions {
    /// Whether every byte is written, zeros included: for a fully allocated output, or an
    /// existing target that may hold something else.
    fn writes_everything(&self) -> bool {
        self.min_sparse == 0 || (self.target_exists && !self.target_is_zero)
    }

    /// Which map stretches must be read: everything when zeros are to be written too.
    fn want(&self) -> fn(&MapEntry) -> bool {
        if self.writes_everything() {
            |_| true
        } else {
            is_data
        }
    }

    /// Fill `buf` with `task`'s bytes; with `salvage`, a stretch that fails to read becomes
    /// zeros (with a warning) instead of failing the task.
    fn fill(&self, task: &Task, buf: &mut [u8], scratch: &mut Scratch) -> Result<()> {
        match fill_task(task, buf, scratch) {
            Err(e) if self.salvage => {
                tracing::warn!("{e}; retrying stretch by stretch");
                buf.fill(0);
                for en in &task.entries {
                    let at = (en.start - task.start) as usize;
                    let dst = &mut buf[at..at + en.length as usize];
                    if let Err(e) = en.target.read_into(dst) {
                        dst.fill(0);
                        self.salvaged.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "warning: error while reading offset {}: {e}; writing zeros",
                            en.start
                        );
                    }
                }
                Ok(())
            }
            r => r,
        }
    }

    /// The stretches of `buf` to write: all of it when zeros must be written, else the
    /// non-zero runs at `block` granularity.
    fn runs(&self, buf: &[u8], block: u64) -> Vec<(usize, usize)> {
        if self.writes_everything() {
            vec![(0, buf.len())]
        } else {
            nonzero_runs(buf, block as usize)
        }
    }
}

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Blocks of this size that are all zero are left as holes in raw output (qemu-img's `-S 4k`).
pub const RAW_ZERO_BLOCK: u64 = 4096;
/// Largest task (virtual bytes one worker reads at once) when the writer copies its bytes:
/// small enough that a task's buffer is still in the CPU cache when the writer gets to it
/// (measured: 512 KiB costs a third less CPU than 4 MiB for VMDK -> raw).
const MAX_TASK: u64 = 512 << 10;
/// Largest task when writing a sparse VMDK: bigger runs mean fewer, larger grain allocations
/// (measured: 4 MiB costs half the CPU of 256 KiB).
const MAX_TASK_SPARSE: u64 = 4 << 20;
/// Map entries the planner asks for at a time.
const PLAN_BATCH: usize = 1024;
/// Budget for task buffers in flight (input and output together).
const IN_FLIGHT_BUDGET: u64 = 64 << 20;
/// Grain size used for output VMDK images.
const OUT_GRAIN: u64 = GRAIN_SECTORS * SECTOR_SIZE;

fn worker_count(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// One unit of work: the grain-aligned virtual range `[start, end)` and the stretches inside
/// it that need reading (clipped to it); everything else in the range reads as zeros.
#[derive(Debug)]
struct Task {
    index: u64,
    start: u64,
    end: u64,
    entries: Vec<MapEntry>,
}

/// Cuts the source's map into tasks, front to back.
struct Planner<'a> {
    src: &'a dyn Source,
    size: u64,
    align: u64,
    max_task: u64,
    /// Everything before this has been handed out.
    cursor: u64,
    /// Map entries covering up to `mapped`, front first, only those `want` keeps.
    queue: VecDeque<MapEntry>,
    mapped: u64,
    next_index: u64,
    want: fn(&MapEntry) -> bool,
}

impl<'a> Planner<'a> {
    fn new(src: &'a dyn Source, align: u64, max_task: u64, want: fn(&MapEntry) -> bool) -> Self {
        Planner {
            src,
            size: src.size(),
            align,
            max_task,
            cursor: 0,
            queue: VecDeque::new(),
            mapped: 0,
            next_index: 0,
            want,
        }
    }

    fn next_task(&mut self) -> Result<Option<Task>> {
        loop {
            while let Some(e) = self.queue.front() {
                if e.start + e.length <= self.cursor {
                    self.queue.pop_front();
                } else {
                    break;
                }
            }
            if self.queue.is_empty() {
                if self.mapped >= self.size {
                    return Ok(None);
                }
                // Map by batches of entries, not fixed windows, so huge zero stretches cost
                // nothing. `mapped` stays a multiple of the alignment (tasks are cut there).
                let left = self.size - self.mapped;
                let mut batch = self.src.map_prefix(self.mapped, left, PLAN_BATCH)?;
                let covered = batch.last().map_or(self.size, |e| e.start + e.length);
                let mut end = if covered >= self.size {
                    self.size
                } else {
                    covered / self.align * self.align
                };
                if end <= self.mapped {
                    // The whole batch lies in one alignment unit: map that unit in full.
                    end = (self.mapped + self.align).min(self.size);
                    batch = self.src.map(self.mapped, end - self.mapped)?;
                }
                let want = self.want;
                self.queue = batch
                    .into_iter()
                    .filter(|e| e.start < end && want(e))
                    .map(|mut e| {
                        e.length = e.length.min(end - e.start);
                        e
                    })
                    .collect();
                self.mapped = end;
                continue;
            }
            let first = self.queue.front().expect("not empty");
            let start = self.cursor.max(first.start / self.align * self.align);
            // Tasks never cross a batch's end (a multiple of the alignment).
            let limit = (start + self.max_task).min(self.mapped);
            let mut data_end = start;
            let mut entries = Vec::new();
            for e in &self.queue {
                if e.start >= limit {
                    break;
                }
                let s = e.start.max(start);
                let t = (e.start + e.length).min(limit);
                if t <= s {
                    continue;
                }
                data_end = t;
                entries.push(MapEntry {
                    start: s,
                    length: t - s,
                    target: e.target.advanced(s - e.start),
                    depth: e.depth,
                });
            }
            let end = data_end
                .next_multiple_of(self.align)
                .min(self.mapped)
                .max(start + 1)
                .min(self.size);
            self.cursor = end;
            if entries.is_empty() {
                continue;
            }
            let index = self.next_index;
            self.next_index += 1;
            return Ok(Some(Task {
                index,
                start,
                end,
                entries,
            }));
        }
    }
}

/// Reusable byte buffers, so steady-state conversion allocates (and page-faults) nothing.
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn get(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }
    /// Return a buffer. Its contents are kept: users overwrite or zero what they use.
    fn put(&self, v: Vec<u8>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
}

/// Per-worker scratch space.
#[derive(Default)]
struct Scratch {
    /// Compressed bytes fetched in one read for a run of compressed grains.
    span: Vec<u8>,
    /// One whole grain, for compressed stretches that cover part of a grain.
    grain: Vec<u8>,
    encoder: Option<GrainEncoder>,
}

/// Fill `buf` (length `task.end - task.start`) with the task's bytes.
fn fill_task(task: &Task, buf: &mut [u8], scratch: &mut Scratch) -> Result<()> {
    let mut pos = task.start;
    let mut i = 0;
    while i < task.entries.len() {
        let e = &task.entries[i];
        if e.start > pos {
            buf[(pos - task.start) as usize..(e.start - task.start) as usize].fill(0);
        }
        let at = (e.start - task.start) as usize;
        match &e.target {
            MapTarget::Compressed(g)
                if e.length == g.grain_size()
                    && g.in_grain() == 0
                    && g.record_bound().is_some() =>
            {
                // Gather following whole compressed grains of the same file that lie close
                // behind this one, to fetch them all with one read.
                let bound = g.record_bound().expect("checked above");
                let first = g.offset();
                let mut last = first;
                let mut last_bound = bound;
                let mut j = i + 1;
                while j < task.entries.len() {
                    match &task.entries[j].target {
                        MapTarget::Compressed(g2)
                            if std::sync::Arc::ptr_eq(g.file(), g2.file())
                                && g2.grain_size() == g.grain_size()
                                && g2.in_grain() == 0
                                && g2.record_bound().is_some()
                                && task.entries[j].length == g2.grain_size()
                                && g2.offset() > last
                                && g2.offset() - first <= 2 * MAX_TASK_SPARSE =>
                        {
                            last = g2.offset();
                            last_bound = g2.record_bound().expect("checked above");
                            j += 1;
                        }
                        _ => break,
                    }
                }
                let span_len = (last - first + last_bound) as usize;
                scratch.span.resize(span_len, 0);
                let file = g.file();
                let got = file
                    .storage
                    .read_up_to(&mut scratch.span, first)
                    .map_err(|e| {
                        Error::io(e, format!("reading at offset {first}")).with_path(&file.path)
                    })?;
                for k in i..j {
                    let ek = &task.entries[k];
                    // Grains next to each other in the file need not be in the disk.
                    if ek.start > pos {
                        buf[(pos - task.start) as usize..(ek.start - task.start) as usize].fill(0);
                    }
                    pos = ek.start + ek.length;
                    let MapTarget::Compressed(gk) = &ek.target else {
                        unreachable!("checked above")
                    };
                    let dst = &mut buf[(ek.start - task.start) as usize
                        ..(ek.start - task.start + ek.length) as usize];
                    if !gk.decode_from(&scratch.span[..got], first, dst) {
                        // Let the general path produce the precise error (or succeed).
                        ek.target.read_into(dst)?;
                    }
                }
                i = j;
                continue;
            }
            MapTarget::Compressed(g) => {
                // Part of a grain: inflate it whole, then copy the part.
                scratch.grain.resize(g.grain_size() as usize, 0);
                g.read_whole(&mut scratch.grain)?;
                let s = g.in_grain() as usize;
                buf[at..at + e.length as usize]
                    .copy_from_slice(&scratch.grain[s..s + e.length as usize]);
            }
            t => t.read_into(&mut buf[at..at + e.length as usize])?,
        }
        pos = e.start + e.length;
        i += 1;
    }
    if pos < task.end {
        buf[(pos - task.start) as usize..].fill(0);
    }
    Ok(())
}

/// Shared state of a pipeline run.
struct Shared<'a> {
    planner: Planner<'a>,
    /// Tasks the writer has finished (the next one it wants has this index).
    consumed: u64,
    stop: bool,
}

/// Run `produce` on every task on `threads` workers and `consume` the results in task order
/// on the calling thread, with at most `ahead` tasks in flight.
fn run_pipeline<T: Send>(
    planner: Planner<'_>,
    threads: usize,
    ahead: u64,
    produce: &(dyn Fn(&Task, &mut Scratch) -> Result<T> + Sync),
    consume: &mut dyn FnMut(&Task, T) -> Result<()>,
) -> Result<()> {
    let shared = Mutex::new(Shared {
        planner,
        consumed: 0,
        stop: false,
    });
    let cv = Condvar::new();
    let stop_all = |shared: &Mutex<Shared>| {
        shared.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
    };
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<Result<(Task, T)>>();
        for _ in 0..threads {
            let tx = tx.clone();
            let shared = &shared;
            let cv = &cv;
            scope.spawn(move || {
                let mut scratch = Scratch::default();
                loop {
                    let task = {
                        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                        while !g.stop && g.planner.next_index >= g.consumed + ahead {
                            g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                        }
                        if g.stop {
                            return;
                        }
                        match g.planner.next_task() {
                            Ok(Some(t)) => t,
                            Ok(None) => return,
                            Err(e) => {
                                g.stop = true;
                                drop(g);
                                cv.notify_all();
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    };
                    let r = produce(&task, &mut scratch).map(|out| (task, out));
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending: BTreeMap<u64, (Task, T)> = BTreeMap::new();
        let mut next = 0u64;
        for msg in rx.iter() {
            let (task, out) = match msg {
                Ok(v) => v,
                Err(e) => {
                    stop_all(&shared);
                    return Err(e);
                }
            };
            pending.insert(task.index, (task, out));
            while let Some((task, out)) = pending.remove(&next) {
                if let Err(e) = consume(&task, out) {
                    stop_all(&shared);
                    return Err(e);
                }
                next += 1;
                shared.lock().unwrap_or_else(|e| e.into_inner()).consumed = next;
                cv.notify_all();
            }
        }
        Ok(())
    })
}

/// How many tasks may be in flight, and how big each may be (at most `max`), for `threads`
/// workers.
fn sizing(threads: usize, per_task_factor: u64, max: u64) -> (u64, u64) {
    let ahead = 2 * threads as u64 + 2;
    let max_task = (IN_FLIGHT_BUDGET / (ahead * per_task_factor)).clamp(OUT_GRAIN * 4, max)
        / OUT_GRAIN
        * OUT_GRAIN;
    (ahead, max_task)
}

/// Byte runs `[start, end)` of `buf` not made of all-zero `block`-sized blocks (a short last
/// block counts as a block).
fn nonzero_runs(buf: &[u8], block: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let end = (off + block).min(buf.len());
        if !is_zero(&buf[off..end]) {
            match runs.last_mut() {
                Some(r) if r.1 == off => r.1 = end,
                _ => runs.push((off, end)),
            }
        }
        off = end;
    }
    runs
}

/// A filled task buffer and the byte runs of it to write.
type Filled = (Vec<u8>, Vec<(usize, usize)>);

fn is_data(e: &MapEntry) -> bool {
    e.target.is_data()
}

/// Write `src` to `dst` as a sparse raw file (holes where the source has zeros).
///
/// The output is `src.size()` rounded up to 512 bytes long, like qemu-img's. Stretches the
/// source maps as zero or unallocated are never read, and all-zero 4 KiB blocks inside data
/// are left as holes.
pub fn convert_to_raw(
    src: &dyn Source,
    dst: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    let out_size = size
        .checked_next_multiple_of(SECTOR_SIZE)
        .ok_or_else(|| Error::invalid("image size too large"))?;
    let ns = opts
        .target_namespace
        .clone()
        .unwrap_or_else(crate::namespace::default);
    refuse_to_overwrite(
        &*ns,
        dst,
        &src.file_ids(),
        "the source image (or one of its files)",
    )?;
    let block = if opts.min_sparse == 0 {
        RAW_ZERO_BLOCK
    } else {
        opts.min_sparse.next_multiple_of(SECTOR_SIZE)
    };
    let out = if opts.target_exists {
        // Holes would leave stale contents where the disk has zeros: only regular files
        // (the namespace refuses devices unless told otherwise).
        let lock = crate::lock::LockRequest::for_open(crate::lock::FileRole::Data, true, false);
        let mode = crate::namespace::OpenMode {
            writable: true,
            lock: Some(lock),
            allow_devices: false,
        };
        ns.open(dst, mode)?
    } else {
        ns.create(dst, true)?
    };
    let current = out
        .len()
        .map_err(|e| Error::io(e, "getting file size").with_path(dst))?;
    if current < out_size {
        out.set_len(out_size)
            .map_err(|e| Error::io(e, "could not resize file").with_path(dst))?;
    }
    let threads = worker_count(opts.threads);
    let (ahead, max_task) = sizing(threads, 1, MAX_TASK);
    let pool = Pool::default();
    let planner = Planner::new(src, OUT_GRAIN, max_task, opts.want());
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Filled> {
        let mut buf = pool.get();
        buf.resize((task.end - task.start) as usize, 0);
        opts.fill(task, &mut buf, scratch)?;
        let runs = opts.runs(&buf, block);
        Ok((buf, runs))
    };
    let mut consume = |task: &Task, (buf, runs): Filled| -> Result<()> {
        for (s, e) in runs {
            out.write_at(&buf[s..e], task.start + s as u64)
                .map_err(|e| Error::io(e, "writing").with_path(dst))?;
        }
        pool.put(buf);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    progress(size, size);
    Ok(())
}

/// What a worker hands the stream writer: finished grain records and where each grain's
/// record starts.
struct Encoded {
    records: Vec<u8>,
    grains: Vec<(u64, usize)>,
}

/// Write `src` to a new VMDK image at `dst`.
///
/// streamOptimized output is written by [`StreamWriter`] in VMware's layout, compressing
/// grains on all worker threads; all-zero grains are left out. Other subformats are made
/// with [`crate::create::create`] and filled with [`Image::write_at`] in large grain-aligned
/// runs, in disk order, skipping zero stretches and all-zero grains. When `create` names a
/// backing file, only what the source's own top layer holds is copied (the new image's
/// backing file is assumed to hold the rest, as with `qemu-img convert -B`), zeros included.
/// `opts.compress` is an error for flat subformats and, as in qemu-img, has no effect on
/// monolithicSparse/twoGbMaxExtentSparse (only stream images hold compressed grains).
pub fn convert_to_vmdk(
    src: &dyn Source,
    dst: &Path,
    create: &CreateOptions,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    let threads = worker_count(opts.threads);
    if create.subformat == Subformat::StreamOptimized && !opts.target_exists {
        let ns = opts
            .target_namespace
            .clone()
            .unwrap_or_else(|| create.namespace());
        refuse_to_overwrite(
            &*ns,
            dst,
            &src.file_ids(),
            "the source image (or one of its files)",
        )?;
        let sink = ns.create_stream(dst, true)?;
        let writer = StreamWriter::new(sink, dst, size, create, opts.compression_level)?;
        return convert_to_stream(src, writer, opts, threads, progress);
    }
    if opts.compress && create.subformat.is_flat() {
        // qemu-img refuses this too ("invalid cluster size"); for hosted sparse
        // subformats it accepts -c and writes the grains uncompressed, and so do we.
        return Err(Error::invalid(
            "compression is not supported with flat subformats (use subformat=streamOptimized)",
        ));
    }
    let mut create = create.clone();
    if let Some(ns) = &opts.target_namespace {
        create.namespace = Some(ns.clone());
    }
    let create = &create;
    let ns = create.namespace();
    let open = OpenOptions {
        writable: true,
        allow_unsafe_paths: create.allow_unsafe_paths,
        allow_paths: create.allow_paths.clone(),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let img = if opts.target_exists {
        refuse_to_overwrite(
            &*ns,
            dst,
            &src.file_ids(),
            "the source image (or one of its files)",
        )?;
        let img = open.open(dst)?;
        if img.size() < size {
            return Err(Error::invalid(format!(
                "the target is smaller ({} bytes) than the source ({size} bytes)",
                img.size()
            ))
            .with_path(dst));
        }
        img
    } else {
        crate::create::create_sparing(dst, size, create, &src.file_ids())?;
        open.open(dst)?
    };
    // A new overlay (`-B`) takes only what the source's own top layer holds, as qemu-img
    // does: the backing file is taken to hold the rest.
    let new_overlay = create.backing_file.is_some() && !opts.target_exists;
    // Zeros must be written where the target may hold something else: under an overlay's
    // backing file, or in an existing target.
    let write_zeros =
        new_overlay || img.backing().is_some() || (opts.target_exists && !opts.target_is_zero);
    let fully = opts.min_sparse == 0;
    let (ahead, max_task) = sizing(threads, 1, MAX_TASK_SPARSE);
    let pool = Pool::default();
    let want: fn(&MapEntry) -> bool = if new_overlay {
        |e| e.depth == 0 && !matches!(e.target, MapTarget::Unallocated)
    } else if write_zeros || fully {
        |_| true
    } else {
        is_data
    };
    let planner = Planner::new(src, OUT_GRAIN, max_task, want);
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Filled> {
        let mut buf = pool.get();
        buf.resize((task.end - task.start) as usize, 0);
        opts.fill(task, &mut buf, scratch)?;
        let runs = if new_overlay {
            task.entries
                .iter()
                .map(|e| {
                    let s = (e.start - task.start) as usize;
                    (s, s + e.length as usize)
                })
                .collect()
        } else if write_zeros || fully {
            vec![(0, buf.len())]
        } else {
            nonzero_runs(&buf, OUT_GRAIN as usize)
        };
        Ok((buf, runs))
    };
    let mut consume = |task: &Task, (buf, runs): Filled| -> Result<()> {
        for (s, e) in runs {
            let off = task.start + s as u64;
            if write_zeros && !fully && is_zero(&buf[s..e]) {
                img.write_zeroes(off, (e - s) as u64, true)?;
            } else {
                img.write_at(&buf[s..e], off)?;
            }
        }
        pool.put(buf);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    // No sync, like qemu-img convert: callers wanting durability flush themselves.
    progress(size, size);
    Ok(())
}

/// Compress `src` into `writer` (a stream image of `src.size()` bytes, just begun) on all
/// worker threads and finish it: the engine under streamOptimized output, whatever the
/// destination (a file, a tar member, an upload).
pub fn convert_to_stream(
    src: &dyn Source,
    mut writer: StreamWriter,
    opts: &ConvertOptions,
    threads: usize,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    if writer.capacity() != size.next_multiple_of(SECTOR_SIZE) {
        return Err(Error::invalid(format!(
            "stream writer holds {} bytes, the source {size}",
            writer.capacity()
        )));
    }
    let threads = worker_count(threads);
    let level = opts.compression_level;
    GrainEncoder::new(level)?;
    let (ahead, max_task) = sizing(threads, 2, MAX_TASK);
    let pool = Pool::default();
    let planner = Planner::new(src, OUT_GRAIN, max_task, is_data);
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Encoded> {
        let mut buf = pool.get();
        buf.resize((task.end - task.start) as usize, 0);
        opts.fill(task, &mut buf, scratch)?;
        // The disk's last grain is compressed up to the sector-rounded capacity (readers
        // such as qemu-img refuse a grain that inflates to less than they read from it).
        buf.resize(buf.len().next_multiple_of(SECTOR_SIZE as usize), 0);
        if scratch.encoder.is_none() {
            scratch.encoder = Some(GrainEncoder::new(level)?);
        }
        let enc = scratch.encoder.as_mut().expect("made above");
        let mut records = pool.get();
        records.clear();
        let mut grains = Vec::new();
        for (i, g) in buf.chunks(OUT_GRAIN as usize).enumerate() {
            if is_zero(g) {
                continue;
            }
            let vstart = task.start + i as u64 * OUT_GRAIN;
            grains.push((vstart / OUT_GRAIN, records.len()));
            enc.encode(vstart / SECTOR_SIZE, g, &mut records)?;
        }
        pool.put(buf);
        Ok(Encoded { records, grains })
    };
    let mut consume = |task: &Task, e: Encoded| -> Result<()> {
        writer.write_encoded(&e.records, &e.grains)?;
        pool.put(e.records);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    writer.finish()?;
    progress(size, size);
    Ok(())
}

/// Result of [`compare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareResult {
    /// Same size and content.
    Identical,
    /// Contents differ first at this byte offset.
    DiffersAt(u64),
    /// Sizes differ (and the common part is identical).
    SizeDiffers {
        /// Size of the first.
        a: u64,
        /// Size of the second.
        b: u64,
    },
}

/// Virtual bytes per compare work item at most (mapped at once by the worker).
const COMPARE_CHUNK: u64 = 32 << 20;
/// Bytes read from each source at once when comparing.
const COMPARE_READ: u64 = 1 << 20;

/// Compare two sources byte for byte, skipping ranges both map as zero.
///
/// Like `qemu-img compare` without `-s`: when the sizes differ, the common part is compared
/// and the larger source's extra part must read as zeros. The result is then
/// [`CompareResult::SizeDiffers`] (qemu-img prints "Warning: Image size mismatch!" and
/// "Images are identical."), or [`CompareResult::DiffersAt`] the first non-zero byte of the
/// extra part. Offsets are exact bytes; qemu-img reports the 512-byte sector containing them
/// (`offset / 512 * 512`). A strict (`-s`) caller treats `SizeDiffers`, and a `DiffersAt`
/// at or past the smaller size, as a size mismatch.
///
/// The cost is proportional to the data and the map entries of the two sources, not to
/// their size: stretches where neither holds data are skipped without being read or cut
/// into work items.
pub fn compare(a: &dyn Source, b: &dyn Source, progress: Progress) -> Result<CompareResult> {
    compare_with(a, b, 0, progress)
}

/// Hands out compare work items front to back: ranges of at most [`COMPARE_CHUNK`] that
/// start where one of the sources holds data.
struct CompareItems<'a> {
    wa: MapWalker<'a>,
    wb: MapWalker<'a>,
    ea: Option<MapEntry>,
    eb: Option<MapEntry>,
    pos: u64,
    total: u64,
}

impl CompareItems<'_> {
    /// The entry of `w` covering `pos` (`cur` is the last one taken).
    fn covering(w: &mut MapWalker, cur: &mut Option<MapEntry>, pos: u64) -> Result<MapEntry> {
        loop {
            if let Some(e) = cur {
                if e.start + e.length > pos {
                    return Ok(e.clone());
                }
            }
            *cur = w.next()?;
            if cur.is_none() {
                return Err(Error::invalid(format!("map ends before offset {pos}")));
            }
        }
    }

    /// The next item `[start, end)`, or `None` when nothing is left.
    fn next(&mut self) -> Result<Option<(u64, u64)>> {
        while self.pos < self.total {
            let ea = Self::covering(&mut self.wa, &mut self.ea, self.pos)?;
            let eb = Self::covering(&mut self.wb, &mut self.eb, self.pos)?;
            if ea.target.is_data() || eb.target.is_data() {
                let start = self.pos;
                let end = (start + COMPARE_CHUNK).min(self.total);
                self.pos = end;
                return Ok(Some((start, end)));
            }
            self.pos = (ea.start + ea.length).min(eb.start + eb.length);
        }
        Ok(None)
    }
}

/// [`compare`] with an explicit worker count (0 = number of CPUs).
pub fn compare_with(
    a: &dyn Source,
    b: &dyn Source,
    threads: usize,
    progress: Progress,
) -> Result<CompareResult> {
    let (sa, sb) = (a.size(), b.size());
    let total = sa.max(sb);
    let threads = worker_count(threads);
    let items = Mutex::new(CompareItems {
        wa: MapWalker::new(a, 0, total),
        wb: MapWalker::new(b, 0, total),
        ea: None,
        eb: None,
        pos: 0,
        total,
    });
    let first_diff = AtomicU64::new(u64::MAX);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        let mut g = error.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    };
    progress(0, total);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut ba = Vec::new();
                let mut bb = Vec::new();
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let next = items.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let (start, end) = match next {
                        Ok(Some(item)) => item,
                        Ok(None) => return,
                        Err(e) => return fail(e),
                    };
                    if start >= first_diff.load(Ordering::Relaxed) {
                        return;
                    }
                    match compare_range(a, b, start, end, &first_diff, &mut ba, &mut bb) {
                        Ok(Some(off)) => {
                            first_diff.fetch_min(off, Ordering::Relaxed);
                        }
                        Ok(None) => {}
                        Err(e) => return fail(e),
                    }
                    // Items are handed out in order: everything before this one's end is
                    // done or being done. Reported monotonically across workers.
                    let d = done.fetch_max(end, Ordering::Relaxed).max(end);
                    progress(d, total);
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    progress(total, total);
    let d = first_diff.load(Ordering::Relaxed);
    Ok(if d != u64::MAX {
        CompareResult::DiffersAt(d)
    } else if sa != sb {
        CompareResult::SizeDiffers { a: sa, b: sb }
    } else {
        CompareResult::Identical
    })
}

/// Map `[start, end)` of `s`, or say it is all zeros past the source's end.
fn map_or_past_end(s: &dyn Source, start: u64, end: u64) -> Result<Vec<MapEntry>> {
    let size = s.size();
    let mut v = if start < size {
        s.map(start, end.min(size) - start)?
    } else {
        Vec::new()
    };
    if end > size {
        let from = start.max(size);
        v.push(MapEntry {
            start: from,
            length: end - from,
            target: MapTarget::Zero,
            depth: 0,
        });
    }
    Ok(v)
}

fn read_piece(e: &MapEntry, off: u64, buf: &mut [u8]) -> Result<()> {
    e.target.advanced(off - e.start).read_into(buf)
}

/// The first offset in `[start, end)` where `a` and `b` differ (past the end of the shorter
/// one, it counts as zeros). Gives up (`None`) on reaching `found_before`, a difference some
/// other worker already found.
fn compare_range(
    a: &dyn Source,
    b: &dyn Source,
    start: u64,
    end: u64,
    found_before: &AtomicU64,
    ba: &mut Vec<u8>,
    bb: &mut Vec<u8>,
) -> Result<Option<u64>> {
    let ma = map_or_past_end(a, start, end)?;
    let mb = map_or_past_end(b, start, end)?;
    let (mut i, mut j) = (0, 0);
    let mut pos = start;
    while pos < end {
        while ma[i].start + ma[i].length <= pos {
            i += 1;
        }
        while mb[j].start + mb[j].length <= pos {
            j += 1;
        }
        if pos >= found_before.load(Ordering::Relaxed) {
            // Another worker found an earlier difference.
            return Ok(None);
        }
        let (ea, eb) = (&ma[i], &mb[j]);
        let piece_end = (ea.start + ea.length)
            .min(eb.start + eb.length)
            .min(pos + COMPARE_READ);
        let len = (piece_end - pos) as usize;
        let (da, db) = (ea.target.is_data(), eb.target.is_data());
        if da || db {
            ba.resize(len, 0);
            bb.resize(len, 0);
            if da {
                read_piece(ea, pos, ba)?;
            }
            if db {
                read_piece(eb, pos, bb)?;
            }
            let found = match (da, db) {
                (true, true) => first_mismatch(ba, bb),
                (true, false) => first_nonzero(ba),
                _ => first_nonzero(bb),
            };
            if let Some(k) = found {
                return Ok(Some(pos + k as u64));
            }
        }
        pos = piece_end;
    }
    Ok(None)
}

fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    const BLK: usize = 4096;
    let mut off = 0;
    while off < a.len() {
        let e = (off + BLK).min(a.len());
        if a[off..e] != b[off..e] {
            return a[off..e]
                .iter()
                .zip(&b[off..e])
                .position(|(x, y)| x != y)
                .map(|k| off + k);
        }
        off = e;
    }
    None
}

fn first_nonzero(a: &[u8]) -> Option<usize> {
    const BLK: usize = 4096;
    let mut off = 0;
    while off < a.len() {
        let e = (off + BLK).min(a.len());
        if !is_zero(&a[off..e]) {
            return a[off..e].iter().position(|&x| x != 0).map(|k| off + k);
        }
        off = e;
    }
    None
}
