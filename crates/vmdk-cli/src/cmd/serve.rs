//! `vmdk serve`: export an image over NBD, like qemu-nbd.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vmdk::export::{open_for_export, ImageExport};
use vmdk_nbd::{Server, ServerConfig, TlsConfig};

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
    /// Serve up to N clients at once (0: any number). Default 1 for a writable export, as
    /// qemu-nbd; a read-only export serves any number. With more than one, multi-conn is
    /// advertised: every connection shares the one open image, so a flush on any of them
    /// makes every completed write durable. A client takes its slot once it has picked the
    /// export; connections still negotiating do not count (up to 16 negotiate at once,
    /// each within 10 s), so peers that connect and say nothing cannot keep clients out.
    #[arg(short = 'e', long, value_name = "N")]
    pub shared: Option<usize>,
    /// Offer the `qemu:allocation-depth` metadata context beside `base:allocation`, as
    /// qemu-nbd's `-A`: 0 unallocated, 1 in the image, N in its (N-1)th backing file.
    #[arg(short = 'A', long)]
    pub allocation_depth: bool,
    /// Keep serving after the last client disconnects.
    #[arg(short = 't', long)]
    pub persistent: bool,
    /// Flush data before the metadata that points at it (slower, power-cut safe).
    #[arg(long)]
    pub durable: bool,
    /// Define an object, as qemu-nbd: only `tls-creds-x509,id=ID,dir=DIR,endpoint=server`
    /// (`verify-peer=on|off`, default on: clients need a certificate from DIR's CA).
    #[arg(long, value_name = "PROPERTIES")]
    pub object: Vec<String>,
    /// Require TLS with the credentials object ID (see --object).
    #[arg(long, value_name = "ID")]
    pub tls_creds: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
    /// The image to export.
    pub image: PathBuf,
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

/// A `tls-creds-x509` object of `--object`, as qemu takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsCredsX509 {
    id: String,
    dir: PathBuf,
    verify_peer: bool,
}

/// Parse one `--object TYPE,key=value,...`; only TLS credentials are objects here.
fn parse_object(spec: &str) -> Result<TlsCredsX509> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let kind = kind.strip_prefix("qom-type=").unwrap_or(kind);
    if kind != "tls-creds-x509" {
        bail!("--object '{spec}': only tls-creds-x509 objects are supported");
    }
    let (mut id, mut dir, mut endpoint, mut verify_peer) = (None, None, None, true);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .with_context(|| format!("--object '{spec}': '{part}' is not key=value"))?;
        match key {
            "id" => id = Some(value.to_string()),
            "dir" => dir = Some(PathBuf::from(value)),
            "endpoint" => endpoint = Some(value.to_string()),
            "verify-peer" => verify_peer = vmdk::qemu_syntax::parse_bool(key, value)?,
            _ => bail!("--object '{spec}': property '{key}' is not supported"),
        }
    }
    let id = id.with_context(|| format!("--object '{spec}': Parameter 'id' is missing"))?;
    let dir = dir.with_context(|| format!("--object '{spec}': Parameter 'dir' is missing"))?;
    // qemu's default endpoint is client; qemu-nbd refuses it.
    if endpoint.as_deref() != Some("server") {
        bail!("Expecting TLS credentials with a server endpoint (object '{id}')");
    }
    Ok(TlsCredsX509 {
        id,
        dir,
        verify_peer,
    })
}

/// The TLS configuration `--object`/`--tls-creds` ask for, if any.
fn tls_config(objects: &[String], creds: Option<&str>) -> Result<Option<TlsConfig>> {
    let objects = objects
        .iter()
        .map(|o| parse_object(o))
        .collect::<Result<Vec<_>>>()?;
    let Some(id) = creds else {
        return Ok(None);
    };
    let obj = objects
        .iter()
        .find(|o| o.id == id)
        .with_context(|| format!("No TLS credentials with id '{id}'"))?;
    let config = TlsConfig::from_x509_dir(&obj.dir, obj.verify_peer)
        .with_context(|| format!("loading TLS credentials '{id}'"))?;
    Ok(Some(config))
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
    if writable {
        crate::opts::refuse_force_share(&args.open, &args.image)?;
    }
    // Credentials are checked before the image is opened (and locked).
    let tls = tls_config(&args.object, args.tls_creds.as_deref())?;
    // Into the background before the image is opened: `fork` copies only the calling
    // thread, and opening an `s3://` or `http(s)://` image starts the object client's
    // threads, which the child would lack (its requests would wait forever). Whatever fails
    // from here on (open, bind) is reported by the child, and the parent, which waits for
    // the child's "serving" byte, exits 1 when it sees the pipe close instead.
    let ready = if args.fork {
        Some(crate::daemon::detach().context("going to the background")?)
    } else {
        None
    };
    let opts = args.open.options().writable(writable).durable(args.durable);
    let image = open_for_export(&opts, &args.image)
        .with_context(|| format!("Could not open '{}'", args.image.display()))?;
    // A read-only export (asked for, or an image that cannot be written) takes any number
    // of connections, so it can advertise multi-conn and clients such as nbdcopy read it
    // over several; a writable one takes one unless told otherwise, as qemu-nbd.
    let read_only = args.read_only || !image.is_writable();
    let max_clients = match args.shared {
        Some(0) => usize::MAX,
        Some(n) => n,
        None if read_only => usize::MAX,
        None => 1,
    };
    let export = Arc::new(ImageExport::new(Arc::new(image)));
    let config = ServerConfig {
        export_name: args.export_name.clone(),
        description: args.description.clone(),
        read_only: args.read_only,
        max_clients,
        allocation_depth: args.allocation_depth,
        persistent: args.persistent,
        tls,
        ..ServerConfig::default()
    };
    // Listen before telling the parent the server is up, so that once the command returns
    // clients can connect.
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
    export.image().flush().context("flushing the image")?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_parse_as_qemu_takes_them() {
        let o = parse_object("tls-creds-x509,id=tls0,dir=/d,endpoint=server").unwrap();
        assert_eq!(
            o,
            TlsCredsX509 {
                id: "tls0".into(),
                dir: "/d".into(),
                verify_peer: true
            }
        );
        let o = parse_object("tls-creds-x509,id=t,endpoint=server,dir=/d,verify-peer=off");
        assert!(!o.unwrap().verify_peer);
        for bad in [
            "tls-creds-x509,id=t,dir=/d",
            "tls-creds-x509,id=t,dir=/d,endpoint=client",
            "tls-creds-psk,id=t,dir=/d,endpoint=server",
            "tls-creds-x509,dir=/d,endpoint=server",
            "tls-creds-x509,id=t,endpoint=server",
            "tls-creds-x509,id=t,dir=/d,endpoint=server,verify-peer=maybe",
            "tls-creds-x509,id=t,dir=/d,endpoint=server,priority=NORMAL",
        ] {
            assert!(parse_object(bad).is_err(), "{bad}");
        }
        let err = tls_config(&[], Some("tls0")).unwrap_err().to_string();
        assert!(err.contains("tls0"), "{err}");
        assert!(tls_config(&[], None).unwrap().is_none());
    }
}
