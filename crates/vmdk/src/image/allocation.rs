//! What one layer of a chain holds itself, as qemu's `bdrv_is_allocated` answers it (a
//! zeroed grain counts as allocated: it hides the backing file), merged into runs and
//! walked in bounded batches: qemu-io's `map` and `alloc`.

use std::collections::VecDeque;

use crate::error::{Error, Result};
use crate::extent::{MapEntry, MapTarget};
use crate::image::Image;

/// Entries asked of the image at a time.
const BATCH: usize = 1024;

/// A stretch `[start, start + length)` that the image itself holds (`allocated`), or that
/// falls through to its backing chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationRun {
    /// Virtual offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Whether the image itself holds it (data, compressed or zeroed grains).
    pub allocated: bool,
}

/// Yields the [`AllocationRun`]s of `[start, end)` of one image (not its backing chain), in
/// order, each as long as it runs: a huge unallocated stretch is one step.
#[derive(Debug)]
pub struct AllocationWalker<'a> {
    img: &'a Image,
    end: u64,
    /// Where the next batch starts.
    next_map: u64,
    queue: VecDeque<MapEntry>,
}

impl<'a> AllocationWalker<'a> {
    /// A walker over `[start, end)` of `img` (`end` is cut at the image's end); a `start`
    /// past the end is an error, as qemu-io's.
    pub fn new(img: &'a Image, start: u64, end: u64) -> Result<Self> {
        img.map_layer(start, 0)?;
        Ok(AllocationWalker {
            img,
            end: end.min(img.size()),
            next_map: start,
            queue: VecDeque::new(),
        })
    }

    fn next_entry(&mut self) -> Result<Option<MapEntry>> {
        if self.queue.is_empty() && self.next_map < self.end {
            let batch =
                self.img
                    .map_layer_prefix(self.next_map, self.end - self.next_map, BATCH)?;
            match batch.last() {
                Some(e) if e.start + e.length > self.next_map => self.next_map = e.start + e.length,
                _ => {
                    return Err(Error::invalid(format!(
                        "mapping made no progress at offset {}",
                        self.next_map
                    )))
                }
            }
            self.queue.extend(batch);
        }
        Ok(self.queue.pop_front())
    }

    /// The next run, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // fallible: Iterator would hide the Result
    pub fn next(&mut self) -> Result<Option<AllocationRun>> {
        let Some(first) = self.next_entry()? else {
            return Ok(None);
        };
        let allocated = |e: &MapEntry| !matches!(e.target, MapTarget::Unallocated);
        let mut run = AllocationRun {
            start: first.start,
            length: first.length,
            allocated: allocated(&first),
        };
        while let Some(e) = self.next_entry()? {
            if allocated(&e) != run.allocated {
                self.queue.push_front(e);
                break;
            }
            run.length += e.length;
        }
        Ok(Some(run))
    }
}

/// How many bytes of `[start, start + len)` the image itself holds (qemu-io's `alloc`).
pub fn allocated_bytes(img: &Image, start: u64, len: u64) -> Result<u64> {
    let mut walker = AllocationWalker::new(img, start, start.saturating_add(len))?;
    let mut sum = 0;
    while let Some(run) = walker.next()? {
        if run.allocated {
            sum += run.length;
        }
    }
    Ok(sum)
}
