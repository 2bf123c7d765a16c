//! One object opened for reading: ranged GETs of whole blocks, at most a set number in flight,
//! kept in a bounded LRU cache, with read-ahead once reads run forwards.
//!
//! Every GET carries the ETag (and version, where the store has versions) seen when the
//! object was opened, so an object replaced mid-read fails the read instead of handing out
//! blocks of two different objects.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
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
    read_ahead: u64,
    limit: Arc<Semaphore>,
    cache: Mutex<Cache>,
    /// Woken whenever a block finishes loading (or fails to).
    loaded: Condvar,
}

#[derive(Debug)]
enum Slot {
    Loading,
    Ready { data: Bytes, used: u64 },
}

#[derive(Debug, Default)]
struct Cache {
    slots: HashMap<u64, Slot>,
    tick: u64,
    bytes: usize,
    capacity: usize,
}

impl Cache {
    fn put(&mut self, b: u64, data: Bytes) {
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

    fn take(&mut self, b: u64) -> Option<Bytes> {
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
        ObjectStorage {
            inner: Arc::new(Reader {
                store,
                path: meta.location,
                size: meta.size,
                e_tag: meta.e_tag,
                version: meta.version,
                id,
                block,
                read_ahead: cfg.read_ahead_blocks as u64,
                limit: Arc::new(Semaphore::new(cfg.max_requests.max(1))),
                cache: Mutex::new(Cache {
                    capacity: cfg.cache_bytes.max(2 * block as usize),
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
    async fn fetch(self: Arc<Self>, b: u64) -> io::Result<Bytes> {
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
        let data = r.bytes().await.map_err(|e| io_error(e, &what))?;
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
    fn get_blocks(self: &Arc<Self>, first: u64, last: u64) -> io::Result<Vec<Bytes>> {
        let mut got: HashMap<u64, Bytes> = HashMap::new();
        loop {
            let mut mine = Vec::new();
            let mut ahead = Vec::new();
            {
                let mut c = self.cache();
                for b in first..=last {
                    if got.contains_key(&b) {
                        continue;
                    }
                    if let Some(d) = c.take(b) {
                        got.insert(b, d);
                    } else if let Entry::Vacant(v) = c.slots.entry(b) {
                        v.insert(Slot::Loading);
                        mine.push(b);
                    }
                }
                let forwards = first > 0 && c.slots.contains_key(&(first - 1));
                if forwards {
                    let end = (last + 1 + self.read_ahead).min(self.blocks());
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
            buf[done..done + n].copy_from_slice(&data[from..from + n]);
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
