//! Arrays of on-disk table entries held in memory (grain directories and grain tables),
//! stored at their on-disk width so memory is what the file says, not twice that.
//!
//! Entries are atomics so a writer can publish a new entry without locking the array, after
//! the entry is on disk.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Fixed-size array of little-endian table entries, 4 or 8 bytes each.
#[derive(Debug)]
pub enum AtomicEntries {
    /// 4-byte entries (VMDK4 and COWD sector numbers).
    Narrow(Box<[AtomicU32]>),
    /// 8-byte entries (seSparse coded indexes).
    Wide(Box<[AtomicU64]>),
}

impl AtomicEntries {
    /// `n` zero entries of `width` bytes (4 or 8), or `None` if the memory cannot be had:
    /// a failed allocation must become an error, never an abort.
    pub fn zeroed(n: usize, width: usize) -> Option<Self> {
        fn make<T>(n: usize, zero: impl Fn() -> T) -> Option<Box<[T]>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            v.extend((0..n).map(|_| zero()));
            Some(v.into_boxed_slice())
        }
        Some(if width == 4 {
            AtomicEntries::Narrow(make(n, || AtomicU32::new(0))?)
        } else {
            AtomicEntries::Wide(make(n, || AtomicU64::new(0))?)
        })
    }

    /// Decode entries from their on-disk bytes (`width` = 4 or 8 bytes per entry).
    pub fn from_bytes(buf: &[u8], width: usize) -> Self {
        if width == 4 {
            AtomicEntries::Narrow(
                buf.chunks_exact(4)
                    .map(|c| AtomicU32::new(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            )
        } else {
            AtomicEntries::Wide(
                buf.chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        AtomicU64::new(u64::from_le_bytes(b))
                    })
                    .collect(),
            )
        }
    }

    /// Overwrite entries from index `first` on with the on-disk bytes `buf` (whole entries).
    pub fn fill_from_bytes(&self, first: usize, buf: &[u8]) {
        match self {
            AtomicEntries::Narrow(v) => {
                for (slot, c) in v[first..].iter().zip(buf.chunks_exact(4)) {
                    slot.store(
                        u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        Ordering::Release,
                    );
                }
            }
            AtomicEntries::Wide(v) => {
                for (slot, c) in v[first..].iter().zip(buf.chunks_exact(8)) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    slot.store(u64::from_le_bytes(b), Ordering::Release);
                }
            }
        }
    }

    /// Entry `i`, widened to 64 bits.
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        match self {
            AtomicEntries::Narrow(v) => v[i].load(Ordering::Acquire) as u64,
            AtomicEntries::Wide(v) => v[i].load(Ordering::Acquire),
        }
    }

    /// Publish a new value for entry `i` (after it was written to disk). A narrow array
    /// keeps the low 32 bits, which is all its on-disk entry holds.
    #[inline]
    pub fn set(&self, i: usize, value: u64) {
        match self {
            AtomicEntries::Narrow(v) => v[i].store(value as u32, Ordering::Release),
            AtomicEntries::Wide(v) => v[i].store(value, Ordering::Release),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            AtomicEntries::Narrow(v) => v.len(),
            AtomicEntries::Wide(v) => v.len(),
        }
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of entry memory (the heap allocation).
    pub fn memory(&self) -> usize {
        match self {
            AtomicEntries::Narrow(v) => std::mem::size_of_val::<[AtomicU32]>(v),
            AtomicEntries::Wide(v) => std::mem::size_of_val::<[AtomicU64]>(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_round_trip() {
        let bytes: Vec<u8> = (0u8..16).collect();
        let n = AtomicEntries::from_bytes(&bytes, 4);
        assert_eq!(n.len(), 4);
        assert_eq!(n.get(1), 0x0706_0504);
        assert_eq!(n.memory(), 16);
        let w = AtomicEntries::from_bytes(&bytes, 8);
        assert_eq!(w.len(), 2);
        assert_eq!(w.get(1), 0x0f0e_0d0c_0b0a_0908);
        let z = AtomicEntries::zeroed(4, 4).unwrap();
        z.fill_from_bytes(2, &bytes[..8]);
        assert_eq!(
            (0..4).map(|i| z.get(i)).collect::<Vec<_>>(),
            [0, 0, 0x0302_0100, 0x0706_0504]
        );
        z.set(0, 9);
        assert_eq!(z.get(0), 9);
    }
}
