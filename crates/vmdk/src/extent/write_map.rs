//! The write-side counterpart of [`SparseExtent::map`]: for a range of a sparse extent and
//! what a write does there (a [`WriteOp`]), what each run of grains is (allocated in place,
//! to allocate, to point at a zeroed or unallocated entry, or already as wanted), with the
//! write guard's checks made on the way.
//!
//! `write`, `write_zeroes`, `discard` and the pre-write check (`check_write_targets`) are all
//! this one walk, [`SparseExtent::map_for_write`]; they differ only in what they do with the
//! runs it hands out. An entry that stops pointing at a grain gives the grain's space back
//! (after the walk: see `sparse_write.rs`). Without an `apply` step the walk only checks (nothing is written, no
//! table is created), which is how a write is refused before the first byte lands. With one,
//! entry-only changes are made by the walk, and runs that store bytes are handed over: in
//! place at a host offset, or as an [`Allocation`] (grains locked, space reserved) that the
//! caller fills and then publishes, in the crash-ordering rule's order.

use crate::error::{Error, ErrorKind, Result};
use crate::extent::allocation::Allocation;
use crate::extent::sparse::{GrainEntry, SparseExtent};

/// Most grains one allocation takes, bounding the staging buffer for partial grains.
const MAX_RUN: u64 = 512;

/// What a write is about to do to a range of a sparse extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// Store data (allocating grains where needed).
    Data,
    /// Write zeros: whole grains become zeroed-grain entries where the extent has them,
    /// unallocated where that reads as zeros (and `may_unmap`), and are written with zeros
    /// otherwise.
    Zeroes {
        /// Whether grains may be left unallocated (NBD's NO_HOLE clears it).
        may_unmap: bool,
        /// Whether no backing file shows through unallocated grains.
        hides_nothing: bool,
    },
    /// Deallocate whole grains where the result still reads as zeros (advisory).
    Discard {
        /// Whether no backing file shows through unallocated grains.
        hides_nothing: bool,
    },
}

/// What a write does to one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Write the bytes into the grain, stored uncompressed at this host offset.
    InPlace(u64),
    /// Allocate the grain and write its bytes there.
    Allocate,
    /// Point the grain's entry at this zeroed or unallocated entry: nothing to write first.
    Set(GrainEntry),
    /// Nothing: the grain already reads as the write wants.
    Nothing,
}

impl WriteOp {
    /// Whether the op leaves a grain past the extent's capacity alone (it reads as
    /// unallocated there, which is what the op wants).
    fn reads_as_wanted_unallocated(self) -> bool {
        match self {
            WriteOp::Data => false,
            WriteOp::Zeroes {
                may_unmap,
                hides_nothing,
            } => may_unmap && hides_nothing,
            WriteOp::Discard { .. } => true,
        }
    }

    /// What this op does to a grain whose entry is `entry`; `whole` when the op covers all
    /// of the grain. `None`: the grain is compressed and cannot be overwritten.
    fn action(
        self,
        entry: GrainEntry,
        whole: bool,
        zero_grain: bool,
        compressed: bool,
    ) -> Option<Action> {
        let store = || match entry {
            GrainEntry::Data(g) => Some(Action::InPlace(g)),
            GrainEntry::Compressed(_) => None,
            GrainEntry::Unallocated | GrainEntry::Zero => Some(Action::Allocate),
        };
        let set = |target: GrainEntry| {
            Some(if entry == target {
                Action::Nothing
            } else {
                Action::Set(target)
            })
        };
        match self {
            WriteOp::Data => store(),
            WriteOp::Zeroes {
                may_unmap,
                hides_nothing,
            } => {
                let unmap = may_unmap && hides_nothing;
                if whole && zero_grain && !compressed {
                    set(GrainEntry::Zero)
                } else if entry == GrainEntry::Zero || (unmap && entry == GrainEntry::Unallocated) {
                    Some(Action::Nothing)
                } else if whole && unmap && !compressed {
                    // Unallocated reads as zeros: the grain's space can go back.
                    set(GrainEntry::Unallocated)
                } else {
                    store()
                }
            }
            WriteOp::Discard { hides_nothing } => {
                if compressed || !whole {
                    Some(Action::Nothing)
                } else if hides_nothing {
                    set(GrainEntry::Unallocated)
                } else if zero_grain {
                    set(GrainEntry::Zero)
                } else {
                    Some(Action::Nothing)
                }
            }
        }
    }
}

/// Where a run of a write stores its bytes.
pub(crate) enum RunTarget<'a> {
    /// Allocated grains stored uncompressed and contiguously: the run's first byte goes to
    /// this host offset.
    InPlace {
        /// Host offset of the run's first byte.
        host: u64,
    },
    /// New grains, locked, with space reserved: write them, then publish.
    Allocate(Allocation<'a>),
}

/// One run of grains a write stores bytes into.
pub(crate) struct WriteRun<'a> {
    /// First extent-relative byte of the request the run covers.
    pub start: u64,
    /// End of the part of the request the run covers.
    pub end: u64,
    /// Where the bytes go.
    pub target: RunTarget<'a>,
}

/// What to do with the runs that store bytes, and whether the write is durable.
pub(crate) type Apply<'f> = (&'f mut dyn FnMut(WriteRun<'_>) -> Result<()>, bool);

impl SparseExtent {
    /// Walk `[off, off+len)` (extent-relative) for `op`: every grain's action is decided
    /// from its entry, consecutive grains doing the same are one run, and every run is
    /// checked by the write guard (no write through a corrupt table onto metadata or past
    /// the end of the file). With `apply`, runs are also carried out: entry changes here,
    /// byte-storing runs by the caller's function, one call per run.
    pub(crate) fn map_for_write(
        &self,
        off: u64,
        len: u64,
        op: WriteOp,
        mut apply: Option<Apply<'_>>,
    ) -> Result<()> {
        self.check_writable()?;
        let dir = &self.dir;
        let gs = self.grain_size;
        let gt_entries = dir.coding().gt_entries;
        let cover = gs * gt_entries;
        let (zero_grain, compressed) = (self.has_zero_grains(), self.compressed);
        let end = off
            .checked_add(len)
            .ok_or_else(|| Error::invalid("write range overflows").with_path(&self.file.path))?;
        // Past the header's capacity (or a directory too short for it) nothing is stored.
        let stored_end = self.capacity.min((dir.len() as u64).saturating_mul(cover));
        if end > stored_end && !op.reads_as_wanted_unallocated() {
            return Err(Error::invalid(format!(
                "write past the extent's capacity ({} bytes)",
                self.capacity
            ))
            .with_path(&self.file.path));
        }
        let stop = end.min(stored_end);
        let whole = |g: u64| g * gs >= off && (g + 1) * gs <= end;
        let action = |entry: GrainEntry, g: u64| {
            op.action(entry, whole(g), zero_grain, compressed)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::ReadOnly,
                        "cannot overwrite an allocated grain of a compressed (streamOptimized) image",
                    )
                    .with_path(&self.file.path)
                })
        };
        let guard = if off < stop { Some(dir.guard()) } else { None };
        // Places looked up here are written in place below: none may be given to another
        // grain meanwhile (see `GrainDirectory::release_cleared`).
        let _gate = apply.is_some().then(|| dir.reading());
        let mut pos = off;
        while pos < stop {
            let guard = guard.expect("made when there is something to walk");
            let grain = pos / gs;
            let gd_index = (grain / gt_entries) as usize;
            let table_end = ((gd_index as u64 + 1) * cover).min(stop);
            let table = dir.table(gd_index)?;
            let entry = |g: u64| match &table {
                Some(t) => dir.decode(t.get((g % gt_entries) as usize)),
                None => Ok(GrainEntry::Unallocated),
            };
            let first = action(entry(grain)?, grain)?;
            if let Action::InPlace(h) = first {
                guard.check_grain(dir, grain, h)?;
            }
            // The grains of this table the run may take (exclusive end).
            let last = (table_end - 1) / gs + 1;
            let limit = match first {
                Action::Allocate => last.min(grain + MAX_RUN),
                _ => last,
            };
            let mut next = grain + 1;
            if table.is_none() {
                // Every grain is unallocated: all whole ones do the same, so jump over them.
                let whole_end = if whole(last - 1) { last } else { last - 1 };
                if next < whole_end && action(GrainEntry::Unallocated, next)? == first {
                    next = whole_end.min(limit);
                }
            }
            while next < limit {
                let a = action(entry(next)?, next)?;
                let joins = match (first, a) {
                    (Action::InPlace(h0), Action::InPlace(h)) => h == h0 + (next - grain) * gs,
                    _ => a == first,
                };
                if !joins {
                    break;
                }
                if let Action::InPlace(h) = a {
                    guard.check_grain(dir, next, h)?;
                }
                next += 1;
            }
            let run_end = (next * gs).min(table_end);
            // Runs that change entries need the table, or the directory to add it.
            if matches!(first, Action::Allocate | Action::Set(_)) && table.is_none() {
                guard.check_directory(dir)?;
            } else if first != Action::Nothing {
                guard.check_table(dir, gd_index)?;
            }
            let Some((store, durable)) = apply.as_mut() else {
                pos = run_end;
                continue;
            };
            match first {
                Action::Nothing => {}
                Action::Set(e) => dir.set_entries(grain..next, e, *durable)?,
                Action::InPlace(h) => store(WriteRun {
                    start: pos,
                    end: run_end,
                    target: RunTarget::InPlace { host: h + pos % gs },
                })?,
                Action::Allocate => {
                    let Some(a) = dir.allocate(grain..next, *durable)? else {
                        // The first grain was allocated meanwhile: look again.
                        continue;
                    };
                    let a_end = (a.grains().end * gs).min(run_end);
                    store(WriteRun {
                        start: pos,
                        end: a_end,
                        target: RunTarget::Allocate(a),
                    })?;
                    pos = a_end;
                    continue;
                }
            }
            pos = run_end;
        }
        Ok(())
    }
}
