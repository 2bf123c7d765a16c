//! `vmdk dd`: copy part of an image (VMDK, qcow2 or raw) to a new raw or VMDK image, with
//! qemu-img dd's operands (`bs=`, `count=`, `skip=`, `if=`, `of=`) plus `osize=` (the
//! output's size, padded with zeros or cut). The stretch becomes a disk of its own and goes
//! through the conversion engine, so holes stay holes.
//!
//! Where qemu-img dd is wrong we are not: with both `skip=` and `count=` it sizes the output
//! `count*bs - skip*bs` bytes (qemu-img 10 copies 64 KiB for `bs=64k skip=2 count=3`); we copy
//! the `count` blocks asked for.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vmdk::ops::source_window::SourceWindow;
use vmdk::{ConvertOptions, ImageFormat};

use crate::opts::{open_disk, output_format, split_options, vmdk_options, SourceArgs};
use vmdk::qemu_syntax::parse_size;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format: raw (default) or vmdk.
    #[arg(short = 'O', value_name = "FMT", default_value = "raw")]
    out_format: String,
    /// Output options for vmdk (`subformat=...`).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Operands: bs=BLOCK_SIZE (default 512), count=BLOCKS, skip=BLOCKS, osize=SIZE,
    /// if=INPUT, of=OUTPUT.
    #[arg(value_name = "OPERAND", required = true)]
    operands: Vec<String>,
}

pub fn run(a: Args) -> Result<u8> {
    let (mut bs, mut count, mut skip, mut osize) = (512u64, None, 0u64, None);
    let (mut input, mut output) = (None, None);
    for op in &a.operands {
        let Some((k, v)) = op.split_once('=') else {
            bail!("unrecognized operand {op}");
        };
        let size = |v: &str| parse_size(v).map_err(|_| anyhow::anyhow!("invalid number: '{v}'"));
        let blocks = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| anyhow::anyhow!("invalid number: '{v}'"))
        };
        match k {
            "bs" => {
                bs = size(v)?;
                if bs == 0 {
                    bail!("invalid number: '{v}'");
                }
            }
            "count" => count = Some(blocks(v)?),
            "skip" => skip = blocks(v)?,
            "osize" => osize = Some(size(v)?),
            "if" => input = Some(PathBuf::from(v)),
            "of" => output = Some(PathBuf::from(v)),
            _ => bail!("unrecognized operand {k}"),
        }
    }
    let Some(input) = input else {
        bail!("Must specify both input and output files");
    };
    let Some(output) = output else {
        bail!("Must specify both input and output files");
    };
    let src = open_disk(&input, a.source.format.as_deref(), &a.source.open.options())?;
    let size = src.size();
    let start = skip
        .checked_mul(bs)
        .filter(|s| *s <= size)
        .with_context(|| format!("{}: cannot skip to specified offset", input.display()))?;
    let len = match count {
        Some(c) => c.saturating_mul(bs).min(size - start),
        None => size - start,
    };
    let window = SourceWindow::new(&*src, start, len, osize.unwrap_or(len))?;
    let copts = ConvertOptions {
        target_namespace: Some(crate::namespace()),
        ..Default::default()
    };
    let opts = split_options(&a.options)?;
    match output_format(&a.out_format, &[ImageFormat::Raw, ImageFormat::Vmdk])? {
        ImageFormat::Raw => {
            if let Some((k, _)) = opts.first() {
                bail!("Invalid parameter '{k}'");
            }
            vmdk::ops::convert::convert_to_raw(&window, &output, &copts, &|_, _| {})?
        }
        ImageFormat::Vmdk => {
            let v = vmdk_options(&opts, false)?;
            vmdk::ops::convert::convert_to_vmdk(&window, &output, &v.create, &copts, &|_, _| {})?
        }
        ImageFormat::Qcow2 => unreachable!("refused by output_format"),
    }
    Ok(0)
}
