//! File names as qemu (and so the `vmdk` CLI) shows them in `map` and `info`: relative
//! names combined with the directory of the file that names them. Mirrors the CLI's
//! `names.rs`, which is private to the binary; the tests compare both outputs.

use std::path::Path;

use vmdk::Image;

/// qemu's `path_combine`: `name` if absolute, else `name` in the directory of `base`.
pub fn path_combine(base: &str, name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    match base.rfind('/') {
        Some(i) => format!("{}{name}", &base[..=i]),
        None => name.to_string(),
    }
}

/// How to show a path.
pub fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The image and its backing chain, each with the name qemu would show for it.
pub fn chain<'a>(img: &'a Image, name: &str) -> Vec<(&'a Image, String)> {
    let mut out = vec![(img, name.to_string())];
    while let Some(b) = out.last().and_then(|(i, _)| i.backing()) {
        let (parent, pname) = out.last().expect("non-empty");
        let hint = parent
            .descriptor()
            .parent_file_name_hint
            .clone()
            .unwrap_or_else(|| display(b.path()));
        let bname = path_combine(pname, &hint);
        out.push((b, bname));
    }
    out
}

/// The name qemu would show for extent `i` of `img` (shown as `name`).
pub fn extent_name(img: &Image, name: &str, i: usize) -> Option<String> {
    let e = img.extents().get(i)?;
    let f = e.file()?;
    if f.path() == img.path() {
        return Some(name.to_string());
    }
    let lines = &img.descriptor().extents;
    if lines.len() == img.extents().len() {
        if let Some(file) = &lines[i].file {
            return Some(path_combine(name, file));
        }
    }
    Some(display(f.path()))
}
