//! A new object written front to back as a multipart upload: parts go up in parallel while
//! the writer goes on producing, memory stays bounded (a part being filled plus the parts in
//! flight), and an upload that is not finished, or fails, is aborted so no parts are left
//! behind to be billed.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use object_store::{MultipartUpload, PutPayload};
use tokio::task::JoinSet;
use vmdk::storage::namespace::StreamSink;
use vmdk::Result;

use crate::client::{error, io_error, runtime};
use crate::Config;

/// Parts after which the part size doubles: S3 allows 10,000 parts, so sizes grow to keep
/// any image within that (8 MiB parts reach 8 GB, then 16 MiB parts another 16 GB, ...).
const PARTS_PER_SIZE: u64 = 1000;
/// The largest part (S3 allows 5 GiB).
const MAX_PART: usize = 512 << 20;

/// A multipart upload as a [`StreamSink`].
pub struct UploadSink {
    upload: Option<Box<dyn MultipartUpload>>,
    tasks: JoinSet<object_store::Result<()>>,
    buf: Vec<u8>,
    part_size: usize,
    parts: u64,
    in_flight: usize,
    pos: u64,
    name: PathBuf,
}

impl UploadSink {
    /// Start writing through `upload` (named `name` in messages).
    pub fn new(upload: Box<dyn MultipartUpload>, name: &Path, cfg: &Config) -> Self {
        // S3's smallest part (except the last) is 5 MiB.
        let part_size = cfg.part_size.clamp(5 << 20, MAX_PART);
        UploadSink {
            upload: Some(upload),
            tasks: JoinSet::new(),
            buf: Vec::with_capacity(part_size),
            part_size,
            parts: 0,
            in_flight: cfg.upload_parallelism.max(1),
            pos: 0,
            name: name.to_path_buf(),
        }
    }

    fn current_part_size(&self) -> usize {
        let doublings = (self.parts / PARTS_PER_SIZE).min(16) as u32;
        (self.part_size << doublings).min(MAX_PART)
    }

    /// Send the buffered part, then wait while too many are in flight.
    fn send_part(&mut self) -> io::Result<()> {
        let next = Vec::with_capacity(self.current_part_size());
        let data = std::mem::replace(&mut self.buf, next);
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| io::Error::other("upload is over"))?;
        let fut = upload.put_part(PutPayload::from(data));
        self.parts += 1;
        {
            let _rt = runtime().enter();
            self.tasks.spawn(fut);
        }
        while self.tasks.len() >= self.in_flight {
            self.join_one()?;
        }
        Ok(())
    }

    /// Wait for one part in flight to finish.
    fn join_one(&mut self) -> io::Result<()> {
        match runtime().block_on(self.tasks.join_next()) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(io_error(e, "uploading a part")),
            Some(Err(e)) => Err(io::Error::other(format!("uploading a part: {e}"))),
        }
    }
}

impl Write for UploadSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let room = self.current_part_size() - self.buf.len();
            let n = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.current_part_size() {
                self.send_part()?;
            }
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamSink for UploadSink {
    fn position(&self) -> u64 {
        self.pos
    }

    /// Send the last part, wait for every part, and complete the upload (which makes the
    /// object appear, whole, and durable: `durable` asks nothing more). On failure the
    /// upload is aborted when the sink is dropped.
    fn finish(mut self: Box<Self>, _durable: bool) -> Result<()> {
        let name = self.name.clone();
        let wrap = |e: io::Error| vmdk::Error::io(e, "uploading").with_path(&name);
        if !self.buf.is_empty() || self.parts == 0 {
            self.send_part().map_err(wrap)?;
        }
        while !self.tasks.is_empty() {
            self.join_one().map_err(wrap)?;
        }
        let mut upload = self.upload.take().expect("not finished yet");
        match runtime().block_on(upload.complete()) {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = error(e, &name, "completing the upload");
                let _ = runtime().block_on(upload.abort());
                Err(err)
            }
        }
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        // Parts still in flight are cancelled and waited for first, so none lands after the
        // abort and revives the upload.
        self.tasks.abort_all();
        let tasks = &mut self.tasks;
        let r = runtime().block_on(async {
            while tasks.join_next().await.is_some() {}
            upload.abort().await
        });
        if let Err(e) = r {
            tracing::warn!(
                "{}: could not abort the unfinished upload ({e}); its parts may remain until \
                 the bucket's lifecycle rule removes them",
                self.name.display()
            );
        }
    }
}
