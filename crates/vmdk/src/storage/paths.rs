//! The gate deciding which files an image may open. A descriptor is a list of file names
//! chosen by whoever made the image; followed blindly, `"/etc/shadow"` or `"../../dev/sda"`
//! becomes a readable disk (OpenStack CVE-2022-47951). By default every extent and backing
//! file must *be*, symlinks followed, inside the directory of the file that names it, or
//! inside a directory the user trusts. Where a file is decides, not how its name is spelled:
//! qemu-img writes `parentFileNameHint` as the user typed it, often an absolute path into the
//! image's own directory, and that is as safe as a bare file name.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Which files outside an image's own directory it may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathPolicy {
    /// Follow any name at all and open device files. Only for images you trust.
    pub allow_unsafe: bool,
    /// Directories (with everything below them) that images may name besides their own.
    pub allowed_dirs: Vec<PathBuf>,
}

impl PathPolicy {
    /// The directories listed, colon-separated, in the `VMDK_ALLOW_PATHS` environment
    /// variable (empty when it is unset).
    pub fn dirs_from_env() -> Vec<PathBuf> {
        std::env::var_os("VMDK_ALLOW_PATHS")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `real` (a canonical path) lies inside `dir` or an allowed directory.
    fn admits(&self, real: &Path, dir: &Path) -> bool {
        let inside = |d: &Path| d.canonicalize().is_ok_and(|d| real.starts_with(d));
        inside(dir) || self.allowed_dirs.iter().any(|d| inside(d))
    }
}

/// The directory a file name inside `referrer` is relative to (`.` for a bare name).
pub(crate) fn directory_of(referrer: &Path) -> &Path {
    match referrer.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Where `path` really is: symlinks followed, `.`/`..` resolved. A file that does not exist
/// yet is placed by its directory; `None` when not even that exists (opening it will then
/// fail with "not found", which is the better message).
fn real_location(path: &Path) -> Option<PathBuf> {
    if let Ok(real) = path.canonicalize() {
        return Some(real);
    }
    let name = path.file_name()?;
    let parent = directory_of(path).canonicalize().ok()?;
    Some(parent.join(name))
}

/// Resolve `name` (from a descriptor line or `parentFileNameHint` in `referrer`) against the
/// referrer's directory, refusing a file that lies outside it (and outside every allowed
/// directory) unless the policy allows everything.
pub fn resolve(referrer: &Path, name: &str, what: &str, policy: &PathPolicy) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(Error::corrupt(format!("empty {what} name")).with_path(referrer));
    }
    if name.contains('\0') {
        return Err(Error::corrupt(format!("{what} name contains a NUL byte")).with_path(referrer));
    }
    let dir = directory_of(referrer);
    let candidate = dir.join(name);
    if policy.allow_unsafe {
        return Ok(candidate);
    }
    // A name whose directory does not exist either is judged by its spelling, from the
    // referrer's real directory: answering "not found" for it would tell a hostile image
    // which directories exist outside its own.
    let Some(real) = real_location(&candidate).or_else(|| {
        let base = dir.canonicalize().ok()?;
        Some(normalize_lexically(&base.join(name)))
    }) else {
        return Ok(candidate);
    };
    if policy.admits(&real, dir) {
        return Ok(candidate);
    }
    let shown_dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let how = if Path::new(name).is_absolute() || real == candidate {
        String::new()
    } else {
        format!(" (it resolves to {})", real.display())
    };
    let allowed = if policy.allowed_dirs.is_empty() {
        ""
    } else {
        " and every allowed directory"
    };
    Err(Error::new(
        ErrorKind::UnsafePath,
        format!(
            "{what} \"{name}\"{how} lies outside the image's directory {}{allowed}; refusing \
             to open it",
            shown_dir.display()
        ),
    )
    .with_path(referrer))
}

/// `path` with `.` dropped and `..` applied to what precedes it, without asking any file
/// system (for namespaces without symlinks: memory, archives, object stores). A `..` that
/// would climb above the start of a relative path is kept, so containment tests still
/// see it.
pub fn normalize_lexically(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    out.iter().collect()
}

/// [`resolve`] for namespaces whose names are only names (no symlinks): the name is joined
/// to the referrer's directory and normalised lexically, and must stay inside that
/// directory or an allowed one.
pub fn resolve_lexically(
    referrer: &Path,
    name: &str,
    what: &str,
    policy: &PathPolicy,
) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(Error::corrupt(format!("empty {what} name")).with_path(referrer));
    }
    if name.contains('\0') {
        return Err(Error::corrupt(format!("{what} name contains a NUL byte")).with_path(referrer));
    }
    let dir = normalize_lexically(directory_of(referrer));
    let candidate = normalize_lexically(&dir.join(name));
    let climbs = |p: &Path| p.components().any(|c| c == std::path::Component::ParentDir);
    let inside = |d: &Path| {
        let d = normalize_lexically(d);
        !climbs(&candidate) && candidate.starts_with(d)
    };
    if policy.allow_unsafe || inside(&dir) || policy.allowed_dirs.iter().any(|d| inside(d)) {
        return Ok(candidate);
    }
    Err(Error::new(
        ErrorKind::UnsafePath,
        format!(
            "{what} \"{name}\" (it resolves to {}) lies outside the image's directory {}; \
             refusing to open it",
            candidate.display(),
            dir.display()
        ),
    )
    .with_path(referrer))
}

/// Refuse files that are not regular files (FIFOs would hang an open, devices expose host
/// disks); devices only pass when the policy allows everything.
pub fn check_file_type(path: &Path, allow_unsafe: bool) -> Result<()> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(e, "cannot open file").with_path(path))?;
    let ft = meta.file_type();
    if ft.is_file() {
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    if allow_unsafe && (ft.is_block_device() || ft.is_char_device()) {
        return Ok(());
    }
    let what = if ft.is_block_device() || ft.is_char_device() {
        "a device (devices are opened only when every path is trusted)"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file (FIFOs and sockets are never opened)"
    };
    Err(Error::new(
        ErrorKind::UnsafePath,
        format!("refusing to open: the file is {what}"),
    )
    .with_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_location_not_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().canonicalize().unwrap();
        let img = d.join("a.vmdk");
        std::fs::write(&img, b"x").unwrap();
        std::fs::write(d.join("a-flat.vmdk"), b"x").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/b.vmdk"), b"x").unwrap();
        let safe = PathPolicy::default();
        assert_eq!(
            resolve(&img, "a-flat.vmdk", "extent", &safe).unwrap(),
            d.join("a-flat.vmdk")
        );
        assert!(resolve(&img, "sub/b.vmdk", "extent", &safe).is_ok());
        // An absolute name into the image's own directory, and a detour through `..` that
        // comes back, are inside.
        let abs = d.join("a-flat.vmdk");
        assert!(resolve(&img, abs.to_str().unwrap(), "backing", &safe).is_ok());
        assert!(resolve(&d.join("sub/b.vmdk"), "../sub/b.vmdk", "extent", &safe).is_ok());
        // Names into directories that do not exist are judged as well, so the answer never
        // tells which directories exist outside.
        for bad in [
            "/etc/passwd",
            "../x.vmdk",
            "sub/../../x",
            "",
            "../../no/such/dir/x",
            "/no/such/dir/x",
        ] {
            let e = resolve(&img, bad, "extent", &safe).unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::UnsafePath | ErrorKind::Corrupt),
                "{bad}"
            );
        }
        let e = resolve(&img, "/etc/passwd", "extent", &safe).unwrap_err();
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
        assert!(
            !e.to_string().contains("--"),
            "library errors name no CLI flag: {e}"
        );
        assert!(
            e.to_string().starts_with(&format!("'{}'", img.display())),
            "{e}"
        );
        let all = PathPolicy {
            allow_unsafe: true,
            ..Default::default()
        };
        assert!(resolve(&img, "/etc/passwd", "extent", &all).is_ok());
        std::os::unix::fs::symlink("/etc/passwd", d.join("link.vmdk")).unwrap();
        let e = resolve(&img, "link.vmdk", "extent", &safe).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
        assert!(e.to_string().contains("resolves to /etc/passwd"), "{e}");
    }

    #[test]
    fn allowed_directories_admit_exactly_their_trees() {
        let top = tempfile::tempdir().unwrap();
        let t = top.path().canonicalize().unwrap();
        for d in ["img", "trusted/deep", "other"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        for f in [
            "trusted/deep/base.vmdk",
            "other/x.vmdk",
            "trusted-not/y.vmdk",
        ] {
            std::fs::create_dir_all(t.join(f).parent().unwrap()).unwrap();
            std::fs::write(t.join(f), b"x").unwrap();
        }
        let img = t.join("img/ov.vmdk");
        let policy = PathPolicy {
            allow_unsafe: false,
            allowed_dirs: vec![t.join("trusted")],
        };
        assert!(resolve(&img, "../trusted/deep/base.vmdk", "backing", &policy).is_ok());
        let abs = t.join("trusted/deep/base.vmdk");
        assert!(resolve(&img, abs.to_str().unwrap(), "backing", &policy).is_ok());
        // A sibling whose name merely starts like the trusted one is not inside it.
        assert!(resolve(&img, "../trusted-not/y.vmdk", "backing", &policy).is_err());
        assert!(resolve(&img, "../other/x.vmdk", "backing", &policy).is_err());
    }

    #[test]
    fn devices_and_fifos() {
        assert!(check_file_type(Path::new("/dev/null"), false).is_err());
        assert!(check_file_type(Path::new("/dev/null"), true).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path, which outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(check_file_type(&fifo, true).is_err());
    }
}
