//! `vmdk serve`: export an image over NBD, like qemu-nbd.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vmdk::{Image, MapTarget};
use vmdk_nbd::{BlockExport, BlockStatus, Server, ServerConfig};

use crate::opts::OpenArgs;

/// Arguments of `vmdk serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Listen on this address, or ADDR:PORT (default 127.0.0.1: loopback unless you say
    /// otherwise, since an export has no authentication).
    #[arg(short = 'b', long, value_name = "ADDR", conflicts_with = "socket")]
    pub bind: Option<String>,
    /// TCP port to listen on (default 10809).
    #[arg(short = 'p', long, value_name = "PORT", conflicts_with = "socket")]
    pub port: Option<u16>,
    /// Image format (only vmdk).
    #[arg(short = 'f', long, value_name = "FMT")]
    pub format: Option<String>,
    /// Go to the background once the server is listening (the command returns then).
    #[arg(long)]
    pub fork: bool,
    /// Write the server's process ID to this file (removed when the server exits).
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    /// Listen on this Unix socket instead of TCP.
    #[arg(short = 'k', long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Export read-only.
    #[arg(short = 'r', long)]
    pub read_only: bool,
    /// Export name clients ask for (the empty name always works).
    #[arg(short = 'x', long, default_value = "")]
    pub export_name: String,
    /// Export description shown to clients.
    #[arg(short = 'D', long)]
    pub description: Option<String>,
    /// Serve up to N clients at once.
    #[arg(short = 'e', long, default_value_t = 1)]
    pub shared: usize,
    /// Keep serving after the last client disconnects.
    #[arg(short = 't', long)]
    pub persistent: bool,
    /// Flush data before the metadata that points at it (slower, power-cut safe).
    #[arg(long)]
    pub durable: bool,
    #[command(flatten)]
    pub open: OpenArgs,
    /// The image to export.
    pub image: PathBuf,
}

/// Map entries one block-status request looks at, at most.
const BLOCK_STATUS_ENTRIES: usize = 4096;

/// An opened image as an NBD export.
struct ImageExport {
    image: Arc<Image>,
}

fn io_err(e: vmdk::Error) -> std::io::Error {
    e.into()
}

impl BlockExport for ImageExport {
    fn size(&self) -> u64 {
        self.image.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.image.read_at(buf, offset).map_err(io_err)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.image.write_at(buf, offset).map_err(io_err)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.image.flush().map_err(io_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> std::io::Result<()> {
        self.image
            .write_zeroes(offset, len, may_trim)
            .map_err(io_err)
    }
    fn trim(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.image.discard(offset, len).map_err(io_err)
    }
    fn can_trim(&self) -> bool {
        self.image.can_discard()
    }
    fn is_read_only(&self) -> bool {
        !self.image.is_writable()
    }
    fn block_status(&self, offset: u64, len: u64) -> std::io::Result<Vec<BlockStatus>> {
        // Bound the work per request by entries, not bytes (a huge zero stretch is one
        // step); the client asks again for the rest.
        let len = len.min(self.image.size().saturating_sub(offset));
        let mut out: Vec<BlockStatus> = Vec::new();
        for e in self
            .image
            .map_prefix(offset, len, BLOCK_STATUS_ENTRIES)
            .map_err(io_err)?
        {
            // As qemu-nbd: a hole is anything that is not data; zeros are flagged as such.
            let (hole, zero) = match e.target {
                MapTarget::Data { .. } | MapTarget::Compressed { .. } => (false, false),
                MapTarget::Zero | MapTarget::Unallocated => (true, true),
            };
            match out.last_mut() {
                Some(last) if last.hole == hole && last.zero == zero => last.length += e.length,
                _ => out.push(BlockStatus {
                    length: e.length,
                    hole,
                    zero,
                }),
            }
        }
        Ok(out)
    }
}

enum Listener {
    Unix(std::os::unix::net::UnixListener),
    Tcp(std::net::TcpListener),
}

/// qemu-nbd's `-b ADDR -p PORT`; `-b` may also carry the port (`ADDR:PORT`, `[v6]:PORT`).
fn tcp_address(bind: Option<&str>, port: Option<u16>) -> String {
    let port = port.unwrap_or(10809);
    match bind {
        None => format!("127.0.0.1:{port}"),
        Some(b) if b.parse::<std::net::SocketAddr>().is_ok() => b.to_string(),
        Some(b) if b.contains(':') && !b.starts_with('[') => format!("[{b}]:{port}"),
        Some(b) => format!("{b}:{port}"),
    }
}

/// A file holding the server's process ID, removed when the server exits.
pub(crate) struct PidFile(PathBuf);

impl PidFile {
    pub(crate) fn write(path: &std::path::Path) -> Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file '{}'", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run the server until it is told to stop (SIGINT/SIGTERM) or, unless persistent, until
/// its clients are done.
pub fn run(args: Args) -> Result<u8> {
    if args.format.as_deref().is_some_and(|f| f != "vmdk") {
        bail!("only vmdk images can be served (-f vmdk)");
    }
    let writable = !args.read_only;
    let opts = args.open.options().writable(writable).durable(args.durable);
    let image = match opts.open(&args.image) {
        // Like qemu's auto-read-only: an image that cannot be written (seSparse, VMware
        // stream layout, version 3) is still worth serving.
        Err(e) if writable && e.kind() == vmdk::ErrorKind::ReadOnly => {
            tracing::warn!("{e:#}; exporting read-only");
            opts.writable(false).open(&args.image)
        }
        r => r,
    }
    .with_context(|| format!("Could not open '{}'", args.image.display()))?;
    let export = Arc::new(ImageExport {
        image: Arc::new(image),
    });
    let config = ServerConfig {
        export_name: args.export_name.clone(),
        description: args.description.clone(),
        read_only: args.read_only,
        max_clients: args.shared.max(1),
        persistent: args.persistent,
        ..ServerConfig::default()
    };
    // Listen before going to the background, so that once the command returns clients can
    // connect.
    let listener = match &args.socket {
        Some(path) => {
            if path.exists() {
                bail!("socket path '{}' already exists", path.display());
            }
            Listener::Unix(
                std::os::unix::net::UnixListener::bind(path)
                    .with_context(|| format!("binding '{}'", path.display()))?,
            )
        }
        None => {
            let addr = tcp_address(args.bind.as_deref(), args.port);
            Listener::Tcp(
                std::net::TcpListener::bind(&addr).with_context(|| format!("binding {addr}"))?,
            )
        }
    };
    let ready = if args.fork {
        Some(crate::daemon::detach().context("going to the background")?)
    } else {
        None
    };
    let _pid_file = match &args.pid_file {
        Some(p) => Some(PidFile::write(p)?),
        None => None,
    };
    if let Some(r) = ready {
        r.signal().context("telling the parent the server is up")?;
    }
    let server = Server::new(export.clone(), config);
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
            handle.shutdown();
        }
    });
    match listener {
        Listener::Unix(l) => {
            let r = server.serve_unix(l);
            if let Some(path) = &args.socket {
                let _ = std::fs::remove_file(path);
            }
            r.context("serving")?;
        }
        Listener::Tcp(l) => server.serve_tcp(l).context("serving")?,
    }
    export.image.flush().context("flushing the image")?;
    Ok(0)
}
