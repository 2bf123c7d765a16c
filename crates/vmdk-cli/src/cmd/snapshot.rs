//! `vmdk snapshot`: VMDK has no internal snapshots (VMware's snapshots are separate delta
//! files, i.e. backing chains), so the list is empty and the other operations fail, with
//! qemu-img's messages.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::opts::{open_vmdk, VmdkTarget};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("op").required(true)))]
pub struct Args {
    /// List the snapshots (there are none in a VMDK).
    #[arg(short = 'l', group = "op")]
    list: bool,
    /// Create a snapshot.
    #[arg(short = 'c', value_name = "SNAPSHOT", group = "op")]
    create: Option<String>,
    /// Apply (revert to) a snapshot.
    #[arg(short = 'a', value_name = "SNAPSHOT", group = "op")]
    apply: Option<String>,
    /// Delete a snapshot.
    #[arg(short = 'd', value_name = "SNAPSHOT", group = "op")]
    delete: Option<String>,
    #[command(flatten)]
    target: VmdkTarget,
    /// Quiet.
    #[arg(short = 'q')]
    quiet: bool,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    let writable = !a.list;
    let opts = a
        .target
        .open
        .options()
        .writable(writable)
        .open_backing(false);
    // Open it anyway: a missing or locked image is an error, as in qemu-img.
    let _img = open_vmdk(&a.image, a.target.format.as_deref(), &opts)?;
    if let Some(s) = a.create {
        bail!("Could not create snapshot '{s}': Operation not supported");
    }
    if let Some(s) = a.apply {
        bail!("Could not apply snapshot '{s}': Block driver does not support snapshots");
    }
    if let Some(s) = a.delete {
        bail!("Could not delete snapshot '{s}': snapshot not found");
    }
    Ok(0)
}
