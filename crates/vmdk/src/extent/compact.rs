//! Compacting a hosted sparse extent (what `vmware-vdiskmanager -k` does to each one, see
//! `ops/compact.rs`): grains holding only zeros stop being stored, the remaining grains move
//! down into the holes so the used space is contiguous, and the file is cut after it.
//!
//! Three steps, each obeying the crash-ordering rule (ARCHITECTURE.md), checked by
//! `tests/integration/crash_cut.rs`:
//!
//! 1. **Zero grains**: their entries become unallocated (zeroed-grain entries when a backing
//!    file would otherwise show through; kept when the extent has no such entries), primary
//!    table then redundant one. Nothing is written first: the old grain is only leaked. The
//!    file is flushed before step 2 may write over such a grain.
//! 2. **Moves**: the holes are the space no metadata and no entry (of either table copy)
//!    uses once step 1 is durable. Grains are taken from the top of the file and copied
//!    into the lowest holes in batches; a batch's copies are flushed before the entries
//!    switch to them. A grain's old place is never written again in this pass (holes lie
//!    below every grain still to move), so a crash at any point leaves each entry at a
//!    complete copy of the same bytes.
//! 3. **Truncate**: the tables are flushed, then the file is cut after its last used byte.
//!
//! Grain tables stay where they are (QEMU and our `create` put them all in the front).

use crate::error::{Error, Result};
use crate::extent::grain_directory::GrainDirectory;
use crate::extent::sparse::{SparseExtent, SparseFlavor};
use crate::format::grain_entry::{self, GrainEntry};
use crate::format::SECTOR_SIZE;

/// Grains copied between two flushes.
const MOVE_BATCH: usize = 256;

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Bytes of the sparse extent files before.
    pub size_before: u64,
    /// Bytes of the sparse extent files after.
    pub size_after: u64,
    /// Grains that held only zeros and are no longer stored.
    pub zero_grains: u64,
    /// Grains moved down into holes.
    pub moved_grains: u64,
}

impl SparseExtent {
    /// Refuse the extents that cannot be compacted: stream files, COWD and seSparse.
    pub(crate) fn check_compactable(&self) -> Result<()> {
        let refuse = |what: &str| {
            Err(Error::unsupported(format!("{what} cannot be compacted"))
                .with_path(&self.file().path))
        };
        if self.is_compressed() || self.has_footer() {
            return refuse("streamOptimized images (already compact)");
        }
        match self.flavor() {
            SparseFlavor::Vmdk4 => {}
            SparseFlavor::Cowd => return refuse("vmfsSparse (COWD) extents"),
            SparseFlavor::SeSparse => return refuse("seSparse extents"),
        }
        Ok(())
    }

    /// Compact this extent (the three steps of the module documentation), adding what it did
    /// to `stats`. `has_backing`: whether the image has a backing file, which unallocated
    /// grains would show. `progress` gets (step, fraction done) for steps 0 (zero grains)
    /// and 1 (moves).
    pub(crate) fn compact(
        &self,
        has_backing: bool,
        stats: &mut CompactStats,
        progress: &dyn Fn(u64, f64),
    ) -> Result<()> {
        let dir = &self.dir;
        let storage = &dir.file().storage;
        let len = storage.len().map_err(io_err(dir, "getting file size"))?;
        stats.size_before += len;
        let gs = self.grain_size();
        let gt_entries = dir.coding().gt_entries as usize;
        let mut buf = vec![0u8; gs as usize];

        // 1. Zero grains stop being stored.
        let unstored = if !has_backing {
            Some(GrainEntry::Unallocated)
        } else if self.has_zero_grains() {
            Some(GrainEntry::Zero)
        } else {
            None // the backing file would show through: keep them
        };
        let mut live: Vec<Stored> = Vec::new();
        for i in 0..dir.len() {
            progress(0, i as f64 / dir.len() as f64);
            let Some(table) = dir.table(i)? else {
                continue;
            };
            for slot in 0..gt_entries {
                let GrainEntry::Data(at) = dir.decode(table.get(slot))? else {
                    continue;
                };
                if let Some(target) = unstored {
                    read_grain(dir, &mut buf, at)?;
                    if crate::format::is_zero(&buf) {
                        dir.publish(i, &table, slot, &[target], false)?;
                        stats.zero_grains += 1;
                        continue;
                    }
                }
                live.push(Stored { at, table: i, slot });
            }
        }
        // No table may point at a zero grain any more before anything is written over it.
        dir.sync()?;

        // 2. Move grains from the top into the lowest holes.
        let holes = holes(&used_space(self, len)?);
        let moves = plan_moves(&mut live, holes, gs);
        for (b, batch) in moves.chunks(MOVE_BATCH).enumerate() {
            progress(1, (b * MOVE_BATCH) as f64 / moves.len() as f64);
            for (g, to) in batch {
                read_grain(dir, &mut buf, g.at)?;
                storage
                    .write_at(&buf, *to)
                    .map_err(io_err(dir, "copying a grain"))?;
            }
            // The copies are durable before any entry points at them.
            dir.sync()?;
            for (g, to) in batch {
                let table = dir.table(g.table)?.ok_or_else(|| {
                    Error::corrupt("grain table vanished").with_path(&dir.file().path)
                })?;
                dir.publish(g.table, &table, g.slot, &[GrainEntry::Data(*to)], false)?;
            }
        }
        stats.moved_grains += moves.len() as u64;

        // 3. Cut the file after the last used byte, once the tables are durable.
        let grains_end = live
            .iter()
            .map(|g| g.at + gs)
            .chain(moves.iter().map(|(_, to)| to + gs))
            .max()
            .unwrap_or(0);
        let end = metadata_end(self, dir)?
            .max(grains_end)
            .next_multiple_of(SECTOR_SIZE);
        dir.sync()?;
        if end < len {
            storage
                .set_len(end)
                .map_err(io_err(dir, "truncating the compacted extent"))?;
            dir.sync()?;
        }
        stats.size_after += end.min(len);
        Ok(())
    }
}

fn io_err<'a>(dir: &'a GrainDirectory, what: &'a str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(e, what).with_path(&dir.file().path)
}

/// Read the grain at `at` (zeros past the end of the file).
fn read_grain(dir: &GrainDirectory, buf: &mut [u8], at: u64) -> Result<()> {
    buf.fill(0);
    let storage = &dir.file().storage;
    let mut done = 0;
    while done < buf.len() {
        let n = storage
            .read_at(&mut buf[done..], at + done as u64)
            .map_err(io_err(dir, "reading a grain"))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(())
}

/// One stored grain: where it is and which entry points at it.
#[derive(Debug, Clone, Copy)]
struct Stored {
    at: u64,
    table: usize,
    slot: usize,
}

/// End of the metadata: header, descriptor, directories, every grain table (both copies),
/// and at least the header's `overhead` (readers expect the file to reach it).
fn metadata_end(s: &SparseExtent, dir: &GrainDirectory) -> Result<u64> {
    let table_bytes = dir.coding().table_bytes().next_multiple_of(SECTOR_SIZE);
    let mut end = s
        .header()
        .map_or(0, |h| h.overhead.saturating_mul(SECTOR_SIZE));
    for (_, _, e) in dir.fixed_regions() {
        end = end.max(e);
    }
    for i in 0..dir.len() {
        let copies = [
            dir.table_offset(i)?,
            dir.redundant_table_offset(i).filter(|&o| o != 0),
        ];
        for off in copies.into_iter().flatten() {
            end = end.max(off + table_bytes);
        }
    }
    Ok(end)
}

/// Every byte range in use, sorted: metadata, and the grains of both table copies.
fn used_space(s: &SparseExtent, len: u64) -> Result<Vec<(u64, u64)>> {
    let dir = s.directory();
    let gs = s.grain_size();
    let table_bytes = dir.coding().table_bytes();
    let mut used: Vec<(u64, u64)> = vec![(0, metadata_start_end(s))];
    for (_, a, b) in dir.fixed_regions() {
        used.push((a, b));
    }
    let w = dir.coding().width();
    let mut raw = vec![0u8; table_bytes as usize];
    for i in 0..dir.len() {
        let copies = [
            dir.table_offset(i)?,
            dir.redundant_table_offset(i).filter(|&o| o != 0),
        ];
        for off in copies.into_iter().flatten() {
            used.push((off, off + table_bytes.next_multiple_of(SECTOR_SIZE)));
            raw.fill(0);
            let _ = dir.file().storage.read_at(&mut raw, off);
            for e in grain_entry::entries(w, &raw) {
                if let Ok(GrainEntry::Data(g)) = dir.coding().decode(e) {
                    used.push((g, g + gs));
                }
            }
        }
    }
    // Nothing past the end of the file is a hole.
    used.push((len.next_multiple_of(SECTOR_SIZE), u64::MAX));
    used.sort_unstable();
    Ok(used)
}

/// The header's `overhead`: where QEMU and `create` put the first grain.
fn metadata_start_end(s: &SparseExtent) -> u64 {
    s.header()
        .map_or(SECTOR_SIZE, |h| h.overhead.saturating_mul(SECTOR_SIZE))
}

/// The free stretches between the sorted `used` ranges, lowest first, sector-aligned.
fn holes(used: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut reach = 0u64;
    for &(a, b) in used.iter() {
        let start = reach.next_multiple_of(SECTOR_SIZE);
        if a > start {
            out.push((start, a - start));
        }
        reach = reach.max(b);
    }
    out
}

/// Pair grains from the top of the file with the lowest holes they fit in, for as long as
/// the hole lies below the grain. `live` is left holding the grains that stay.
fn plan_moves(live: &mut Vec<Stored>, holes: Vec<(u64, u64)>, gs: u64) -> Vec<(Stored, u64)> {
    live.sort_unstable_by_key(|g| g.at);
    let mut holes = holes.into_iter().filter(|h| h.1 >= gs);
    let mut cur: Option<(u64, u64)> = holes.next();
    let mut moves = Vec::new();
    while let Some(&top) = live.last() {
        let Some((start, hlen)) = cur else { break };
        if start >= top.at {
            break;
        }
        moves.push((top, start));
        live.pop();
        cur = if hlen - gs >= gs {
            Some((start + gs, hlen - gs))
        } else {
            holes.next()
        };
    }
    moves
}
