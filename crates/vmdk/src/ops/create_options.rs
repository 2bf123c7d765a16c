//! qemu-img's `-o` creation options of the vmdk driver (`subformat=streamOptimized,...`),
//! with its names, values, messages and help text, and the rules `qemu-img create` applies
//! around them (the backing file's format, a size taken from the backing file). They live
//! here, not in a front end, so that the CLI's `create`, `convert -O vmdk` and `dd` and the
//! Python module take the same words and refuse the same things.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::{Image, OpenOptions};
use crate::ops::create::{AdapterType, CreateOptions, Subformat};
use crate::qemu_syntax::{parse_bool, parse_size};

/// qemu-img's vmdk creation options in the order of its option table, which is the order
/// it prints them in ("Formatting 'x.vmdk', fmt=vmdk size=... backing_file=...").
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
/// [`VmdkOptions::parse`] takes without `allow_backing` for `convert`.
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

impl CreateOptions {
    /// Apply one of the vmdk driver's own `-o` options (`subformat`, `adapter_type`,
    /// `hwversion`, `toolsversion`, `compat6`, `zeroed_grain`, `compression_level`,
    /// `backing_file`) as qemu-img takes it; another key is "Invalid parameter".
    pub fn set_option(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "subformat" => self.subformat = Subformat::parse(value)?,
            "adapter_type" => {
                self.adapter_type =
                    AdapterType::parse(value).map_err(|e| Error::invalid(e.to_string()))?
            }
            // qemu's "undefined" is its default: no hwversion given.
            "hwversion" => self.hwversion = (value != "undefined").then(|| value.to_string()),
            "toolsversion" => self.toolsversion = Some(value.to_string()),
            "compat6" => self.compat6 = parse_bool(key, value)?,
            "zeroed_grain" => self.zeroed_grain = parse_bool(key, value)?,
            "compression_level" => {
                self.compression_level =
                    value.parse().ok().filter(|l| *l <= 9).ok_or_else(|| {
                        Error::invalid(format!("invalid compression_level '{value}' (0-9)"))
                    })?
            }
            "backing_file" => self.backing_file = Some(value.to_string()),
            _ => return Err(Error::invalid(format!("Invalid parameter '{key}'"))),
        }
        Ok(())
    }
}

/// The `-o` options of a new VMDK image, parsed.
#[derive(Debug, Clone, Default)]
pub struct VmdkOptions {
    /// The options for [`create`](crate::ops::create::create).
    pub create: CreateOptions,
    /// `backing_fmt`: only `vmdk` is valid ([`check_backing_format`]).
    pub backing_fmt: Option<String>,
    /// `size`, when given as an option.
    pub size: Option<u64>,
    /// `compression_level`, when given.
    pub compression_level: Option<u32>,
    /// What was given, in qemu's option order, for the "Formatting ..." line.
    pub given: Vec<(String, String)>,
}

impl VmdkOptions {
    /// Parse `-o` options (split by [`split_options`](crate::qemu_syntax::split_options)).
    /// `allow_backing` says whether `backing_file`, `backing_fmt` and `size` are accepted
    /// (create) or not (convert, which takes them from -B and the source).
    pub fn parse(opts: &[(String, String)], allow_backing: bool) -> Result<VmdkOptions> {
        Self::parse_onto(CreateOptions::default(), opts, allow_backing)
    }

    /// [`VmdkOptions::parse`] applied on top of `base` (options already set another way,
    /// such as the Python module's keywords): what the options name replaces `base`'s.
    pub fn parse_onto(
        base: CreateOptions,
        opts: &[(String, String)],
        allow_backing: bool,
    ) -> Result<VmdkOptions> {
        let mut v = VmdkOptions {
            create: base,
            ..VmdkOptions::default()
        };
        for (k, val) in opts {
            match k.as_str() {
                "backing_file" | "backing_fmt" | "size" if !allow_backing => {
                    return Err(Error::invalid(format!("Invalid parameter '{k}'")))
                }
                "backing_fmt" => v.backing_fmt = Some(val.clone()),
                "size" => v.size = Some(parse_size(val)?),
                _ => {
                    v.create.set_option(k, val)?;
                    if k == "compression_level" {
                        v.compression_level = Some(v.create.compression_level);
                    }
                }
            }
        }
        for key in OPTION_ORDER {
            if let Some((k, val)) = opts.iter().rev().find(|(k, _)| k == key) {
                v.given.push((k.clone(), val.clone()));
            }
        }
        Ok(v)
    }
}

/// `qemu-img create`'s rules for the backing file's format of the new image `path`: a
/// VMDK's backing file is a VMDK, so a format other than `vmdk` is refused; and, as qemu-img
/// 10 does, a backing file without its format is refused rather than guessed (a guess is how
/// a raw backing file gets probed as something else). Without `unsafe_backing` (`-u`) the
/// backing file is opened first, so that a missing one is reported as missing.
pub fn check_backing_format(
    path: &Path,
    opts: &CreateOptions,
    backing_fmt: Option<&str>,
    unsafe_backing: bool,
) -> Result<()> {
    match (&opts.backing_file, backing_fmt) {
        (_, Some(f)) if f != "vmdk" => Err(Error::unsupported(format!(
            "backing format '{f}' is not supported (a VMDK's backing file is a VMDK)"
        ))),
        (Some(_), None) => {
            let mut message = "Backing file specified without backing format".to_string();
            if !unsafe_backing {
                open_backing(path, opts)?;
                message.push_str("\nDetected format of vmdk.");
            }
            Err(Error::invalid(message).with_path(path))
        }
        _ => Ok(()),
    }
}

/// The size of a new image `path` given none: its backing file's, as `qemu-img create`
/// takes it. Without a backing file, or with `unsafe_backing` (`-u`, which never opens it),
/// a size is needed.
pub fn size_from_backing(path: &Path, opts: &CreateOptions, unsafe_backing: bool) -> Result<u64> {
    match &opts.backing_file {
        Some(_) if !unsafe_backing => Ok(open_backing(path, opts)?.size()),
        _ => Err(Error::invalid("Image creation needs a size parameter")),
    }
}

/// Open the backing file named in `opts` for the new image `path` (relative to its
/// directory, in `opts`'s namespace), as [`create`](crate::ops::create::create) does: read
/// without excluding its other users, as qemu-img does, since only its size and CID are read.
pub fn open_backing(path: &Path, opts: &CreateOptions) -> Result<Image> {
    let Some(b) = &opts.backing_file else {
        return Err(Error::invalid("no backing file").with_path(path));
    };
    backing_open_options(opts).open(&backing_path(path, b)?)
}

/// Where the backing file named `b` of the new image `path` is: relative to its directory.
/// An empty name, or one holding a NUL, is refused.
pub(crate) fn backing_path(path: &Path, b: &str) -> Result<PathBuf> {
    if b.is_empty() || b.contains('\0') {
        return Err(Error::invalid("invalid backing file name").with_path(path));
    }
    Ok(crate::storage::paths::directory_of(path).join(b))
}

/// How a new image's backing file is opened: with `opts`'s path gate and namespace, and
/// without excluding its other users, as qemu-img does (only its size and CID are read).
pub(crate) fn backing_open_options(opts: &CreateOptions) -> OpenOptions {
    OpenOptions {
        allow_unsafe_paths: opts.allow_unsafe_paths,
        allow_paths: opts.allow_paths.clone(),
        force_share: true,
        namespace: opts.namespace.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu_syntax::split_options;

    #[test]
    fn parses_vmdk_options() {
        let o = split_options(&[
            "zeroed_grain=on,adapter_type=lsilogic,hwversion=6,compression_level=9",
        ])
        .unwrap();
        let v = VmdkOptions::parse(&o, false).unwrap();
        assert!(v.create.zeroed_grain);
        assert_eq!(v.create.adapter_type, AdapterType::Lsilogic);
        assert_eq!(v.create.hwversion.as_deref(), Some("6"));
        assert_eq!(v.compression_level, Some(9));
        let one = |k: &str, val: &str| vec![(k.to_string(), val.to_string())];
        assert!(VmdkOptions::parse(&one("bogus", "1"), false).is_err());
        assert!(VmdkOptions::parse(&one("subformat", "foo"), false).is_err());
        assert!(VmdkOptions::parse(&one("compat6", "maybe"), false).is_err());
        assert!(VmdkOptions::parse(&one("compression_level", "10"), false).is_err());
        assert!(VmdkOptions::parse(&one("backing_file", "a"), false).is_err());
        assert!(VmdkOptions::parse(&one("backing_file", "a"), true).is_ok());
        let v = VmdkOptions::parse(&one("size", "1M"), true).unwrap();
        assert_eq!(v.size, Some(1 << 20));
    }
}
