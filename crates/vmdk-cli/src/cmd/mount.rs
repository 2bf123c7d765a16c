//! `vmdk mount`: expose the guest disk as one file through FUSE, like libvmdk's `vmdkmount`
//! or `qemu-storage-daemon --export fuse`. The file is `MOUNTPOINT/disk` unless `--name`
//! says otherwise.
//!
//! Lifecycle: the image is opened first (so a bad image fails before anything is
//! mounted); without `-f` the process forks and the parent waits until the child has
//! mounted, then exits 0 (or 1 if the child failed, having printed why). SIGINT/SIGTERM
//! flush the image and unmount; an unmount from outside (`fusermount3 -u`, `umount`) ends
//! the session the same way. Either way the image is flushed once more before exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::fuse_disk::DiskFs;
use crate::opts::OpenArgs;

/// Arguments of `vmdk mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Mount read-only (the default; accepted for symmetry with --rw).
    #[arg(short = 'r', long = "read-only", conflicts_with = "rw")]
    pub read_only: bool,
    /// Mount read-write: writes to the file go through the library into the image.
    #[arg(long)]
    pub rw: bool,
    /// Let other users (root included) use the mount (FUSE's allow_other; an unprivileged
    /// user needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Stay in the foreground (without it, the command returns once the mount is ready and
    /// a background process serves it).
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Name of the file inside MOUNTPOINT.
    #[arg(long, value_name = "NAME", default_value = "disk")]
    pub name: String,
    /// Flush data before the metadata that points at it (slower, power-cut safe).
    #[arg(long)]
    pub durable: bool,
    /// Write the serving process's ID to this file (removed when it exits).
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub open: OpenArgs,
    /// The image to mount.
    pub image: PathBuf,
    /// An existing directory to mount on.
    pub mountpoint: PathBuf,
}

/// Event-loop threads: reads of different requests run in parallel (the library's reads
/// are thread-safe), without one thread per core of a big machine for one disk.
const THREADS: usize = 4;

/// Run the mount until it is unmounted or the process is told to stop.
pub fn run(args: Args) -> Result<u8> {
    if args.rw {
        crate::opts::refuse_force_share(&args.open, &args.image)?;
    }
    if args.name.is_empty()
        || args.name == "."
        || args.name == ".."
        || args.name.contains('/')
        || args.name.contains('\0')
    {
        bail!("--name must be a plain file name, not '{}'", args.name);
    }
    if !args.mountpoint.is_dir() {
        bail!(
            "mount point '{}' is not a directory",
            args.mountpoint.display()
        );
    }
    // Into the background before the image is opened: `fork` copies only the calling
    // thread, and opening an `s3://` or `http(s)://` image starts the object client's
    // threads, which the child would lack. An open that fails is reported by the child; the
    // parent, waiting for the child's "mounted" byte, exits 1 when the pipe closes instead.
    let ready = if args.foreground {
        None
    } else {
        Some(crate::daemon::detach().context("going to the background")?)
    };
    let writable = args.rw;
    let opts = args.open.options().writable(writable).durable(args.durable);
    let image = opts
        .open(&args.image)
        .with_context(|| format!("Could not open '{}'", args.image.display()))?;
    let image = Arc::new(image);

    // Catch the signals before mounting: one arriving between the mount and the start of
    // the handler thread must not kill the process and leave a dead mount behind.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;

    let fs = DiskFs::new(image.clone(), args.name.clone(), writable);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(args.image.display().to_string()),
        fuser::MountOption::Subtype("vmdk".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        if writable {
            fuser::MountOption::RW
        } else {
            fuser::MountOption::RO
        },
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let mut session = fuser::Session::new(fs, &args.mountpoint, &config).with_context(|| {
        format!(
            "mounting '{}' on '{}' (FUSE needs /dev/fuse and fusermount3 from the fuse3 \
             package)",
            args.image.display(),
            args.mountpoint.display()
        )
    })?;
    let _pid_file = match &args.pid_file {
        Some(p) => Some(crate::cmd::serve::PidFile::write(p)?),
        None => None,
    };
    if let Some(r) = ready {
        r.signal()
            .context("telling the parent the mount is ready")?;
    }

    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    let flusher = image.clone();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "unmounting");
            if let Err(e) = flusher.flush() {
                tracing::error!("flushing before unmount: {e:#}");
            }
            if let Err(e) = unmounter.unmount() {
                // Busy (a process has the file open): detach the mount now; the session
                // serves whoever still holds the file and ends when the last one lets go.
                tracing::warn!("unmounting: {e}; detaching lazily");
                lazy_unmount(&mountpoint);
            }
        }
    });
    session.run().context("serving the mount")?;
    image.flush().context("flushing the image")?;
    Ok(0)
}

/// `fusermount3 -u -z`: detach a busy mount (works for root and, for its own mounts, for an
/// unprivileged user).
fn lazy_unmount(mountpoint: &Path) {
    let r = std::process::Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .status();
    if !matches!(r, Ok(s) if s.success()) {
        tracing::error!(
            "could not unmount '{}'; run fusermount3 -u on it",
            mountpoint.display()
        );
    }
}
