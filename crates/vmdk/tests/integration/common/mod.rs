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

/// The raw bytes qemu-img reads from `image` (with `-U`: the test may hold it open).
pub fn qemu_raw(image: &Path) -> Vec<u8> {
    qemu_raw_as(image, "vmdk", true)
}

/// The raw bytes `qemu-img convert [-U] -f FORMAT -O raw` makes of `image`.
pub fn qemu_raw_as(image: &Path, format: &str, force_share: bool) -> Vec<u8> {
    let raw = image.with_extension("oracle.raw");
    let (image_s, raw_s) = (image.to_str().unwrap(), raw.to_str().unwrap());
    let share: &[&str] = if force_share { &["-U"] } else { &[] };
    qemu_img(
        &[
            &["convert"],
            share,
            &["-f", format, "-O", "raw", image_s, raw_s],
        ]
        .concat(),
    );
    let data = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    data
}

/// Read the whole image with our library (sharing it with a writer the test may still hold
/// open, as `qemu-img -U` does).
pub fn our_raw(image: &Path) -> Vec<u8> {
    let img = vmdk::OpenOptions::new()
        .force_share(true)
        .open(image)
        .unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
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

/// The subformats written in place: every one but streamOptimized (which only appends).
pub const IN_PLACE_SUBFORMATS: [vmdk::Subformat; 5] = [
    vmdk::Subformat::MonolithicSparse,
    vmdk::Subformat::MonolithicFlat,
    vmdk::Subformat::TwoGbMaxExtentSparse,
    vmdk::Subformat::TwoGbMaxExtentFlat,
    vmdk::Subformat::Vmfs,
];

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

pub mod alloc;
pub mod build;
pub mod crash;

/// The bytes qemu reads from `image` in `[offset, offset+len)`, without converting the whole
/// disk: a `raw` node with an offset and size stacked over the vmdk node.
pub fn qemu_raw_range(image: &Path, offset: u64, len: u64) -> Vec<u8> {
    let out = image.with_extension(format!("range-{offset}.raw"));
    let spec = format!(
        "json:{{\"driver\":\"raw\",\"offset\":{offset},\"size\":{len},\"file\":{{\"driver\":\"vmdk\",\
         \"file\":{{\"driver\":\"file\",\"filename\":\"{}\"}}}}}}",
        image.display()
    );
    qemu_img(&["convert", "-O", "raw", &spec, out.to_str().unwrap()]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert_eq!(data.len() as u64, len, "qemu range read length");
    data
}

/// Read `[offset, offset+len)` with our library.
pub fn our_range(img: &vmdk::Image, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    img.read_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {offset}+{len}: {e}"));
    buf
}

/// One `qemu-img map --output=json` entry, in the fields we compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QMap {
    pub start: u64,
    pub length: u64,
    pub depth: u64,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub offset: Option<u64>,
}

/// Merge neighbours the way qemu-img does (same flags, contiguous offsets).
pub fn merge_map(v: Vec<QMap>) -> Vec<QMap> {
    let mut out: Vec<QMap> = Vec::new();
    for e in v {
        if let Some(last) = out.last_mut() {
            let contiguous = match (last.offset, e.offset) {
                (None, None) => true,
                (Some(a), Some(b)) => a + last.length == b,
                _ => false,
            };
            if last.start + last.length == e.start
                && last.depth == e.depth
                && last.present == e.present
                && last.zero == e.zero
                && last.data == e.data
                && contiguous
            {
                last.length += e.length;
                continue;
            }
        }
        out.push(e);
    }
    out
}

/// `qemu-img map --output=json IMAGE`, parsed and merged.
pub fn qemu_map(image: &Path) -> Vec<QMap> {
    qemu_map_args(&[image.to_str().unwrap()])
}

/// `qemu-img map --output=json -f vmdk ARGS...` (options, then the image), parsed and merged.
pub fn qemu_map_args(args: &[&str]) -> Vec<QMap> {
    let out = qemu_img(&[&["map", "--output=json", "-f", "vmdk"], args].concat());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    merge_map(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| QMap {
                start: e["start"].as_u64().unwrap(),
                length: e["length"].as_u64().unwrap(),
                depth: e["depth"].as_u64().unwrap(),
                present: e["present"].as_bool().unwrap(),
                zero: e["zero"].as_bool().unwrap(),
                data: e["data"].as_bool().unwrap(),
                offset: e.get("offset").and_then(|o| o.as_u64()),
            })
            .collect(),
    )
}

/// Our `Image::map` of the whole disk in qemu-img's terms.
pub fn our_map(img: &vmdk::Image) -> Vec<QMap> {
    let entries = img
        .map(0, img.size())
        .unwrap_or_else(|e| panic!("map: {e}"));
    merge_map(entries.iter().map(to_qmap).collect())
}

/// One of our map entries in qemu-img's terms.
pub fn to_qmap(e: &vmdk::MapEntry) -> QMap {
    let (present, zero, data, offset) = match &e.target {
        vmdk::MapTarget::Data { offset, .. } => (true, false, true, Some(*offset)),
        vmdk::MapTarget::Compressed { .. } => (true, false, true, None),
        vmdk::MapTarget::Zero => (true, true, false, None),
        vmdk::MapTarget::Unallocated => (false, true, false, None),
    };
    QMap {
        start: e.start,
        length: e.length,
        depth: e.depth as u64,
        present,
        zero,
        data,
        offset,
    }
}

/// Run `f` on another thread and fail the test if it takes longer than `secs` (a hang), or
/// panics (with the panic message).
pub fn with_timeout<T: Send + 'static>(
    what: &str,
    secs: u64,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let r = f();
        let _ = tx.send(());
        r
    });
    match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: still running after {secs} s (hang?)")
        }
    }
}

/// A small deterministic PRNG (SplitMix64), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Fill `buf[off..off+len]` with a recognisable pattern seeded by `seed` (not constant, so
/// misplaced data is caught).
pub fn pattern(buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = seed ^ (i as u8).wrapping_mul(31) ^ ((i >> 9) as u8);
    }
}

pub use vmdk_test_support::Tmpfs;
