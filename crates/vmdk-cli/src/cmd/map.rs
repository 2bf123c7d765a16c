//! `vmdk map`: where each stretch of the virtual disk lives, printed exactly like
//! `qemu-img map` (same merging, same JSON text, same human columns).

use std::io::{Seek, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::raw::RawFile;
use vmdk::report::map::{mergeable, MapReporter, QEntry};
use vmdk::report::names::display;
use vmdk::report::text::Printable;
use vmdk::walk::MapWalker;
use vmdk::Disk;
use vmdk::Image;

use crate::opts::{image_format, Fmt, OpenArgs};
use crate::output::OutputFormat;
use vmdk::qemu_syntax::parse_size;
use vmdk::format::foreign::ForeignFormat;
use vmdk::qcow2::Qcow2Image;

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
    /// Image format (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
}

/// `%#-16x`: C prints 0 without the 0x prefix.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// Merges entries and prints them the way qemu-img's `img_map` and `dump_map_entry` do.
struct Printer<W: Write> {
    out: W,
    json: bool,
    curr: QEntry,
}

impl<W: Write> Printer<W> {
    fn new(mut out: W, json: bool, start: u64) -> Result<Self> {
        if json {
            write!(out, "[")?;
        } else {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            )?;
        }
        Ok(Printer {
            out,
            json,
            curr: QEntry::empty(start),
        })
    }

    fn push(&mut self, mut next: QEntry) -> Result<()> {
        if mergeable(&self.curr, &next) {
            self.curr.length += next.length;
            return Ok(());
        }
        if self.curr.length > 0 {
            self.dump(Some(&mut next))?;
        }
        self.curr = next;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.dump(None)?;
        if self.json {
            writeln!(self.out, "]")?;
        }
        self.out.flush()?;
        Ok(())
    }

    fn dump(&mut self, next: Option<&mut QEntry>) -> Result<()> {
        let e = &self.curr;
        if self.json {
            write!(
                self.out,
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
                 \"data\": {}, \"compressed\": {}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            )?;
            if let Some(o) = e.offset {
                write!(self.out, ", \"offset\": {o}")?;
            }
            write!(self.out, "}}")?;
            if next.is_some() {
                writeln!(self.out, ",")?;
            }
        } else {
            if e.data && e.offset.is_none() {
                self.out.flush()?;
                bail!("File contains external, encrypted or compressed clusters.");
            }
            if e.data && !e.zero {
                writeln!(
                    self.out,
                    "{:<16}{:<16}{:<16}{}",
                    hex(e.start),
                    hex(e.length),
                    hex(e.offset.unwrap_or(0)),
                    Printable(e.file.as_deref().unwrap_or(""))
                )?;
            }
            // qemu: "This format ignores the distinction between 0, ZERO and ZERO|DATA."
            if let Some(n) = next {
                if !n.data || n.zero {
                    n.data = false;
                    n.zero = true;
                }
            }
        }
        Ok(())
    }
}

pub fn run(a: Args) -> Result<u8> {
    let name = display(&a.image);
    let start = a.start_offset.unwrap_or(0);
    // Open before printing anything: a failure prints no output at all.
    let (source, conv): (Box<dyn Disk>, MapReporter) =
        match image_format(&a.image, a.format.as_deref())? {
            Fmt::Vmdk => {
                let img = Image::open_with(&a.image, &a.open.options())?;
                let conv = MapReporter::for_image(&img, &name);
                (Box::new(img), conv)
            }
            Fmt::Foreign(ForeignFormat::Qcow2) => {
                let img = Qcow2Image::open_with(&a.image, &a.open.options())?;
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
                let raw = RawFile::open_with(&a.image, &a.open.options())?;
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
        print_map(&mut held, true, start, end, &*source, conv)?;
        held.rewind()?;
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut held, &mut out)?;
        out.flush()?;
    } else {
        let stdout = std::io::BufWriter::new(std::io::stdout().lock());
        print_map(stdout, false, start, end, &*source, conv)?;
    }
    Ok(0)
}

/// Bytes of JSON map output held in memory before they move to a temporary file.
const SPOOL_MEMORY_LIMIT: usize = 8 << 20;

/// Map `[start, end)` of `source` and print it to `out`.
fn print_map(
    out: impl Write,
    json: bool,
    start: u64,
    end: u64,
    source: &dyn Disk,
    mut conv: MapReporter,
) -> Result<()> {
    let mut printer = Printer::new(out, json, start)?;
    // Batches of entries, not fixed windows: a huge zero or unallocated stretch is one step
    // (an 8 EiB disk of zeros would be 2^33 one-GiB windows).
    let mut walker = MapWalker::new(source, start, end);
    let mut entries = Vec::new();
    while let Some(e) = walker.next()? {
        conv.convert(&e, &mut entries)?;
        for q in entries.drain(..) {
            printer.push(q)?;
        }
    }
    printer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn e(start: u64, length: u64, data: bool, offset: Option<u64>) -> QEntry {
        QEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: !data,
            data,
            compressed: false,
            offset,
            file: offset.map(|_| Arc::from("a.vmdk")),
        }
    }

    #[test]
    fn merges_and_prints_like_qemu() {
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, true, 0).unwrap();
        p.push(e(0, 512, true, Some(65536))).unwrap();
        p.push(e(512, 512, true, Some(66048))).unwrap();
        p.push(e(1024, 512, true, Some(0))).unwrap();
        p.push(e(1536, 512, false, None)).unwrap();
        p.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{ \"start\": 0, \"length\": 1024, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 65536},\n\
             { \"start\": 1024, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 0},\n\
             { \"start\": 1536, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false, \"compressed\": false}]\n"
        );
        let mut out = Vec::new();
        let mut p = Printer::new(&mut out, false, 0).unwrap();
        p.push(e(0, 65536, true, Some(0))).unwrap();
        p.push(e(65536, 512, false, None)).unwrap();
        p.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Offset          Length          Mapped to       File\n\
             0               0x10000         0               a.vmdk\n"
        );
        // An empty range still prints one zero-length entry, as qemu-img does.
        let mut out = Vec::new();
        Printer::new(&mut out, true, 4096)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{ \"start\": 4096, \"length\": 0, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false, \"compressed\": false}]\n"
        );
    }
}
