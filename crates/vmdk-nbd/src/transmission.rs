//! Transmission phase: a small pool of workers per connection, each of which takes its
//! turn at the socket (under the reader lock) to read one request, then executes it against
//! the export and writes the reply under the writer lock. There is no hand-off between
//! threads per request (a reader thread feeding workers through a queue cost two context
//! switches per request, which at 4 KiB reads is most of the server's time), and each worker
//! reuses its own reply and payload buffers, so requests allocate and zero nothing.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;

use tracing::{debug, error, warn};

use crate::handshake::{Negotiated, ALLOCATION_DEPTH_ID, BASE_ALLOCATION_ID};
use crate::proto::*;
use crate::server::ExportCtx;
use crate::socket::Socket;

/// Bytes of READ/WRITE payload allowed in flight per connection (queued,
/// being processed, or waiting to be sent). One request is always admitted,
/// so a single maximum-size request still works.
const MAX_INFLIGHT_BYTES: u64 = 64 * 1024 * 1024;

/// How many times a sparse read asks the export for block status before
/// giving up and sending the rest as data.
const MAX_STATUS_CALLS_PER_READ: usize = 16;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking worker must not take the whole connection down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counting limit on in-flight payload bytes.
struct Budget {
    state: Mutex<BudgetState>,
    cv: Condvar,
}

#[derive(Default)]
struct BudgetState {
    used: u64,
    /// Threads waiting in `acquire`: `release` wakes them only if there are any (a
    /// condvar's notify is a system call even with no one to wake, and it was one per
    /// request).
    waiting: usize,
}

impl Budget {
    fn new() -> Self {
        Budget {
            state: Mutex::new(BudgetState::default()),
            cv: Condvar::new(),
        }
    }

    fn acquire(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut st = lock(&self.state);
        while st.used > 0 && st.used + n > MAX_INFLIGHT_BYTES {
            st.waiting += 1;
            st = self.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.waiting -= 1;
        }
        st.used += n;
    }

    fn release(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut st = lock(&self.state);
        st.used -= n;
        if st.waiting > 0 {
            self.cv.notify_all();
        }
    }
}

/// A decoded request, read by the worker that executes it.
struct Job {
    req: Request,
    /// Bytes of the worker's payload buffer holding this request's data (WRITE), 0 otherwise.
    payload_len: usize,
    /// Budget held by this job, released once it is answered.
    cost: u64,
}

/// Smallest READ whose data is sent with `sendfile` when the export can name its file: below
/// it, copying through the reply buffer costs less than the extra system call.
const SENDFILE_MIN: u64 = 64 * 1024;

/// A worker's reply buffer above this size is not kept for the next request.
const KEEP_BUFFER: usize = 4 << 20;

/// Make `buf` at least `len` bytes long. Buffers only grow (until dropped), so a reused one
/// is zeroed once, not per request: every byte sent is written before it is sent.
fn ensure(buf: &mut Vec<u8>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Copy `bytes` into `buf` at `*used`, growing it as needed.
fn put(buf: &mut Vec<u8>, used: &mut usize, bytes: &[u8]) {
    ensure(buf, *used + bytes.len());
    buf[*used..*used + bytes.len()].copy_from_slice(bytes);
    *used += bytes.len();
}

/// A worker's buffers, kept from one request to the next.
#[derive(Default)]
struct WorkerBufs {
    /// Replies (READ data included) are assembled here.
    reply: Vec<u8>,
    /// WRITE payloads are read into here.
    payload: Vec<u8>,
}

/// The connection's request stream, read by one worker at a time.
struct Reader<'r, R> {
    r: &'r mut R,
    /// No more requests will be read: DISC, end of stream or a read error.
    done: bool,
    /// A read error that ended the stream.
    error: Option<io::Error>,
}

/// Failure of one command, answered with an NBD error value.
struct CmdError {
    errno: u32,
    msg: String,
}

impl CmdError {
    fn new(errno: u32, msg: impl Into<String>) -> Self {
        CmdError {
            errno,
            msg: msg.into(),
        }
    }

    /// `what` failed because of `e`: the message is `e` and its causes (a backend's error
    /// shows only its own context and leaves the cause to its source).
    fn io(what: &str, e: &io::Error) -> Self {
        let mut msg = format!("{what}: {e}");
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        CmdError::new(errno_for(e), msg)
    }
}

/// `Ok(None)`: plain success; `Ok(Some(buf))`: a complete reply to send.
type CmdResult = Result<Option<Vec<u8>>, CmdError>;

/// Map a backend error onto the small set of NBD error values. Backends often wrap the OS
/// error in their own (keeping it as the kind, or as a source): look through both.
fn errno_for(e: &io::Error) -> u32 {
    match os_errno(e) {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ENOSPC,
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EROFS) => EPERM,
        Some(libc::EINVAL) => EINVAL,
        Some(_) => EIO,
        None => match e.kind() {
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => ENOSPC,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => EPERM,
            io::ErrorKind::InvalidInput => EINVAL,
            _ => EIO,
        },
    }
}

/// The OS error number of `e` or of the first `io::Error` in its chain of causes.
fn os_errno(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(c) = cause {
        if let Some(n) = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        cause = c.source();
    }
    None
}

fn command_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_READ => "read",
        CMD_WRITE => "write",
        CMD_DISC => "disc",
        CMD_FLUSH => "flush",
        CMD_TRIM => "trim",
        CMD_CACHE => "cache",
        CMD_WRITE_ZEROES => "write_zeroes",
        CMD_BLOCK_STATUS => "block_status",
        _ => "unknown",
    }
}

/// A run of a READ answer: either real data or a known-zero hole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    len: u64,
    hole: bool,
}

fn push_segment(segs: &mut Vec<Segment>, offset: u64, len: u64, hole: bool) {
    if let Some(last) = segs.last_mut() {
        if last.hole == hole && last.offset + last.len == offset {
            last.len += len;
            return;
        }
    }
    segs.push(Segment { offset, len, hole });
}

/// Per-connection state shared by the reader and the workers.
struct Conn<'a> {
    ctx: &'a ExportCtx,
    neg: Negotiated,
    peer: &'a str,
    writer: Mutex<Box<dyn Socket>>,
    /// Separate handle so the socket can be shut down without the write lock.
    closer: Box<dyn Socket>,
    budget: Budget,
    /// Set once writing failed or a handler panicked: stop doing work.
    broken: AtomicBool,
    /// The socket takes `sendfile` (plain TCP or Unix, not TLS).
    zero_copy: bool,
    /// Something was written; flush when the client leaves.
    dirty: AtomicBool,
}

/// Serve requests until the client disconnects. `reader` continues where the
/// handshake left off (it may hold buffered request bytes).
pub(crate) fn serve<R: Read + Send>(
    ctx: &ExportCtx,
    neg: Negotiated,
    reader: &mut R,
    sock: &dyn Socket,
    workers: usize,
    peer: &str,
) -> io::Result<()> {
    let conn = Conn {
        ctx,
        neg,
        peer,
        writer: Mutex::new(sock.try_clone_box()?),
        closer: sock.try_clone_box()?,
        budget: Budget::new(),
        broken: AtomicBool::new(false),
        zero_copy: sock.plain_fd().is_some(),
        dirty: AtomicBool::new(false),
    };
    let reader = Mutex::new(Reader {
        r: reader,
        done: false,
        error: None,
    });
    thread::scope(|s| {
        // This thread is one of the workers.
        for i in 1..workers.max(1) {
            let spawned = thread::Builder::new()
                .name(format!("nbd-worker-{i}"))
                .spawn_scoped(s, || conn.worker_loop(&reader));
            if let Err(e) = spawned {
                warn!(peer, error = %e, "could not start worker thread");
            }
        }
        conn.worker_loop(&reader);
    });

    if conn.dirty.load(Ordering::Relaxed) {
        if let Err(e) = ctx.export.flush() {
            warn!(peer, error = %e, "flush after client disconnect failed");
        }
    }
    let error = lock(&reader).error.take();
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Read a request header (the whole of `buf`); `Ok(false)` on a clean EOF between requests.
fn read_header<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Conn<'_> {
    /// Read the next request (and a WRITE's payload, into `payload`); `Ok(None)` once the
    /// client is done (DISC, or a clean end of stream between requests).
    fn read_request<R: Read>(&self, r: &mut R, payload: &mut Vec<u8>) -> io::Result<Option<Job>> {
        let mut hdr_buf = [0u8; EXTENDED_REQUEST_LEN];
        let hdr = if self.neg.extended {
            &mut hdr_buf[..]
        } else {
            &mut hdr_buf[..REQUEST_LEN]
        };
        if !read_header(r, hdr)? {
            debug!(
                peer = self.peer,
                "client closed the connection without NBD_CMD_DISC"
            );
            return Ok(None);
        }
        let req = match decode_request(hdr, self.neg.extended) {
            Ok(req) => req,
            Err(e) => {
                // Without a valid header we cannot find the next request.
                warn!(peer = self.peer, error = %e, "invalid request, dropping connection");
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
        };
        debug!(
            peer = self.peer,
            handle = req.handle,
            command = command_name(req.command),
            flags = req.flags,
            offset = req.offset,
            length = req.length,
            "request"
        );

        let mut payload_len = 0;
        let mut cost = 0;
        // With extended headers any command may carry a payload (PAYLOAD_LEN); WRITE
        // always does. Other commands take none here, so theirs is read and dropped
        // and the command fails on the flag, keeping the stream in step.
        let has_payload = req.command == CMD_WRITE
            || (self.neg.extended && req.flags & CMD_FLAG_PAYLOAD_LEN != 0);
        match req.command {
            CMD_DISC => return Ok(None),
            _ if has_payload => {
                if req.length > u64::from(MAX_PAYLOAD) {
                    // The payload follows the header and we refuse to
                    // buffer it, so the stream cannot be resynchronised.
                    warn!(
                        peer = self.peer,
                        length = req.length,
                        "write larger than the maximum block size, dropping connection"
                    );
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "write payload too large",
                    ));
                }
                cost = req.length;
                self.budget.acquire(cost);
                payload_len = req.length as usize;
                ensure(payload, payload_len);
                if let Err(e) = r.read_exact(&mut payload[..payload_len]) {
                    self.budget.release(cost);
                    return Err(e);
                }
            }
            // Oversized reads are rejected by the worker without allocating.
            CMD_READ if req.length <= u64::from(MAX_PAYLOAD) => {
                cost = req.length;
                self.budget.acquire(cost);
            }
            _ => {}
        }
        Ok(Some(Job {
            req,
            payload_len,
            cost,
        }))
    }

    /// Take turns at the socket with the other workers: read a request, answer it, again.
    fn worker_loop<R: Read>(&self, reader: &Mutex<Reader<'_, R>>) {
        let mut bufs = WorkerBufs::default();
        loop {
            let job = {
                let mut rd = lock(reader);
                if rd.done || self.broken.load(Ordering::Relaxed) {
                    return;
                }
                match self.read_request(rd.r, &mut bufs.payload) {
                    Ok(Some(job)) => job,
                    Ok(None) => {
                        rd.done = true;
                        return;
                    }
                    Err(e) => {
                        // Requests already read are still answered by their workers.
                        rd.done = true;
                        rd.error = Some(e);
                        return;
                    }
                }
            };
            let cost = job.cost;
            if !self.broken.load(Ordering::Relaxed) {
                let handled = catch_unwind(AssertUnwindSafe(|| self.handle(job, &mut bufs)));
                if handled.is_err() {
                    error!(
                        peer = self.peer,
                        "request handler panicked, dropping connection"
                    );
                    self.break_connection();
                }
            }
            self.budget.release(cost);
            if bufs.reply.len() > KEEP_BUFFER {
                bufs.reply = Vec::new();
            }
            if bufs.payload.len() > KEEP_BUFFER {
                bufs.payload = Vec::new();
            }
        }
    }

    fn break_connection(&self) {
        self.broken.store(true, Ordering::Relaxed);
        // Wakes the reader (blocked in read) and any writer.
        let _ = self.closer.shutdown_socket(Shutdown::Both);
    }

    /// Send one complete reply; replies from different workers never interleave.
    fn send(&self, buf: &[u8]) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut w = lock(&self.writer);
        if let Err(e) = w.write_all(buf).and_then(|_| w.flush()) {
            debug!(peer = self.peer, error = %e, "sending reply failed");
            drop(w);
            self.break_connection();
        }
    }

    fn handle(&self, job: Job, bufs: &mut WorkerBufs) {
        let req = job.req;
        let result = match req.command {
            CMD_READ => match self.cmd_read(&req, &mut bufs.reply) {
                Ok(Some(used)) => {
                    self.send(&bufs.reply[..used]);
                    return;
                }
                // Sent straight from the file.
                Ok(None) => return,
                Err(e) => Err(e),
            },
            CMD_WRITE => self.cmd_write(&req, &bufs.payload[..job.payload_len]),
            CMD_FLUSH => self.cmd_flush(&req),
            CMD_TRIM => self.cmd_trim(&req),
            CMD_CACHE => self.cmd_cache(&req),
            CMD_WRITE_ZEROES => self.cmd_write_zeroes(&req),
            CMD_BLOCK_STATUS => self.cmd_block_status(&req),
            other => Err(CmdError::new(EINVAL, format!("unknown command {other}"))),
        };
        match result {
            Ok(Some(reply)) => self.send(&reply),
            // Extended headers have no simple replies.
            Ok(None) if self.neg.extended => self.send(&self.chunks(&req).none()),
            Ok(None) => self.send(&encode_simple_reply(req.handle, 0)),
            Err(e) => {
                debug!(
                    peer = self.peer,
                    handle = req.handle,
                    command = command_name(req.command),
                    errno = e.errno,
                    message = %e.msg,
                    "request failed"
                );
                // Structured errors carry a message; a READ must not get a
                // simple reply once structured replies are on.
                if self.neg.structured {
                    self.send(&self.chunks(&req).error(e.errno, &e.msg));
                } else {
                    self.send(&encode_simple_reply(req.handle, e.errno));
                }
            }
        }
    }

    /// The reply chunks of `req` in the negotiated form.
    fn chunks(&self, req: &Request) -> Chunks {
        Chunks {
            extended: self.neg.extended,
            handle: req.handle,
            offset: req.offset,
        }
    }

    // ---- validation helpers -------------------------------------------------

    fn check_flags(&self, req: &Request, allowed: u16) -> Result<(), CmdError> {
        let bad = req.flags & !allowed;
        if bad != 0 {
            return Err(CmdError::new(
                EINVAL,
                format!("flags {bad:#x} not valid for {}", command_name(req.command)),
            ));
        }
        Ok(())
    }

    fn check_range(&self, req: &Request, errno: u32) -> Result<(), CmdError> {
        let end = req.offset.checked_add(req.length);
        match end {
            Some(end) if end <= self.neg.size => Ok(()),
            _ => Err(CmdError::new(
                errno,
                format!(
                    "request [{}, +{}) is beyond the end of the export ({} bytes)",
                    req.offset, req.length, self.neg.size
                ),
            )),
        }
    }

    fn check_writable(&self) -> Result<(), CmdError> {
        if self.ctx.read_only {
            return Err(CmdError::new(EPERM, "export is read-only"));
        }
        Ok(())
    }

    fn flush_if_fua(&self, req: &Request) -> Result<(), CmdError> {
        if req.flags & CMD_FLAG_FUA != 0 {
            self.ctx
                .export
                .flush()
                .map_err(|e| CmdError::io("flush", &e))?;
        }
        Ok(())
    }

    // ---- commands -----------------------------------------------------------

    /// A READ's whole reply, assembled in `buf`: returns how many bytes of it to send, or
    /// `None` when the reply went out already, its data straight from the export's file.
    fn cmd_read(&self, req: &Request, buf: &mut Vec<u8>) -> Result<Option<usize>, CmdError> {
        let mut allowed = CMD_FLAG_FUA;
        if self.neg.structured {
            allowed |= CMD_FLAG_DF;
        }
        self.check_flags(req, allowed)?;
        if req.length > u64::from(MAX_PAYLOAD) {
            return Err(CmdError::new(
                EINVAL,
                format!(
                    "read of {} bytes exceeds the maximum of {MAX_PAYLOAD}",
                    req.length
                ),
            ));
        }
        self.check_range(req, EINVAL)?;
        if self.send_file_read(req) {
            return Ok(None);
        }
        if self.neg.structured {
            self.read_structured(req, buf).map(Some)
        } else {
            self.read_simple(req, buf).map(Some)
        }
    }

    /// Answer a (validated) READ with its data sent from the export's host file by
    /// `sendfile`, when the socket takes it, the read is large enough, it is data throughout
    /// (no hole chunk to send) and the export names one file for it. Returns whether it did.
    /// A failure after the reply started leaves the stream unusable, so it breaks the
    /// connection (the client sees it closed); one before it is answered as a read error
    /// the usual way, by returning `false` and letting the buffered path try.
    fn send_file_read(&self, req: &Request) -> bool {
        if !self.zero_copy || req.length < SENDFILE_MIN {
            return false;
        }
        if self.neg.structured && req.flags & CMD_FLAG_DF == 0 {
            let segs = self.classify(req.offset, req.length);
            if segs.len() != 1 || segs[0].hole {
                return false;
            }
        }
        let Some(slice) = self.ctx.export.read_file(req.offset, req.length) else {
            return false;
        };
        let mut hdr = Vec::with_capacity(64);
        if self.neg.structured {
            let chunks = self.chunks(req);
            chunks.header(
                &mut hdr,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + req.length,
            );
            hdr.extend_from_slice(&req.offset.to_be_bytes());
        } else {
            hdr.resize(SIMPLE_REPLY_LEN, 0);
            write_simple_reply(&mut hdr, req.handle, 0);
        }
        if self.broken.load(Ordering::Relaxed) {
            return true;
        }
        let w = lock(&self.writer);
        let Some(fd) = w.plain_fd() else {
            drop(w);
            return false;
        };
        if let Err(e) = send_from_file(fd, &hdr, &slice, req.length) {
            debug!(peer = self.peer, error = %e, "sending a read from the file failed");
            drop(w);
            self.break_connection();
        }
        true
    }

    fn read_simple(&self, req: &Request, buf: &mut Vec<u8>) -> Result<usize, CmdError> {
        // Header and data in one buffer so the reply is a single write.
        let used = SIMPLE_REPLY_LEN + req.length as usize;
        ensure(buf, used);
        if req.length > 0 {
            self.ctx
                .export
                .read_at(&mut buf[SIMPLE_REPLY_LEN..used], req.offset)
                .map_err(|e| CmdError::io("read", &e))?;
        }
        write_simple_reply(&mut buf[..SIMPLE_REPLY_LEN], req.handle, 0);
        Ok(used)
    }

    fn read_structured(&self, req: &Request, buf: &mut Vec<u8>) -> Result<usize, CmdError> {
        let chunks = self.chunks(req);
        let mut used = 0;
        if req.length == 0 {
            put(buf, &mut used, &chunks.none());
            return Ok(used);
        }
        let len = req.length;
        let mut segs = self.classify(req.offset, len);
        if req.flags & CMD_FLAG_DF != 0 && segs.len() > 1 {
            // "Don't fragment": one content chunk, zeroes sent explicitly.
            segs = vec![Segment {
                offset: req.offset,
                len,
                hole: false,
            }];
        }

        let mut hdr = Vec::with_capacity(64);
        let last = segs.len() - 1;
        for (i, seg) in segs.iter().enumerate() {
            // Everything is read before sending, so the last content chunk
            // can carry DONE and no separate NONE chunk is needed.
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            hdr.clear();
            // Segments lie within the request, so lengths fit in u32.
            if seg.hole {
                chunks.hole(&mut hdr, flags, seg.offset, seg.len as u32);
                put(buf, &mut used, &hdr);
            } else {
                chunks.header(&mut hdr, flags, REPLY_TYPE_OFFSET_DATA, 8 + seg.len);
                hdr.extend_from_slice(&seg.offset.to_be_bytes());
                put(buf, &mut used, &hdr);
                let end = used + seg.len as usize;
                ensure(buf, end);
                self.ctx
                    .export
                    .read_at(&mut buf[used..end], seg.offset)
                    .map_err(|e| CmdError::io("read", &e))?;
                used = end;
            }
        }
        Ok(used)
    }

    /// Split [offset, offset+len) into data and known-zero runs using the
    /// export's block status. Any trouble degrades to "all data", which is
    /// always correct, just not sparse.
    fn classify(&self, offset: u64, len: u64) -> Vec<Segment> {
        let end = offset + len;
        let mut pos = offset;
        let mut segs = Vec::new();
        for _ in 0..MAX_STATUS_CALLS_PER_READ {
            if pos >= end {
                break;
            }
            let extents = match self.ctx.export.read_status(pos, end - pos) {
                Ok(e) => e,
                Err(e) => {
                    debug!(peer = self.peer, error = %e, "block status for sparse read failed");
                    break;
                }
            };
            let before = pos;
            for e in extents {
                if e.length == 0 || pos >= end {
                    break;
                }
                let l = e.length.min(end - pos);
                push_segment(&mut segs, pos, l, e.zero);
                pos += l;
            }
            if pos == before {
                break;
            }
        }
        if pos < end {
            push_segment(&mut segs, pos, end - pos, false);
        }
        segs
    }

    fn cmd_write(&self, req: &Request, data: &[u8]) -> CmdResult {
        let mut allowed = CMD_FLAG_FUA;
        if self.neg.extended {
            allowed |= CMD_FLAG_PAYLOAD_LEN;
        }
        self.check_flags(req, allowed)?;
        self.check_writable()?;
        self.check_range(req, ENOSPC)?;
        if !data.is_empty() {
            self.dirty.store(true, Ordering::Relaxed);
            self.ctx
                .export
                .write_at(data, req.offset)
                .map_err(|e| CmdError::io("write", &e))?;
        }
        self.flush_if_fua(req)?;
        Ok(None)
    }

    fn cmd_flush(&self, req: &Request) -> CmdResult {
        self.check_flags(req, CMD_FLAG_FUA)?;
        self.ctx
            .export
            .flush()
            .map_err(|e| CmdError::io("flush", &e))?;
        Ok(None)
    }

    fn cmd_trim(&self, req: &Request) -> CmdResult {
        self.check_flags(req, CMD_FLAG_FUA)?;
        self.check_writable()?;
        if !self.ctx.export.can_trim() {
            return Err(CmdError::new(
                EINVAL,
                "trim is not supported by this export",
            ));
        }
        self.check_range(req, EINVAL)?;
        if req.length > 0 {
            self.dirty.store(true, Ordering::Relaxed);
            self.ctx
                .export
                .trim(req.offset, req.length)
                .map_err(|e| CmdError::io("trim", &e))?;
        }
        self.flush_if_fua(req)?;
        Ok(None)
    }

    fn cmd_cache(&self, req: &Request) -> CmdResult {
        // Advisory only; nothing to prefetch into, so just validate.
        self.check_flags(req, CMD_FLAG_FUA)?;
        self.check_range(req, EINVAL)?;
        Ok(None)
    }

    fn cmd_write_zeroes(&self, req: &Request) -> CmdResult {
        self.check_flags(req, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)?;
        self.check_writable()?;
        self.check_range(req, ENOSPC)?;
        if req.length > 0 {
            self.dirty.store(true, Ordering::Relaxed);
            let may_trim = req.flags & CMD_FLAG_NO_HOLE == 0;
            self.ctx
                .export
                .write_zeroes(req.offset, req.length, may_trim)
                .map_err(|e| CmdError::io("write zeroes", &e))?;
        }
        self.flush_if_fua(req)?;
        Ok(None)
    }

    fn cmd_block_status(&self, req: &Request) -> CmdResult {
        self.check_flags(req, CMD_FLAG_FUA | CMD_FLAG_REQ_ONE)?;
        let meta = self.neg.meta;
        if !meta.any() {
            return Err(CmdError::new(EINVAL, "no metadata context was negotiated"));
        }
        if req.length == 0 {
            return Err(CmdError::new(EINVAL, "block status of zero length"));
        }
        self.check_range(req, EINVAL)?;
        let req_one = req.flags & CMD_FLAG_REQ_ONE != 0;
        let export = &self.ctx.export;
        // One chunk per selected context, in qemu's order; the last one is final.
        let mut answers: Vec<(u32, Vec<(u64, u32)>)> = Vec::with_capacity(2);
        if meta.base_allocation {
            let extents = export
                .block_status(req.offset, req.length)
                .map_err(|e| CmdError::io("block status", &e))?;
            let descs = extents.iter().map(|e| {
                let flags =
                    (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 });
                (e.length, flags)
            });
            answers.push((BASE_ALLOCATION_ID, clip(req, descs, req_one)?));
        }
        if meta.allocation_depth {
            let extents = export
                .allocation_depth(req.offset, req.length)
                .map_err(|e| CmdError::io("allocation depth", &e))?;
            let descs = extents.iter().map(|e| (e.length, e.depth));
            answers.push((ALLOCATION_DEPTH_ID, clip(req, descs, req_one)?));
        }
        let chunks = self.chunks(req);
        let mut out = Vec::new();
        let last = answers.len() - 1;
        for (i, (id, descs)) in answers.iter().enumerate() {
            let flags = if i == last { REPLY_FLAG_DONE } else { 0 };
            chunks.block_status(&mut out, flags, *id, descs);
        }
        Ok(Some(out))
    }
}

/// Send `header`, then `len` bytes of `slice`'s file (zeros past its end), on the socket
/// `fd`: the header with `MSG_MORE` so it leaves in one segment with the data, the data by
/// `sendfile`, from the page cache to the socket without a copy through this process.
fn send_from_file(
    fd: std::os::fd::BorrowedFd<'_>,
    header: &[u8],
    slice: &crate::FileSlice,
    len: u64,
) -> io::Result<()> {
    use rustix::io::Errno;
    let mut sent = 0;
    while sent < header.len() {
        match rustix::net::send(fd, &header[sent..], rustix::net::SendFlags::MORE) {
            Ok(n) => sent += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let file = slice.file.as_fd();
    let mut offset = slice.offset;
    let mut left = len;
    while left > 0 {
        let count = left.min(1 << 30) as usize;
        match rustix::fs::sendfile(fd, file, Some(&mut offset), count) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Past the file's end the export reads as zeros.
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        let mut done = 0;
        while done < n {
            match rustix::net::send(fd, &ZEROS[done..n], rustix::net::SendFlags::empty()) {
                Ok(k) => done += k,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        left -= n as u64;
    }
    Ok(())
}

/// Clip an export's (length, flags) extents to the request (always required for REQ_ONE;
/// without extended headers the request, and so every descriptor, is below 4 GiB) and merge
/// equal neighbours; with `req_one`, only the first.
fn clip(
    req: &Request,
    extents: impl Iterator<Item = (u64, u32)>,
    req_one: bool,
) -> Result<Vec<(u64, u32)>, CmdError> {
    let end = req.offset + req.length;
    let mut pos = req.offset;
    let mut descs: Vec<(u64, u32)> = Vec::new();
    for (length, flags) in extents {
        if length == 0 || pos >= end {
            break;
        }
        let l = length.min(end - pos);
        match descs.last_mut() {
            Some(last) if last.1 == flags => last.0 += l,
            _ => descs.push((l, flags)),
        }
        pos += l;
    }
    if descs.is_empty() {
        return Err(CmdError::new(EIO, "export returned no block status"));
    }
    if req_one {
        descs.truncate(1);
    }
    Ok(descs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_merge_only_when_contiguous_and_same_kind() {
        let mut s = Vec::new();
        push_segment(&mut s, 0, 10, false);
        push_segment(&mut s, 10, 5, false);
        push_segment(&mut s, 15, 5, true);
        push_segment(&mut s, 20, 5, true);
        push_segment(&mut s, 25, 1, false);
        assert_eq!(
            s,
            vec![
                Segment {
                    offset: 0,
                    len: 15,
                    hole: false
                },
                Segment {
                    offset: 15,
                    len: 10,
                    hole: true
                },
                Segment {
                    offset: 25,
                    len: 1,
                    hole: false
                },
            ]
        );
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(
            errno_for(&io::Error::from_raw_os_error(libc::ENOSPC)),
            ENOSPC
        );
        assert_eq!(errno_for(&io::Error::from_raw_os_error(libc::EROFS)), EPERM);
        assert_eq!(errno_for(&io::Error::from_raw_os_error(libc::EBADMSG)), EIO);
        assert_eq!(errno_for(&io::Error::other("x")), EIO);
        assert_eq!(
            errno_for(&io::Error::new(io::ErrorKind::InvalidInput, "x")),
            EINVAL
        );
        // Wrapped by a backend: the kind, or the OS error among the causes, still counts.
        assert_eq!(
            errno_for(&io::Error::new(io::ErrorKind::StorageFull, "full")),
            ENOSPC
        );
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "backend: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = io::Error::other(Wrapper(io::Error::from_raw_os_error(libc::ENOSPC)));
        assert_eq!(errno_for(&wrapped), ENOSPC);
    }

    #[test]
    fn budget_admits_one_oversized_request() {
        let b = Budget::new();
        b.acquire(MAX_INFLIGHT_BYTES * 2);
        b.release(MAX_INFLIGHT_BYTES * 2);
        b.acquire(1);
        b.acquire(MAX_INFLIGHT_BYTES - 1);
        b.release(MAX_INFLIGHT_BYTES);
        assert_eq!(lock(&b.state).used, 0);
    }
}
