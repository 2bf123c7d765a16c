//! Flags shared by the subcommands that open images, and qemu-img's `-o key=value,...`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vmdk::format::foreign::ForeignFormat;
use vmdk::{
    AdapterType, CreateOptions, Disk, FileFormat, Image, ImageFormat, OpenOptions, Subformat,
};

/// qemu-img's vmdk creation options in the order of its option table, which is the order
/// it prints them in.
pub const OPTION_ORDER: [&str; 9] = [
    "backing_file",
    "backing_fmt",
    "adapter_type",
    "compat6",
    "hwversion",
    "toolsversion",
    "subformat",
    "zeroed_grain",
    "compression_level",
];

/// How to open images.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OpenArgs {
    /// Trust extent and backing files inside DIR (and below it) although they lie outside
    /// the image's directory; repeatable. `VMDK_ALLOW_PATHS` (colon-separated) adds more.
    #[arg(long = "allow-path", value_name = "DIR")]
    pub allow_path: Vec<PathBuf>,
    /// Follow extent and backing file names wherever they lead and open device files.
    /// Only for images you trust.
    #[arg(long)]
    pub allow_unsafe_paths: bool,
    /// Open a child image even when its parentCID does not match its parent's CID.
    #[arg(long)]
    pub ignore_cid_mismatch: bool,
    /// Open read-only without excluding other users of the image, which may be writing it
    /// (qemu-img's -U; commands that write the image refuse it); without it, an image
    /// another process writes is refused.
    #[arg(short = 'U', long = "force-share")]
    pub force_share: bool,
}

impl OpenArgs {
    /// Library options for these flags (and `VMDK_ALLOW_PATHS`).
    pub fn options(&self) -> OpenOptions {
        let mut o = OpenOptions::new()
            .allow_unsafe_paths(self.allow_unsafe_paths)
            .ignore_cid_mismatch(self.ignore_cid_mismatch)
            .force_share(self.force_share)
            .in_namespace(crate::namespace());
        o.allow_paths = allowed_dirs(&self.allow_path);
        o
    }
}

/// `--allow-path` directories followed by those of `VMDK_ALLOW_PATHS`.
pub fn allowed_dirs(flags: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = flags.to_vec();
    dirs.extend(vmdk::paths::PathPolicy::dirs_from_env());
    dirs
}

/// What an image file given on the command line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    Vmdk,
    Raw,
    /// An image of another format: only `info` shows it; everything else refuses it.
    Foreign(ForeignFormat),
}

/// `-f FMT` for the image `path`: `None` when absent (probe the content); a name qemu does
/// not know is qemu-img's "Unknown driver" error.
pub fn format_arg(path: &Path, fmt: Option<&str>) -> vmdk::Result<Option<ImageFormat>> {
    fmt.map(|f| f.parse::<ImageFormat>().map_err(|e| e.with_path(path)))
        .transpose()
}

/// Open `path` as a disk of the `-f` format, or of the format its content says.
pub fn open_disk(
    path: &Path,
    fmt: Option<&str>,
    opts: &OpenOptions,
) -> vmdk::Result<Box<dyn Disk>> {
    vmdk::open_disk(path, format_arg(path, fmt)?, opts)
}

/// `-O FMT` of a command that writes the formats `takes`: another name is qemu-img's
/// "Unknown file format" error, with the names the command takes.
pub fn output_format(fmt: &str, takes: &[ImageFormat]) -> Result<ImageFormat> {
    match fmt.parse::<ImageFormat>() {
        Ok(f) if takes.contains(&f) => Ok(f),
        _ => {
            let names: Vec<&str> = takes.iter().map(|f| f.name()).collect();
            let list = match names.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            };
            bail!("Unknown file format '{fmt}' (expected {list})")
        }
    }
}

/// `-f FMT`, or the format probed from the file's content.
pub fn image_format(path: &Path, fmt: Option<&str>) -> Result<Fmt> {
    match format_arg(path, fmt)? {
        Some(ImageFormat::Vmdk) => Ok(Fmt::Vmdk),
        Some(ImageFormat::Raw) => Ok(Fmt::Raw),
        Some(ImageFormat::Qcow2) => Ok(Fmt::Foreign(ForeignFormat::Qcow2)),
        None => Ok(match vmdk::image::probe_in(&*crate::namespace(), path)? {
            Some(FileFormat::Foreign(f)) => Fmt::Foreign(f),
            Some(_) => Fmt::Vmdk,
            None => Fmt::Raw,
        }),
    }
}

/// [`image_format`] for commands that take VMDK and raw only: another format is an error.
pub fn vmdk_or_raw(path: &Path, fmt: Option<&str>) -> Result<Fmt> {
    if let Some(other) = fmt.filter(|f| !matches!(*f, "vmdk" | "raw")) {
        bail!("unknown image format '{other}' (expected vmdk or raw)");
    }
    match image_format(path, fmt)? {
        Fmt::Foreign(f) => Err(vmdk::image::foreign_format_error(path, f, "VMDK or raw").into()),
        f => Ok(f),
    }
}

/// Refuse a `-f` other than vmdk for commands that change VMDK images.
pub fn require_vmdk(fmt: Option<&str>) -> Result<()> {
    if fmt.is_some_and(|f| f != "vmdk") {
        bail!("this command only works on vmdk images");
    }
    Ok(())
}

/// Refuse `-U` for a command that writes `image`, before anything is opened, as qemu-img
/// does (with its message: the library decides, [`OpenOptions::refuse_force_share`]).
pub fn refuse_force_share(open: &OpenArgs, image: &Path) -> Result<()> {
    Ok(open.options().refuse_force_share(image)?)
}

/// Open a VMDK image, refusing `-f raw`.
pub fn open_vmdk(path: &Path, fmt: Option<&str>, opts: &OpenOptions) -> Result<Image> {
    if let Some(f) = fmt {
        if f != "vmdk" {
            bail!("this command only works on vmdk images, not '{f}'");
        }
    }
    Ok(Image::open_with(path, opts)?)
}

/// Split qemu-style `key=value,key=value` option strings (`,,` is a literal comma); several
/// `-o` flags add up.
pub fn split_options(opts: &[String]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for o in opts {
        let mut cur = String::new();
        let mut parts = Vec::new();
        let mut chars = o.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ',' {
                if chars.peek() == Some(&',') {
                    chars.next();
                    cur.push(',');
                } else {
                    parts.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        parts.push(cur);
        for p in parts.into_iter().filter(|p| !p.is_empty()) {
            match p.split_once('=') {
                Some((k, v)) => out.push((k.to_string(), v.to_string())),
                None if p == "help" || p == "?" => out.push((p, String::new())),
                None => bail!("Invalid parameter '{p}' (expected key=value)"),
            }
        }
    }
    Ok(out)
}

/// qemu's boolean option values.
pub fn parse_bool(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => bail!("Parameter '{key}' expects 'on' or 'off'"),
    }
}

/// The `-o` options of the vmdk format, in qemu-img's help order, each with whether only
/// `create` takes it (convert gets the backing file from -B, the size from the source).
const VMDK_OPTIONS: [(&str, bool); 10] = [
    ("adapter_type=<str>      - Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX", false),
    ("backing_file=<str>      - File name of a base image", true),
    ("backing_fmt=<str>       - Image format of the base image (vmdk)", true),
    ("compat6=<bool (on/off)> - VMDK version 6 image", false),
    ("compression_level=<num> - deflate level (0-9, default 5) for compressed (streamOptimized) output", false),
    ("hwversion=<str>         - VMDK hardware version", false),
    ("size=<size>             - Virtual disk size", true),
    ("subformat=<str>         - VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | twoGbMaxExtentFlat | streamOptimized | vmfs}", false),
    ("toolsversion=<str>      - VMware guest tools version", false),
    ("zeroed_grain=<bool (on/off)> - Enable efficient zero writes using the zeroed-grain GTE feature", false),
];

/// What `-o help` prints for the vmdk format: every option for `create`, those
/// [`vmdk_options`] takes without `allow_backing` for `convert`.
pub fn vmdk_options_help(create: bool) -> String {
    let mut s = String::from("Creation options for 'vmdk':\n");
    for (line, create_only) in VMDK_OPTIONS {
        if create || !create_only {
            s.push_str("  ");
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// Options parsed from `-o` for a new VMDK image.
#[derive(Debug, Clone, Default)]
pub struct VmdkOptions {
    pub create: CreateOptions,
    pub backing_fmt: Option<String>,
    pub size: Option<u64>,
    /// Whether `compression_level` was given.
    pub compression_level: Option<u32>,
    /// What was given, in qemu's option order, for the "Formatting ..." line.
    pub given: Vec<(String, String)>,
}

/// Parse `-o` options for a VMDK image. `allow_backing` says whether backing_file /
/// backing_fmt / size are accepted (create) or not (convert).
pub fn vmdk_options(opts: &[(String, String)], allow_backing: bool) -> Result<VmdkOptions> {
    let mut v = VmdkOptions::default();
    // New files (and a backing file named here) go through the command's namespace.
    v.create.namespace = Some(crate::namespace());
    for (k, val) in opts {
        match k.as_str() {
            "subformat" => v.create.subformat = Subformat::parse(val)?,
            "adapter_type" => v.create.adapter_type = AdapterType::parse(val)?,
            "hwversion" => {
                v.create.hwversion = (val != "undefined").then(|| val.clone());
            }
            "toolsversion" => v.create.toolsversion = Some(val.clone()),
            "compat6" => v.create.compat6 = parse_bool(k, val)?,
            "zeroed_grain" => v.create.zeroed_grain = parse_bool(k, val)?,
            "compression_level" => {
                let l: u32 = val
                    .parse()
                    .ok()
                    .filter(|l| *l <= 9)
                    .with_context(|| format!("invalid compression_level '{val}' (0-9)"))?;
                v.create.compression_level = l;
                v.compression_level = Some(l);
            }
            "backing_file" if allow_backing => v.create.backing_file = Some(val.clone()),
            "backing_fmt" if allow_backing => v.backing_fmt = Some(val.clone()),
            "size" if allow_backing => v.size = Some(crate::size::parse_size(val)?),
            _ => bail!("Invalid parameter '{k}'"),
        }
    }
    for key in OPTION_ORDER {
        if let Some((k, val)) = opts.iter().rev().find(|(k, _)| k == key) {
            v.given.push((k.clone(), val.clone()));
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_options() {
        let o = split_options(&[
            "subformat=streamOptimized,compat6=on".into(),
            "a=b,,c".into(),
        ])
        .unwrap();
        assert_eq!(
            o,
            vec![
                ("subformat".into(), "streamOptimized".into()),
                ("compat6".into(), "on".into()),
                ("a".into(), "b,c".into())
            ]
        );
        assert!(split_options(&["bogus".into()]).is_err());
    }

    #[test]
    fn parses_vmdk_options() {
        let o = split_options(&[
            "zeroed_grain=on,adapter_type=lsilogic,hwversion=6,compression_level=9".into(),
        ])
        .unwrap();
        let v = vmdk_options(&o, false).unwrap();
        assert!(v.create.zeroed_grain);
        assert_eq!(v.create.adapter_type, AdapterType::Lsilogic);
        assert_eq!(v.create.hwversion.as_deref(), Some("6"));
        assert_eq!(v.compression_level, Some(9));
        assert!(vmdk_options(&[("bogus".into(), "1".into())], false).is_err());
        assert!(vmdk_options(&[("subformat".into(), "foo".into())], false).is_err());
        assert!(vmdk_options(&[("compat6".into(), "maybe".into())], false).is_err());
        assert!(vmdk_options(&[("backing_file".into(), "a".into())], false).is_err());
        assert!(vmdk_options(&[("backing_file".into(), "a".into())], true).is_ok());
    }
}
