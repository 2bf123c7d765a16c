//! `vmdk commit`: write an overlay's data into its backing file, then empty the overlay
//! (qemu-img commit; QEMU's VMDK driver leaves the overlay full).

use std::path::PathBuf;

use anyhow::Result;
use vmdk::ops::commit::CommitOptions;

use crate::opts::{ProgressArgs, VmdkTarget};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: VmdkTarget,
    /// Commit into this image of the backing chain instead of the direct backing file
    /// (implies -d).
    #[arg(short = 'b', value_name = "BASE")]
    base: Option<PathBuf>,
    /// Leave the overlay as it is instead of emptying it.
    #[arg(short = 'd')]
    keep: bool,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Cache mode (accepted for qemu-img compatibility).
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    /// The overlay.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    a.target.check_writable(&a.image)?;
    let c = CommitOptions {
        keep_overlay: a.keep || a.base.is_some(),
        base: a.base.clone(),
    };
    a.progress.run(|progress| {
        vmdk::ops::commit::commit(&a.image, &c, &a.target.open.options(), progress)
    })?;
    if !a.progress.quiet {
        println!("Image committed.");
    }
    Ok(0)
}
