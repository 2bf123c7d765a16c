//! A new object written front to back except for ranges skipped over and filled in later
//! (an OVA's descriptor and tar headers, known only once the disks after them are written),
//! as a multipart upload whose parts are numbered by where they lie, not by when they are
//! sent: a part is sent as soon as it is full and holds no skipped range; one that does is
//! kept in memory until the range is written, then sent under its own number. Only the
//! parts holding a skipped range wait (for an OVA: the first part, with the descriptor and
//! the manifest, and the part with the header of the disk being written), so memory stays
//! bounded, and the object is byte for byte what the same writes make of a local file.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartId, PutPayload};
use tokio::task::JoinSet;
use vmdk::storage::namespace::AppendOutput;
use vmdk::storage::{FileId, Storage};
use vmdk::{Error, Result};

use crate::client::{error, io_error, runtime};
use crate::Config;

/// Parts after which the part size doubles (S3 allows 10,000 parts).
const PARTS_PER_SIZE: usize = 1000;
/// The largest part.
const MAX_PART: u64 = 512 << 20;

struct State {
    /// Bytes written so far: the object's length.
    end: u64,
    /// Parts not sent yet, by number: the one being filled, and full ones holding a
    /// skipped range.
    parts: BTreeMap<usize, Vec<u8>>,
    /// Skipped ranges not written yet.
    skipped: Vec<Range<u64>>,
    tasks: JoinSet<object_store::Result<(usize, PartId)>>,
    sent: BTreeMap<usize, PartId>,
    failed: Option<String>,
}

/// The upload behind an [`AppendUpload`]; its [`Storage`] face takes the writes.
struct Upload {
    store: Arc<dyn MultipartStore>,
    path: ObjectPath,
    id: MultipartId,
    name: PathBuf,
    part_size: u64,
    in_flight: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload").field("name", &self.name).finish()
    }
}

/// A multipart upload as an [`AppendOutput`].
pub struct AppendUpload {
    upload: Arc<Upload>,
    finished: bool,
}

impl AppendUpload {
    /// Start uploading `path` (named `name` in messages) to `store`.
    pub fn start(
        store: Arc<dyn MultipartStore>,
        path: ObjectPath,
        name: &Path,
        cfg: &Config,
    ) -> Result<Self> {
        let id = runtime()
            .block_on(store.create_multipart(&path))
            .map_err(|e| error(e, name, "cannot start the upload"))?;
        Ok(AppendUpload {
            upload: Arc::new(Upload {
                store,
                path,
                id,
                name: name.to_path_buf(),
                part_size: cfg.part_size.clamp(5 << 20, MAX_PART as usize) as u64,
                in_flight: cfg.upload_parallelism.max(1),
                state: Mutex::new(State {
                    end: 0,
                    parts: BTreeMap::new(),
                    skipped: Vec::new(),
                    tasks: JoinSet::new(),
                    sent: BTreeMap::new(),
                    failed: None,
                }),
            }),
            finished: false,
        })
    }
}

impl Upload {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn size_of(&self, part: usize) -> u64 {
        let doublings = (part / PARTS_PER_SIZE).min(16) as u32;
        (self.part_size << doublings).min(MAX_PART)
    }

    /// The part holding byte `offset`, and where that part starts.
    fn part_at(&self, offset: u64) -> (usize, u64) {
        let (mut part, mut start) = (0usize, 0u64);
        loop {
            let size = self.size_of(part);
            if offset < start + size {
                return (part, start);
            }
            // Whole runs of equal parts at once.
            let run = PARTS_PER_SIZE - part % PARTS_PER_SIZE;
            let span = size * run as u64;
            if offset >= start + span {
                part += run;
                start += span;
            } else {
                let k = (offset - start) / size;
                return (part + k as usize, start + k * size);
            }
        }
    }

    fn start_of(&self, part: usize) -> u64 {
        (0..part).map(|p| self.size_of(p)).sum()
    }

    /// Append `buf` at the end; `skipped` marks it as a range to be written later.
    fn append(&self, st: &mut State, mut buf: &[u8], zeros: u64, skipped: bool) -> io::Result<()> {
        let from = st.end;
        let mut left = if skipped { zeros } else { buf.len() as u64 };
        while left > 0 {
            let (part, start) = self.part_at(st.end);
            let size = self.size_of(part);
            let data = st.parts.entry(part).or_default();
            let n = left.min(start + size - st.end) as usize;
            if skipped {
                data.resize(data.len() + n, 0);
            } else {
                data.extend_from_slice(&buf[..n]);
                buf = &buf[n..];
            }
            st.end += n as u64;
            left -= n as u64;
            if skipped {
                st.skipped.push(from..st.end);
                // Merge as we go: the list stays short (one range per held region).
                merge(&mut st.skipped);
            }
            if data.len() as u64 == size {
                self.send_if_ready(st, part)?;
            }
        }
        Ok(())
    }

    /// Write `buf` at `offset`, behind the end: only into skipped ranges.
    fn fill(&self, st: &mut State, buf: &[u8], offset: u64) -> io::Result<()> {
        let range = offset..offset + buf.len() as u64;
        if !st
            .skipped
            .iter()
            .any(|r| r.start <= range.start && range.end <= r.end)
        {
            return Err(io::Error::other(format!(
                "bytes {}..{} of an upload can no longer be changed (only ranges skipped \
                 earlier can be written behind the end)",
                range.start, range.end
            )));
        }
        let mut at = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let (part, start) = self.part_at(at);
            let size = self.size_of(part);
            // A part holding a skipped range is never sent before the range is written.
            let data = st.parts.get_mut(&part).ok_or_else(|| {
                io::Error::other(format!("part {part} of the upload was sent too early"))
            })?;
            let from = (at - start) as usize;
            let n = rest.len().min((size - (at - start)) as usize);
            data[from..from + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at += n as u64;
        }
        subtract(&mut st.skipped, &range);
        let (first, _) = self.part_at(range.start);
        let (last, _) = self.part_at(range.end - 1);
        for part in first..=last {
            let full = st
                .parts
                .get(&part)
                .is_some_and(|d| d.len() as u64 == self.size_of(part));
            if full {
                self.send_if_ready(st, part)?;
            }
        }
        Ok(())
    }

    /// Send the full part `part` unless it still holds a skipped range.
    fn send_if_ready(&self, st: &mut State, part: usize) -> io::Result<()> {
        let start = self.start_of(part);
        let span = start..start + self.size_of(part);
        if st
            .skipped
            .iter()
            .any(|r| r.start < span.end && span.start < r.end)
        {
            return Ok(());
        }
        self.send(st, part)
    }

    fn send(&self, st: &mut State, part: usize) -> io::Result<()> {
        let data = st.parts.remove(&part).unwrap_or_default();
        let (store, path, id) = (self.store.clone(), self.path.clone(), self.id.clone());
        {
            let _rt = runtime().enter();
            st.tasks.spawn(async move {
                let p = store
                    .put_part(&path, &id, part, PutPayload::from(data))
                    .await?;
                Ok((part, p))
            });
        }
        while st.tasks.len() >= self.in_flight {
            join_one(st)?;
        }
        Ok(())
    }
}

fn join_one(st: &mut State) -> io::Result<()> {
    match runtime().block_on(st.tasks.join_next()) {
        None => Ok(()),
        Some(Ok(Ok((part, id)))) => {
            st.sent.insert(part, id);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(io_error(e, "uploading a part")),
        Some(Err(e)) => Err(io::Error::other(format!("uploading a part: {e}"))),
    }
}

fn merge(v: &mut Vec<Range<u64>>) {
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v.drain(..) {
        match out.last_mut() {
            Some(l) if l.end >= r.start => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    *v = out;
}

fn subtract(v: &mut Vec<Range<u64>>, cut: &Range<u64>) {
    let mut out = Vec::with_capacity(v.len() + 1);
    for r in v.drain(..) {
        if r.end <= cut.start || cut.end <= r.start {
            out.push(r);
            continue;
        }
        if r.start < cut.start {
            out.push(r.start..cut.start);
        }
        if cut.end < r.end {
            out.push(cut.end..r.end);
        }
    }
    *v = out;
}

impl Storage for Upload {
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an upload in progress cannot be read",
        ))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state();
        if let Some(f) = &st.failed {
            return Err(io::Error::other(f.clone()));
        }
        let r = (|| {
            if offset > st.end {
                let gap = offset - st.end;
                self.append(&mut st, &[], gap, true)?;
            }
            let behind = (st.end - offset).min(buf.len() as u64) as usize;
            if behind > 0 {
                self.fill(&mut st, &buf[..behind], offset)?;
            }
            self.append(&mut st, &buf[behind..], 0, false)
        })();
        if let Err(e) = &r {
            st.failed = Some(e.to_string());
        }
        r
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state().end)
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "an upload cannot be resized",
        ))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn allocated_size(&self) -> Option<u64> {
        None
    }

    fn file_id(&self) -> Option<FileId> {
        None
    }
}

impl AppendOutput for AppendUpload {
    fn storage(&self) -> Arc<dyn Storage> {
        self.upload.clone()
    }

    /// Send what is left (ranges never written stay zeros, as in a file), wait for every
    /// part, and complete the upload; on failure it is aborted when dropped.
    fn finish(mut self: Box<Self>, _durable: bool) -> Result<()> {
        let u = self.upload.clone();
        let wrap = |e: io::Error| Error::io(e, "uploading").with_path(&u.name);
        {
            let mut st = u.state();
            if let Some(f) = &st.failed {
                return Err(wrap(io::Error::other(f.clone())));
            }
            st.skipped.clear();
            let left: Vec<usize> = st.parts.keys().copied().collect();
            for part in left {
                u.send(&mut st, part).map_err(wrap)?;
            }
            // An empty object is one empty part.
            if st.end == 0 && st.sent.is_empty() && st.tasks.is_empty() {
                u.send(&mut st, 0).map_err(wrap)?;
            }
            while !st.tasks.is_empty() {
                join_one(&mut st).map_err(wrap)?;
            }
            let parts: Vec<PartId> = std::mem::take(&mut st.sent).into_values().collect();
            runtime()
                .block_on(u.store.complete_multipart(&u.path, &u.id, parts))
                .map_err(|e| error(e, &u.name, "completing the upload"))?;
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for AppendUpload {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let u = &self.upload;
        // Parts in flight are cancelled and waited for first, so none lands after the
        // abort and revives the upload.
        let mut tasks = std::mem::take(&mut u.state().tasks);
        tasks.abort_all();
        let r = runtime().block_on(async {
            while tasks.join_next().await.is_some() {}
            u.store.abort_multipart(&u.path, &u.id).await
        });
        if let Err(e) = r {
            tracing::warn!(
                "{}: could not abort the unfinished upload ({e}); its parts may remain until \
                 the bucket's lifecycle rule removes them",
                u.name.display()
            );
        }
    }
}
