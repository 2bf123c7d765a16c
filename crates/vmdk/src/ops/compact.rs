//! Compacting a sparse image (what `vmware-vdiskmanager -k` does): in every writable hosted
//! sparse extent, grains holding only zeros stop being stored, the remaining grains move
//! down into the holes so the used space is contiguous, and the file is cut after it.
//!
//! Content never changes, so the CID stays (children stay valid). The image must check
//! clean first; each extent is then compacted in turn by `SparseExtent::compact`
//! (`extent/compact.rs`, which has the steps and their crash ordering).

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::{ExtentKind, SparseExtent};
use crate::format::descriptor::{ExtentAccess, CID_NONE};
use crate::image::{Image, OpenOptions};

pub use crate::extent::CompactStats;

/// Compact the image at `path` (opened for writing as `open` says, without its backing
/// chain). `progress` gets (steps done, steps total). The image must check clean: compacting
/// through corrupt tables could destroy data.
pub fn compact(
    path: &Path,
    open: &OpenOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CompactStats> {
    let img = OpenOptions {
        open_backing: false,
        ..open.for_writing(path)?
    }
    .open(path)?;
    let extents = compactable_extents(&img)?;
    let report = crate::ops::check::check(&img)?;
    if report.corruption_count() > 0 || report.check_errors > 0 {
        return Err(Error::corrupt(
            "the image has errors; repair it ('check -r all') before compacting",
        )
        .with_path(path));
    }
    let d = img.descriptor();
    let has_backing = d.parent_file_name_hint.is_some() || d.parent_cid != CID_NONE;
    let mut stats = CompactStats::default();
    let total = extents.len() as u64 * 2;
    for (k, s) in extents.iter().enumerate() {
        let step = |part: u64, frac: f64| {
            let base = k as u64 * 2 + part;
            progress(base * 1000 + (frac * 1000.0) as u64, total * 1000)
        };
        s.compact(has_backing, &mut stats, &step)?;
    }
    progress(total * 1000, total * 1000);
    Ok(stats)
}

/// The distinct writable sparse extents of `img`, refusing the kinds that cannot be
/// compacted.
fn compactable_extents(img: &Image) -> Result<Vec<Arc<SparseExtent>>> {
    let mut out: Vec<Arc<SparseExtent>> = Vec::new();
    for e in img.extents() {
        let ExtentKind::Sparse(s) = &e.kind else {
            continue;
        };
        s.check_compactable()?;
        if e.access == ExtentAccess::ReadWrite && !out.iter().any(|o| Arc::ptr_eq(o, s)) {
            out.push(s.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::unsupported(
            "the image has no writable sparse extent: only sparse images can be compacted",
        )
        .with_path(img.path()));
    }
    Ok(out)
}
