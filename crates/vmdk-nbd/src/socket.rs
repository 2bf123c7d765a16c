//! A small abstraction over TCP and Unix stream sockets (and their
//! listeners) so the rest of the server is written once.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// A connected stream socket.
pub(crate) trait Socket: Read + Write + Send + Sync {
    /// Another handle to the same socket (dup'd descriptor).
    fn try_clone_box(&self) -> io::Result<Box<dyn Socket>>;
    /// `shutdown(2)`: affects every handle of the socket, which is how other
    /// threads blocked in `read`/`write` get woken up.
    fn shutdown_socket(&self, how: Shutdown) -> io::Result<()>;
    fn set_read_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// The kernel socket, when bytes written to it go to the peer as they are (plain TCP
    /// and Unix sockets, not TLS): replies may then be sent with `sendfile`.
    fn plain_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
}

/// The two plain stream sockets answer with their own methods of the same names.
macro_rules! plain_socket {
    ($($t:ty),*) => {$(
        impl Socket for $t {
            fn try_clone_box(&self) -> io::Result<Box<dyn Socket>> {
                Ok(Box::new(self.try_clone()?))
            }
            fn plain_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
                Some(std::os::fd::AsFd::as_fd(self))
            }
            fn shutdown_socket(&self, how: Shutdown) -> io::Result<()> {
                self.shutdown(how)
            }
            fn set_read_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(timeout)
            }
            fn set_write_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()> {
                self.set_write_timeout(timeout)
            }
        }
    )*};
}

plain_socket!(TcpStream, UnixStream);

/// The server's side of a connection that is not a socket: what it writes goes to `W` (for
/// [`crate::Server::serve_stream`]). Handles share the writer; shutting any of them down
/// makes later writes fail, as on a socket; reads are not done through it.
pub(crate) struct StreamSocket<W> {
    inner: std::sync::Arc<StreamInner<W>>,
}

struct StreamInner<W> {
    writer: std::sync::Mutex<W>,
    closed: std::sync::atomic::AtomicBool,
}

impl<W: Write + Send + 'static> StreamSocket<W> {
    pub fn new(writer: W) -> Self {
        StreamSocket {
            inner: std::sync::Arc::new(StreamInner {
                writer: std::sync::Mutex::new(writer),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }
}

impl<W> Read for StreamSocket<W> {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a stream's input is read separately",
        ))
    }
}

impl<W: Write> Write for StreamSocket<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut w = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush()
    }
}

impl<W: Write + Send + 'static> Socket for StreamSocket<W> {
    fn try_clone_box(&self) -> io::Result<Box<dyn Socket>> {
        Ok(Box::new(StreamSocket {
            inner: std::sync::Arc::clone(&self.inner),
        }))
    }
    fn shutdown_socket(&self, how: Shutdown) -> io::Result<()> {
        if how != Shutdown::Read {
            self.inner
                .closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
    fn set_read_timeout_socket(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
    fn set_write_timeout_socket(&self, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket.
pub(crate) trait Listener {
    /// Accept one connection, returning a blocking socket and a peer label
    /// for logs.
    fn accept_socket(&self) -> io::Result<(Box<dyn Socket>, String)>;
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()>;
    fn fd(&self) -> RawFd;
    /// Where we listen, for logs.
    fn describe(&self) -> String;
}

impl Listener for TcpListener {
    fn accept_socket(&self) -> io::Result<(Box<dyn Socket>, String)> {
        let (stream, addr) = self.accept()?;
        // The listener is non-blocking (so shutdown can interrupt accept);
        // connections themselves use plain blocking I/O.
        stream.set_nonblocking(false)?;
        // Replies are written in one go; Nagle would only add latency.
        let _ = stream.set_nodelay(true);
        Ok((Box::new(stream), addr.to_string()))
    }
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()> {
        self.set_nonblocking(nonblocking)
    }
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn describe(&self) -> String {
        match self.local_addr() {
            Ok(a) => format!("tcp {a}"),
            Err(_) => "tcp".to_string(),
        }
    }
}

impl Listener for UnixListener {
    fn accept_socket(&self) -> io::Result<(Box<dyn Socket>, String)> {
        let (stream, _addr) = self.accept()?;
        stream.set_nonblocking(false)?;
        // Unix clients are normally unnamed; the connection id added by the
        // server tells them apart in logs.
        Ok((Box::new(stream), "unix".to_string()))
    }
    fn set_nonblocking_listener(&self, nonblocking: bool) -> io::Result<()> {
        self.set_nonblocking(nonblocking)
    }
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn describe(&self) -> String {
        match self
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
        {
            Some(p) => format!("unix {p}"),
            None => "unix".to_string(),
        }
    }
}

/// Read half of a connection with an optional overall deadline.
///
/// A per-read timeout alone would let a peer trickle one byte at a time and
/// hold a connection slot forever during negotiation; re-arming the socket
/// timeout with the time left before every read bounds the whole handshake.
pub(crate) struct DeadlineReader {
    sock: Box<dyn Socket>,
    deadline: Option<Instant>,
}

impl DeadlineReader {
    pub fn new(sock: Box<dyn Socket>, deadline: Option<Instant>) -> Self {
        DeadlineReader { sock, deadline }
    }

    /// Remove the deadline (and the socket read timeout).
    pub fn clear_deadline(&mut self) -> io::Result<()> {
        self.deadline = None;
        self.sock.set_read_timeout_socket(None)
    }
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.sock.set_read_timeout_socket(Some(left))?;
        }
        self.sock.read(buf)
    }
}

/// Write half of a connection with an overall deadline, for the handshake.
///
/// Without it, a peer that sends options and never reads the replies blocks the server in
/// `write` once the socket buffers are full, holding its connection slot for as long as the
/// peer likes: the read deadline never gets a chance to fire.
pub(crate) struct DeadlineWriter<'a> {
    sock: &'a mut dyn Socket,
    deadline: Instant,
}

impl<'a> DeadlineWriter<'a> {
    pub fn new(sock: &'a mut dyn Socket, deadline: Instant) -> Self {
        DeadlineWriter { sock, deadline }
    }

    /// Move the deadline (to give a client that waited on the server the usual time).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// Remove the socket write timeout (transmission writes have no deadline).
    pub fn clear_deadline(self) -> io::Result<()> {
        self.sock.set_write_timeout_socket(None)
    }
}

impl Write for DeadlineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock.set_write_timeout_socket(Some(left))?;
        self.sock.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// Wait up to `timeout` for `fd` to become readable (a pending connection on
/// a listener). Returns `Ok(false)` on timeout or signal interruption.
pub(crate) fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is a valid, exclusively borrowed pollfd and nfds is 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}
