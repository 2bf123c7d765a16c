//! Comparing two sources byte for byte, skipping what both map as zero.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::options::*;
use super::pipeline::*;
use crate::error::{Error, Result};
use crate::extent::{MapEntry, MapTarget};
use crate::format::is_zero;
use crate::image::walk::PairWalker;
use crate::image::Disk;
use crate::storage::aligned_buf::AlignedBuf;

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

/// Which step of a comparison failed, as `qemu-img compare` tells them apart in its exit
/// status: mapping a stretch ("Sector allocation test failed", 3) or reading it ("Error
/// while reading offset ...", 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareStage {
    /// Asking a source what a stretch holds (its map, qemu's block status).
    Allocation,
    /// Reading a stretch's bytes (a short read, bad compressed data, ...).
    Read,
}

/// A comparison that could not finish: the [`Error`], and the step it failed at.
#[derive(Debug)]
pub struct CompareError {
    /// The step that failed.
    pub stage: CompareStage,
    /// What went wrong.
    pub error: Error,
}

impl CompareError {
    /// `qemu-img compare`'s exit status for this failure: 3 when mapping failed, 4 when
    /// reading did (2, an image that does not open, comes before any comparison).
    pub fn qemu_exit_code(&self) -> u8 {
        match self.stage {
            CompareStage::Allocation => 3,
            CompareStage::Read => 4,
        }
    }
}

impl std::fmt::Display for CompareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for CompareError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.error.source()
    }
}

impl From<CompareError> for Error {
    fn from(e: CompareError) -> Error {
        e.error
    }
}

fn at_stage(stage: CompareStage) -> impl Fn(Error) -> CompareError {
    move |error| CompareError { stage, error }
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
pub fn compare(
    a: &dyn Disk,
    b: &dyn Disk,
    progress: Progress,
) -> std::result::Result<CompareResult, CompareError> {
    compare_with(a, b, 0, progress)
}

/// Hands out compare work items front to back: ranges of at most [`COMPARE_CHUNK`] that
/// start where one of the sources holds data.
struct CompareItems<'a> {
    pairs: PairWalker<'a>,
    total: u64,
}

impl CompareItems<'_> {
    /// The next item `[start, end)`, or `None` when nothing is left.
    fn next(&mut self) -> std::result::Result<Option<(u64, u64)>, CompareError> {
        while let Some((start, _, ea, eb)) = self
            .pairs
            .next()
            .map_err(at_stage(CompareStage::Allocation))?
        {
            if ea.target.is_data() || eb.target.is_data() {
                let end = (start + COMPARE_CHUNK).min(self.total);
                self.pairs.skip_to(end);
                return Ok(Some((start, end)));
            }
        }
        Ok(None)
    }
}

/// The first offset below `end` where one source has something allocated (anything but
/// [`MapTarget::Unallocated`]) and the other does not: `qemu-img compare -s`'s block-status
/// comparison. Huge unallocated stretches cost one step.
pub fn first_allocation_difference(
    a: &dyn Disk,
    b: &dyn Disk,
    end: u64,
) -> std::result::Result<Option<u64>, CompareError> {
    let allocated = |t: &MapTarget| !matches!(t, MapTarget::Unallocated);
    let mut pairs = PairWalker::new(a, b, 0, end);
    while let Some((start, _, ea, eb)) = pairs.next().map_err(at_stage(CompareStage::Allocation))? {
        if allocated(&ea.target) != allocated(&eb.target) {
            return Ok(Some(start));
        }
    }
    Ok(None)
}

/// [`compare`] with an explicit worker count (0 = number of CPUs).
pub fn compare_with(
    a: &dyn Disk,
    b: &dyn Disk,
    threads: usize,
    progress: Progress,
) -> std::result::Result<CompareResult, CompareError> {
    let (sa, sb) = (a.size(), b.size());
    let total = sa.max(sb);
    let threads = worker_count(threads);
    let items = Mutex::new(CompareItems {
        pairs: PairWalker::new(a, b, 0, total),
        total,
    });
    let first_diff = AtomicU64::new(u64::MAX);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let error: Mutex<Option<CompareError>> = Mutex::new(None);
    let fail = |e: CompareError| {
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
                // Page-aligned: reads into them run at the kernel's full copy speed.
                let mut ba = AlignedBuf::new();
                let mut bb = AlignedBuf::new();
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

fn read_piece(e: &MapEntry, off: u64, buf: &mut [u8]) -> Result<()> {
    e.target.advanced(off - e.start).read_into(buf)
}

/// The first offset in `[start, end)` where `a` and `b` differ (past the end of the shorter
/// one, it counts as zeros). Gives up (`None`) on reaching `found_before`, a difference some
/// other worker already found.
fn compare_range(
    a: &dyn Disk,
    b: &dyn Disk,
    start: u64,
    end: u64,
    found_before: &AtomicU64,
    ba: &mut AlignedBuf,
    bb: &mut AlignedBuf,
) -> std::result::Result<Option<u64>, CompareError> {
    // Walked in batches, not mapped whole: an item's map can hold 65,536 entries per source
    // (512-byte clusters alternating data and holes) on every worker at once.
    let mut pairs = PairWalker::new(a, b, start, end);
    let read_error = at_stage(CompareStage::Read);
    while let Some((pos, stretch_end, ea, eb)) =
        pairs.next().map_err(at_stage(CompareStage::Allocation))?
    {
        let (da, db) = (ea.target.is_data(), eb.target.is_data());
        if !(da || db) {
            continue;
        }
        let mut at = pos;
        while at < stretch_end {
            if at >= found_before.load(Ordering::Relaxed) {
                // Another worker found an earlier difference.
                return Ok(None);
            }
            let piece_end = stretch_end.min(at + COMPARE_READ);
            let len = (piece_end - at) as usize;
            ba.resize(len, 0);
            bb.resize(len, 0);
            if da {
                read_piece(&ea, at, ba).map_err(&read_error)?;
            }
            if db {
                read_piece(&eb, at, bb).map_err(&read_error)?;
            }
            let found = match (da, db) {
                (true, true) => first_mismatch(ba, bb),
                (true, false) => first_nonzero(ba),
                _ => first_nonzero(bb),
            };
            if let Some(k) = found {
                return Ok(Some(at + k as u64));
            }
            at = piece_end;
        }
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
