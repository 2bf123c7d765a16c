//! `vmdk info`: qemu-img info's fields (same JSON names), plus what qemu leaves out: extent
//! access and type, adapter type, hardware version, geometry, UUID and unknown keys.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use vmdk::format::foreign::ForeignFormat;
use vmdk::qcow2::Qcow2Image;
use vmdk::report::info::{foreign_info, image_info, raw_info};
use vmdk::report::names::{chain, display};
use vmdk::report::qcow2_info::qcow2_info;
use vmdk::report::text::escape;
use vmdk::Image;

use crate::opts::{image_format, Fmt, SourceArgs};
use crate::output::{Node, OutputFormat};
use vmdk::qemu_syntax::size_to_str;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Show the whole backing chain (a JSON array; human output separates images by a
    /// blank line).
    #[arg(long)]
    backing_chain: bool,
    #[command(flatten)]
    source: SourceArgs,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    let name = display(&a.image);
    let output = a.output;
    let backing_chain = a.backing_chain;
    let infos = chain_infos(a, &name)?;
    print_infos(&infos, output, backing_chain)
}

/// The info of `a.image` (shown as `name`), and with `--backing-chain` of every layer below.
fn chain_infos(a: Args, name: &str) -> Result<Vec<Node>> {
    let name = name.to_string();
    Ok(match image_format(&a.image, a.source.format.as_deref())? {
        Fmt::Raw => vec![raw_info(&a.image, &name, &a.source.open.options())?],
        Fmt::Foreign(ForeignFormat::Qcow2) => {
            let opts = a.source.open.options().open_backing(a.backing_chain);
            let img = Qcow2Image::open_with(&a.image, &opts)?;
            let mut infos = vec![qcow2_info(&img, &name)];
            if a.backing_chain {
                if let (Some(b), Some(bname)) = (img.backing_path(), img.backing_name()) {
                    let bname = vmdk::report::names::path_combine(&name, bname);
                    let sub = Args {
                        image: b.to_path_buf(),
                        source: SourceArgs {
                            format: img.extensions().backing_format.clone(),
                            ..a.source.clone()
                        },
                        ..a
                    };
                    infos.extend(chain_infos(sub, &bname)?);
                }
            }
            infos
        }
        Fmt::Foreign(f) => vec![foreign_info(&a.image, &name, f, &a.source.open.options())?],
        Fmt::Vmdk => {
            let opts = a.source.open.options().open_backing(a.backing_chain);
            let img = Image::open_with(&a.image, &opts)?;
            let layers = chain(&img, &name);
            let n = if a.backing_chain { layers.len() } else { 1 };
            layers[..n].iter().map(|(i, n)| image_info(i, n)).collect()
        }
    })
}

fn print_infos(infos: &[Node], output: OutputFormat, backing_chain: bool) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Json if backing_chain => Node::List(infos.to_vec()).print_json(&mut out)?,
        OutputFormat::Json => infos[0].print_json(&mut out)?,
        OutputFormat::Human => {
            for (i, info) in infos.iter().enumerate() {
                if i > 0 {
                    writeln!(out)?;
                }
                print_human(info, &mut out)?;
            }
        }
    }
    out.flush()?;
    Ok(0)
}

fn print_human(info: &Node, out: &mut impl Write) -> std::io::Result<()> {
    // Strings are names from the image's files (backing and extent file names): escaped.
    let s = |k: &str| match info.get(k) {
        Some(Node::Str(s)) => Some(escape(s).into_owned()),
        _ => None,
    };
    let int = |k: &str| match info.get(k) {
        Some(Node::Int(n)) => Some(*n),
        _ => None,
    };
    writeln!(out, "image: {}", s("filename").unwrap_or_default())?;
    writeln!(out, "file format: {}", s("format").unwrap_or_default())?;
    // Only an image of another format whose header we do not parse lacks a size.
    if let Some(vs) = int("virtual-size") {
        writeln!(out, "virtual size: {} ({vs} bytes)", size_to_str(vs))?;
    }
    match int("actual-size") {
        Some(a) => writeln!(out, "disk size: {}", size_to_str(a))?,
        // A remote file's allocation is unknown (as qemu says for its curl driver).
        None => writeln!(out, "disk size: unavailable")?,
    }
    if let Some(c) = int("cluster-size") {
        writeln!(out, "cluster_size: {c}")?;
    }
    if let Some(b) = s("backing-filename") {
        write!(out, "backing file: {b}")?;
        match s("full-backing-filename") {
            None => write!(out, " (cannot determine actual path)")?,
            Some(f) if f != b => write!(out, " (actual path: {f})")?,
            _ => {}
        }
        writeln!(out)?;
        if let Some(f) = s("backing-filename-format") {
            writeln!(out, "backing file format: {f}")?;
        }
    }
    if let Some(data) = info.get("format-specific").and_then(|f| f.get("data")) {
        writeln!(out, "Format specific information:")?;
        data.print_human(1, out)?;
    }
    if let Some(Node::List(children)) = info.get("children") {
        for c in children {
            let (Some(Node::Str(cname)), Some(ci)) = (c.get("name"), c.get("info")) else {
                continue;
            };
            let cs = |k: &str| match ci.get(k) {
                Some(Node::Str(s)) => escape(s).into_owned(),
                _ => String::new(),
            };
            let ci_int = |k: &str| match ci.get(k) {
                Some(Node::Int(n)) => *n,
                _ => 0,
            };
            writeln!(out, "Child node '/{}':", escape(cname))?;
            writeln!(out, "    filename: {}", cs("filename"))?;
            writeln!(out, "    protocol type: {}", cs("format"))?;
            let len = ci_int("virtual-size");
            writeln!(out, "    file length: {} ({len} bytes)", size_to_str(len))?;
            match ci.get("actual-size") {
                Some(Node::Int(a)) => writeln!(out, "    disk size: {}", size_to_str(*a))?,
                _ => writeln!(out, "    disk size: unavailable")?,
            }
        }
    }
    Ok(())
}
