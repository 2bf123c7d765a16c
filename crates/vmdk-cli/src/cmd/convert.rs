//! `vmdk convert`: copy an image (VMDK, qcow2 or raw) to a new raw, VMDK or qcow2 image.

use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::qcow2::Qcow2CreateOptions;
use vmdk::{ConvertOptions, ImageFormat};

use crate::opts::{
    open_disk, output_format, split_options, vmdk_options, vmdk_options_help, ProgressArgs,
    SourceArgs,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Output format: raw, vmdk or qcow2.
    #[arg(short = 'O', value_name = "FMT", default_value = "raw")]
    out_format: String,
    /// Output options, comma separated key=value (`-o help` lists them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Worker threads (0 = one per CPU).
    #[arg(short = 'm', value_name = "THREADS", default_value_t = 0)]
    threads: usize,
    /// Compress the output: qcow2 clusters (streamOptimized VMDK output is always compressed;
    /// the other sparse VMDK subformats take -c and stay uncompressed, as with qemu-img; flat
    /// VMDK and raw output refuse it).
    #[arg(short = 'c')]
    compress: bool,
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
    /// layer holds (vmdk output), or, for qcow2 output, only what differs from it.
    #[arg(short = 'B', value_name = "BACKING")]
    backing: Option<String>,
    /// Backing file format (vmdk output: only vmdk; qcow2 output: vmdk, qcow2 or raw,
    /// probed when absent).
    #[arg(short = 'F', value_name = "FMT")]
    backing_format: Option<String>,
    /// Out-of-order writes (accepted: the output is always written in order, from parallel
    /// workers).
    #[arg(short = 'W')]
    out_of_order: bool,
    /// Target cache mode: none, directsync and writethrough make the output durable
    /// before the command returns (VMDK output durably written as it goes, so a power loss
    /// part-way leaves an image that checks clean); writeback and unsafe (default) do not.
    #[arg(short = 't', value_name = "CACHE")]
    cache: Option<String>,
    /// Source cache mode (accepted for compatibility).
    #[arg(short = 'T', value_name = "CACHE")]
    src_cache: Option<String>,
    /// Turn read errors into zeros (with a warning each and exit status 1) instead of
    /// stopping.
    #[arg(long)]
    salvage: bool,
    /// Source image (not needed with `-o help`).
    src: Option<PathBuf>,
    /// Destination file (not needed with `-o help`).
    dst: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<u8> {
    let opts = split_options(&a.options)?;
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        if a.out_format == "vmdk" {
            print!("{}", vmdk_options_help(false));
        } else if a.out_format == "qcow2" {
            print!("{}", vmdk::qcow2::QCOW2_OPTIONS_HELP);
        } else {
            println!("Creation options for '{}':", a.out_format);
        }
        return Ok(0);
    }
    let (Some(src_path), Some(dst)) = (a.src.clone(), a.dst.clone()) else {
        bail!("Must specify image file name");
    };
    let min_sparse = match &a.sparse_size {
        None => vmdk::ops::convert::RAW_ZERO_BLOCK,
        Some(v) => vmdk::qemu_syntax::parse_size(v)
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
        target_namespace: Some(crate::namespace()),
        durable: sync,
        ..Default::default()
    };
    let target = match output_format(
        &a.out_format,
        &[ImageFormat::Raw, ImageFormat::Vmdk, ImageFormat::Qcow2],
    )? {
        ImageFormat::Qcow2 => Target::Qcow2(qcow2_options(&opts, &a)?),
        ImageFormat::Vmdk => {
            let mut v = vmdk_options(&opts, false)?;
            if let Some(f) = &a.backing_format {
                if f != "vmdk" {
                    bail!("backing format must be vmdk (a VMDK's backing file is a VMDK)");
                }
            }
            if let Some(b) = &a.backing {
                v.create.backing_file = Some(b.clone());
                v.create.allow_unsafe_paths = a.source.open.allow_unsafe_paths;
                v.create.allow_paths = crate::opts::allowed_dirs(&a.source.open.allow_path);
            }
            if let Some(l) = v.compression_level {
                copts.compression_level = l;
            }
            Target::Vmdk(v.create)
        }
        ImageFormat::Raw => {
            if let Some((k, _)) = opts.first() {
                bail!("Invalid parameter '{k}'");
            }
            if a.compress {
                bail!("Compression not supported for this file format");
            }
            if a.backing.is_some() {
                bail!("Backing files are not supported by raw output");
            }
            Target::Raw
        }
    };
    let src = open_disk(
        &src_path,
        a.source.format.as_deref(),
        &a.source.open.options(),
    )?;
    a.progress.run(|progress| match &target {
        Target::Vmdk(c) => vmdk::ops::convert::convert_to_vmdk(&*src, &dst, c, &copts, progress),
        Target::Qcow2(c) => vmdk::ops::convert::convert_to_qcow2(&*src, &dst, c, &copts, progress),
        Target::Raw => vmdk::ops::convert::convert_to_raw(&*src, &dst, &copts, progress),
    })?;
    let salvaged = copts.salvaged.load(std::sync::atomic::Ordering::Relaxed);
    if salvaged > 0 {
        eprintln!("vmdk: {salvaged} stretch(es) could not be read and were written as zeros");
        return Ok(1);
    }
    Ok(0)
}

/// What convert writes.
enum Target {
    Raw,
    Vmdk(vmdk::ops::create::CreateOptions),
    Qcow2(Qcow2CreateOptions),
}

/// `-o` options (and `-B`/`-F`) for a new qcow2 image, with qemu-img's names and values.
fn qcow2_options(opts: &[(String, String)], a: &Args) -> Result<Qcow2CreateOptions> {
    let mut q = Qcow2CreateOptions {
        backing_file: a.backing.clone(),
        backing_format: a.backing_format.clone(),
        allow_unsafe_paths: a.source.open.allow_unsafe_paths,
        allow_paths: crate::opts::allowed_dirs(&a.source.open.allow_path),
        ..Default::default()
    };
    q.apply_options(opts)?;
    Ok(q)
}
