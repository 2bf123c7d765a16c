//! `vmdk convert`: copy an image (VMDK or raw) to a new raw or VMDK image.

use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ConvertOptions;

use crate::opts::{split_options, vmdk_options, OpenArgs, VMDK_OPTIONS_HELP};
use crate::progress::Progress;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Source format (vmdk or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Output format: raw or vmdk.
    #[arg(short = 'O', value_name = "FMT", default_value = "raw")]
    out_format: String,
    /// Output options, comma separated key=value (`-o help` lists them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Show progress on stderr (a bar on a terminal, else qemu-img style percentages).
    #[arg(short = 'p')]
    progress: bool,
    /// Worker threads (0 = one per CPU).
    #[arg(short = 'm', value_name = "THREADS", default_value_t = 0)]
    threads: usize,
    /// Compress the output (streamOptimized output is always compressed).
    #[arg(short = 'c')]
    compress: bool,
    /// Quiet (accepted for qemu-img compatibility; convert prints nothing anyway).
    #[arg(short = 'q')]
    quiet: bool,
    #[command(flatten)]
    open: OpenArgs,
    /// Source image.
    src: PathBuf,
    /// Destination file.
    dst: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    let opts = split_options(&a.options)?;
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        if a.out_format == "vmdk" {
            print!("{VMDK_OPTIONS_HELP}");
        } else {
            println!("Creation options for '{}':", a.out_format);
        }
        return Ok(0);
    }
    let mut copts = ConvertOptions {
        threads: a.threads,
        compress: a.compress,
        ..Default::default()
    };
    let create = match a.out_format.as_str() {
        "vmdk" => {
            let v = vmdk_options(&opts, false)?;
            if let Some(l) = v.compression_level {
                copts.compression_level = l;
            }
            Some(v.create)
        }
        "raw" => {
            if let Some((k, _)) = opts.first() {
                bail!("Invalid parameter '{k}'");
            }
            if a.compress {
                bail!("Compression not supported for this file format");
            }
            None
        }
        other => bail!("Unknown output format '{other}' (expected raw or vmdk)"),
    };
    let src = vmdk::open_source(&a.src, a.format.as_deref(), &a.open.options())?;
    let pb = Progress::new(a.progress && !a.quiet);
    let progress = |done: u64, total: u64| pb.update(done, total);
    let r = match &create {
        Some(c) => vmdk::convert::convert_to_vmdk(&*src, &a.dst, c, &copts, &progress),
        None => vmdk::convert::convert_to_raw(&*src, &a.dst, &copts, &progress),
    };
    if r.is_ok() {
        pb.finish();
    } else {
        pb.abandon();
    }
    r?;
    Ok(0)
}
