//! File names as qemu shows them: relative names combined with the directory of the file that
//! names them (`path_combine`), without the `./` our library adds for bare names.

use std::path::Path;

use crate::image::Image;

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

/// How to show a path given on the command line.
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
pub(crate) fn extent_name(img: &Image, name: &str, i: usize) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combines_like_qemu() {
        assert_eq!(path_combine("b.vmdk", "a.vmdk"), "a.vmdk");
        assert_eq!(path_combine("/tmp/q/b.vmdk", "a.vmdk"), "/tmp/q/a.vmdk");
        assert_eq!(path_combine("d/b.vmdk", "/x/a.vmdk"), "/x/a.vmdk");
        assert_eq!(path_combine("./b.vmdk", "a.vmdk"), "./a.vmdk");
    }
}
