//! `vmdk compact`: give back the space of zero grains and holes in a sparse image (like
//! `vmware-vdiskmanager -k`; qemu-img has no such command).

use std::path::PathBuf;

use anyhow::Result;

use crate::opts::{ProgressArgs, VmdkTarget};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: VmdkTarget,
    #[command(flatten)]
    progress: ProgressArgs,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    a.target.check_writable(&a.image)?;
    let stats = a.progress.run(|progress| {
        vmdk::ops::compact::compact(&a.image, &a.target.open.options(), progress)
    })?;
    if !a.progress.quiet {
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
