//! `vmdk commit`: write an overlay's data into its backing file, then empty the overlay
//! (qemu-img commit; QEMU's VMDK driver leaves the overlay full).

use std::path::PathBuf;

use anyhow::Result;
use vmdk::commit::CommitOptions;

use crate::opts::OpenArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Commit into this image of the backing chain instead of the direct backing file
    /// (implies -d).
    #[arg(short = 'b', value_name = "BASE")]
    base: Option<PathBuf>,
    /// Leave the overlay as it is instead of emptying it.
    #[arg(short = 'd')]
    keep: bool,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    #[command(flatten)]
    open: OpenArgs,
    /// The overlay.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    crate::opts::require_vmdk(a.format.as_deref())?;
    crate::opts::refuse_force_share(&a.open, &a.image)?;
    let pb = crate::progress::Progress::new(a.progress && !a.quiet);
    let progress = |done: u64, total: u64| pb.update(done, total);
    let c = CommitOptions {
        keep_overlay: a.keep || a.base.is_some(),
        base: a.base.clone(),
    };
    let result = vmdk::commit::commit(&a.image, &c, &a.open.options(), &progress);
    pb.end(result.is_ok());
    result?;
    if !a.quiet {
        println!("Image committed.");
    }
    Ok(0)
}
