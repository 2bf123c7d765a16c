//! A bounded cache of grain tables, shared by readers and writers of one sparse extent.
//!
//! Entries are atomics so a writer can publish a new grain-table entry without locking the
//! table, after the entry is on disk. Tables are loaded under the cache lock, so a table that
//! was evicted and reloaded always reflects every write that finished before the reload.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One grain table in memory: raw on-disk entry values, widened to 64 bits.
#[derive(Debug)]
pub struct GrainTable {
    entries: Box<[AtomicU64]>,
}

impl GrainTable {
    /// Decode a table from its on-disk bytes (`width` = 4 or 8 bytes per entry).
    pub fn from_bytes(buf: &[u8], width: usize) -> GrainTable {
        let entries = buf
            .chunks_exact(width)
            .map(|c| {
                let v = if width == 4 {
                    u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64
                } else {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(c);
                    u64::from_le_bytes(b)
                };
                AtomicU64::new(v)
            })
            .collect();
        GrainTable { entries }
    }

    /// Raw entry `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.entries[i].load(Ordering::Acquire)
    }

    /// Publish a new raw value for entry `i` (after it was written to disk).
    pub fn set(&self, i: usize, v: u64) {
        self.entries[i].store(v, Ordering::Release)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Grain tables keyed by their grain-directory index, at most `capacity` of them.
#[derive(Debug)]
pub struct GrainTableCache {
    tables: Mutex<HashMap<u64, Arc<GrainTable>>>,
    capacity: usize,
}

impl GrainTableCache {
    /// A cache holding at most `capacity` tables (at least 1).
    pub fn new(capacity: usize) -> Self {
        GrainTableCache {
            tables: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The table for directory index `index`, loading it with `load` on a miss.
    pub fn get_or_load<E>(
        &self,
        index: u64,
        load: impl FnOnce() -> Result<GrainTable, E>,
    ) -> Result<Arc<GrainTable>, E> {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(&index) {
            return Ok(t.clone());
        }
        if tables.len() >= self.capacity {
            // Evict tables nobody is using; a table held by a writer must stay so its
            // in-flight update is not lost behind a stale reload.
            let victims: Vec<u64> = tables
                .iter()
                .filter(|(_, t)| Arc::strong_count(t) == 1)
                .map(|(k, _)| *k)
                .take(tables.len() / 4 + 1)
                .collect();
            for k in victims {
                tables.remove(&k);
            }
        }
        let table = Arc::new(load()?);
        tables.insert(index, table.clone());
        Ok(table)
    }

    /// Insert a freshly created table (a writer just allocated it).
    pub fn insert(&self, index: u64, table: Arc<GrainTable>) {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.insert(index, table);
    }
}
