//! One object opened for reading: ranged GETs of whole blocks, at most a set number in flight,
//! kept in a bounded LRU cache, with read-ahead once reads run forwards.
//!
//! Every GET carries the ETag (and version, where the store has versions) seen when the
//! object was opened, so an object replaced mid-read fails the read instead of handing out
//! blocks of two different objects.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};
use tokio::sync::Semaphore;
use vmdk::storage::{FileId, Storage};

use crate::client::{count_fetched, io_error, runtime};
use crate::Config;

/// One object, read-only, as positional [`Storage`].
#[derive(Debug)]
pub struct ObjectStorage {
    inner: Arc<Reader>,
}

#[derive(Debug)]
struct Reader {
    store: Arc<dyn ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    e_tag: Option<String>,
    version: Option<String>,
    id: FileId,
    block: u64,
    /// Blocks read ahead of a forward-running reader now: starts at the configured window
    /// and doubles (up to `read_ahead_max`) whenever such a reader finds a block it needs
    /// still on its way, i.e. the window was too short to hide the link's latency.
    read_ahead: AtomicU64,
    read_ahead_max: u64,
    limit: Arc<Semaphore>,
    cache: Mutex<Cache>,
    /// Woken whenever a block finishes loading (or fails to).
    loaded: Condvar,
}

/// A block as the response body's chunks, kept as they came off the connection: no copy
/// into one buffer (and no fresh, page-faulting buffer per block); a read copies from the
/// chunks straight into the caller's buffer.
#[derive(Debug, Clone, Default)]
struct Block {
    parts: Arc<[Bytes]>,
    len: usize,
}

impl Block {
    fn new(parts: Vec<Bytes>) -> Block {
        let len = parts.iter().map(Bytes::len).sum();
        Block {
            parts: parts.into(),
            len,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Copy `out.len()` bytes from byte `from` of the block into `out`.
    fn copy_to(&self, mut from: usize, out: &mut [u8]) {
        let mut done = 0;
        for part in self.parts.iter() {
            if done == out.len() {
                break;
            }
            if from >= part.len() {
                from -= part.len();
                continue;
            }
            let n = (part.len() - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&part[from..from + n]);
            done += n;
            from = 0;
        }
        assert_eq!(done, out.len(), "read past the end of a block");
    }
}

#[derive(Debug)]
enum Slot {
    Loading,
    Ready { data: Block, used: u64 },
}

#[derive(Debug, Default)]
struct Cache {
    slots: HashMap<u64, Slot>,
    tick: u64,
    bytes: usize,
    capacity: usize,
}

impl Cache {
    fn put(&mut self, b: u64, data: Block) {
        self.tick += 1;
        self.bytes += data.len();
        if let Some(Slot::Ready { data, .. }) = self.slots.insert(
            b,
            Slot::Ready {
                data,
                used: self.tick,
            },
        ) {
            self.bytes -= data.len();
        }
        // Least recently used first; only finished blocks are evicted (a loading one has a
        // reader waiting for it).
        while self.bytes > self.capacity {
            let victim = self
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready { used, .. } if *k != b => Some((*used, *k)),
                    _ => None,
                })
                .min();
            let Some((_, k)) = victim else { break };
            if let Some(Slot::Ready { data, .. }) = self.slots.remove(&k) {
                self.bytes -= data.len();
            }
        }
    }

    fn take(&mut self, b: u64) -> Option<Block> {
        self.tick += 1;
        match self.slots.get_mut(&b) {
            Some(Slot::Ready { data, used }) => {
                *used = self.tick;
                Some(data.clone())
            }
            _ => None,
        }
    }
}

impl ObjectStorage {
    /// Read `meta`'s object from `store`, pinned to the ETag and version `meta` carries.
    pub fn new(store: Arc<dyn ObjectStore>, meta: ObjectMeta, id: FileId, cfg: &Config) -> Self {
        let block = cfg.block_size.max(4096) as u64;
        let read_ahead = cfg.read_ahead_blocks as u64;
        let read_ahead_max = (cfg.read_ahead_max_blocks as u64).max(read_ahead);
        ObjectStorage {
            inner: Arc::new(Reader {
                store,
                path: meta.location,
                size: meta.size,
                e_tag: meta.e_tag,
                version: meta.version,
                id,
                block,
                read_ahead: AtomicU64::new(read_ahead),
                read_ahead_max,
                limit: Arc::new(Semaphore::new(cfg.max_requests.max(1))),
                cache: Mutex::new(Cache {
                    // Room for the widest read-ahead window twice over.
                    capacity: cfg
                        .cache_bytes
                        .max(2 * block as usize)
                        .max((2 * read_ahead_max * block).min(1 << 30) as usize),
                    ..Default::default()
                }),
                loaded: Condvar::new(),
            }),
        }
    }
}

impl Reader {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blocks(&self) -> u64 {
        self.size.div_ceil(self.block)
    }

    /// GET block `b` (bounded by the in-flight limit).
    async fn fetch(self: Arc<Self>, b: u64) -> io::Result<Block> {
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| io::Error::other("object reader shut down"))?;
        let start = b * self.block;
        let end = (start + self.block).min(self.size);
        let opts = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            if_match: self.e_tag.clone(),
            version: self.version.clone(),
            ..Default::default()
        };
        let what = format!("reading bytes {start}..{end}");
        let r = self
            .store
            .get_opts(&self.path, opts)
            .await
            .map_err(|e| io_error(e, &what))?;
        // The pinned ETag is sent as If-Match, which a server may ignore: check what came.
        if let (Some(want), Some(got)) = (&self.e_tag, &r.meta.e_tag) {
            if want != got {
                return Err(io::Error::other(format!(
                    "{what}: the object changed since it was opened (ETag {want} is now \
                     {got}); refusing to mix data from two versions of it"
                )));
            }
        }
        // The body's chunks as they come, not collected into one fresh buffer (a copy, and
        // page faults on every block).
        let mut parts = Vec::new();
        let mut body = r.into_stream();
        while let Some(part) = body.next().await {
            parts.push(part.map_err(|e| io_error(e, &what))?);
        }
        let data = Block::new(parts);
        count_fetched(data.len() as u64);
        if data.len() as u64 != end - start {
            return Err(io::Error::other(format!(
                "{what}: the server sent {} bytes instead of {}",
                data.len(),
                end - start
            )));
        }
        Ok(data)
    }

    /// Load block `b` in the background (read-ahead); a failure just forgets it, and the
    /// reader that needs it tries itself and reports what happens then.
    fn prefetch(self: &Arc<Self>, b: u64) {
        let me = self.clone();
        runtime().spawn(async move {
            let r = me.clone().fetch(b).await;
            let mut c = me.cache();
            match r {
                Ok(data) => c.put(b, data),
                Err(_) => {
                    c.slots.remove(&b);
                }
            }
            drop(c);
            me.loaded.notify_all();
        });
    }

    /// Blocks `first..=last`, loading those not cached: all of them at once, and the
    /// read-ahead window after them when the read continues the one before.
    fn get_blocks(self: &Arc<Self>, first: u64, last: u64) -> io::Result<Vec<Block>> {
        let mut got: HashMap<u64, Block> = HashMap::new();
        let mut grown = false;
        loop {
            let mut mine = Vec::new();
            let mut ahead = Vec::new();
            {
                let mut c = self.cache();
                let mut stalled = false;
                for b in first..=last {
                    if got.contains_key(&b) {
                        continue;
                    }
                    if let Some(d) = c.take(b) {
                        got.insert(b, d);
                    } else if let Entry::Vacant(v) = c.slots.entry(b) {
                        v.insert(Slot::Loading);
                        mine.push(b);
                        stalled = true;
                    } else {
                        stalled = true;
                    }
                }
                let forwards = first > 0 && c.slots.contains_key(&(first - 1));
                if forwards {
                    let mut window = self.read_ahead.load(Ordering::Relaxed);
                    if stalled && !grown && window < self.read_ahead_max {
                        window = (window * 2).min(self.read_ahead_max);
                        self.read_ahead.store(window, Ordering::Relaxed);
                        grown = true;
                    }
                    let end = (last + 1 + window).min(self.blocks());
                    for b in last + 1..end {
                        if let Entry::Vacant(v) = c.slots.entry(b) {
                            v.insert(Slot::Loading);
                            ahead.push(b);
                        }
                    }
                }
            }
            for b in ahead {
                self.prefetch(b);
            }
            if !mine.is_empty() {
                let futs = mine.iter().map(|&b| self.clone().fetch(b));
                let results = runtime().block_on(futures::future::join_all(futs));
                let mut c = self.cache();
                let mut failure = None;
                for (&b, r) in mine.iter().zip(results) {
                    match r {
                        Ok(data) => {
                            c.put(b, data.clone());
                            got.insert(b, data);
                        }
                        Err(e) => {
                            c.slots.remove(&b);
                            failure.get_or_insert(e);
                        }
                    }
                }
                drop(c);
                self.loaded.notify_all();
                if let Some(e) = failure {
                    return Err(e);
                }
            }
            if got.len() as u64 == last - first + 1 {
                return Ok((first..=last)
                    .map(|b| got.remove(&b).expect("got"))
                    .collect());
            }
            // The rest is being loaded by someone else: wait for one to land, then look again
            // (a block that failed or was evicted meanwhile is loaded by this reader).
            let c = self.cache();
            let waiting = (first..=last)
                .any(|b| !got.contains_key(&b) && matches!(c.slots.get(&b), Some(Slot::Loading)));
            if waiting {
                drop(
                    self.loaded
                        .wait_while(c, |c| {
                            (first..=last).all(|b| {
                                got.contains_key(&b)
                                    || matches!(c.slots.get(&b), Some(Slot::Loading))
                            })
                        })
                        .unwrap_or_else(|e| e.into_inner()),
                );
            }
        }
    }
}

impl Storage for ObjectStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let r = &self.inner;
        if offset >= r.size || buf.is_empty() {
            return Ok(0);
        }
        let end = (offset + buf.len() as u64).min(r.size);
        let (first, last) = (offset / r.block, (end - 1) / r.block);
        let blocks = r.get_blocks(first, last)?;
        let mut done = 0usize;
        for (i, data) in blocks.iter().enumerate() {
            let bstart = (first + i as u64) * r.block;
            let from = (offset + done as u64 - bstart) as usize;
            let n = (data.len() - from).min((end - offset) as usize - done);
            data.copy_to(from, &mut buf[done..done + n]);
            done += n;
        }
        Ok(done)
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.inner.size)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn allocated_size(&self) -> Option<u64> {
        Some(self.inner.size)
    }

    fn file_id(&self) -> Option<FileId> {
        Some(self.inner.id)
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "objects in object storage are read-only (write a new object with convert instead)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::PutPayload;

    /// A block kept as the body's chunks reads any stretch across them.
    #[test]
    fn block_reads_across_its_chunks() {
        let whole: Vec<u8> = (0..100u8).collect();
        let block = Block::new(vec![
            Bytes::copy_from_slice(&whole[..7]),
            Bytes::new(),
            Bytes::copy_from_slice(&whole[7..50]),
            Bytes::copy_from_slice(&whole[50..]),
        ]);
        assert_eq!(block.len(), 100);
        for from in 0..100 {
            for n in 0..=100 - from {
                let mut out = vec![0u8; n];
                block.copy_to(from, &mut out);
                assert_eq!(out, whole[from..from + n]);
            }
        }
    }

    /// A forward scan that finds its next block not loaded widens the read-ahead window
    /// (doubling, up to the maximum), and every byte read is the object's.
    #[test]
    fn read_ahead_widens_on_a_stalled_forward_scan() {
        let block = 4096usize;
        let data: Vec<u8> = (0..block * 300).map(|i| (i % 251) as u8).collect();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = object_store::path::Path::from("o");
        let meta = runtime().block_on(async {
            store
                .put(&path, PutPayload::from(data.clone()))
                .await
                .unwrap();
            store.head(&path).await.unwrap()
        });
        let cfg = Config {
            block_size: block,
            read_ahead_blocks: 2,
            read_ahead_max_blocks: 8,
            ..Config::default()
        };
        let s = ObjectStorage::new(store, meta, FileId { dev: 0, ino: 1 }, &cfg);
        let mut buf = vec![0u8; block];
        s.read_at(&mut buf, 0).unwrap();
        assert_eq!(
            s.inner.read_ahead.load(Ordering::Relaxed),
            2,
            "not forwards yet"
        );
        // Block 1 follows a cached block 0 and was never asked for: the reader stalls.
        s.read_at(&mut buf, block as u64).unwrap();
        assert_eq!(s.inner.read_ahead.load(Ordering::Relaxed), 4);
        let mut all = vec![0u8; data.len()];
        for (i, chunk) in all.chunks_mut(block * 3).enumerate() {
            s.read_at(chunk, (i * block * 3) as u64).unwrap();
        }
        assert!(all == data, "bytes read differ from the object's");
        assert!(s.inner.read_ahead.load(Ordering::Relaxed) <= 8);
    }
}
