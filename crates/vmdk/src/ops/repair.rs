//! `check -r leaks|all` (`qemu-img check -r`): repair what [`crate::ops::check`] finds, then check
//! again.
//!
//! * **Leaks** (both modes): space no table references is cut off the end of the file or
//!   punched out of it, unless the check could not account for all used space.
//! * **Corruptions** (`all` only): grain-table entries pointing past the end of the file or
//!   into metadata, redundant tables that disagree with the primary ones, and tables lying
//!   past the end of the file, fixed in rounds (a fix can reveal another), the image
//!   opened again after each.
//!
//! The fixes to one extent, their rules and their crash ordering are the extent's
//! (`SparseExtent::fix_tables` and `SparseExtent::fix_leaks`, `extent/repair.rs`); this
//! module runs the checks and rounds around them.

use std::path::Path;

use crate::error::{Error, Result};
use crate::extent::{ExtentFindings, ExtentKind, SparseExtent};
use crate::image::{Image, OpenOptions};
use crate::ops::check::{check_with_findings, CheckReport};

/// What `check -r` repairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairMode {
    /// Leaked space only (`-r leaks`).
    Leaks,
    /// Leaked space and corruptions (`-r all`).
    All,
}

/// The result of a repair: the check of the repaired image, with
/// [`CheckReport::leaks_fixed`] and [`CheckReport::corruptions_fixed`] set, and notes on
/// what was found but left as it was.
#[derive(Debug, Clone, Default)]
pub struct RepairOutcome {
    /// The check run after the repair (qemu-img's "Double checking the fixed image now").
    pub report: CheckReport,
    /// What was not repaired, and why.
    pub notes: Vec<String>,
}

/// Rounds of table fixes at most: a fix can reveal another (a redundant copy taken over
/// the primary may hold entries into metadata, which the next check finds).
const MAX_ROUNDS: usize = 4;

/// Repair the image at `path` (not its backing chain), opened with `open`'s paths and
/// locking but writable; see the module documentation for what is repaired.
pub fn repair(path: &Path, mode: RepairMode, open: &OpenOptions) -> Result<RepairOutcome> {
    let writable = OpenOptions {
        open_backing: false,
        ..open.for_writing(path)?
    };
    let mut img = writable.open(path)?;
    for e in img.extents() {
        if let ExtentKind::Sparse(s) = &e.kind {
            if !s.is_hosted() || s.has_markers() {
                return Err(Error::unsupported(
                    "only hosted sparse extents can be repaired (not stream, COWD or seSparse \
                     extents)",
                )
                .with_path(path));
            }
        }
    }
    let mut notes = Vec::new();
    let (before, _) = check_with_findings(&img);
    let inconsistencies = |r: &CheckReport| r.corruption_count() + r.warnings.len() as u64;
    let mut corruptions_fixed = 0;
    if mode == RepairMode::All {
        for _ in 0..MAX_ROUNDS {
            let (_, findings) = check_with_findings(&img);
            let mut changed = false;
            for f in &findings {
                if let Some(s) = sparse(&img, f) {
                    changed |= s.fix_tables(f)?;
                }
            }
            if !changed {
                break;
            }
            // Opened again so nothing cached from before the fixes is used.
            drop(img);
            img = writable.open(path)?;
        }
        let (after, _) = check_with_findings(&img);
        corruptions_fixed = inconsistencies(&before).saturating_sub(inconsistencies(&after));
    }
    let (leaky, findings) = check_with_findings(&img);
    for f in &findings {
        if let Some(s) = sparse(&img, f) {
            s.fix_leaks(f, &mut notes)?;
        }
    }
    drop(img);
    let img = OpenOptions {
        open_backing: false,
        ..open.clone()
    }
    .open(path)?;
    let (mut report, _) = check_with_findings(&img);
    report.leaks_fixed = leaky.leaked_clusters.saturating_sub(report.leaked_clusters);
    report.corruptions_fixed = corruptions_fixed;
    Ok(RepairOutcome { report, notes })
}

fn sparse<'a>(img: &'a Image, f: &ExtentFindings) -> Option<&'a SparseExtent> {
    match &img.extents().get(f.extent)?.kind {
        ExtentKind::Sparse(s) => Some(s),
        _ => None,
    }
}
