//! `vmdk map`: where each stretch of the virtual disk lives, printed exactly like
//! `qemu-img map` (same merging, same JSON text, same human columns).

use std::io::{Seek, Write};
use std::path::PathBuf;

use anyhow::Result;
use vmdk::image::raw::RawFile;
use vmdk::report::map::{print_map, MapReporter};
use vmdk::report::names::display;
use vmdk::Disk;
use vmdk::Image;

use crate::opts::{image_format, Fmt, SourceArgs};
use crate::output::OutputFormat;
use vmdk::format::foreign::ForeignFormat;
use vmdk::qcow2::Qcow2Image;
use vmdk::qemu_syntax::parse_size;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// First byte to map (suffixes k, M, G... allowed).
    #[arg(long, value_name = "OFFSET", value_parser = parse_size)]
    start_offset: Option<u64>,
    /// How many bytes to map at most.
    #[arg(long, value_name = "LEN", value_parser = parse_size)]
    max_length: Option<u64>,
    #[command(flatten)]
    source: SourceArgs,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    let name = display(&a.image);
    let start = a.start_offset.unwrap_or(0);
    // Open before printing anything: a failure prints no output at all.
    let (source, mut conv): (Box<dyn Disk>, MapReporter) =
        match image_format(&a.image, a.source.format.as_deref())? {
            Fmt::Vmdk => {
                let img = Image::open_with(&a.image, &a.source.open.options())?;
                let conv = MapReporter::for_image(&img, &name);
                (Box::new(img), conv)
            }
            Fmt::Foreign(ForeignFormat::Qcow2) => {
                let img = Qcow2Image::open_with(&a.image, &a.source.open.options())?;
                let conv = MapReporter::for_qcow2(&img, &name);
                (Box::new(img), conv)
            }
            Fmt::Foreign(f) => {
                return Err(vmdk::image::foreign_format_error(
                    &a.image,
                    f,
                    vmdk::image::SOURCE_FORMATS,
                )
                .into())
            }
            Fmt::Raw => {
                let raw = RawFile::open_with(&a.image, &a.source.open.options())?;
                (Box::new(raw), MapReporter::for_raw(&name))
            }
        };
    let size = source.size();
    let end = a
        .max_length
        .map_or(size, |m| start.saturating_add(m).min(size));
    if a.output == OutputFormat::Json {
        // JSON is held back until complete: a failure part way must not leave a fragment
        // that parses as nothing (qemu-img prints what it has).
        // In memory while small, then in an unlinked temporary file, so that holding back a
        // huge output costs no memory.
        let mut held = tempfile::SpooledTempFile::new(SPOOL_MEMORY_LIMIT);
        print_map(&mut held, true, &*source, &mut conv, start, end)?;
        held.rewind()?;
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut held, &mut out)?;
        out.flush()?;
    } else {
        let stdout = std::io::BufWriter::new(std::io::stdout().lock());
        print_map(stdout, false, &*source, &mut conv, start, end)?;
    }
    Ok(0)
}

/// Bytes of JSON map output held in memory before they move to a temporary file.
const SPOOL_MEMORY_LIMIT: usize = 8 << 20;
