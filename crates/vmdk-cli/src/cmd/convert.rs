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
    /// The target exists already: write into it instead of creating it.
    #[arg(short = 'n')]
    no_create: bool,
    /// With -n: the target reads as zeros already, so zeros are not written.
    #[arg(long = "target-is-zero")]
    target_is_zero: bool,
    /// Zero runs at least this long become holes (default 4k); 0 allocates everything.
    #[arg(short = 'S', value_name = "SIZE")]
    sparse_size: Option<String>,
    /// Make the output an overlay of this backing file, holding only what the source's top
    /// layer holds (vmdk output).
    #[arg(short = 'B', value_name = "BACKING")]
    backing: Option<String>,
    /// Backing file format (only vmdk).
    #[arg(short = 'F', value_name = "FMT")]
    backing_format: Option<String>,
    /// Out-of-order writes (accepted: the output is always written in order, from parallel
    /// workers).
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Target cache mode: none, directsync and writethrough make the output durable
    /// before the command returns; writeback and unsafe (default) do not.
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    /// Source cache mode (accepted for compatibility).
    #[arg(short = 'T', value_name = "CACHE")]
    src_cache: Option<String>,
    /// Turn read errors into zeros (with a warning each and exit status 1) instead of
    /// stopping.
    #[arg(long)]
    salvage: bool,
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
    let min_sparse = match &a.sparse_size {
        None => vmdk::convert::RAW_ZERO_BLOCK,
        Some(v) => crate::size::parse_size(v)
            .map_err(|_| anyhow::anyhow!("Invalid buffer size for sparse output specified"))?,
    };
    if a.target_is_zero && !a.no_create {
        bail!("--target-is-zero requires use of -n flag");
    }
    let sync = match a.cache.as_deref() {
        None | Some("unsafe") | Some("writeback") => false,
        Some("none") | Some("directsync") | Some("writethrough") => true,
        Some(other) => bail!("Invalid cache option: {other}"),
    };
    let _ = (a.out_of_order, &a.src_cache);
    let mut copts = ConvertOptions {
        threads: a.threads,
        compress: a.compress,
        min_sparse,
        target_exists: a.no_create,
        target_is_zero: a.target_is_zero,
        salvage: a.salvage,
        ..Default::default()
    };
    let create = match a.out_format.as_str() {
        "vmdk" => {
            let mut v = vmdk_options(&opts, false)?;
            if let Some(f) = &a.backing_format {
                if f != "vmdk" {
                    bail!("backing format must be vmdk (a VMDK's backing file is a VMDK)");
                }
            }
            if let Some(b) = &a.backing {
                v.create.backing_file = Some(b.clone());
                v.create.allow_unsafe_paths = a.open.allow_unsafe_paths;
                v.create.allow_paths = crate::opts::allowed_dirs(&a.open.allow_path);
            }
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
            if a.backing.is_some() {
                bail!("Backing files are not supported by raw output");
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
    pb.end(r.is_ok());
    r?;
    drop(src);
    // A completed upload is durable already (and is no host file to fsync).
    if sync && vmdk_object::name::scheme_of(&a.dst).is_none() {
        make_durable(&a.dst, create.is_some())?;
    }
    let salvaged = copts.salvaged.load(std::sync::atomic::Ordering::Relaxed);
    if salvaged > 0 {
        eprintln!("vmdk: {salvaged} stretch(es) could not be read and were written as zeros");
        return Ok(1);
    }
    Ok(0)
}

/// Flush the output to stable storage (cache modes that promise durability).
fn make_durable(dst: &std::path::Path, vmdk: bool) -> Result<()> {
    let mut files = vec![dst.to_path_buf()];
    if vmdk {
        let img = vmdk::OpenOptions::new().open_backing(false).open(dst)?;
        files.extend(
            img.extents()
                .iter()
                .filter_map(|e| e.file())
                .map(|f| f.path().to_path_buf()),
        );
    }
    files.dedup();
    for f in files {
        // fsync through a read-only descriptor flushes the file's dirty pages all the same.
        std::fs::File::open(&f)?.sync_all()?;
    }
    Ok(())
}
