//! `vmdk resize`: grow (or, with --shrink, shrink) an image, which qemu-img cannot do for
//! VMDK at all ("Image format driver does not support resize").

use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ops::resize::ResizeOptions;

use crate::opts::OpenArgs;
use vmdk::qemu_syntax::parse_size;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Allow the disk to get smaller: flat extents lose the data past the new end; a sparse
    /// extent shrinks only when nothing but zeros lies there.
    #[arg(long)]
    shrink: bool,
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Preallocation (only off: new space is never preallocated).
    #[arg(long, value_name = "MODE")]
    preallocation: Option<String>,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
    /// New size, or +SIZE / -SIZE relative to the current one (k, M, G, T, P or E suffix).
    #[arg(allow_hyphen_values = true)]
    size: String,
}

pub fn run(a: Args) -> Result<u8> {
    crate::opts::require_vmdk(a.format.as_deref())?;
    crate::opts::refuse_force_share(&a.open, &a.image)?;
    if a.preallocation.as_deref().is_some_and(|p| p != "off") {
        bail!("Unsupported preallocation mode (only off)");
    }
    let new_size = match a.size.as_bytes().first() {
        Some(b'+') | Some(b'-') => {
            let delta = parse_size(&a.size[1..])
                .map_err(|_| anyhow::anyhow!("Invalid image size specified."))?;
            let cur = vmdk::OpenOptions::new()
                .open_backing(false)
                .force_share(true)
                .in_namespace(crate::namespace())
                .open(&a.image)?
                .size();
            if a.size.starts_with('+') {
                cur.checked_add(delta)
                    .ok_or_else(|| anyhow::anyhow!("Invalid image size specified."))?
            } else {
                cur.checked_sub(delta)
                    .ok_or_else(|| anyhow::anyhow!("New image size must be positive"))?
            }
        }
        _ => parse_size(&a.size).map_err(|_| anyhow::anyhow!("Invalid image size specified."))?,
    };
    let r = ResizeOptions { shrink: a.shrink };
    vmdk::ops::resize::resize(&a.image, new_size, &r, &a.open.options())?;
    if !a.quiet {
        println!("Image resized.");
    }
    Ok(0)
}
