//! `vmdk inspect`: is this uploaded file a safe, self-contained VMDK? Opens only FILE
//! (never a name written inside it) and reads a bounded amount of it; the rules are the
//! library's (`vmdk::inspect`). Exit status 0 safe, 1 unsafe, 2 could not read.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use vmdk::ops::inspect::{InspectPolicy, InspectReport, Verdict};
use vmdk::report::text::Printable;

use vmdk::qemu_syntax::{parse_size, size_to_str};

/// Arguments of `vmdk inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format: human or json.
    #[arg(long, value_name = "FMT", default_value = "human")]
    pub output: String,
    /// Rules: default (OpenStack's: monolithicSparse and streamOptimized, self-contained,
    /// consistent) or strict (also format_inspector's descriptor line rules, an embedded
    /// descriptor required, header flags matching the createType, a clean shutdown).
    #[arg(long, value_name = "POLICY", default_value = "default")]
    pub policy: String,
    /// Refuse a virtual size over SIZE (qemu-style: 2T, 500G, 1048576).
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// The file to inspect.
    pub file: PathBuf,
}

/// Inspect and print; the exit status is the verdict.
pub fn run(a: Args) -> Result<u8> {
    let mut policy = match a.policy.as_str() {
        "default" => InspectPolicy::default(),
        "strict" => InspectPolicy::strict(),
        other => bail!("unknown policy '{other}' (expected default or strict)"),
    };
    if !matches!(a.output.as_str(), "human" | "json") {
        bail!(
            "unknown output format '{}' (expected human or json)",
            a.output
        );
    }
    if let Some(s) = &a.max_size {
        policy.max_virtual_size = Some(parse_size(s)?);
    }
    let rep = match vmdk::ops::inspect::inspect_in(&crate::namespace(), &a.file, &policy) {
        Ok(r) => r,
        Err(e) => {
            // Not a verdict: the file could not be read at all.
            eprintln!("vmdk: {e:#}");
            return Ok(2);
        }
    };
    let mut out = std::io::stdout().lock();
    if a.output == "json" {
        vmdk::report::inspect::inspect_json(&rep).print_json(&mut out)?;
    } else {
        print_human(&rep, &mut out)?;
    }
    Ok(match rep.verdict() {
        Verdict::Safe => 0,
        Verdict::Unsafe => 1,
    })
}

fn print_human(rep: &InspectReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "file: {}", Printable(&rep.filename))?;
    match &rep.subformat {
        Some(s) => writeln!(out, "format: {} ({})", rep.format, Printable(s))?,
        None => writeln!(out, "format: {}", rep.format)?,
    }
    if rep.qemu_format != rep.format {
        writeln!(out, "qemu-img probes it as: {}", rep.qemu_format)?;
    }
    if let Some(v) = rep.virtual_size {
        writeln!(out, "virtual size: {} ({v} bytes)", size_to_str(v))?;
    }
    writeln!(
        out,
        "file size: {} ({} bytes; {} read)",
        size_to_str(rep.file_size),
        rep.file_size,
        rep.bytes_read
    )?;
    if rep.grain_tables > 0 {
        writeln!(
            out,
            "grain tables: {} ({} checked, {} allocated grains in them)",
            rep.grain_tables, rep.grain_tables_checked, rep.grains_allocated
        )?;
    }
    for m in &rep.members {
        let sub = m
            .subformat
            .as_deref()
            .map_or(String::new(), |s| format!(" ({s})"));
        writeln!(
            out,
            "member: {}: {}{}: {}",
            Printable(&m.filename),
            m.format,
            Printable(&sub),
            m.verdict().as_str()
        )?;
    }
    writeln!(out, "verdict: {}", rep.verdict().as_str())?;
    for r in &rep.reasons {
        writeln!(out, "  {}: {}", r.code, Printable(&r.message))?;
    }
    Ok(())
}
