//! The engine under every conversion: the planner cuts the source's map into tasks, workers
//! fill them in parallel, and the calling thread consumes them in disk order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{mpsc, Condvar, Mutex};

use crate::error::{Error, Result};
use crate::extent::GrainEncoder;
use crate::extent::{MapEntry, MapTarget};
use crate::format::is_zero;
use crate::format::SECTOR_SIZE;
use crate::image::Disk;
use crate::ops::stream_writer::GRAIN_SECTORS;
use crate::storage::aligned_buf::AlignedBuf;

/// Largest task (virtual bytes one worker reads at once) when the writer copies its bytes:
/// small enough that a task's buffer is still in the CPU cache when the writer gets to it
/// (measured: 512 KiB costs a third less CPU than 4 MiB for VMDK -> raw; with page-aligned
/// buffers, 1 MiB took 10% and 2 MiB twice as much system time as 512 KiB).
pub(super) const MAX_TASK: u64 = 512 << 10;
/// Largest task when writing a sparse VMDK: bigger runs mean fewer, larger grain allocations
/// (measured: 4 MiB costs half the CPU of 256 KiB).
pub(super) const MAX_TASK_SPARSE: u64 = 4 << 20;
/// Map entries the planner asks for at a time.
pub(super) const PLAN_BATCH: usize = 1024;
/// Budget for task buffers in flight (input and output together).
pub(super) const IN_FLIGHT_BUDGET: u64 = 64 << 20;
/// Grain size used for output VMDK images.
pub(super) const OUT_GRAIN: u64 = GRAIN_SECTORS * SECTOR_SIZE;

pub(super) fn worker_count(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// One unit of work: the grain-aligned virtual range `[start, end)` and the stretches inside
/// it that need reading (clipped to it); everything else in the range reads as zeros.
#[derive(Debug)]
pub(super) struct Task {
    pub(super) index: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) entries: Vec<MapEntry>,
}

/// Cuts the source's map into tasks, front to back.
pub(super) struct Planner<'a> {
    src: &'a dyn Disk,
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
    pub(super) fn new(
        src: &'a dyn Disk,
        align: u64,
        max_task: u64,
        want: fn(&MapEntry) -> bool,
    ) -> Self {
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

    pub(super) fn next_task(&mut self) -> Result<Option<Task>> {
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

/// Reusable buffers, so steady-state conversion allocates (and page-faults) nothing. Data
/// buffers are [`AlignedBuf`]s: the kernel's copies to and from them run at full speed.
pub(super) struct Pool<T = AlignedBuf>(Mutex<Vec<T>>);

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Pool(Mutex::new(Vec::new()))
    }
}

impl<T: Default> Pool<T> {
    pub(super) fn get(&self) -> T {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }
    /// Return a buffer. Its contents are kept: users overwrite or zero what they use.
    pub(super) fn put(&self, v: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }
}

/// Per-worker scratch space.
#[derive(Default)]
pub(super) struct Scratch {
    /// Compressed bytes fetched in one read for a run of compressed grains.
    pub(super) span: AlignedBuf,
    /// One whole grain, for compressed stretches that cover part of a grain.
    pub(super) grain: Vec<u8>,
    pub(super) encoder: Option<GrainEncoder>,
}

/// Fill `buf` (length `task.end - task.start`) with the task's bytes.
pub(super) fn fill_task(task: &Task, buf: &mut [u8], scratch: &mut Scratch) -> Result<()> {
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
pub(super) struct Shared<'a> {
    planner: Planner<'a>,
    /// Tasks the writer has finished (the next one it wants has this index).
    consumed: u64,
    stop: bool,
}

/// Run `produce` on every task on `threads` workers and `consume` the results in task order
/// on the calling thread, with at most `ahead` tasks in flight.
pub(super) fn run_pipeline<T: Send>(
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
pub(super) fn sizing(threads: usize, per_task_factor: u64, max: u64) -> (u64, u64) {
    let ahead = 2 * threads as u64 + 2;
    let max_task = (IN_FLIGHT_BUDGET / (ahead * per_task_factor)).clamp(OUT_GRAIN * 4, max)
        / OUT_GRAIN
        * OUT_GRAIN;
    (ahead, max_task)
}

/// Byte runs `[start, end)` of `buf` not made of all-zero `block`-sized blocks (a short last
/// block counts as a block).
pub(super) fn nonzero_runs(buf: &[u8], block: usize) -> Vec<(usize, usize)> {
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
pub(super) type Filled = (AlignedBuf, Vec<(usize, usize)>);

pub(super) fn is_data(e: &MapEntry) -> bool {
    e.target.is_data()
}
