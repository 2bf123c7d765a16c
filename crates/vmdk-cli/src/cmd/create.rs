//! `vmdk create`: a new, empty image, with qemu-img create's options and its
//! "Formatting ..." line.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::opts::{split_options, vmdk_options, vmdk_options_help};
use vmdk::qemu_syntax::parse_size;
use vmdk::report::names::display;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT", default_value = "vmdk")]
    format: String,
    /// Options, comma separated key=value (`-o help` lists them).
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Backing file, written relative to the new image as given.
    #[arg(short = 'b', value_name = "BACKING")]
    backing: Option<String>,
    /// Backing file format (only vmdk).
    #[arg(short = 'F', value_name = "FMT")]
    backing_format: Option<String>,
    /// Do not open the backing file to find the size (a SIZE is then required).
    #[arg(short = 'u')]
    unsafe_backing: bool,
    /// Do not print the "Formatting" line.
    #[arg(short = 'q')]
    quiet: bool,
    /// Trust the backing file's own extent and backing files inside DIR (repeatable; see
    /// `vmdk info --help`).
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_path: Vec<PathBuf>,
    /// Follow the backing file's own extent and backing file names wherever they lead.
    #[arg(long)]
    allow_unsafe_paths: bool,
    /// The new image (not needed with `-o help`).
    file: Option<PathBuf>,
    /// Virtual size in bytes, with optional k, M, G, T, P or E suffix (rounded up to 512).
    size: Option<String>,
}

pub fn run(a: Args) -> Result<u8> {
    if a.format != "vmdk" {
        bail!(
            "Unknown file format '{}' (only vmdk can be created)",
            a.format
        );
    }
    let opts = split_options(&a.options)?;
    if opts.iter().any(|(k, _)| k == "help" || k == "?") {
        print!("{}", vmdk_options_help(true));
        return Ok(0);
    }
    let Some(file) = a.file.clone() else {
        bail!("Expecting image file name");
    };
    let mut v = vmdk_options(&opts, true)?;
    if let Some(b) = &a.backing {
        v.create.backing_file = Some(b.clone());
    }
    if let Some(f) = &a.backing_format {
        v.backing_fmt = Some(f.clone());
    }
    v.create.allow_unsafe_paths = a.allow_unsafe_paths;
    v.create.allow_paths = crate::opts::allowed_dirs(&a.allow_path);
    let name = display(&file);
    vmdk::ops::create_options::check_backing_format(
        &file,
        &v.create,
        v.backing_fmt.as_deref(),
        a.unsafe_backing,
    )?;
    let size = match (&a.size, v.size) {
        (Some(s), _) => {
            parse_size(s).map_err(|_| anyhow::anyhow!("Invalid image size specified: '{s}'."))?
        }
        (None, Some(s)) => s,
        (None, None) => {
            vmdk::ops::create_options::size_from_backing(&file, &v.create, a.unsafe_backing)?
        }
    };
    if !a.quiet {
        let mut line = format!("Formatting '{name}', fmt=vmdk size={size}");
        let mut given = v.given.clone();
        if a.backing.is_some() && !given.iter().any(|(k, _)| k == "backing_file") {
            given.insert(
                0,
                ("backing_file".into(), a.backing.clone().unwrap_or_default()),
            );
        }
        if let Some(f) = &a.backing_format {
            if !given.iter().any(|(k, _)| k == "backing_fmt") {
                let at = given
                    .iter()
                    .position(|(k, _)| k != "backing_file")
                    .unwrap_or(given.len());
                given.insert(at, ("backing_fmt".into(), f.clone()));
            }
        }
        let mut defaults = vec![
            (
                "compat6",
                if v.create.compat6 { "on" } else { "off" }.to_string(),
            ),
            (
                "hwversion",
                v.create
                    .hwversion
                    .clone()
                    .unwrap_or_else(|| "undefined".into()),
            ),
        ];
        // qemu prints every option it was given plus the ones with defaults, in the order
        // of its option table.
        for key in crate::opts::OPTION_ORDER {
            if let Some((_, val)) = given.iter().find(|(k, _)| k == key) {
                line.push_str(&format!(" {key}={val}"));
            } else if let Some(i) = defaults.iter().position(|(k, _)| *k == key) {
                let (k, val) = defaults.remove(i);
                line.push_str(&format!(" {k}={val}"));
            }
        }
        println!("{line}");
    }
    vmdk::create(&file, size, &v.create)?;
    if let Some(b) = &v.create.backing_file {
        note_backing_outside(&file, b, &v.create.allow_paths);
    }
    Ok(0)
}

/// The backing file is written as the user named it; when it lies where the path gate will
/// not follow by default, say how to open the new image rather than leave the user to find
/// out from a refusal.
fn note_backing_outside(image: &std::path::Path, backing: &str, allowed: &[PathBuf]) {
    let policy = vmdk::storage::paths::PathPolicy {
        allow_unsafe: false,
        allowed_dirs: allowed.to_vec(),
    };
    if vmdk::storage::paths::resolve(image, backing, "backing file", &policy).is_ok() {
        return;
    }
    let dir = std::path::Path::new(image)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .join(backing);
    let dir = dir
        .canonicalize()
        .unwrap_or(dir)
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "vmdk: note: the backing file '{backing}' lies outside the directory of '{}'; to open \
         the image, trust its directory: --allow-path {dir} (or VMDK_ALLOW_PATHS={dir})",
        image.display()
    );
}
