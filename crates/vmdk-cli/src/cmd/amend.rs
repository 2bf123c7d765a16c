//! `vmdk amend`: change descriptor fields of an existing image (adapter type, hardware and
//! tools versions), keeping every other byte; QEMU's VMDK driver refuses amendment.

use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ops::amend::AmendOptions;

use crate::opts::{open_vmdk, split_options, VmdkTarget};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Options, comma separated key=value: adapter_type, hwversion, toolsversion, compat6.
    #[arg(short = 'o', value_name = "OPTIONS", required = true)]
    options: Vec<String>,
    #[command(flatten)]
    target: VmdkTarget,
    /// Show progress (accepted for qemu-img compatibility: amending is instant).
    #[arg(short = 'p')]
    progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// Accepted for qemu-img compatibility.
    #[arg(long)]
    force: bool,
    /// The image (not needed with `-o help`).
    image: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<u8> {
    let opts = split_options(&a.options)?;
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        print!("{}", vmdk::ops::amend::AMEND_OPTIONS_HELP);
        return Ok(0);
    }
    let mut m = AmendOptions::default();
    for (k, v) in &opts {
        m.set_option(k, v)?;
    }
    let Some(image) = &a.image else {
        bail!("Expecting one image file name");
    };
    let o = a.target.open.options().writable(true).open_backing(false);
    let img = open_vmdk(image, a.target.format.as_deref(), &o)?;
    vmdk::ops::amend::amend(&img, &m)?;
    Ok(0)
}
