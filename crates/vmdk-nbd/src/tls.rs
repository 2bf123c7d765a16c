//! TLS for `NBD_OPT_STARTTLS`: the server's credentials (rustls, qemu's x509 directory
//! layout) and a TLS connection usable as a [`Socket`] by the rest of the server.
//!
//! The transmission phase reads requests on one thread while workers write replies on
//! others, through separate handles of one socket. A TLS session is one state machine, so
//! [`TlsSocket`] handles share it behind a mutex that is never held across a blocking
//! socket read or write: the reader reads ciphertext from the socket unlocked, then feeds
//! it in; a writer encrypts under the lock and sends the records unlocked, in order under a
//! second, writers-only lock (always taken before the session's, so the two cannot
//! deadlock).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConnection};

use crate::socket::{DeadlineReader, DeadlineWriter, Socket};

/// Plaintext encrypted per step of a write, so records go out while later ones are made.
const WRITE_STEP: usize = 256 * 1024;
/// Ciphertext read from the socket per step (one TLS record is at most ~16 KiB).
const READ_STEP: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server's TLS credentials, as [`crate::ServerConfig::tls`].
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<rustls::ServerConfig>,
    summary: String,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("credentials", &self.summary)
            .finish()
    }
}

impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for TlsConfig {}

/// Credentials that could not be loaded: which file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .path.display(), .message)]
pub struct TlsError {
    /// The file (or directory) at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn tls_error(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl TlsConfig {
    /// Credentials from a directory laid out as qemu's `tls-creds-x509` object with
    /// `endpoint=server` expects: `ca-cert.pem` (the authority clients' certificates must
    /// chain to), `server-cert.pem` (this server's chain) and `server-key.pem` (its key,
    /// PKCS#1, PKCS#8 or SEC1). With `verify_peer` (qemu's default) a client must present
    /// a certificate issued by that authority; otherwise any client may connect, and the
    /// TLS only encrypts and authenticates the server.
    pub fn from_x509_dir(dir: &Path, verify_peer: bool) -> Result<TlsConfig, TlsError> {
        if !dir.is_dir() {
            return Err(tls_error(dir, "not a directory"));
        }
        let ca_path = dir.join("ca-cert.pem");
        let cert_path = dir.join("server-cert.pem");
        let key_path = dir.join("server-key.pem");
        let ca = read_certs(&ca_path)?;
        let chain = read_certs(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| tls_error(&key_path, e))?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(dir, e))?;
        let builder = if verify_peer {
            let mut roots = RootCertStore::empty();
            for c in ca {
                roots
                    .add(c)
                    .map_err(|e| tls_error(&ca_path, format!("unusable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(&ca_path, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| tls_error(&cert_path, format!("certificate and key: {e}")))?;
        Ok(TlsConfig {
            config: Arc::new(config),
            summary: format!(
                "x509 {} (verify-peer={})",
                dir.display(),
                if verify_peer { "on" } else { "off" }
            ),
        })
    }
}

/// Reads through a deadline and writes through another, for the TLS handshake.
struct HandshakeIo<'a> {
    r: DeadlineReader,
    w: DeadlineWriter<'a>,
}

impl Read for HandshakeIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for HandshakeIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Run the server side of the TLS handshake on `sock` (right after the `STARTTLS` ack),
/// finishing by `deadline`. A client that fails it (no certificate, or one the authority
/// did not issue, or no TLS at all) is an error: the connection is to be dropped.
pub(crate) fn accept(
    mut sock: Box<dyn Socket>,
    config: &TlsConfig,
    deadline: Instant,
) -> io::Result<TlsSocket> {
    let mut conn = ServerConnection::new(config.config.clone()).map_err(io::Error::other)?;
    {
        let reader = sock.try_clone_box()?;
        let mut io = HandshakeIo {
            r: DeadlineReader::new(reader, Some(deadline)),
            w: DeadlineWriter::new(&mut *sock, deadline),
        };
        while conn.is_handshaking() {
            match conn.complete_io(&mut io) {
                Ok((0, 0)) if conn.is_handshaking() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client left during the TLS handshake",
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    // Tell the client why, if rustls has an alert for it (best effort).
                    let _ = conn.write_tls(&mut io);
                    return Err(e);
                }
            }
        }
        while conn.wants_write() {
            conn.write_tls(&mut io)?;
        }
        io.w.flush()?;
    }
    sock.set_read_timeout_socket(None)?;
    sock.set_write_timeout_socket(None)?;
    // Writers bound what they hand over at once (WRITE_STEP); rustls's own limit would
    // make a large reply fail half way.
    conn.set_buffer_limit(None);
    Ok(TlsSocket::new(
        Arc::new(Shared {
            conn: Mutex::new(conn),
            send: Mutex::new(()),
        }),
        sock,
    ))
}

/// The TLS session all handles of one connection share.
struct Shared {
    conn: Mutex<ServerConnection>,
    /// Held by writers from encrypting to sending, so records reach the socket in order.
    send: Mutex<()>,
}

/// A TLS connection (server side) as a [`Socket`]; clones share the session. Only one
/// handle of a connection reads (the connection's reader thread).
pub(crate) struct TlsSocket {
    shared: Arc<Shared>,
    raw: Box<dyn Socket>,
    /// Ciphertext read from the socket that the session has not taken yet
    /// (`inbuf[inpos..inlen]`): rustls takes more only once its plaintext is read.
    inbuf: Vec<u8>,
    inpos: usize,
    inlen: usize,
    /// The peer closed the underlying socket.
    eof: bool,
}

impl TlsSocket {
    fn new(shared: Arc<Shared>, raw: Box<dyn Socket>) -> TlsSocket {
        TlsSocket {
            shared,
            raw,
            inbuf: Vec::new(),
            inpos: 0,
            inlen: 0,
            eof: false,
        }
    }

    /// Send whatever TLS records the session has pending (alerts, key updates).
    fn send_pending(&mut self) -> io::Result<()> {
        let _order = lock(&self.shared.send);
        let mut records = Vec::new();
        {
            let mut conn = lock(&self.shared.conn);
            while conn.wants_write() {
                conn.write_tls(&mut records)?;
            }
        }
        self.raw.write_all(&records)
    }
}

impl Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let pending = {
                let mut conn = lock(&self.shared.conn);
                loop {
                    match conn.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // The peer closed without close_notify: NBD frames its own
                        // messages, so a cut one is noticed anyway; between messages it is
                        // an end like any other.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                        Err(e) => return Err(e),
                    }
                    if self.inpos < self.inlen {
                        let mut rest = &self.inbuf[self.inpos..self.inlen];
                        let n = conn.read_tls(&mut rest)?;
                        self.inpos += n;
                        if let Err(e) = conn.process_new_packets() {
                            drop(conn);
                            // The alert saying why, best effort.
                            let _ = self.send_pending();
                            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                        }
                        if n == 0 {
                            // Never overwrite ciphertext the session has not taken.
                            return Err(io::Error::other("the TLS session takes no more data"));
                        }
                        continue;
                    }
                    if self.eof {
                        return Ok(0);
                    }
                    break;
                }
                conn.wants_write()
            };
            if pending {
                self.send_pending()?;
            }
            // Not under the session lock: writers go on while this waits for the peer.
            if self.inbuf.is_empty() {
                self.inbuf = vec![0u8; READ_STEP];
            }
            let n = self.raw.read(&mut self.inbuf)?;
            self.inpos = 0;
            self.inlen = n;
            if n == 0 {
                self.eof = true;
                // Tells the session the transport ended.
                let mut end: &[u8] = &[];
                let _ = lock(&self.shared.conn).read_tls(&mut end);
            }
        }
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.shared.send);
        for step in buf.chunks(WRITE_STEP) {
            let mut records = Vec::with_capacity(step.len() + 1024);
            {
                let mut conn = lock(&self.shared.conn);
                conn.writer().write_all(step)?;
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
            }
            self.raw.write_all(&records)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.raw.flush()
    }
}

impl Socket for TlsSocket {
    fn try_clone_box(&self) -> io::Result<Box<dyn Socket>> {
        Ok(Box::new(TlsSocket::new(
            Arc::clone(&self.shared),
            self.raw.try_clone_box()?,
        )))
    }
    fn shutdown_socket(&self, how: Shutdown) -> io::Result<()> {
        self.raw.shutdown_socket(how)
    }
    fn set_read_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.raw.set_read_timeout_socket(timeout)
    }
    fn set_write_timeout_socket(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.raw.set_write_timeout_socket(timeout)
    }
}
