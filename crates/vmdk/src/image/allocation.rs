//! What one layer of a chain holds itself, as qemu's `bdrv_is_allocated` answers it (a
//! zeroed grain counts as allocated: it hides the backing file), merged into runs and
//! walked in bounded batches: qemu-io's `map` and `alloc`.

use crate::error::Result;
use crate::extent::{MapEntry, MapTarget};
use crate::image::walk::MapWalker;
use crate::image::Image;

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
pub struct AllocationWalker<'a> {
    entries: MapWalker<'a>,
    /// An entry taken that starts the next run.
    pending: Option<MapEntry>,
}

impl<'a> AllocationWalker<'a> {
    /// A walker over `[start, end)` of `img` (`end` is cut at the image's end); a `start`
    /// past the end is an error, as qemu-io's.
    pub fn new(img: &'a Image, start: u64, end: u64) -> Result<Self> {
        img.map_layer(start, 0)?;
        Ok(AllocationWalker {
            entries: MapWalker::layer(img, start, end.min(img.size())),
            pending: None,
        })
    }

    /// The next run, or `None` at the end.
    #[allow(clippy::should_implement_trait)] // fallible: Iterator would hide the Result
    pub fn next(&mut self) -> Result<Option<AllocationRun>> {
        let first = match self.pending.take() {
            Some(e) => e,
            None => match self.entries.next()? {
                Some(e) => e,
                None => return Ok(None),
            },
        };
        let allocated = |e: &MapEntry| !matches!(e.target, MapTarget::Unallocated);
        let mut run = AllocationRun {
            start: first.start,
            length: first.length,
            allocated: allocated(&first),
        };
        while let Some(e) = self.entries.next()? {
            if allocated(&e) != run.allocated {
                self.pending = Some(e);
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
