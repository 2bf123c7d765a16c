//! `vmdk compact`: give back the space of zero grains and holes in a sparse image (like
//! `vmware-vdiskmanager -k`; qemu-img has no such command).

use std::path::PathBuf;

use anyhow::Result;

use crate::opts::OpenArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Show progress.
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    crate::opts::require_vmdk(a.format.as_deref())?;
    crate::opts::refuse_force_share(&a.open, &a.image)?;
    let pb = crate::progress::Progress::new(a.progress && !a.quiet);
    let progress = |done: u64, total: u64| pb.update(done, total);
    let result = vmdk::compact::compact(&a.image, &a.open.options(), &progress);
    pb.end(result.is_ok());
    let stats = result?;
    if !a.quiet {
        println!(
            "Image compacted: {} zero grains dropped, {} grains moved, {} -> {} bytes ({} bytes freed).",
            stats.zero_grains,
            stats.moved_grains,
            stats.size_before,
            stats.size_after,
            stats.size_before - stats.size_after
        );
    }
    Ok(0)
}
