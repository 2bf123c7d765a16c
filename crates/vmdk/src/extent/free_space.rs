//! Bookkeeping of the space in a sparse extent file: where new grains and grain tables go,
//! and the space writers give back.
//!
//! New space comes from a hole when one fits, from the end of the file otherwise. Holes come
//! from three places: space whose write failed (a full file system); grains that stopped
//! being used, because a discard or a zero write cleared the entries pointing at them (see
//! [`GrainDirectory::release_cleared`](crate::extent::GrainDirectory)); and, once per
//! session, the stretches no metadata and no grain used when the tables were first scanned
//! (space an earlier session gave back, punched or not). Space given back at the end of the
//! file moves the end back (the caller cuts the file there); holes that end up at the end
//! are absorbed.
//!
//! A grain whose entry was cleared waits, *cleared*, until a flush makes the cleared entry
//! durable: handed out before, a crash could leave the old entry pointing at another grain's
//! data.

use std::collections::{BTreeMap, BTreeSet};

/// Most holes remembered; beyond this, given-back space stays unused until the next session's
/// scan finds it again (only a badly fragmented file gets here).
const MAX_HOLES: usize = 1 << 18;

/// Where the next allocation goes, the holes below it, and grains on their way to a hole.
#[derive(Debug)]
pub struct FreeSpace {
    /// End of the allocated part of the file: the next allocation that fits no hole starts
    /// here.
    pub(crate) next: u64,
    /// `next` when the extent was opened (moved past a grain the end of the file cuts).
    pub(crate) initial: u64,
    /// Free stretches below `next`: start to length, not overlapping, not adjacent.
    holes: BTreeMap<u64, u64>,
    /// The same holes as `(length, start)`, for best-fit choices.
    by_size: BTreeSet<(u64, u64)>,
    /// COWD only: the header's free-sector field before this session moved it.
    pub(crate) cowd_free_before: Option<u32>,
    /// Whether the tables were scanned (see `GrainDirectory::ensure_scanned`): `tail`,
    /// `can_free` and the scanned holes are known.
    pub(crate) scanned: bool,
    /// End of the furthest grain that starts inside the file (at least its length at open).
    pub(crate) tail: u64,
    /// Whether grains whose entries are cleared may be given back: the scan accounted for
    /// every grain and table without overlaps, so no other entry can share them.
    pub(crate) can_free: bool,
    /// Grains whose entries are cleared on disk, not yet flushed.
    cleared: Vec<(u64, u64)>,
}

impl FreeSpace {
    /// Allocations start at `next`.
    pub fn new(next: u64) -> FreeSpace {
        FreeSpace {
            next,
            initial: next,
            holes: BTreeMap::new(),
            by_size: BTreeSet::new(),
            cowd_free_before: None,
            scanned: false,
            tail: next,
            can_free: false,
            cleared: Vec::new(),
        }
    }

    /// Bytes in holes.
    pub fn hole_bytes(&self) -> u64 {
        self.holes.values().sum()
    }

    fn remove(&mut self, off: u64, len: u64) {
        self.holes.remove(&off);
        self.by_size.remove(&(len, off));
    }

    fn insert(&mut self, off: u64, len: u64) {
        self.holes.insert(off, len);
        self.by_size.insert((len, off));
    }

    /// Take `len` bytes from the start of the hole at `off` (`hole` bytes long).
    fn take_from(&mut self, off: u64, hole: u64, len: u64) -> u64 {
        self.remove(off, hole);
        if hole > len {
            self.insert(off + len, hole - len);
        }
        off
    }

    /// Take `bytes` from the smallest hole they fit in.
    pub fn take_hole(&mut self, bytes: u64) -> Option<u64> {
        let &(len, off) = self.by_size.range((bytes, 0)..).next()?;
        Some(self.take_from(off, len, bytes))
    }

    /// Take between `unit` and `max` bytes (a multiple of `unit`) from a hole: `max` from the
    /// smallest hole it fits in, else as much as the largest hole holds. Returns where and
    /// how much.
    pub fn take_run(&mut self, unit: u64, max: u64) -> Option<(u64, u64)> {
        if let Some(off) = self.take_hole(max) {
            return Some((off, max));
        }
        let &(len, off) = self.by_size.last()?;
        let take = len / unit * unit;
        if take == 0 {
            return None;
        }
        Some((self.take_from(off, len, take), take))
    }

    /// Give back `[at, at+bytes)`, which nothing references any more (it may already be
    /// known free: the result is the union). Returns the new end of the allocated space when
    /// it moved back (the file can be cut there).
    pub fn give_back(&mut self, at: u64, bytes: u64) -> Option<u64> {
        let mut start = at;
        let mut end = at.checked_add(bytes)?;
        if bytes == 0 || end > self.next {
            return None;
        }
        // Merge with every hole touching or overlapping [start, end).
        while let Some((&off, &len)) = self.holes.range(..=end).next_back() {
            if off + len < start {
                break;
            }
            self.remove(off, len);
            start = start.min(off);
            end = end.max(off + len);
        }
        if end == self.next {
            self.next = start;
            return Some(start);
        }
        if self.holes.len() >= MAX_HOLES {
            return None;
        }
        self.insert(start, end - start);
        None
    }

    /// Grains whose entries are now cleared on disk (primary and redundant tables): free
    /// once a flush made that durable.
    pub fn cleared(&mut self, ranges: &[(u64, u64)]) {
        self.cleared.extend_from_slice(ranges);
    }

    /// The grains whose cleared entries are on disk, to be given back after a flush.
    pub fn take_cleared(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.cleared)
    }

    /// Grains taken by [`FreeSpace::take_cleared`] whose flush failed: they wait for the
    /// next one.
    pub fn restore_cleared(&mut self, ranges: Vec<(u64, u64)>) {
        self.cleared.extend(ranges);
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSpace;

    fn holes(f: &FreeSpace) -> Vec<(u64, u64)> {
        f.holes.iter().map(|(&a, &b)| (a, b)).collect()
    }

    #[test]
    fn give_back_at_end_moves_the_end() {
        let mut f = FreeSpace::new(1000);
        f.next = 1300; // three allocations of 100
        assert_eq!(f.give_back(1200, 100), Some(1200));
        assert_eq!(f.next, 1200);
    }

    #[test]
    fn holes_are_reused_and_absorbed() {
        let mut f = FreeSpace::new(0);
        f.next = 400;
        // Middle allocations fail while the last one lives.
        assert_eq!(f.give_back(100, 100), None);
        assert_eq!(f.give_back(200, 100), None);
        assert_eq!(holes(&f), vec![(100, 200)]);
        assert_eq!(f.take_hole(300), None);
        assert_eq!(f.take_hole(50), Some(100));
        assert_eq!(holes(&f), vec![(150, 150)]);
        assert_eq!(f.give_back(100, 50), None);
        assert_eq!(holes(&f), vec![(100, 200)]);
        // The last one fails too: everything from 100 goes.
        assert_eq!(f.give_back(300, 100), Some(100));
        assert!(holes(&f).is_empty());
        assert_eq!(f.next, 100);
    }

    #[test]
    fn giving_back_twice_is_a_union() {
        let mut f = FreeSpace::new(0);
        f.next = 1000;
        assert_eq!(f.give_back(100, 200), None);
        assert_eq!(f.give_back(150, 100), None);
        assert_eq!(f.give_back(250, 100), None);
        assert_eq!(f.give_back(500, 10), None);
        assert_eq!(holes(&f), vec![(100, 250), (500, 10)]);
        assert_eq!(f.hole_bytes(), 260);
        // Past the end: refused.
        assert_eq!(f.give_back(990, 20), None);
        assert_eq!(f.give_back(510, 490), Some(500));
        assert_eq!(holes(&f), vec![(100, 250)]);
    }

    #[test]
    fn runs_take_the_best_fit_or_the_largest_hole() {
        let mut f = FreeSpace::new(0);
        f.next = 10_000;
        f.give_back(0, 300);
        f.give_back(1000, 1000);
        f.give_back(5000, 450);
        // 400 fits in the 450 hole best.
        assert_eq!(f.take_run(100, 400), Some((5000, 400)));
        assert_eq!(holes(&f), vec![(0, 300), (1000, 1000), (5400, 50)]);
        // 5000 fits nowhere: the largest hole gives what it has.
        assert_eq!(f.take_run(100, 5000), Some((1000, 1000)));
        assert_eq!(f.take_run(100, 5000), Some((0, 300)));
        // 50 bytes are less than a unit.
        assert_eq!(f.take_run(100, 5000), None);
    }

    #[test]
    fn cleared_grains_wait_for_the_flush() {
        let mut f = FreeSpace::new(0);
        f.cleared(&[(100, 10), (200, 10)]);
        let c = f.take_cleared();
        assert_eq!(c, vec![(100, 10), (200, 10)]);
        assert!(f.take_cleared().is_empty());
        f.restore_cleared(c);
        assert_eq!(f.take_cleared().len(), 2);
    }
}
