//! Helpers for the CLI tests: run `vmdk`, and qemu-img / qemu-io as the oracle.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a command printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run `cmd` to its end, whatever its exit status.
    pub fn of(cmd: &mut Command) -> Run {
        Run::from(
            cmd.output()
                .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}")),
        )
    }

    /// The stdout, after asserting the exit status.
    pub fn expect(self, code: i32, what: &str) -> String {
        assert_eq!(
            self.code, code,
            "{what}: exit status {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self.stdout
    }

    /// Parse stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// The `vmdk` binary with `args` (and no RUST_LOG), to add to before running it.
pub fn vmdk_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmdk"));
    c.args(args).env_remove("RUST_LOG");
    c
}

/// Assert that `text` contains `needle` (both `AsRef<str>`), printing the text (after a
/// context given as `format!` arguments, if any) when it does not.
macro_rules! assert_contains {
    ($text:expr, $needle:expr $(,)?) => {
        match (&$text, &$needle) {
            (text, needle) => {
                let (text, needle) = (AsRef::<str>::as_ref(text), AsRef::<str>::as_ref(needle));
                assert!(text.contains(needle), "{needle:?} not in:\n{text}");
            }
        }
    };
    ($text:expr, $needle:expr, $($context:tt)+) => {
        match (&$text, &$needle) {
            (text, needle) => {
                let (text, needle) = (AsRef::<str>::as_ref(text), AsRef::<str>::as_ref(needle));
                assert!(
                    text.contains(needle),
                    "{}: {needle:?} not in:\n{text}",
                    format_args!($($context)+)
                );
            }
        }
    };
}
pub(crate) use assert_contains;

/// Run the `vmdk` binary.
pub fn vmdk(args: &[&str]) -> Run {
    Run::of(&mut vmdk_command(args))
}

/// Run `vmdk ARGS` in `dir`.
pub fn vmdk_in(dir: &Path, args: &[&str]) -> Run {
    Run::of(vmdk_command(args).current_dir(dir))
}

/// Run `vmdk`, expecting success; returns stdout.
pub fn vmdk_ok(args: &[&str]) -> String {
    vmdk(args).expect(0, &format!("vmdk {args:?}"))
}

/// Run a qemu tool.
pub fn tool(name: &str, args: &[&str]) -> Run {
    Run::from(
        Command::new(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}")),
    )
}

/// `qemu-img ARGS`, expecting success; returns stdout.
pub fn qemu_img(args: &[&str]) -> String {
    tool("qemu-img", args).expect(0, &format!("qemu-img {args:?}"))
}

/// `qemu-io -f vmdk -c CMD... IMAGE`, expecting success.
pub fn qemu_io(image: &Path, cmds: &[&str]) -> String {
    let out = qemu_io_as("vmdk", image, cmds);
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {cmds:?}: {out}"
    );
    out
}

/// `qemu-io -f FORMAT -c CMD... IMAGE`, expecting exit status 0; returns its stdout.
pub fn qemu_io_as(format: &str, image: &Path, cmds: &[&str]) -> String {
    let mut args = vec!["-f", format];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let img = s(image);
    args.push(&img);
    tool("qemu-io", &args).expect(0, &format!("qemu-io {cmds:?}"))
}

/// `vmdk io -c CMD... IMAGE` (qemu-io's command language), whatever its exit status.
pub fn vmdk_io(image: &Path, cmds: &[&str]) -> Run {
    let img = s(image);
    let mut args = vec!["io"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(&img);
    vmdk(&args)
}

/// qemu-io's output without its timing lines (which differ run to run).
pub fn untimed(out: &str) -> String {
    out.lines()
        .filter(|l| !l.contains(" ops; "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A path as a string.
pub fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("vmdk-cli-test")
        .tempdir()
        .expect("tempdir")
}

/// `qemu-img create -f vmdk [-o OPTS] PATH SIZE`.
pub fn qemu_create(dir: &Path, name: &str, size: &str, opts: &[&str]) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "vmdk"];
    let o = opts.join(",");
    if !o.is_empty() {
        args.push("-o");
        args.push(&o);
    }
    let ps = s(&p);
    args.push(&ps);
    args.push(size);
    qemu_img(&args);
    p
}

/// `qemu-img create -f vmdk PATH SIZE`, then `qemu-io -c WRITE...` on it (expecting success).
pub fn qemu_written(dir: &Path, name: &str, size: &str, writes: &[&str]) -> PathBuf {
    let p = qemu_create(dir, name, size, &[]);
    qemu_io(&p, writes);
    p
}

/// `qemu-img create -f vmdk -o subformat=SUB PATH SIZE`.
pub fn qemu_create_sub(dir: &Path, name: &str, size: &str, sub: &str) -> PathBuf {
    qemu_create(dir, name, size, &[&format!("subformat={sub}")])
}

/// `qemu-img create -f vmdk -b BACKING -F vmdk PATH [SIZE]`.
pub fn qemu_child(dir: &Path, name: &str, backing: &Path, size: Option<&str>) -> PathBuf {
    let p = dir.join(name);
    let b = backing.file_name().unwrap().to_str().unwrap().to_string();
    let ps = s(&p);
    let mut args = vec!["create", "-q", "-f", "vmdk", "-b", &b, "-F", "vmdk", &ps];
    if let Some(sz) = size {
        args.push(sz);
    }
    qemu_img(&args);
    p
}

/// Where the real-world samples are (read-only): `<repository>/../shared/samples/realworld`.
pub fn samples() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("../shared/samples/realworld");
    assert!(
        dir.join("README.md").is_file(),
        "the real-world VMDK samples are missing: expected them in {} (the shared/ folder \
         beside the repository checkout, as CI lays it out)",
        dir.display()
    );
    dir.canonicalize().expect("canonical samples path")
}

/// A tar header block for `name` of `size` bytes, type `typeflag`, linking to `linkname`,
/// with `magic` and version at offset 257 (`b"ustar\x0000"` POSIX, `b"ustar  \0"` GNU) and a
/// correct checksum.
pub fn tar_block(
    name: &[u8],
    size: u64,
    typeflag: u8,
    linkname: &[u8],
    magic: &[u8; 8],
) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + linkname.len()].copy_from_slice(linkname);
    h[257..265].copy_from_slice(magic);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Patch bytes of a file.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Cut (or extend) a file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Read a little-endian u32 at `offset`.
pub fn read_u32(path: &Path, offset: u64) -> u32 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, offset).unwrap();
    u32::from_le_bytes(b)
}

/// Read a little-endian u64 at `offset`.
pub fn read_u64(path: &Path, offset: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, offset).unwrap();
    u64::from_le_bytes(b)
}

/// Byte offset of grain-table entry `index` of the first grain table of a monolithic sparse
/// file (through the primary grain directory).
pub fn gte_offset(path: &Path, index: u64) -> u64 {
    let gd_sector = read_u64(path, 56);
    let gt_sector = read_u32(path, gd_sector * 512) as u64;
    gt_sector * 512 + index * 4
}

/// Same, through the redundant grain directory.
pub fn rgte_offset(path: &Path, index: u64) -> u64 {
    let rgd_sector = read_u64(path, 48);
    let gt_sector = read_u32(path, rgd_sector * 512) as u64;
    gt_sector * 512 + index * 4
}

pub use vmdk_test_support::Tmpfs;
