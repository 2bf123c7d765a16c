//! Bookkeeping of the space writers allocate in a sparse extent file: new grains and grain
//! tables go at the end of the file, and space whose write failed (a full file system) is
//! given back, so a failed write leaves no leaked clusters behind.
//!
//! Space given back at the end of the file moves the end back (the caller truncates the
//! file there). Space given back with live allocations after it (another writer allocated
//! meanwhile) becomes a hole that later allocations of a size that fits reuse; holes that
//! end up at the end of the file when the end moves back are absorbed.

/// Most holes remembered; beyond this, given-back space stays leaked (only a storm of
/// failures with concurrent successes can get here).
const MAX_HOLES: usize = 1024;

/// Where the next allocation goes, and the holes left by failed ones.
#[derive(Debug)]
pub struct FreeSpace {
    /// End of the allocated part of the file: the next allocation starts here.
    pub(crate) next: u64,
    /// `next` when the extent was opened.
    pub(crate) initial: u64,
    /// Free stretches below `next`, as `(offset, length)`, sorted and not adjacent.
    holes: Vec<(u64, u64)>,
    /// COWD only: the header's free-sector field before this session moved it.
    pub(crate) cowd_free_before: Option<u32>,
}

impl FreeSpace {
    /// Allocations start at `next`.
    pub fn new(next: u64) -> FreeSpace {
        FreeSpace {
            next,
            initial: next,
            holes: Vec::new(),
            cowd_free_before: None,
        }
    }

    /// Take `bytes` from a hole, if one is big enough (first fit).
    pub fn take_hole(&mut self, bytes: u64) -> Option<u64> {
        let i = self.holes.iter().position(|&(_, len)| len >= bytes)?;
        let (off, len) = self.holes[i];
        if len == bytes {
            self.holes.remove(i);
        } else {
            self.holes[i] = (off + bytes, len - bytes);
        }
        Some(off)
    }

    /// Give back `[at, at+bytes)`, allocated earlier and never referenced. Returns the new
    /// end of the allocated space when it moved back (the file can be cut there).
    pub fn give_back(&mut self, at: u64, bytes: u64) -> Option<u64> {
        if bytes == 0 {
            return None;
        }
        if at + bytes == self.next {
            self.next = at;
            // Holes now at the end go too.
            while let Some(&(off, len)) = self.holes.last() {
                if off + len != self.next {
                    break;
                }
                self.next = off;
                self.holes.pop();
            }
            return Some(self.next);
        }
        let i = self.holes.partition_point(|&(off, _)| off < at);
        self.holes.insert(i, (at, bytes));
        // Merge with the neighbours.
        if i + 1 < self.holes.len() && at + bytes == self.holes[i + 1].0 {
            self.holes[i].1 += self.holes[i + 1].1;
            self.holes.remove(i + 1);
        }
        if i > 0 && self.holes[i - 1].0 + self.holes[i - 1].1 == at {
            self.holes[i - 1].1 += self.holes[i].1;
            self.holes.remove(i);
        }
        if self.holes.len() > MAX_HOLES {
            self.holes.remove(0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSpace;

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
        assert_eq!(f.holes, vec![(100, 200)]);
        assert_eq!(f.take_hole(300), None);
        assert_eq!(f.take_hole(50), Some(100));
        assert_eq!(f.holes, vec![(150, 150)]);
        assert_eq!(f.give_back(100, 50), None);
        assert_eq!(f.holes, vec![(100, 200)]);
        // The last one fails too: everything from 100 goes.
        assert_eq!(f.give_back(300, 100), Some(100));
        assert!(f.holes.is_empty());
        assert_eq!(f.next, 100);
    }
}
