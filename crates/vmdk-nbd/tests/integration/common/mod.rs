//! Shared test fixtures: an in-memory export, a server runner, a raw NBD
//! client for protocol-level tests, and helpers for external client tools.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vmdk_nbd::{BlockExport, BlockStatus, Server, ServerConfig, ShutdownHandle};

/// Allocation granularity of [`MemExport`].
pub const BLOCK: u64 = 4096;

struct MemState {
    data: Vec<u8>,
    allocated: Vec<bool>,
}

/// A RAM-backed export with a per-4 KiB allocation bitmap, so block status
/// reports holes (unallocated, reads as zero) and data.
pub struct MemExport {
    state: RwLock<MemState>,
    read_only: bool,
    can_trim: bool,
    pub flushes: AtomicUsize,
    pub trims: AtomicUsize,
    pub writes: AtomicUsize,
    /// write_zeroes calls with may_trim = true / false.
    pub zeroes_may_trim: AtomicUsize,
    pub zeroes_no_hole: AtomicUsize,
}

impl MemExport {
    pub fn new(size: u64) -> Arc<Self> {
        Self::with_options(size, false, true)
    }

    pub fn with_options(size: u64, read_only: bool, can_trim: bool) -> Arc<Self> {
        let blocks = size.div_ceil(BLOCK) as usize;
        Arc::new(MemExport {
            state: RwLock::new(MemState {
                data: vec![0; size as usize],
                allocated: vec![false; blocks],
            }),
            read_only,
            can_trim,
            flushes: AtomicUsize::new(0),
            trims: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            zeroes_may_trim: AtomicUsize::new(0),
            zeroes_no_hole: AtomicUsize::new(0),
        })
    }

    /// Write directly (test setup), marking blocks allocated.
    pub fn fill(&self, offset: u64, data: &[u8]) {
        let mut st = self.state.write().unwrap();
        st.data[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        mark(&mut st, offset, data.len() as u64, true);
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.state.read().unwrap().data.clone()
    }

    pub fn is_allocated(&self, block: usize) -> bool {
        self.state.read().unwrap().allocated[block]
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            // The server must never pass out-of-range requests through.
            panic!("export called out of range: {offset}+{len} > {size}");
        }
        Ok(())
    }
}

/// Mark blocks overlapping [offset, offset+len) allocated, or (when
/// `allocate` is false) deallocate only fully covered blocks.
fn mark(st: &mut MemState, offset: u64, len: u64, allocate: bool) {
    if len == 0 {
        return;
    }
    let end = offset + len;
    if allocate {
        for b in offset / BLOCK..end.div_ceil(BLOCK) {
            st.allocated[b as usize] = true;
        }
    } else {
        for b in offset.div_ceil(BLOCK)..end / BLOCK {
            st.allocated[b as usize] = false;
        }
    }
}

impl BlockExport for MemExport {
    fn size(&self) -> u64 {
        self.state.read().unwrap().data.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        let st = self.state.read().unwrap();
        buf.copy_from_slice(&st.data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        assert!(!self.read_only, "write on read-only export");
        self.check(offset, buf.len() as u64)?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.fill(offset, buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> io::Result<()> {
        assert!(!self.read_only, "write_zeroes on read-only export");
        self.check(offset, len)?;
        let mut st = self.state.write().unwrap();
        st.data[offset as usize..(offset + len) as usize].fill(0);
        if may_trim {
            self.zeroes_may_trim.fetch_add(1, Ordering::SeqCst);
            // Partially covered edge blocks stay as they are (allocated or
            // not, their zeroed part is correct either way).
            mark(&mut st, offset, len, false);
        } else {
            self.zeroes_no_hole.fetch_add(1, Ordering::SeqCst);
            mark(&mut st, offset, len, true);
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        assert!(self.can_trim, "trim called although can_trim() is false");
        self.check(offset, len)?;
        self.trims.fetch_add(1, Ordering::SeqCst);
        let mut st = self.state.write().unwrap();
        let end = offset + len;
        for b in offset.div_ceil(BLOCK)..end / BLOCK {
            let s = (b * BLOCK) as usize;
            st.data[s..s + BLOCK as usize].fill(0);
            st.allocated[b as usize] = false;
        }
        Ok(())
    }

    fn can_trim(&self) -> bool {
        self.can_trim
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<BlockStatus>> {
        let st = self.state.read().unwrap();
        let size = st.data.len() as u64;
        let end = (offset + len).min(size);
        let mut out: Vec<BlockStatus> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let b = pos / BLOCK;
            let next = ((b + 1) * BLOCK).min(end);
            let alloc = st.allocated[b as usize];
            let (hole, zero) = (!alloc, !alloc);
            match out.last_mut() {
                Some(l) if l.hole == hole && l.zero == zero => l.length += next - pos,
                _ => out.push(BlockStatus {
                    length: next - pos,
                    hole,
                    zero,
                }),
            }
            pos = next;
        }
        Ok(out)
    }
}

/// Deterministic non-trivial test data.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Server runner
// ---------------------------------------------------------------------------

pub enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A server running on its own thread; shut down and joined on drop.
pub struct TestServer {
    pub addr: Addr,
    pub handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn tcp(export: Arc<dyn BlockExport>, config: ServerConfig) -> Self {
        // Bound before the thread starts, so clients can connect at once.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(export, config);
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.serve_tcp(listener));
        TestServer {
            addr: Addr::Tcp(addr),
            handle,
            thread: Some(thread),
            _dir: None,
        }
    }

    pub fn unix(export: Arc<dyn BlockExport>, config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nbd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = Server::new(export, config);
        let handle = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.serve_unix(listener));
        TestServer {
            addr: Addr::Unix(path),
            handle,
            thread: Some(thread),
            _dir: Some(dir),
        }
    }

    pub fn port(&self) -> u16 {
        match &self.addr {
            Addr::Tcp(a) => a.port(),
            Addr::Unix(_) => panic!("unix server has no port"),
        }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        match &self.addr {
            Addr::Tcp(a) => *a,
            Addr::Unix(_) => panic!("unix server has no TCP address"),
        }
    }

    /// NBD URI for the default export.
    pub fn url(&self) -> String {
        self.url_for("")
    }

    pub fn url_for(&self, export: &str) -> String {
        match &self.addr {
            Addr::Tcp(a) => format!("nbd://{}:{}/{}", a.ip(), a.port(), export),
            Addr::Unix(p) => format!("nbd+unix:///{}?socket={}", export, p.display()),
        }
    }

    /// Request shutdown and wait for serve_* to return.
    pub fn stop(mut self) -> io::Result<()> {
        self.handle.shutdown();
        self.thread.take().unwrap().join().unwrap()
    }

    /// Wait for serve_* to return on its own (non-persistent servers).
    pub fn join(mut self) -> io::Result<()> {
        self.thread.take().unwrap().join().unwrap()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.handle.shutdown();
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// External tools
// ---------------------------------------------------------------------------

pub fn have_tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether the test must stop because `name` is missing. A missing client fails the test
/// (CI installs them all: `.ci/run`), so a green run always means the clients ran; only
/// `VMDK_TEST_ALLOW_MISSING_TOOLS=1` turns that into a skip with a notice, for machines
/// known to lack them.
pub fn skip_without(name: &str) -> bool {
    if have_tool(name) {
        return false;
    }
    assert!(
        std::env::var_os("VMDK_TEST_ALLOW_MISSING_TOOLS").is_some_and(|v| v == "1"),
        "`{name}` is not installed (install qemu-utils and libnbd-bin, as .ci/run does, or set \
         VMDK_TEST_ALLOW_MISSING_TOOLS=1 to skip)"
    );
    eprintln!("SKIPPED: `{name}` is not installed (VMDK_TEST_ALLOW_MISSING_TOOLS=1)");
    true
}

pub struct ToolOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Run an external client, killed after a minute so a server bug shows up
/// as a failure rather than a hung test run.
pub fn run(program: &str, args: &[&str]) -> ToolOutput {
    let out = Command::new("timeout")
        .arg("60")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    ToolOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run qemu-io with the given commands against `url` (raw format).
pub fn qemu_io(url: &str, cmds: &[&str]) -> ToolOutput {
    qemu_io_with(&[], url, cmds)
}

/// qemu-io with extra options (e.g. `-r` for read-only).
pub fn qemu_io_with(opts: &[&str], url: &str, cmds: &[&str]) -> ToolOutput {
    let mut args = vec!["-f", "raw"];
    args.extend_from_slice(opts);
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    run("qemu-io", &args)
}

/// Assert qemu-io ran every command without error or pattern mismatch.
pub fn assert_qemu_io_ok(out: &ToolOutput) {
    let all = out.all();
    assert!(
        out.success && !all.contains("failed") && !all.contains("error"),
        "qemu-io failed:\n{all}"
    );
}

/// A quick end-to-end check that the server still serves new clients.
pub fn assert_server_healthy(url: &str) {
    let out = qemu_io(url, &["write -P 0x5a 1m 4k", "read -P 0x5a 1m 4k"]);
    assert_qemu_io_ok(&out);
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

// ---------------------------------------------------------------------------
// Raw protocol client
// ---------------------------------------------------------------------------

pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_MAGIC: u32 = 0x668e_33ef;
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
pub const EXTENDED_MAGIC: u32 = 0x6e8a_278c;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_POLICY: u32 = 0x8000_0002;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
pub const REP_ERR_TOO_BIG: u32 = 0x8000_0009;
pub const REP_ERR_TLS_REQD: u32 = 0x8000_0005;
pub const REP_ERR_EXT_HEADER_REQD: u32 = 0x8000_000a;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const FLAG_FUA: u16 = 1;
pub const FLAG_NO_HOLE: u16 = 2;
pub const FLAG_DF: u16 = 4;
pub const FLAG_REQ_ONE: u16 = 8;
pub const FLAG_PAYLOAD_LEN: u16 = 32;

pub const TF_HAS_FLAGS: u16 = 1;
pub const TF_READ_ONLY: u16 = 2;
pub const TF_SEND_FLUSH: u16 = 4;
pub const TF_SEND_FUA: u16 = 8;
pub const TF_SEND_TRIM: u16 = 32;
pub const TF_SEND_WRITE_ZEROES: u16 = 64;
pub const TF_SEND_DF: u16 = 128;
pub const TF_CAN_MULTI_CONN: u16 = 256;

pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = 0x8001;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// One structured (or extended) reply chunk.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub ty: u16,
    pub handle: u64,
    /// The request offset an extended chunk echoes (`None` for structured chunks).
    pub offset: Option<u64>,
    pub payload: Vec<u8>,
}

impl Chunk {
    pub fn done(&self) -> bool {
        self.flags & 1 != 0
    }
    pub fn error(&self) -> u32 {
        assert_eq!(self.ty, REPLY_TYPE_ERROR, "not an error chunk: {self:?}");
        u32::from_be_bytes(self.payload[0..4].try_into().unwrap())
    }
}

/// Any transmission reply.
#[derive(Debug)]
pub enum Reply {
    Simple { error: u32, handle: u64 },
    Chunk(Chunk),
}

/// A minimal NBD client speaking raw bytes over TCP, for protocol tests
/// including deliberately hostile behaviour.
pub struct RawClient {
    pub s: TcpStream,
}

pub fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
pub fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        // Generous, only so a server bug fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        RawClient { s }
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Read and check the server greeting; returns the handshake flags.
    pub fn greeting(&mut self) -> u16 {
        let g = self.read_n(18);
        assert_eq!(be64(&g[0..8]), NBD_MAGIC);
        assert_eq!(be64(&g[8..16]), IHAVEOPT);
        be16(&g[16..18])
    }

    /// Greeting plus client flags (fixed newstyle + no zeroes).
    pub fn start(addr: SocketAddr) -> Self {
        let mut c = Self::connect(addr);
        assert_eq!(c.greeting(), 3);
        c.s.write_all(&3u32.to_be_bytes()).unwrap();
        c
    }

    pub fn send_option(&mut self, opt: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&opt.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// (option, reply type, data)
    pub fn read_option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let h = self.read_n(20);
        assert_eq!(be64(&h[0..8]), REPLY_MAGIC);
        let len = be32(&h[16..20]) as usize;
        assert!(len < 1 << 20, "absurd option reply length {len}");
        let data = self.read_n(len);
        (be32(&h[8..12]), be32(&h[12..16]), data)
    }

    /// Send an option and collect replies up to the final one.
    pub fn option(&mut self, opt: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        self.send_option(opt, data);
        let mut out = Vec::new();
        loop {
            let (o, ty, d) = self.read_option_reply();
            assert_eq!(o, opt);
            let last = ty == REP_ACK || ty & 0x8000_0000 != 0;
            out.push((ty, d));
            if last {
                return out;
            }
        }
    }

    /// Negotiate and enter transmission with NBD_OPT_GO.
    /// Returns (size, transmission flags, meta context id).
    pub fn go(&mut self, name: &str, structured: bool, meta: bool) -> (u64, u16, Option<u32>) {
        let mut ctx_id = None;
        if structured {
            let r = self.option(OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(r[0].0, REP_ACK);
        }
        if meta {
            let r = self.option(
                OPT_SET_META_CONTEXT,
                &meta_payload(name, &["base:allocation"]),
            );
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(r[0].0, REP_META_CONTEXT);
            assert_eq!(&r[0].1[4..], b"base:allocation");
            ctx_id = Some(be32(&r[0].1));
        }
        let r = self.option(OPT_GO, &info_payload(name, &[]));
        let (ty, d) = r.last().unwrap();
        assert_eq!(*ty, REP_ACK, "GO failed: {r:?}");
        let export = r
            .iter()
            .find(|(t, d)| *t == REP_INFO && be16(d) == 0)
            .expect("NBD_INFO_EXPORT missing");
        let _ = d;
        (be64(&export.1[2..10]), be16(&export.1[10..12]), ctx_id)
    }

    pub fn request(&mut self, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) {
        self.s
            .write_all(&request_bytes(flags, cmd, handle, offset, len))
            .unwrap();
    }

    /// An extended request (32-byte header, 64-bit length) followed by `payload`.
    pub fn ext_request(
        &mut self,
        flags: u16,
        cmd: u16,
        handle: u64,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) {
        let mut b = Vec::with_capacity(32 + payload.len());
        b.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    pub fn write_req(&mut self, flags: u16, handle: u64, offset: u64, data: &[u8]) {
        let mut b = request_bytes(flags, CMD_WRITE, handle, offset, data.len() as u32);
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    pub fn read_reply(&mut self) -> Reply {
        let m = be32(&self.read_n(4));
        match m {
            SIMPLE_MAGIC => {
                let r = self.read_n(12);
                Reply::Simple {
                    error: be32(&r[0..4]),
                    handle: be64(&r[4..12]),
                }
            }
            STRUCTURED_MAGIC => {
                let h = self.read_n(16);
                let len = be32(&h[12..16]) as usize;
                assert!(len <= 64 << 20, "absurd chunk length {len}");
                Reply::Chunk(Chunk {
                    flags: be16(&h[0..2]),
                    ty: be16(&h[2..4]),
                    handle: be64(&h[4..12]),
                    offset: None,
                    payload: self.read_n(len),
                })
            }
            EXTENDED_MAGIC => {
                let h = self.read_n(28);
                let len = be64(&h[20..28]) as usize;
                assert!(len <= 64 << 20, "absurd chunk length {len}");
                Reply::Chunk(Chunk {
                    flags: be16(&h[0..2]),
                    ty: be16(&h[2..4]),
                    handle: be64(&h[4..12]),
                    offset: Some(be64(&h[12..20])),
                    payload: self.read_n(len),
                })
            }
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    /// A simple reply's (error, handle).
    pub fn simple(&mut self) -> (u32, u64) {
        match self.read_reply() {
            Reply::Simple { error, handle } => (error, handle),
            r => panic!("expected simple reply, got {r:?}"),
        }
    }

    /// All chunks of one structured reply (until DONE).
    pub fn chunks(&mut self) -> Vec<Chunk> {
        let mut out = Vec::new();
        loop {
            match self.read_reply() {
                Reply::Chunk(c) => {
                    let done = c.done();
                    out.push(c);
                    if done {
                        return out;
                    }
                }
                r => panic!("expected chunk, got {r:?}"),
            }
        }
    }

    /// Error value of a reply, whatever its kind (0 = success).
    pub fn reply_error(&mut self) -> u32 {
        match self.read_reply() {
            Reply::Simple { error, .. } => error,
            Reply::Chunk(c) => {
                assert!(c.done());
                if c.ty == REPLY_TYPE_ERROR {
                    c.error()
                } else {
                    0
                }
            }
        }
    }

    /// Assert the server closes the connection (EOF or reset), not a timeout.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue, // e.g. an error reply before closing
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("expected the server to close the connection, got {e}"),
            }
        }
    }
}

pub fn request_bytes(flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&handle.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

pub fn info_payload(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

pub fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

/// Reassemble a structured READ reply into bytes, checking chunk bounds.
/// Returns (data, number of hole chunks).
pub fn assemble_read(chunks: &[Chunk], offset: u64, len: usize) -> (Vec<u8>, usize) {
    let mut out = vec![0xEEu8; len];
    let mut covered = vec![false; len];
    let mut holes = 0;
    for c in chunks {
        match c.ty {
            REPLY_TYPE_OFFSET_DATA => {
                let off = (be64(&c.payload[0..8]) - offset) as usize;
                let data = &c.payload[8..];
                out[off..off + data.len()].copy_from_slice(data);
                covered[off..off + data.len()].iter_mut().for_each(|c| {
                    assert!(!*c, "overlapping chunks");
                    *c = true
                });
            }
            REPLY_TYPE_OFFSET_HOLE => {
                holes += 1;
                let off = (be64(&c.payload[0..8]) - offset) as usize;
                let n = be32(&c.payload[8..12]) as usize;
                out[off..off + n].fill(0);
                covered[off..off + n].iter_mut().for_each(|c| {
                    assert!(!*c, "overlapping chunks");
                    *c = true
                });
            }
            REPLY_TYPE_NONE => {}
            t => panic!("unexpected chunk type {t:#x}: {c:?}"),
        }
    }
    assert!(
        covered.iter().all(|&c| c),
        "read reply does not cover the request"
    );
    (out, holes)
}
