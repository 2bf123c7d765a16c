//! The L2 tables of one qcow2 image kept in memory: least recently used out, every step
//! O(log n) in the tables held.
//!
//! A cache sized in bytes holds many tables when clusters are small (16 MiB is 32,768 tables
//! of 512 bytes), so a linear scan per lookup, or a `Vec::remove(0)` per eviction, made a walk
//! over a disk of many tables cost tables × cache size: minutes for a 16 GiB image of
//! 512-byte clusters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Recently used L2 tables, by host offset.
#[derive(Debug)]
pub(crate) struct L2Cache {
    /// Host offset to (entries, the tick of its last use).
    tables: HashMap<u64, (Arc<Vec<u64>>, u64)>,
    /// Tick of last use to host offset: the first is the least recently used.
    by_use: BTreeMap<u64, u64>,
    tick: u64,
    capacity: usize,
}

impl L2Cache {
    /// A cache of at most `capacity` tables (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        L2Cache {
            tables: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    /// The table at `offset`, if held (it becomes the most recently used).
    pub(crate) fn get(&mut self, offset: u64) -> Option<Arc<Vec<u64>>> {
        self.tick += 1;
        let (table, used) = self.tables.get_mut(&offset)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, offset);
        Some(table.clone())
    }

    /// Hold `table` as the one at `offset` (another thread may have read it meanwhile: it is
    /// then replaced), dropping the least recently used table when full.
    pub(crate) fn insert(&mut self, offset: u64, table: Arc<Vec<u64>>) {
        self.tick += 1;
        if let Some((_, used)) = self.tables.remove(&offset) {
            self.by_use.remove(&used);
        } else if self.tables.len() >= self.capacity {
            if let Some((_, old)) = self.by_use.pop_first() {
                self.tables.remove(&old);
            }
        }
        self.tables.insert(offset, (table, self.tick));
        self.by_use.insert(self.tick, offset);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.tables.len(), self.by_use.len());
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = L2Cache::new(2);
        c.insert(0, Arc::new(vec![0]));
        c.insert(512, Arc::new(vec![1]));
        assert_eq!(c.get(0).unwrap()[0], 0);
        c.insert(1024, Arc::new(vec![2]));
        assert!(c.get(512).is_none(), "512 was the least recently used");
        assert_eq!(c.get(0).unwrap()[0], 0);
        assert_eq!(c.get(1024).unwrap()[0], 2);
        // Inserting a table already held replaces it without evicting another.
        c.insert(1024, Arc::new(vec![3]));
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(1024).unwrap()[0], 3);
        assert_eq!(c.get(0).unwrap()[0], 0);
    }

    #[test]
    fn many_tables_cost_little() {
        // 100,000 distinct tables through a cache of 32,768: with a linear scan this was
        // billions of steps.
        let mut c = L2Cache::new(32_768);
        let t = Arc::new(vec![0u64; 64]);
        for i in 0..100_000u64 {
            if c.get(i * 512).is_none() {
                c.insert(i * 512, t.clone());
            }
        }
        assert_eq!(c.len(), 32_768);
        assert!(c.get(99_999 * 512).is_some());
        assert!(c.get(0).is_none());
    }
}
