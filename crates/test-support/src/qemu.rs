//! qemu-img making the images the oracle tests start from (shared by the library's and the
//! command's tests): each helper runs one `qemu-img` command and panics, naming it and
//! what it printed, when it fails.

use std::path::Path;
use std::process::Command;

/// The subformats `qemu-img create` and `convert` make, in the order the tests list them
/// (`vmfs` is [`SUBFORMATS_AND_VMFS`]).
pub const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

/// [`SUBFORMATS`] and `vmfs`.
pub const SUBFORMATS_AND_VMFS: [&str; 6] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
    "vmfs",
];

fn text(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// `qemu-img ARGS`, panicking with its output unless it succeeds; returns its stdout.
fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawning qemu-img: {e}"));
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img convert [-f FROM] -O vmdk [-o OPTS] SRC DST` (`from` and `opts` left out when
/// empty).
pub fn qemu_to_vmdk(src: impl AsRef<Path>, dst: impl AsRef<Path>, from: &str, opts: &str) {
    let mut args = vec!["convert"];
    if !from.is_empty() {
        args.extend(["-f", from]);
    }
    args.extend(["-O", "vmdk"]);
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([text(src.as_ref()), text(dst.as_ref())]);
    qemu_img(&args);
}

/// `qemu-img create -q -f vmdk [-o OPTS] -b BACKING -F vmdk TOP [SIZE]`: an overlay on
/// `backing` (a name as the overlay records it; `opts` and `size` left out when empty).
pub fn qemu_overlay(top: impl AsRef<Path>, backing: &str, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "vmdk"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend(["-b", backing, "-F", "vmdk", text(top.as_ref())]);
    if !size.is_empty() {
        args.push(size);
    }
    qemu_img(&args);
}

/// `qemu-img create -q -f FORMAT [-o OPTS] PATH SIZE` (`opts` left out when empty).
pub fn qemu_create_as(format: &str, path: impl AsRef<Path>, size: &str, opts: &str) {
    let mut args = vec!["create", "-q", "-f", format];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([text(path.as_ref()), size]);
    qemu_img(&args);
}
