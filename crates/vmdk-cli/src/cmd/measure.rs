//! `vmdk measure`: the host space a new image needs, as `qemu-img measure` prints it (which
//! QEMU's VMDK driver cannot answer: "does not support size measurement").

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ops::measure::{measure, MeasureInput};
use vmdk::ImageFormat;

use crate::opts::{open_disk, output_format, split_options, vmdk_options, OpenArgs};
use crate::output::{Node, OutputFormat};
use vmdk::qemu_syntax::parse_size;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target format: raw or vmdk.
    #[arg(
        short = 'O',
        long = "target-format",
        value_name = "FMT",
        default_value = "raw"
    )]
    out_format: String,
    /// Target options (`subformat=...`, `zeroed_grain=on`).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Measure for an empty image of this size instead of a source image.
    #[arg(short = 's', long, value_name = "SIZE")]
    size: Option<String>,
    /// Source format (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    #[command(flatten)]
    open: OpenArgs,
    /// The image to measure the conversion of.
    image: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<u8> {
    let opts = split_options(&a.options)?;
    let (subformat, zeroed) =
        match output_format(&a.out_format, &[ImageFormat::Raw, ImageFormat::Vmdk])? {
            ImageFormat::Vmdk => {
                let v = vmdk_options(&opts, false)?;
                (Some(v.create.subformat), v.create.zeroed_grain)
            }
            ImageFormat::Raw => {
                if let Some((k, _)) = opts.first() {
                    bail!("Invalid parameter '{k}'");
                }
                (None, false)
            }
            ImageFormat::Qcow2 => unreachable!("refused by output_format"),
        };
    let m = match (&a.size, &a.image) {
        (Some(_), Some(_)) => bail!("--size N cannot be used together with a filename"),
        (None, None) => bail!("Either --size N or one filename must be specified."),
        (Some(s), None) => {
            let size =
                parse_size(s).map_err(|_| anyhow::anyhow!("Invalid image size specified."))?;
            measure(subformat, zeroed, MeasureInput::Size(size))?
        }
        (None, Some(p)) => {
            let src = open_disk(p, a.format.as_deref(), &a.open.options())?;
            measure(subformat, zeroed, MeasureInput::Source(&*src))?
        }
    };
    let mut out = std::io::stdout().lock();
    match a.output {
        OutputFormat::Human => {
            writeln!(out, "required size: {}", m.required)?;
            writeln!(out, "fully allocated size: {}", m.fully_allocated)?;
        }
        OutputFormat::Json => {
            let mut n = Node::dict();
            n.put("required", m.required)
                .put("fully-allocated", m.fully_allocated);
            n.print_json(&mut out)?;
        }
    }
    out.flush()?;
    Ok(0)
}
