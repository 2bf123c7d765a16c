//! A Network Block Device (NBD) server library, independent of any image format.
//!
//! Implement [`BlockExport`] for a backend, wrap it in an [`Arc`](std::sync::Arc),
//! and hand it to a [`Server`] together with a bound TCP or Unix listener:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(export: Arc<dyn vmdk_nbd::BlockExport>) -> std::io::Result<()> {
//! use vmdk_nbd::{Server, ServerConfig};
//! let listener = std::net::TcpListener::bind("127.0.0.1:10809")?;
//! let server = Server::new(export, ServerConfig { persistent: true, ..Default::default() });
//! let stop = server.shutdown_handle(); // call stop.shutdown() from e.g. a signal thread
//! server.serve_tcp(listener)?;
//! # Ok(()) }
//! ```
//!
//! # Protocol coverage
//!
//! * Fixed newstyle handshake (`NBD_FLAG_NO_ZEROES` honoured), options
//!   `EXPORT_NAME`, `ABORT`, `LIST`, `STARTTLS` (with [`ServerConfig::tls`]; without
//!   it, refused with `ERR_POLICY`), `INFO`, `GO` (export, name, description and
//!   block-size info), `STRUCTURED_REPLY`, `EXTENDED_HEADERS`,
//!   `LIST_META_CONTEXT`/`SET_META_CONTEXT` with the `base:allocation` context, and
//!   `qemu:allocation-depth` when [`ServerConfig::allocation_depth`] is set (qemu-nbd's
//!   `-A`).
//!   Everything else gets `ERR_UNSUP`.
//! * TLS (rustls): with [`ServerConfig::tls`] set, every option but `STARTTLS` is
//!   answered `ERR_TLS_REQD` (and `EXPORT_NAME` ends the session) until TLS runs;
//!   negotiation starts afresh over TLS.
//! * Extended headers: 32-byte requests with 64-bit lengths (`TRIM`, `WRITE_ZEROES`,
//!   `BLOCK_STATUS` beyond 4 GiB in one request), every reply an extended chunk, block
//!   status as `BLOCK_STATUS_EXT` with 64-bit extents, `PAYLOAD_LEN` on writes.
//! * Commands `READ` (sparse structured reads, `DF`), `WRITE` (`FUA`), `DISC`,
//!   `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE`, `FUA`), `BLOCK_STATUS`
//!   (`REQ_ONE`) and `CACHE` (accepted as a no-op).
//! * The empty export name always selects the (single) export, as nbdkit does,
//!   so `nbd://host` works whatever name was configured.
//!
//! # Threading model
//!
//! Blocking sockets and std threads: each connection has `workers_per_client`
//! threads that take turns reading a request from the socket (no hand-off
//! between threads per request) and then execute it, so requests may complete
//! out of order. Every reply is assembled into the worker's reused buffer and
//! written under a per-connection lock, so chunks never interleave.
//!
//! Client slots (`max_clients`, like `qemu-nbd --shared`) are held by clients that picked
//! the export; while every slot is taken, new connections wait in the listen backlog. A
//! connection still negotiating holds no slot: it is one of at most `max_handshakes` in a
//! separate pool, under the handshake deadline, so peers that connect and never finish
//! negotiating cannot keep a real client out. When the pool is full and a connection waits,
//! the oldest handshake that has stalled (taken 2 s, or a fifth of the deadline) is dropped
//! to make room. A client that finishes negotiating while every slot is taken waits for
//! one before the reply that starts transmission.

mod handshake;
mod proto;
mod server;
mod socket;
mod tls;
mod transmission;

pub use server::{Server, ShutdownHandle};
pub use tls::{TlsConfig, TlsError};

/// One extent of a block-status answer for the `base:allocation` context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Length of the extent in bytes; must be non-zero.
    pub length: u64,
    /// The extent is not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// The extent reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

/// One extent of a `qemu:allocation-depth` answer (qemu's `docs/interop/nbd.txt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationDepth {
    /// Length of the extent in bytes; must be non-zero.
    pub length: u64,
    /// 0: unallocated in every layer; 1: allocated in the export's top layer; N: allocated
    /// in its (N-1)th backing layer.
    pub depth: u32,
}

/// Where a stretch of an export lies in a host file, so a READ's data can go from the page
/// cache to the socket without passing through the server (`sendfile`).
pub struct FileSlice {
    /// The file (kept open for as long as the slice lives).
    pub file: std::sync::Arc<dyn std::os::fd::AsFd + Send + Sync>,
    /// Byte offset in the file of the stretch's first byte. Bytes past the file's end read
    /// as zeros.
    pub offset: u64,
}

/// What an export serves.
///
/// All methods may be called concurrently from several worker threads (and
/// several connections when `max_clients > 1`), hence `Send + Sync`. Offsets
/// and lengths passed in are always within `0..size()`: the server validates
/// requests before calling the export.
pub trait BlockExport: Send + Sync + 'static {
    /// Size of the export in bytes. Queried once per connection at negotiation.
    fn size(&self) -> u64;
    /// Fill `buf` with the bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Write `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()>;
    /// Make all completed writes durable.
    fn flush(&self) -> std::io::Result<()>;
    /// Write zeros; `may_trim` is false when the client sent NBD_CMD_FLAG_NO_HOLE.
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> std::io::Result<()>;
    /// Deallocate if possible (advisory). Only called when can_trim().
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()>;
    /// Whether [`trim`](Self::trim) does anything; controls `NBD_FLAG_SEND_TRIM`.
    fn can_trim(&self) -> bool {
        false
    }
    /// Whether the export refuses writes; the server then advertises read-only.
    fn is_read_only(&self) -> bool;
    /// Allocation status of [offset, offset+len): contiguous, non-empty extents starting at offset,
    /// covering at least the first byte (may cover less than len, may not go past size()).
    fn block_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<BlockStatus>>;
    /// The status a structured READ uses to send zero runs as holes instead of bytes: the
    /// same shape as [`block_status`](Self::block_status), and it may be coarser (calling
    /// data what reads as zeros) when that is cheaper, since the read is correct either
    /// way. Defaults to `block_status`.
    fn read_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<BlockStatus>> {
        self.block_status(offset, len)
    }
    /// Where [offset, offset+len) lies as one piece of a host file whose bytes are exactly
    /// the export's there (zeros past the file's end), if it does; the server then sends a
    /// READ's data straight from the file. The default says `None`: reads go through
    /// [`read_at`](Self::read_at).
    fn read_file(&self, _offset: u64, _len: u64) -> Option<FileSlice> {
        None
    }
    /// The `qemu:allocation-depth` of [offset, offset+len), with the same rules as
    /// [`block_status`](Self::block_status). Only asked when
    /// [`ServerConfig::allocation_depth`] is set; the default says `Unsupported`.
    fn allocation_depth(&self, _offset: u64, _len: u64) -> std::io::Result<Vec<AllocationDepth>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Name of the export (the empty name also always selects it). Default `""`.
    pub export_name: String,
    /// Human-readable description sent with `NBD_OPT_LIST` / `NBD_INFO_DESCRIPTION`.
    pub description: Option<String>,
    /// Force read-only even if the export is writable.
    pub read_only: bool,
    /// Maximum number of simultaneous clients, like `qemu-nbd --shared` (default 1).
    /// A client holds its slot from the moment it picks the export (`NBD_OPT_GO` or
    /// `NBD_OPT_EXPORT_NAME`) until it leaves; connections still negotiating do not count
    /// (see [`max_handshakes`](Self::max_handshakes)).
    /// When greater than one, `NBD_FLAG_CAN_MULTI_CONN` is advertised: all
    /// connections share one export object, so a flush is visible everywhere.
    pub max_clients: usize,
    /// Maximum number of connections negotiating at once (default 16), beside the
    /// `max_clients` slots. Each costs a thread and a read buffer until its handshake
    /// ends; real clients need one each for a few milliseconds, so 16 absorbs bursts (an
    /// nbdcopy of several connections, many hosts at once) while bounding what peers that
    /// connect and never negotiate can take. When the pool is full and another connection
    /// waits, the oldest handshake older than 2 s (or a fifth of
    /// [`handshake_timeout`](Self::handshake_timeout)) is dropped for it: stalled peers
    /// delay a real client by about that much per pool-full of them connected before it
    /// (2 s behind 20 of them, 4 s behind 40), not by their deadlines.
    pub max_handshakes: usize,
    /// Keep accepting after the last client disconnects (`qemu-nbd -t`).
    /// Otherwise serving ends once every client that completed a handshake
    /// has gone (connections that fail the handshake do not count).
    pub persistent: bool,
    /// Concurrent request handlers per connection (default 4).
    pub workers_per_client: usize,
    /// Negotiation, reads and writes alike, must finish within this time (default 10 s,
    /// qemu-nbd's `--handshake-limit`), so a silent, trickling or non-reading peer cannot
    /// hold its place in the handshake pool: it is dropped when the time is up. Waiting for
    /// a client slot does not count.
    pub handshake_timeout: std::time::Duration,
    /// TLS credentials (`qemu-nbd --tls-creds`): clients must then negotiate
    /// `NBD_OPT_STARTTLS` first. Default none.
    pub tls: Option<TlsConfig>,
    /// Offer the `qemu:allocation-depth` metadata context (`qemu-nbd -A`), answered by
    /// [`BlockExport::allocation_depth`]. Default off.
    pub allocation_depth: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            description: None,
            read_only: false,
            max_clients: 1,
            max_handshakes: 16,
            persistent: false,
            workers_per_client: 4,
            handshake_timeout: std::time::Duration::from_secs(10),
            tls: None,
            allocation_depth: false,
        }
    }
}
