//! `vmdk compare`: are two images' contents the same? Messages follow `qemu-img compare`;
//! exit statuses are 0 identical, 1 different, 2 any error (qemu-img splits errors further
//! into 2 open, 3 block status, 4 read; scripts test for "neither 0 nor 1", which holds).

use std::path::PathBuf;

use anyhow::Result;
use vmdk::CompareResult;

use crate::opts::OpenArgs;
use crate::progress::Progress;
use crate::render_error;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Format of the first image (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format_a: Option<String>,
    /// Format of the second image (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'F', value_name = "FMT")]
    format_b: Option<String>,
    /// Show progress on stderr (a bar on a terminal, else qemu-img style percentages).
    #[arg(short = 'p')]
    progress: bool,
    /// Strict mode: sizes and allocation must match too.
    #[arg(short = 's', long = "strict")]
    strict: bool,
    /// Print nothing; only the exit status tells.
    #[arg(short = 'q')]
    quiet: bool,
    /// Worker threads (0 = one per CPU).
    #[arg(short = 'm', value_name = "THREADS", default_value_t = 0)]
    threads: usize,
    #[command(flatten)]
    open: OpenArgs,
    /// First image.
    a: PathBuf,
    /// Second image.
    b: PathBuf,
}

fn fail(code: u8, e: impl Into<anyhow::Error>) -> Result<u8> {
    let e = e.into();
    eprintln!("vmdk: {}", render_error(&e));
    if let Some(h) = crate::hint(&e, true) {
        eprintln!("{h}");
    }
    Ok(code)
}

pub fn run(a: Args) -> Result<u8> {
    let say = |s: &str| {
        if !a.quiet {
            println!("{s}");
        }
    };
    let opts = a.open.options();
    let sa = match crate::opts::open_disk(&a.a, a.format_a.as_deref(), &opts) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let sb = match crate::opts::open_disk(&a.b, a.format_b.as_deref(), &opts) {
        Ok(s) => s,
        Err(e) => return fail(2, e),
    };
    let (size_a, size_b) = (sa.size(), sb.size());
    if a.strict && size_a != size_b {
        say("Strict mode: Image size mismatch!");
        return Ok(1);
    }
    let pb = Progress::new(a.progress && !a.quiet);
    let progress = |done: u64, total: u64| pb.update(done, total);
    let r = vmdk::ops::convert::compare_with(&*sa, &*sb, a.threads, &progress);
    // The comparison is complete even when it stopped at a difference: show 100%, as
    // qemu-img does, before the verdict.
    pb.end(r.is_ok());
    // qemu-img's exit status tells a failed allocation test (3) from a failed read (4).
    let r = match r {
        Ok(r) => r,
        Err(e) => return fail(e.qemu_exit_code(), e.error),
    };
    let common = size_a.min(size_b);
    let content_diff = match r {
        CompareResult::DiffersAt(off) => Some(off),
        _ => None,
    };
    if a.strict {
        let limit = content_diff.unwrap_or(common).min(common);
        match vmdk::ops::convert::first_allocation_difference(&*sa, &*sb, limit) {
            Ok(Some(off)) => {
                say(&format!("Strict mode: Offset {off} block status mismatch!"));
                return Ok(1);
            }
            Ok(None) => {}
            Err(e) => return fail(e.qemu_exit_code(), e.error),
        }
    }
    match r {
        CompareResult::Identical => {
            say("Images are identical.");
            Ok(0)
        }
        CompareResult::SizeDiffers { .. } => {
            say("Warning: Image size mismatch!");
            say("Images are identical.");
            Ok(0)
        }
        CompareResult::DiffersAt(off) => {
            if off >= common && size_a != size_b {
                say("Warning: Image size mismatch!");
            }
            // qemu-img compares whole sectors and names the one holding the difference.
            say(&format!("Content mismatch at offset {}!", off / 512 * 512));
            Ok(1)
        }
    }
}
