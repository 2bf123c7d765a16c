//! Grain tables in memory, and the one bounded cache of them that all the sparse extents of
//! an image and its backing chain share.
//!
//! The cache's budget is in bytes and is for the whole chain, whatever the number of
//! extents: a descriptor naming one sparse file 19000 times, or a twoGbMaxExtentSparse disk
//! of 10000 extents, gets no more table memory than a single extent.
//!
//! Tables are loaded under their shard's lock, so a table that was evicted and reloaded
//! always reflects every write that finished before the reload. Tables someone still holds
//! (a writer between writing an entry to disk and publishing it in memory) are never
//! evicted, so such an update cannot be lost behind a stale reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::extent::entries::AtomicEntries;

/// One grain table in memory: raw on-disk entry values.
#[derive(Debug)]
pub struct GrainTable {
    entries: AtomicEntries,
}

impl GrainTable {
    /// Decode a table from its on-disk bytes (`width` = 4 or 8 bytes per entry).
    pub fn from_bytes(buf: &[u8], width: usize) -> GrainTable {
        GrainTable {
            entries: AtomicEntries::from_bytes(buf, width),
        }
    }

    /// Raw entry `i`.
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        self.entries.get(i)
    }

    /// Publish a new raw value for entry `i` (after it was written to disk).
    pub fn set(&self, i: usize, v: u64) {
        self.entries.set(i, v)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes this table costs the cache: its entries plus bookkeeping.
    fn cost(&self) -> usize {
        self.entries.memory() + ENTRY_OVERHEAD
    }
}

/// Default cache budget: 8 MiB, 4096 VMDK4 tables (128 GiB of disk at 64 KiB grains).
pub const DEFAULT_CACHE_BYTES: usize = 8 << 20;

/// Shards, so concurrent readers of different tables rarely wait for each other.
const SHARDS: usize = 64;
/// Bookkeeping per cached table (map slot, clock slot, `Arc` header, allocation header).
const ENTRY_OVERHEAD: usize = 96;

/// Which table: the extent (a process-unique id) and its grain-directory index.
type Key = (u64, u64);

#[derive(Debug)]
struct Slot {
    key: Key,
    table: Arc<GrainTable>,
    /// Used since the clock hand last passed (second chance).
    referenced: bool,
}

/// One shard: a clock (second-chance) cache of tables.
#[derive(Debug, Default)]
struct Shard {
    index: HashMap<Key, usize>,
    slots: Vec<Slot>,
    hand: usize,
    bytes: usize,
}

impl Shard {
    /// Evict unused tables until `need` more bytes fit in `budget` (or nothing more can go).
    fn make_room(&mut self, need: usize, budget: usize) {
        // Two sweeps clear every reference bit; what is left after that is held by someone.
        let mut steps = 2 * self.slots.len() + 1;
        while self.bytes + need > budget && !self.slots.is_empty() && steps > 0 {
            steps -= 1;
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let slot = &mut self.slots[self.hand];
            if Arc::strong_count(&slot.table) > 1 {
                self.hand += 1;
            } else if slot.referenced {
                slot.referenced = false;
                self.hand += 1;
            } else {
                let gone = self.slots.swap_remove(self.hand);
                self.index.remove(&gone.key);
                self.bytes -= gone.table.cost();
                if let Some(moved) = self.slots.get(self.hand) {
                    self.index.insert(moved.key, self.hand);
                }
                // The hand now points at the moved slot: examine it next.
            }
        }
    }

    fn insert(&mut self, key: Key, table: Arc<GrainTable>, budget: usize) {
        if let Some(&i) = self.index.get(&key) {
            let old = std::mem::replace(&mut self.slots[i].table, table);
            self.bytes = self.bytes - old.cost() + self.slots[i].table.cost();
            self.slots[i].referenced = true;
            return;
        }
        let cost = table.cost();
        self.make_room(cost, budget);
        self.index.insert(key, self.slots.len());
        self.slots.push(Slot {
            key,
            table,
            referenced: false,
        });
        self.bytes += cost;
    }
}

/// Grain tables of any number of extents, within one byte budget.
#[derive(Debug)]
pub struct GrainTableCache {
    shards: Box<[Mutex<Shard>]>,
    shard_budget: usize,
}

impl GrainTableCache {
    /// A cache holding at most about `budget_bytes` of tables. Every shard keeps at least
    /// the table it just loaded, so a tiny budget still works (one table per shard).
    pub fn new(budget_bytes: usize) -> Self {
        GrainTableCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget: budget_bytes / SHARDS,
        }
    }

    /// A process-unique id for a new extent, its part of every key.
    pub fn new_extent_id() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, key: Key) -> &Mutex<Shard> {
        // Fibonacci hashing: consecutive tables of one extent land in different shards.
        let h =
            (key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ key.1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 32) as usize % SHARDS]
    }

    /// The table at directory index `index` of extent `extent`, loading it with `load` on a
    /// miss.
    pub fn get_or_load<E>(
        &self,
        extent: u64,
        index: u64,
        load: impl FnOnce() -> Result<GrainTable, E>,
    ) -> Result<Arc<GrainTable>, E> {
        let key = (extent, index);
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = shard.index.get(&key) {
            let slot = &mut shard.slots[i];
            slot.referenced = true;
            return Ok(slot.table.clone());
        }
        let table = Arc::new(load()?);
        shard.insert(key, table.clone(), self.shard_budget);
        Ok(table)
    }

    /// Insert a freshly created table (a writer just allocated it).
    pub fn insert(&self, extent: u64, index: u64, table: Arc<GrainTable>) {
        let key = (extent, index);
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        shard.insert(key, table, self.shard_budget);
    }

    /// Bytes of tables cached now.
    pub fn memory(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Result<GrainTable, ()> {
        Ok(GrainTable::from_bytes(&[0u8; 2048], 4))
    }

    #[test]
    fn stays_within_budget_whatever_the_number_of_extents() {
        let c = GrainTableCache::new(1 << 20);
        for extent in 0..1000 {
            for i in 0..64 {
                c.get_or_load(extent, i, table).unwrap();
            }
        }
        let cost = table().unwrap().cost();
        // Each shard may overshoot by at most the one table it just loaded.
        assert!(c.memory() <= (1 << 20) + SHARDS * cost, "{}", c.memory());
        assert!(
            c.memory() >= (1 << 19),
            "the budget is used: {}",
            c.memory()
        );
    }

    #[test]
    fn held_tables_are_never_evicted() {
        let c = GrainTableCache::new(0);
        let held = c.get_or_load(1, 7, table).unwrap();
        held.set(3, 42);
        for i in 0..1000 {
            c.get_or_load(2, i, table).unwrap();
        }
        let again = c
            .get_or_load(1, 7, || Err::<GrainTable, _>("must not reload"))
            .unwrap();
        assert!(Arc::ptr_eq(&held, &again));
        assert_eq!(again.get(3), 42);
    }

    #[test]
    fn recently_used_tables_get_a_second_chance() {
        let c = GrainTableCache::new(SHARDS * 4 * table().unwrap().cost());
        // Keep table (9, 0) hot while streaming many others through.
        c.get_or_load(9, 0, table).unwrap();
        let mut reloads = 0;
        for i in 0..10_000u64 {
            c.get_or_load(8, i, table).unwrap();
            c.get_or_load(9, 0, || {
                reloads += 1;
                table()
            })
            .unwrap();
        }
        assert_eq!(reloads, 0);
    }
}
