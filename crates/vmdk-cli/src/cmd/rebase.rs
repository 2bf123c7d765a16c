//! `vmdk rebase`: give an overlay a new backing file, copying what differs so the guest sees
//! the same disk (or, with -u, only rewriting the reference), as qemu-img rebase.

use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ops::rebase::RebaseOptions;

use crate::opts::{ProgressArgs, VmdkTarget};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: VmdkTarget,
    /// The new backing file, relative to the image ("" makes the image standalone).
    #[arg(short = 'b', value_name = "BACKING", required = true)]
    backing: String,
    /// Backing file format (only vmdk).
    #[arg(short = 'F', value_name = "FMT")]
    backing_format: Option<String>,
    /// Unsafe: only change the reference; the data is not compared.
    #[arg(short = 'u')]
    unsafe_mode: bool,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Cache modes (accepted for qemu-img compatibility).
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    /// Source cache mode (accepted for qemu-img compatibility).
    #[arg(short = 'T', value_name = "CACHE")]
    src_cache: Option<String>,
    /// The overlay.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    a.target.check_writable(&a.image)?;
    if a.backing_format.as_deref().is_some_and(|f| f != "vmdk") {
        bail!("backing format must be vmdk (a VMDK's backing file is a VMDK)");
    }
    let r = RebaseOptions {
        backing: a.backing.clone(),
        unsafe_mode: a.unsafe_mode,
    };
    a.progress.run(|progress| {
        vmdk::ops::rebase::rebase(&a.image, &r, &a.target.open.options(), progress)
    })?;
    Ok(0)
}
