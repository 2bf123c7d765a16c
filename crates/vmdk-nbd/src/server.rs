//! Accept loop, connection bookkeeping and shutdown.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::handshake;
use crate::proto::*;
use crate::socket::{
    wait_readable, DeadlineReader, DeadlineWriter, Listener, Socket, StreamSocket,
};
use crate::tls::{self, TlsConfig};
use crate::transmission;
use crate::{BlockExport, ServerConfig};

/// How often the accept loop re-checks for shutdown / finished clients.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// On shutdown, in-flight requests get this long to complete before
/// connections are closed hard.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Read buffer per connection; large enough that write payloads mostly
/// bypass it while small request headers are batched.
const READ_BUFFER: usize = 256 * 1024;
/// A handshake counts as stalled, and may be dropped to make room in a full handshake pool,
/// once it has taken this long (or a fifth of the handshake deadline, if that is shorter).
/// Real clients negotiate in milliseconds (a TLS handshake over a slow link in a second or
/// so), so only a peer that stopped talking gets this old.
const STALLED_AFTER: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The export plus everything needed to describe it to clients.
pub(crate) struct ExportCtx {
    pub export: Arc<dyn BlockExport>,
    pub name: String,
    pub description: Option<String>,
    /// Forced by the config or reported by the export.
    pub read_only: bool,
    pub multi_conn: bool,
    /// `qemu:allocation-depth` is offered.
    pub allocation_depth: bool,
    /// TLS credentials: when set, clients must start TLS before anything else.
    pub tls: Option<TlsConfig>,
}

impl ExportCtx {
    /// The empty name is the "default export", which is our only one.
    pub fn name_matches(&self, name: &str) -> bool {
        name.is_empty() || name == self.name
    }

    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_CACHE;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        } else {
            f |= TFLAG_SEND_FUA | TFLAG_SEND_WRITE_ZEROES;
            if self.export.can_trim() {
                f |= TFLAG_SEND_TRIM;
            }
        }
        // DF only makes sense (and is only allowed) with structured replies.
        if structured {
            f |= TFLAG_SEND_DF;
        }
        // Every connection uses the same export object, so a flush on one is
        // visible to all.
        if self.multi_conn {
            f |= TFLAG_CAN_MULTI_CONN;
        }
        f
    }
}

/// Shutdown state shared between the server, its handles and connections.
struct Shared {
    requested: AtomicBool,
    conns: Mutex<HashMap<u64, Box<dyn Socket>>>,
    next_id: AtomicU64,
}

impl Shared {
    fn request_shutdown(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // Closing only the read side stops new requests (readers see EOF,
        // handshakes fail) while in-flight replies can still be sent.
        for s in lock(&self.conns).values() {
            let _ = s.shutdown_socket(Shutdown::Read);
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn register(&self, id: u64, sock: Box<dyn Socket>) {
        let mut conns = lock(&self.conns);
        // Checked under the lock so a concurrent shutdown cannot miss it.
        if self.is_requested() {
            let _ = sock.shutdown_socket(Shutdown::Read);
        }
        conns.insert(id, sock);
    }

    fn unregister(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    /// Close one connection both ways: its thread's reads and writes fail at once.
    fn close(&self, id: u64) {
        if let Some(s) = lock(&self.conns).get(&id) {
            let _ = s.shutdown_socket(Shutdown::Both);
        }
    }

    fn close_all(&self, ids: &[u64]) {
        let conns = lock(&self.conns);
        for id in ids {
            if let Some(s) = conns.get(id) {
                let _ = s.shutdown_socket(Shutdown::Both);
            }
        }
    }
}

/// Requests shutdown of a [`Server`] from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
}

impl ShutdownHandle {
    /// Stop accepting connections and end the current ones: reading new
    /// requests stops at once, in-flight requests get a short grace period,
    /// then connections are closed. `serve_*` returns (after flushing the
    /// export) shortly afterwards. Idempotent, and permanent: a `serve_*`
    /// call made after shutdown returns immediately.
    pub fn shutdown(&self) {
        info!("NBD server shutdown requested");
        self.shared.request_shutdown();
    }
}

impl std::fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("requested", &self.shared.is_requested())
            .finish()
    }
}

/// An NBD server for one export.
pub struct Server {
    ctx: Arc<ExportCtx>,
    config: ServerConfig,
    shared: Arc<Shared>,
}

/// Where a live connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Negotiating since then: in the handshake pool, under the handshake deadline.
    Negotiating(Instant),
    /// Dropped to make room in the handshake pool; on its way out.
    Evicted,
    /// Picked the export and waits for a client slot (still in the pool, not evictable).
    Waiting,
    /// Holds a client slot: transmission (or the reply that starts it).
    Serving,
}

/// Connection accounting for one `serve_*` call.
///
/// Client slots (`max_clients`, qemu-nbd's `--shared`) are held only by connections that
/// picked the export. Connections still negotiating live in a separate pool of at most
/// `max_handshakes`, so peers that connect and never finish negotiating cannot keep a
/// well-behaved client out: it negotiates beside them and takes the free slot.
#[derive(Default)]
struct ActiveState {
    /// Live connections, in the order they were accepted.
    conns: Vec<(u64, Phase)>,
    /// Connections that completed the handshake so far.
    established: usize,
}

impl ActiveState {
    fn ids(&self) -> Vec<u64> {
        self.conns.iter().map(|&(id, _)| id).collect()
    }

    fn phase(&self, id: u64) -> Option<Phase> {
        self.conns.iter().find(|c| c.0 == id).map(|c| c.1)
    }

    fn set_phase(&mut self, id: u64, phase: Phase) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.0 == id) {
            c.1 = phase;
        }
    }

    /// Connections holding a client slot.
    fn serving(&self) -> usize {
        self.conns.iter().filter(|c| c.1 == Phase::Serving).count()
    }

    /// Connections in the handshake pool (everything not holding a slot).
    fn pooled(&self) -> usize {
        self.conns.len() - self.serving()
    }
}

#[derive(Default)]
struct Active {
    state: Mutex<ActiveState>,
    cv: Condvar,
}

/// Removes a connection from the books when its thread ends, even by panic.
struct ConnGuard {
    id: u64,
    active: Arc<Active>,
    shared: Arc<Shared>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
        let mut st = lock(&self.active.state);
        st.conns.retain(|c| c.0 != self.id);
        self.active.cv.notify_all();
    }
}

impl ConnGuard {
    /// Take a client slot for this connection, waiting while all `max_clients` are taken
    /// (as a client in qemu-nbd's backlog waits). Returns whether it had to wait. Fails if
    /// the connection was dropped from the pool meanwhile, or the server is shutting down.
    fn admit(&self, max_clients: usize) -> io::Result<bool> {
        let mut st = lock(&self.active.state);
        let mut waited = false;
        loop {
            if matches!(st.phase(self.id), Some(Phase::Evicted) | None) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "dropped to make room for another handshake",
                ));
            }
            if self.shared.is_requested() {
                return Err(io::Error::other("the server is shutting down"));
            }
            if st.serving() < max_clients {
                st.set_phase(self.id, Phase::Serving);
                // The accept loop counts slots.
                self.active.cv.notify_all();
                return Ok(waited);
            }
            if !waited {
                debug!(id = self.id, "every client slot is taken, waiting for one");
                st.set_phase(self.id, Phase::Waiting);
                waited = true;
            }
            st = self
                .active
                .cv
                .wait_timeout(st, POLL_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Server {
    /// Create a server for `export`. Nothing happens until `serve_*` is called.
    pub fn new(export: Arc<dyn BlockExport>, config: ServerConfig) -> Self {
        let read_only = config.read_only || export.is_read_only();
        let ctx = ExportCtx {
            export,
            name: config.export_name.clone(),
            description: config.description.clone(),
            read_only,
            multi_conn: config.max_clients > 1,
            allocation_depth: config.allocation_depth,
            tls: config.tls.clone(),
        };
        Server {
            ctx: Arc::new(ctx),
            config,
            shared: Arc::new(Shared {
                requested: AtomicBool::new(false),
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Handle for shutting down from another thread (e.g. a signal handler thread).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serve clients on a bound TCP listener until shutdown is requested or,
    /// unless `persistent`, until the clients are done. Flushes the export
    /// before returning.
    pub fn serve_tcp(&self, listener: TcpListener) -> io::Result<()> {
        self.serve(&listener)
    }

    /// Like [`serve_tcp`](Self::serve_tcp) for a Unix-domain socket. The
    /// socket file is left for the caller to remove.
    pub fn serve_unix(&self, listener: UnixListener) -> io::Result<()> {
        self.serve(&listener)
    }

    /// Serve one client over an already connected byte stream instead of a listener:
    /// `input` is what the client sends, `output` takes what the server sends (a pipe
    /// pair, stdin and stdout, or an in-memory script for tests and fuzzing). Negotiation
    /// and transmission are a listener's connection's, with `workers_per_client` workers;
    /// without a socket there are no deadlines (the handshake time is not enforced), TLS is
    /// refused (`Unsupported`), and a read blocked on `input` is not interrupted by
    /// shutdown. Returns once the client is done (end of `input`, `NBD_CMD_DISC`,
    /// `NBD_OPT_ABORT` or a protocol error, which is returned), after flushing the export.
    pub fn serve_stream<R, W>(&self, input: R, output: W) -> io::Result<()>
    where
        R: std::io::Read + Send,
        W: std::io::Write + Send + 'static,
    {
        self.check_size()?;
        if self.ctx.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS needs a socket: serve_stream cannot start it",
            ));
        }
        let sock: Box<dyn Socket> = Box::new(StreamSocket::new(output));
        let peer = "stream";
        let result = (|| {
            let mut reader = BufReader::with_capacity(READ_BUFFER, input);
            let mut writer = sock.try_clone_box()?;
            let no_zeroes = handshake::greet(&mut reader, &mut writer)?;
            let outcome = handshake::options(
                &mut reader,
                &mut writer,
                &self.ctx,
                no_zeroes,
                false,
                &mut |_| Ok(()),
            )?;
            match outcome {
                handshake::Outcome::Transmit(neg) => {
                    let workers = self.config.workers_per_client.max(1);
                    transmission::serve(&self.ctx, neg, &mut reader, &*sock, workers, peer)
                }
                handshake::Outcome::Abort => Ok(()),
                handshake::Outcome::StartTls => Err(io::Error::other("STARTTLS without TLS")),
            }
        })();
        if let Err(e) = &result {
            debug!(peer, error = %e, "stream connection ended with error");
        }
        result.and(self.ctx.export.flush())
    }

    /// NBD clients (qemu, libnbd) take the size as a signed 64-bit number.
    fn check_size(&self) -> io::Result<()> {
        let size = self.ctx.export.size();
        if size > i64::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("export size {size} is larger than the 2^63-1 bytes NBD clients accept"),
            ));
        }
        Ok(())
    }

    fn serve(&self, listener: &dyn Listener) -> io::Result<()> {
        self.check_size()?;
        // Non-blocking so a connection that vanishes between poll() and
        // accept() cannot block the loop past a shutdown request.
        listener.set_nonblocking_listener(true)?;
        info!(
            listen = %listener.describe(),
            export = %self.ctx.name,
            size = self.ctx.export.size(),
            read_only = self.ctx.read_only,
            max_clients = self.config.max_clients.max(1),
            "NBD server listening"
        );
        let active = Arc::new(Active::default());
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let result = self.accept_loop(listener, &active, &mut threads);
        if let Err(e) = &result {
            error!(error = %e, "accept loop failed");
            self.shared.request_shutdown();
        }

        self.wind_down(&active);
        for t in threads {
            let _ = t.join();
        }

        let flushed = self.ctx.export.flush();
        if let Err(e) = &flushed {
            error!(error = %e, "final flush failed");
        }
        info!("NBD server stopped");
        result.and(flushed)
    }

    fn accept_loop(
        &self,
        listener: &dyn Listener,
        active: &Arc<Active>,
        threads: &mut Vec<JoinHandle<()>>,
    ) -> io::Result<()> {
        let max_clients = self.config.max_clients.max(1);
        let max_handshakes = self.config.max_handshakes.max(1);
        let stalled_after = STALLED_AFTER.min(self.config.handshake_timeout / 5);
        loop {
            if self.shared.is_requested() {
                return Ok(());
            }
            {
                let st = lock(&active.state);
                if !self.config.persistent && st.established > 0 && st.conns.is_empty() {
                    info!("all clients disconnected, stopping (not persistent)");
                    return Ok(());
                }
                // Every client slot taken: leave new connections in the backlog, like
                // qemu-nbd, rather than refusing them.
                if st.serving() >= max_clients {
                    let _unused = active
                        .cv
                        .wait_timeout(st, POLL_INTERVAL)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
            }
            threads.retain(|t| !t.is_finished());

            if !wait_readable(listener.fd(), POLL_INTERVAL)? {
                continue;
            }
            {
                // Looked at again now that a connection waits: a handshake may have taken
                // the last slot meanwhile.
                let mut st = lock(&active.state);
                if st.serving() >= max_clients {
                    continue;
                }
                if st.pooled() >= max_handshakes {
                    // The handshake pool is full: drop the oldest stalled handshake for the
                    // waiting connection, so stalled peers delay a real client by about
                    // `stalled_after` per pool-full of them ahead of it in the backlog, not
                    // by their deadlines; then wait for the dropped one to go (or, with
                    // none stalled yet, for anything to change).
                    self.evict_stalled(&mut st, stalled_after);
                    let _unused = active
                        .cv
                        .wait_timeout(st, POLL_INTERVAL)
                        .unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
            }
            match listener.accept_socket() {
                Ok((sock, peer)) => self.spawn_connection(sock, peer, active, threads),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if is_fatal_accept_error(&e) => return Err(e),
                Err(e) => {
                    // E.g. EMFILE or a connection aborted before accept:
                    // back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Drop the oldest handshake that has gone on for `stalled_after`, unless one dropped
    /// earlier is still on its way out (one at a time, so the pool never overshoots).
    fn evict_stalled(&self, st: &mut ActiveState, stalled_after: Duration) {
        if st.conns.iter().any(|c| c.1 == Phase::Evicted) {
            return;
        }
        let now = Instant::now();
        let oldest = st
            .conns
            .iter()
            .filter_map(|&(id, phase)| match phase {
                Phase::Negotiating(since) if now.duration_since(since) >= stalled_after => {
                    Some((since, id))
                }
                _ => None,
            })
            .min();
        if let Some((since, id)) = oldest {
            warn!(
                id,
                negotiating_for = ?now.duration_since(since),
                "handshake pool full: dropping the oldest stalled handshake"
            );
            st.set_phase(id, Phase::Evicted);
            self.shared.close(id);
        }
    }

    fn spawn_connection(
        &self,
        sock: Box<dyn Socket>,
        peer: String,
        active: &Arc<Active>,
        threads: &mut Vec<JoinHandle<()>>,
    ) {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = format!("{peer} #{id}");
        let registered = match sock.try_clone_box() {
            Ok(s) => s,
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot track connection, dropping it");
                return;
            }
        };
        lock(&active.state)
            .conns
            .push((id, Phase::Negotiating(Instant::now())));
        self.shared.register(id, registered);
        let guard = ConnGuard {
            id,
            active: Arc::clone(active),
            shared: Arc::clone(&self.shared),
        };
        let ctx = Arc::clone(&self.ctx);
        let workers = self.config.workers_per_client.max(1);
        let handshake_timeout = self.config.handshake_timeout;
        let max_clients = self.config.max_clients.max(1);
        let spawned = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                let admit = || guard.admit(max_clients);
                let on_established = || {
                    lock(&guard.active.state).established += 1;
                };
                run_connection(
                    &ctx,
                    sock,
                    &peer,
                    workers,
                    handshake_timeout,
                    &admit,
                    &on_established,
                );
                drop(guard);
            });
        match spawned {
            Ok(t) => threads.push(t),
            // The closure (and with it the guard) was dropped, undoing the
            // bookkeeping above.
            Err(e) => error!(error = %e, "cannot start connection thread"),
        }
    }

    /// Wait for connections to end: politely first if shutting down, then
    /// by closing their sockets.
    fn wind_down(&self, active: &Active) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        let mut st = lock(&active.state);
        while !st.conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                warn!(
                    clients = st.conns.len(),
                    "closing connections that did not finish in time"
                );
                self.shared.close_all(&st.ids());
                break;
            }
            st = active
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        // After a hard close only export I/O already in progress remains.
        while !st.conns.is_empty() {
            st = active.cv.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Errors that mean the listener itself is unusable.
fn is_fatal_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF)
            | Some(libc::EINVAL)
            | Some(libc::ENOTSOCK)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EFAULT)
    )
}

/// Handshake then transmission for one client, on its own thread. `admit` takes a client
/// slot once the client picks the export (returning whether it had to wait for one).
fn run_connection(
    ctx: &ExportCtx,
    sock: Box<dyn Socket>,
    peer: &str,
    workers: usize,
    handshake_timeout: Duration,
    admit: &dyn Fn() -> io::Result<bool>,
    on_established: &dyn Fn(),
) {
    info!(peer, "client connected");
    // Negotiation (the TLS handshake included) must finish within the handshake time,
    // reads and writes alike, so a silent, trickling or non-reading peer cannot hold its
    // place in the handshake pool; only the wait for a client slot is not counted.
    let deadline = Instant::now() + handshake_timeout;
    let mut admit = |w: &mut DeadlineWriter<'_>| {
        if admit()? {
            w.set_deadline(Instant::now() + handshake_timeout);
        }
        Ok(())
    };
    match negotiate(ctx, sock, peer, deadline, &mut admit) {
        Ok(Some((neg, mut reader, sock))) => {
            on_established();
            info!(
                peer,
                size = neg.size,
                flags = neg.flags,
                structured = neg.structured,
                extended = neg.extended,
                tls = ctx.tls.is_some(),
                block_status = neg.meta.any(),
                "negotiation complete"
            );
            match transmission::serve(ctx, neg, &mut reader, &*sock, workers, peer) {
                Ok(()) => {}
                Err(e) => debug!(peer, error = %e, "connection ended with error"),
            }
        }
        Ok(None) => debug!(peer, "client aborted negotiation"),
        Err(e) => match e.kind() {
            io::ErrorKind::UnexpectedEof => debug!(peer, "client left during negotiation"),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                warn!(peer, "negotiation timed out")
            }
            _ => warn!(peer, error = %e, "negotiation failed"),
        },
    }
    info!(peer, "client disconnected");
}

/// A connection's reader once negotiated: buffered, on the plain or TLS socket.
type ConnReader = BufReader<DeadlineReader>;

/// A negotiated connection: what was agreed, its reader, and its (plain or TLS) socket.
type Established = (handshake::Negotiated, ConnReader, Box<dyn Socket>);

/// Greeting, options, and TLS when configured. `Ok(None)`: the client aborted.
fn negotiate(
    ctx: &ExportCtx,
    mut sock: Box<dyn Socket>,
    peer: &str,
    deadline: Instant,
    admit: &mut dyn for<'w> FnMut(&mut DeadlineWriter<'w>) -> io::Result<()>,
) -> io::Result<Option<Established>> {
    let mut reader = BufReader::with_capacity(
        READ_BUFFER,
        DeadlineReader::new(sock.try_clone_box()?, Some(deadline)),
    );
    let mut writer = DeadlineWriter::new(&mut *sock, deadline);
    let no_zeroes = handshake::greet(&mut reader, &mut writer)?;
    let mut outcome = handshake::options(
        &mut reader,
        &mut writer,
        ctx,
        no_zeroes,
        ctx.tls.is_some(),
        &mut |w| admit(w),
    )?;
    if matches!(outcome, handshake::Outcome::StartTls) {
        let Some(tls_config) = &ctx.tls else {
            return Err(io::Error::other("STARTTLS acknowledged without TLS"));
        };
        // The client must wait for the STARTTLS reply before its ClientHello, so nothing
        // may be buffered yet; if something is, it is not following the protocol.
        if !reader.buffer().is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "data sent before the STARTTLS reply",
            ));
        }
        // The plain reader and writer end here (the writer's borrow of `sock` with it).
        drop(reader);
        let tls_sock: Box<dyn Socket> = Box::new(tls::accept(sock, tls_config, deadline)?);
        debug!(peer, "TLS established");
        sock = tls_sock;
        reader = BufReader::with_capacity(
            READ_BUFFER,
            DeadlineReader::new(sock.try_clone_box()?, Some(deadline)),
        );
        let mut writer = DeadlineWriter::new(&mut *sock, deadline);
        outcome = handshake::options(&mut reader, &mut writer, ctx, no_zeroes, false, &mut |w| {
            admit(w)
        })?;
        writer.clear_deadline()?;
    } else {
        writer.clear_deadline()?;
    }
    match outcome {
        handshake::Outcome::Transmit(neg) => {
            // Idle clients are fine once connected.
            reader.get_mut().clear_deadline()?;
            Ok(Some((neg, reader, sock)))
        }
        handshake::Outcome::Abort => Ok(None),
        // Only acknowledged when TLS is configured, which is handled above.
        handshake::Outcome::StartTls => Err(io::Error::other("STARTTLS without TLS")),
    }
}
