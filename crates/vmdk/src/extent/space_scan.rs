//! The one scan of a sparse extent's tables a writing session makes, the first time it
//! allocates space or clears an entry pointing at a grain: what every grain table and
//! every grain of the file uses, so that
//!
//! * new space starts past a grain the end of the file cuts (a truncated file), never over
//!   its tail;
//! * the stretches nothing uses (space an earlier session gave back, punched or not) are
//!   reused by later allocations, so an image under a trimming guest stops growing;
//! * grains whose entries are cleared are given back only when the scan accounted for every
//!   grain and table without overlaps, so no other entry can still point at them.
//!
//! It is what `check` computes to find leaks (see `ops/check.rs`), at a lower cost: four
//! bytes per allocated grain (its start sector), sorted, instead of bitmaps of the file.
//! Opening stays cheap: nothing is read before the first write that needs it.

use crate::extent::grain_directory::GrainDirectory;
use crate::format::grain_entry::{self, GrainEntry};
use crate::format::SECTOR_SIZE;

/// Most grains the scan collects (128 MiB of start sectors): 2 TiB of 64 KiB grains, the
/// largest VMDK4 file. Past it nothing is given back.
const MAX_SCANNED_GRAINS: usize = 1 << 25;

/// What the scan found.
#[derive(Debug)]
pub(crate) struct SpaceScan {
    /// End of the furthest grain that starts inside the file (at least the file's length).
    pub tail: u64,
    /// Whether every table and grain was read, decoded and found overlapping nothing.
    pub reliable: bool,
    /// Unused stretches between the extent's data start and the end of the file (none
    /// unless reliable and the extent says where data starts).
    pub holes: Vec<(u64, u64)>,
}

impl GrainDirectory {
    /// Read every grain table (and redundant grain table) straight from the file and
    /// account for the space they and their grains use. `data_start`: where grains may
    /// start (the VMDK4 header's overhead); `None` when holes are not to be reused.
    pub(crate) fn scan_space(&self, data_start: Option<u64>) -> SpaceScan {
        let guard = self.guard();
        let file_len = guard.file_len();
        let coding = *self.coding();
        let mut scan = SpaceScan {
            tail: file_len,
            reliable: !coding.compressed,
            holes: Vec::new(),
        };
        // Compressed grains have no fixed length (and are never given back).
        if coding.compressed {
            return scan;
        }
        let gs = coding.grain_size;
        let w = coding.width();
        let table_span = coding.table_bytes().next_multiple_of(SECTOR_SIZE);
        let widen = |a: u64, b: u64| {
            (
                a / SECTOR_SIZE * SECTOR_SIZE,
                b.checked_next_multiple_of(SECTOR_SIZE).unwrap_or(u64::MAX),
            )
        };
        let mut meta: Vec<(u64, u64)> = self
            .fixed_regions()
            .into_iter()
            .map(|(_, a, b)| widen(a, b))
            .filter(|(a, b)| a < b)
            .collect();
        // Start sectors of the grains: four bytes each.
        let mut grains: Vec<u32> = Vec::new();
        let mut primary = vec![0u8; coding.table_bytes() as usize];
        let mut redundant = primary.clone();
        for i in 0..self.len() {
            if guard.is_bad_table(i) {
                scan.reliable = false;
                continue;
            }
            let Ok(gt) = self.table_offset(i) else {
                scan.reliable = false;
                continue;
            };
            let rgt = self.redundant_table_offset(i).filter(|&o| o != 0);
            let mut read = |off: Option<u64>, buf: &mut Vec<u8>| match off {
                None => {
                    buf.fill(0);
                    true
                }
                Some(off) => {
                    meta.push((off, off.saturating_add(table_span)));
                    self.file().storage.read_exact_at(buf, off).is_ok()
                }
            };
            if !read(gt, &mut primary) || !read(rgt, &mut redundant) {
                scan.reliable = false;
                continue;
            }
            if grains.try_reserve(coding.gt_entries as usize).is_err() {
                scan.reliable = false;
            }
            let copies = grain_entry::entries(w, &primary).zip(grain_entry::entries(w, &redundant));
            for (raw, rraw) in copies {
                // The redundant entry counts too where it differs: a repair never gives back
                // space one copy still uses, and neither does a writer.
                let others = (rraw != raw).then_some(rraw);
                for (k, raw) in std::iter::once(raw).chain(others).enumerate() {
                    let g = match coding.decode(raw) {
                        Ok(GrainEntry::Data(g)) => g,
                        Ok(GrainEntry::Unallocated | GrainEntry::Zero) => continue,
                        Ok(GrainEntry::Compressed(_)) | Err(_) => {
                            scan.reliable = false;
                            continue;
                        }
                    };
                    if k == 0 && g < file_len {
                        scan.tail = scan.tail.max(g.saturating_add(gs));
                    }
                    match u32::try_from(g / SECTOR_SIZE) {
                        Ok(s) if g % SECTOR_SIZE == 0 && grains.len() < MAX_SCANNED_GRAINS => {
                            if grains.try_reserve(1).is_ok() {
                                grains.push(s);
                            } else {
                                scan.reliable = false;
                            }
                        }
                        _ => scan.reliable = false,
                    }
                }
            }
        }
        if !scan.reliable {
            return scan;
        }
        grains.sort_unstable();
        meta.sort_unstable();
        // Sweep the metadata and the grains in start order: an overlap makes the scan
        // unreliable, a gap is a hole.
        let mut grain_iter = grains
            .iter()
            .map(|&s| {
                let a = s as u64 * SECTOR_SIZE;
                (a, a + gs)
            })
            .peekable();
        let mut meta_iter = meta.into_iter().peekable();
        let start = data_start.unwrap_or(u64::MAX);
        let end = file_len.next_multiple_of(SECTOR_SIZE);
        let mut reach = 0u64;
        let gap = |from: u64, to: u64, holes: &mut Vec<(u64, u64)>| {
            let (a, b) = (from.max(start), to.min(end));
            if a < b {
                holes.push((a, b - a));
            }
        };
        loop {
            let take_meta = match (meta_iter.peek(), grain_iter.peek()) {
                (Some(m), Some(g)) => m.0 <= g.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (a, b) = if take_meta {
                meta_iter.next()
            } else {
                grain_iter.next()
            }
            .expect("peeked");
            if a < reach {
                scan.reliable = false;
                scan.holes.clear();
                return scan;
            }
            gap(reach, a, &mut scan.holes);
            reach = b;
        }
        gap(reach, end, &mut scan.holes);
        scan
    }
}
