//! Shared helpers for integration tests: running qemu-img/qemu-io as the oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{:?} failed: {}\n{}",
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img ARGS...`
pub fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// `qemu-io -f vmdk -c CMD... IMAGE`
pub fn qemu_io(image: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.arg("-f").arg("vmdk");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.arg(image);
    let out = run(&mut c);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {cmds:?}: {out}"
    );
}

/// The raw bytes qemu-img reads from `image`.
pub fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("oracle.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let data = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    data
}

/// Read the whole image with our library.
pub fn our_raw(image: &Path) -> Vec<u8> {
    let img = vmdk::Image::open(image).unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
    let mut buf = vec![0u8; img.size() as usize];
    // Odd-sized chunks cross grain and extent boundaries on purpose.
    let chunk = 3 * 65536 + 4608;
    let mut off = 0;
    while off < buf.len() {
        let n = chunk.min(buf.len() - off);
        img.read_at(&mut buf[off..off + n], off as u64)
            .unwrap_or_else(|e| panic!("read {}: {e}", image.display()));
        off += n;
    }
    buf
}

/// Assert two byte buffers are equal, naming the first differing offset.
pub fn assert_same(what: &str, ours: &[u8], theirs: &[u8]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length differs");
    if let Some(i) = ours.iter().zip(theirs).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i}: ours {:#04x}, qemu {:#04x}",
            ours[i], theirs[i]
        );
    }
}

/// A temp dir with a path helper.
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    pub fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// Write patterned data with qemu-io at offsets that cross grain boundaries.
pub fn scribble(image: &Path) {
    qemu_io(
        image,
        &[
            "write -P 0x11 0 4k",
            "write -P 0x22 60k 8k",
            "write -P 0x33 1M 200k",
            "write -P 0x44 3000k 1k",
        ],
    );
}
