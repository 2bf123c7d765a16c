//! Flags shared by the subcommands that open images, and qemu-img's `-o key=value,...`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use vmdk::format::foreign::ForeignFormat;
use vmdk::{Disk, FileFormat, Image, ImageFormat, OpenOptions};

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
    dirs.extend(vmdk::storage::paths::PathPolicy::dirs_from_env());
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

pub use vmdk::ops::create_options::{vmdk_options_help, VmdkOptions, OPTION_ORDER};
pub use vmdk::qemu_syntax::split_options;

/// Parse `-o` options for a new VMDK image ([`VmdkOptions::parse`]), its new files (and a
/// backing file named here) going through the command's namespace.
pub fn vmdk_options(opts: &[(String, String)], allow_backing: bool) -> Result<VmdkOptions> {
    let mut v = VmdkOptions::parse(opts, allow_backing)?;
    v.create.namespace = Some(crate::namespace());
    Ok(v)
}

/// `-p` and `-q` of the commands that show progress.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct ProgressArgs {
    /// Show progress.
    #[arg(short = 'p')]
    pub progress: bool,
    /// Quiet.
    #[arg(short = 'q')]
    pub quiet: bool,
}

impl ProgressArgs {
    /// Run `op` with a progress callback that draws a bar (or qemu-img's percentages) when
    /// `-p` is given without `-q`; the bar ends, marked as failed or not, when `op` does.
    pub fn run<T>(
        &self,
        op: impl FnOnce(&(dyn Fn(u64, u64) + Sync)) -> vmdk::Result<T>,
    ) -> Result<T> {
        let pb = crate::progress::Progress::new(self.progress && !self.quiet);
        let result = op(&|done, total| pb.update(done, total));
        pb.end(result.is_ok());
        Ok(result?)
    }
}

/// The image a command changes: a VMDK (`-f vmdk`, or no `-f`), opened with the open flags,
/// which may not include `-U`.
#[derive(Debug, Clone, clap::Args)]
pub struct VmdkTarget {
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
}

impl VmdkTarget {
    /// Refuse another format and `-U` for `image`, before anything is opened, as qemu-img
    /// does.
    pub fn check_writable(&self, image: &Path) -> Result<()> {
        require_vmdk(self.format.as_deref())?;
        refuse_force_share(&self.open, image)
    }
}

/// The image a command reads: its format (`-f`, probed from the content when absent) and
/// the open flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Image format (vmdk, qcow2 or raw); probed from the content when absent.
    #[arg(short = 'f', value_name = "FMT")]
    pub format: Option<String>,
    #[command(flatten)]
    pub open: OpenArgs,
}
