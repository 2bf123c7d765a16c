//! The gate deciding which files an image may open. A descriptor is a list of file names
//! chosen by whoever made the image; followed blindly, `"/etc/shadow"` or `"../../dev/sda"`
//! becomes a readable disk (OpenStack CVE-2022-47951). By default every extent and backing
//! file must resolve, symlinks included, inside the directory of the file that names it.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Resolve `name` (from a descriptor line or `parentFileNameHint` in `referrer`) against the
/// referrer's directory, refusing anything that escapes it unless `allow_unsafe`.
pub fn resolve(referrer: &Path, name: &str, what: &str, allow_unsafe: bool) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(Error::corrupt(format!("empty {what} file name")).with_path(referrer));
    }
    if name.contains('\0') {
        return Err(
            Error::corrupt(format!("{what} file name contains a NUL byte")).with_path(referrer),
        );
    }
    let dir = referrer.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let rel = Path::new(name);
    let candidate = dir.join(rel);
    if allow_unsafe {
        return Ok(candidate);
    }
    let refuse = |why: &str| {
        Error::new(
            ErrorKind::UnsafePath,
            format!(
                "{what} path \"{name}\" {why}; refusing to open it (pass --allow-unsafe-paths, \
                 or OpenOptions::allow_unsafe_paths, if you trust this image)"
            ),
        )
        .with_path(referrer)
    };
    if rel.is_absolute() {
        return Err(refuse("is absolute"));
    }
    if rel.components().any(|c| {
        matches!(
            c,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    }) {
        return Err(refuse("leaves the image's directory"));
    }
    // Symlinks: compare where things really are. A missing file is left for the open to
    // report as "not found".
    if let (Ok(real_dir), Ok(real)) = (dir.canonicalize(), candidate.canonicalize()) {
        if !real.starts_with(&real_dir) {
            return Err(refuse(&format!(
                "resolves through a symlink to {} outside the image's directory",
                real.display()
            )));
        }
    }
    Ok(candidate)
}

/// Refuse files that are not regular files (FIFOs would hang an open, devices expose host
/// disks) unless unsafe paths are allowed.
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
    Err(Error::new(
        ErrorKind::UnsafePath,
        "not a regular file (devices need --allow-unsafe-paths; FIFOs and sockets are never opened)",
    )
    .with_path(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.vmdk");
        std::fs::write(&img, b"x").unwrap();
        std::fs::write(dir.path().join("a-flat.vmdk"), b"x").unwrap();
        assert_eq!(
            resolve(&img, "a-flat.vmdk", "extent", false).unwrap(),
            dir.path().join("a-flat.vmdk")
        );
        assert!(resolve(&img, "sub/b.vmdk", "extent", false).is_ok());
        for bad in ["/etc/passwd", "../x.vmdk", "sub/../../x", ""] {
            let e = resolve(&img, bad, "extent", false).unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::UnsafePath | ErrorKind::Corrupt),
                "{bad}"
            );
        }
        assert!(resolve(&img, "/etc/passwd", "extent", true).is_ok());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.vmdk")).unwrap();
        let e = resolve(&img, "link.vmdk", "extent", false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsafePath);
        assert!(e.to_string().contains("--allow-unsafe-paths"));
    }
}
