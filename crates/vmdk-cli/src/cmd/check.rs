//! `vmdk check`: the library's consistency check, reported like `qemu-img check`.
//! Exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaked clusters only,
//! 63 the image is not one that can be checked (raw). With `-r` the image is repaired
//! first and the status is that of the check after the repair, as qemu-img's is.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::opts::{vmdk_or_raw, Fmt, OpenArgs};
use crate::output::OutputFormat;
use vmdk::report::names::display;
use vmdk::report::text::Printable;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
    output: OutputFormat,
    /// Image format (vmdk or raw: a raw image cannot be checked, exit status 63 as with
    /// qemu-img); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Print nothing but errors.
    #[arg(short = 'q')]
    quiet: bool,
    /// Repair what the check finds: `leaks` (give leaked space back) or `all` (also fix
    /// grain tables and directory entries pointing outside the file, and redundant tables
    /// that disagree with the primary ones).
    #[arg(short = 'r', value_enum, value_name = "leaks|all")]
    repair: Option<Repair>,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
}

/// What `-r` repairs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Repair {
    Leaks,
    All,
}

pub fn run(a: Args) -> Result<u8> {
    if a.repair.is_some() {
        crate::opts::refuse_force_share(&a.open, &a.image)?;
    }
    if vmdk_or_raw(&a.image, a.format.as_deref())? == Fmt::Raw {
        eprintln!("vmdk: This image format does not support checks");
        return Ok(63);
    }
    let r = match a.repair {
        Some(mode) => {
            let mode = match mode {
                Repair::Leaks => vmdk::ops::repair::RepairMode::Leaks,
                Repair::All => vmdk::ops::repair::RepairMode::All,
            };
            let o = vmdk::ops::repair::repair(&a.image, mode, &a.open.options())?;
            for n in &o.notes {
                eprintln!("Warning: {}", Printable(n));
            }
            let r = o.report;
            if (r.leaks_fixed > 0 || r.corruptions_fixed > 0)
                && matches!(a.output, OutputFormat::Human)
                && !a.quiet
            {
                println!(
                    "The following inconsistencies were found and repaired:\n\n    \
                     {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                    r.leaks_fixed, r.corruptions_fixed
                );
            }
            r
        }
        None => {
            // Only the image itself is checked, so a missing backing file does not stop us.
            let img = vmdk::Image::open_with(&a.image, &a.open.options().open_backing(false))?;
            vmdk::check(&img)?
        }
    };

    let mut err = std::io::stderr().lock();
    for m in r.corruptions.iter().chain(&r.errors) {
        writeln!(err, "ERROR: {}", Printable(m))?;
    }
    if r.more_corruptions > 0 {
        writeln!(
            err,
            "ERROR: ... and {} more corruptions not listed",
            r.more_corruptions
        )?;
    }
    for m in &r.leaks {
        writeln!(err, "Leaked: {}", Printable(m))?;
    }
    for m in &r.warnings {
        writeln!(err, "Warning: {}", Printable(m))?;
    }
    drop(err);

    let corruptions = r.corruption_count();
    let mut out = std::io::stdout().lock();
    match a.output {
        OutputFormat::Json => {
            vmdk::report::check::check_json(&r, &display(&a.image)).print_json(&mut out)?;
        }
        OutputFormat::Human if !a.quiet => {
            if corruptions == 0 && r.leaked_clusters == 0 && r.check_errors == 0 {
                writeln!(out, "No errors were found on the image.")?;
            } else {
                if corruptions > 0 {
                    writeln!(
                        out,
                        "\n{corruptions} errors were found on the image.\n\
                         Data may be corrupted, or further writes to the image may corrupt it."
                    )?;
                }
                if r.leaked_clusters > 0 {
                    writeln!(
                        out,
                        "\n{} leaked clusters were found on the image.\n\
                         This means waste of disk space, but no harm to data.",
                        r.leaked_clusters
                    )?;
                }
                if r.check_errors > 0 {
                    writeln!(
                        out,
                        "\n{} internal errors have occurred during the check.",
                        r.check_errors
                    )?;
                }
            }
            if r.total_clusters != 0 && r.allocated_clusters != 0 {
                let alloc = r.allocated_clusters as f64;
                writeln!(
                    out,
                    "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters",
                    r.allocated_clusters,
                    r.total_clusters,
                    alloc * 100.0 / r.total_clusters as f64,
                    r.fragmented_clusters as f64 * 100.0 / alloc,
                    r.compressed_clusters as f64 * 100.0 / alloc
                )?;
            }
            if let Some(end) = r.image_end_offset.filter(|v| *v != 0) {
                writeln!(out, "Image end offset: {end}")?;
            }
        }
        OutputFormat::Human => {}
    }
    out.flush()?;
    if r.check_errors > 0 {
        eprintln!("vmdk: Check failed");
    }
    Ok(r.exit_code() as u8)
}
