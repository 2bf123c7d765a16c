//! `vmdk`: a qemu-img / qemu-io style command-line tool for VMware VMDK images.
//!
//! This crate only parses arguments and prints results; everything about the format lives
//! in the `vmdk` library.

mod cmd;
mod daemon;
mod fuse_disk;

mod opts;
mod output;
mod progress;

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::{Parser, Subcommand};
use vmdk::ova::OvaBackend;
use vmdk::storage::namespace::RouterNamespace;

/// Where every command opens, probes and creates images: `s3://` and `http(s)://` objects
/// (OVAs among them), names inside OVA archives among host files, and host files. The
/// library keeps no registry of backends, so the command builds this router (once: one
/// object-storage client per process) and hands it to every library call that takes a
/// name: `OpenOptions::in_namespace` (through [`opts::OpenArgs::options`]), the
/// `namespace` of `CreateOptions`, `ConvertOptions::target_namespace`, `inspect_in`,
/// `ova::inspect_in` and `ova_create::create`.
pub fn namespace() -> Arc<RouterNamespace> {
    static NS: OnceLock<Arc<RouterNamespace>> = OnceLock::new();
    NS.get_or_init(|| {
        Arc::new(RouterNamespace::new(vec![
            // Asked first, as when it was registered: it claims only names with a scheme.
            vmdk_object::backend_from_env(),
            Arc::new(OvaBackend::default()),
        ]))
    })
    .clone()
}

#[derive(Debug, Parser)]
#[command(
    name = "vmdk",
    version,
    about = "Inspect, check, convert and edit VMware VMDK images (qemu-img / qemu-io style)"
)]
struct Cli {
    /// Log what the library does to stderr (RUST_LOG filters it).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what an image is (like qemu-img info).
    Info(cmd::info::Args),
    /// Show where the image's data lives (like qemu-img map).
    Map(cmd::map::Args),
    /// Check an image's metadata for corruption and leaks (like qemu-img check).
    Check(cmd::check::Args),
    /// Convert an image to raw, VMDK or qcow2 (like qemu-img convert).
    Convert(cmd::convert::Args),
    /// Compare the contents of two images (like qemu-img compare).
    Compare(cmd::compare::Args),
    /// Create a new image (like qemu-img create).
    Create(cmd::create::Args),
    /// Run qemu-io style commands on an image (read, write, map, ...).
    Io(cmd::io::Args),
    /// Export an image over NBD (like qemu-nbd).
    Serve(cmd::serve::Args),
    /// Copy part of an image to a new image (like qemu-img dd).
    Dd(cmd::dd::Args),
    /// Measure the host space a new image needs (like qemu-img measure).
    Measure(cmd::measure::Args),
    /// List, create, apply or delete internal snapshots (VMDK has none; like qemu-img
    /// snapshot).
    Snapshot(cmd::snapshot::Args),
    /// Time a run of reads or writes (like qemu-img bench).
    Bench(cmd::bench::Args),
    /// Write an overlay's data into its backing file and empty it (like qemu-img commit).
    Commit(cmd::commit::Args),
    /// Drop zero grains and move data into holes, then shrink the file (like
    /// vmware-vdiskmanager -k).
    Compact(cmd::compact::Args),
    /// Change an overlay's backing file (like qemu-img rebase).
    Rebase(cmd::rebase::Args),
    /// Change descriptor fields: adapter type, hardware and tools versions (like qemu-img
    /// amend).
    Amend(cmd::amend::Args),
    /// Grow or shrink an image (like qemu-img resize, which cannot resize VMDK).
    Resize(cmd::resize::Args),
    /// Expose the guest disk as a file through FUSE (like vmdkmount).
    Mount(cmd::mount::Args),
    /// Say whether an uploaded file is a safe, self-contained VMDK (opens nothing else).
    Inspect(cmd::inspect::Args),
    /// OVA appliances: show one (info) or build one vSphere imports (create). Every other
    /// command reads X.ova (its first disk) and X.ova/DISK.vmdk in place.
    Ova(cmd::ova::Args),
    /// Print a shell completion script to standard output.
    Completions(cmd::docs::CompletionsArgs),
    /// Write man pages: vmdk.1 and one vmdk-COMMAND.1 per command.
    Manpages(cmd::docs::ManpagesArgs),
}

impl Command {
    /// Whether the command reads a file of another format as a raw disk when told `-f raw`
    /// (so the hint to do so is true for it).
    fn reads_raw(&self) -> bool {
        matches!(
            self,
            Command::Info(_)
                | Command::Map(_)
                | Command::Convert(_)
                | Command::Compare(_)
                | Command::Dd(_)
                | Command::Measure(_)
                | Command::Ova(_)
        )
    }
}

/// The command line's definition, for the completion scripts and man pages.
pub fn cli_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn init_logging(verbose: bool) {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    if !verbose && env.is_none() {
        return;
    }
    let filter = match env {
        Some(v) => tracing_subscriber::EnvFilter::new(v),
        // The HTTP stack under object storage logs every connection at debug level.
        None => tracing_subscriber::EnvFilter::new(
            "debug,hyper=info,hyper_util=info,reqwest=info,rustls=info,h2=info",
        ),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// An error and its causes on one line, qemu-style: `<context>: '<file>': <problem>: <cause>`.
/// Every error in the chain shows only its own context (the library's [`vmdk::Error`] never
/// copies its cause's text), so the chain is printed as it is, escaped: names in it come
/// from files (an extent line, a tar member) and may carry terminal escapes, NULs or
/// newlines that would forge a line ([`vmdk::report::text`]).
pub fn render_error(e: &anyhow::Error) -> String {
    let line = e
        .chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    vmdk::report::text::escape(&line).into_owned()
}

/// What the user can do about an error, in terms of this command's flags (the library's
/// messages name only the problem and the file). `reads_raw`: whether the command reads a
/// file as a raw disk with `-f raw`.
pub fn hint(e: &anyhow::Error, reads_raw: bool) -> Option<&'static str> {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<vmdk::Error>())?
        .kind();
    match kind {
        vmdk::ErrorKind::UnsafePath => Some(
            "hint: if you trust this image, allow the directory it names with --allow-path DIR \
             (or VMDK_ALLOW_PATHS=DIR), or every path with --allow-unsafe-paths",
        ),
        vmdk::ErrorKind::CidMismatch => Some(
            "hint: --ignore-cid-mismatch opens it anyway (the data may no longer match its \
             parent)",
        ),
        vmdk::ErrorKind::ForeignFormat if reads_raw => {
            Some("hint: pass -f raw to read the file's bytes as a raw disk anyway")
        }
        vmdk::ErrorKind::Locked => Some(
            "hint: -U (--force-share) reads the image anyway, although another process may be \
             changing it",
        ),
        _ => None,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let reads_raw = cli.command.reads_raw();
    let result = match cli.command {
        Command::Info(a) => cmd::info::run(a),
        Command::Map(a) => cmd::map::run(a),
        Command::Check(a) => cmd::check::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Create(a) => cmd::create::run(a),
        Command::Io(a) => cmd::io::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Dd(a) => cmd::dd::run(a),
        Command::Measure(a) => cmd::measure::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Commit(a) => cmd::commit::run(a),
        Command::Compact(a) => cmd::compact::run(a),
        Command::Rebase(a) => cmd::rebase::run(a),
        Command::Amend(a) => cmd::amend::run(a),
        Command::Resize(a) => cmd::resize::run(a),
        Command::Mount(a) => cmd::mount::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Ova(a) => cmd::ova::run(a),
        Command::Completions(a) => cmd::docs::completions(a),
        Command::Manpages(a) => cmd::docs::manpages(a),
    };
    if cli.verbose {
        if let Some(s) = vmdk_object::summary() {
            eprintln!("vmdk: {s}");
        }
    }
    match result {
        Ok(code) => ExitCode::from(code),
        // A reader that went away (`vmdk map | head`) is not an error worth a message; exit
        // as a process killed by SIGPIPE would, as qemu-img does.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(141)
        }
        Err(e) => {
            eprintln!("vmdk: {}", render_error(&e));
            if let Some(hint) = hint(&e, reads_raw) {
                eprintln!("{hint}");
            }
            ExitCode::from(1)
        }
    }
}
