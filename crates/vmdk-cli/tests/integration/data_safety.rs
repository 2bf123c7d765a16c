//! The everyday mistakes that must not cost data: two programs writing one image (QEMU's
//! image locking, both ways, with real qemu-nbd/qemu-io/qemu-img processes), `-U` given to a
//! command that writes (refused by every one, as qemu-img refuses it), converting or
//! creating an image onto itself (also through symlinks and hard links), an image of another
//! format taken for raw, and the path gate judging where a file is rather than how its name
//! is spelled.
//!
//! Nothing here is skipped: qemu-utils is a test dependency (`.ci/run` installs it).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vmdk_test_support::qemu::qemu_overlay;

use crate::common::*;

/// A long-running process holding an image open (an NBD server on a Unix socket); killed
/// and reaped when dropped, so its locks go away with it.
struct Holder {
    child: Child,
    what: String,
}

impl Holder {
    fn start(mut cmd: Command, sock: &Path, image: &Path, what: &str) -> Holder {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let mut h = Holder {
            child,
            what: what.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(sock).is_err() {
            if let Some(st) = h.child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                h.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("{what} exited with {st} before listening: {err}");
            }
            assert!(Instant::now() < deadline, "{what} did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        // QEMU may drop and retake lock bytes while it settles permissions after a client
        // (our probe) connects; wait until its locks on the image are in place and quiet.
        let mut last = String::new();
        let mut stable = 0;
        while stable < 5 {
            let now = locks_on(image);
            if !now.is_empty() && now == last {
                stable += 1;
            } else {
                stable = 0;
            }
            last = now;
            assert!(
                Instant::now() < deadline,
                "{what} took no locks on {}",
                image.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// `qemu-nbd` serving `image` (read-only with `-r` in `extra`).
    fn qemu_nbd(image: &Path, sock: &Path, extra: &[&str]) -> Holder {
        let mut c = Command::new("qemu-nbd");
        c.args(["-t", "-f", "vmdk", "-k"])
            .arg(sock)
            .args(extra)
            .arg(image);
        Holder::start(c, sock, image, &format!("qemu-nbd {extra:?}"))
    }

    /// `vmdk serve` serving `image`.
    fn vmdk_serve(image: &Path, sock: &Path, extra: &[&str]) -> Holder {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vmdk"));
        c.args(["serve", "-t", "-k"])
            .arg(sock)
            .args(extra)
            .arg(image)
            .env_remove("RUST_LOG");
        Holder::start(c, sock, image, &format!("vmdk serve {extra:?}"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.what;
    }
}

/// The byte ranges of the OFD locks on `image`, from /proc/locks.
fn locks_on(image: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(image).unwrap().ino();
    let needle = format!(":{ino} ");
    let mut v: Vec<String> = std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("OFDLCK"))
        .map(|l| {
            l.split_whitespace()
                .rev()
                .take(2)
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    v.sort();
    v.join(",")
}

fn sha(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn refused(r: &Run, needle: &str, what: &str) {
    assert_ne!(
        r.code, 0,
        "{what} should fail\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert_contains!(r.stderr, needle, "{what}");
}

fn qemu_clean(image: &Path) {
    let out = tool("qemu-img", &["check", &s(image)]);
    assert_eq!(out.code, 0, "qemu-img check: {}{}", out.stdout, out.stderr);
}

// ---- locking ---------------------------------------------------------------------------

#[test]
fn qemu_nbd_writer_excludes_vmdk_writers_and_readers_but_not_force_share() {
    let dir = tempdir();
    let img = qemu_written(dir.path(), "a.vmdk", "16M", &["write -P 0x5a 0 1M"]);
    let sock = dir.path().join("nbd.sock");
    let held = Holder::qemu_nbd(&img, &sock, &[]);
    let i = s(&img);

    refused(
        &vmdk(&["io", "-c", "write -P 1 0 4k", &i]),
        "Failed to get \"write\" lock",
        "vmdk io write",
    );
    let r = vmdk(&["info", &i]);
    refused(&r, "Failed to get shared \"write\" lock", "vmdk info");
    assert_contains!(r.stderr, "Is another process using the image");
    refused(
        &vmdk(&["map", &i]),
        "Failed to get shared \"write\" lock",
        "vmdk map",
    );
    refused(
        &vmdk(&["convert", "-O", "raw", &i, &s(&dir.path().join("x.raw"))]),
        "lock",
        "vmdk convert",
    );
    // -U reads anyway, as qemu-img -U does.
    vmdk_ok(&["info", "-U", &i]);
    vmdk_ok(&["map", "-U", "--output=json", &i]);
    vmdk_ok(&["check", "-U", &i]);
    let out = dir.path().join("u.raw");
    vmdk_ok(&["convert", "-U", "-O", "raw", &i, &s(&out)]);
    let data = std::fs::read(&out).unwrap();
    assert!(data[..1 << 20].iter().all(|&b| b == 0x5a));
    vmdk_ok(&["io", "-U", "-r", "-c", "read -P 0x5a 0 4k", &i]);
    // -U is for readers only.
    refused(
        &vmdk(&["io", "-U", "-c", "write 0 4k", &i]),
        "force-share",
        "vmdk io -U write",
    );
    drop(held);
    // Once the writer is gone the image is ours again, and nothing was damaged.
    vmdk_ok(&["io", "-c", "write -P 0x11 0 4k", &i]);
    qemu_clean(&img);
}

#[test]
fn vmdk_serve_writer_excludes_qemu_writers_and_readers_but_not_force_share() {
    let dir = tempdir();
    let img = qemu_create(dir.path(), "a.vmdk", "16M", &[]);
    let sock = dir.path().join("nbd.sock");
    let held = Holder::vmdk_serve(&img, &sock, &[]);
    let i = s(&img);

    refused(
        &tool("qemu-io", &["-f", "vmdk", "-c", "write 0 4k", &i]),
        "Failed to get \"write\" lock",
        "qemu-io write",
    );
    refused(
        &tool("qemu-img", &["info", &i]),
        "Failed to get shared \"write\" lock",
        "qemu-img info",
    );
    let u = tool("qemu-img", &["info", "-U", &i]);
    assert_eq!(u.code, 0, "qemu-img info -U: {}", u.stderr);
    let r = tool(
        "qemu-io",
        &["-r", "-U", "-f", "vmdk", "-c", "read 0 4k", &i],
    );
    assert_eq!(r.code, 0, "qemu-io -r -U: {}", r.stderr);
    // A second vmdk writer is refused too.
    refused(
        &vmdk(&["io", "-c", "write 0 4k", &i]),
        "Failed to get \"write\" lock",
        "second vmdk writer",
    );
    let sock2 = dir.path().join("nbd2.sock");
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmdk"));
    let out = c
        .args(["serve", "-k"])
        .arg(&sock2)
        .arg(&img)
        .output()
        .unwrap();
    assert!(!out.status.success(), "second vmdk serve started");
    assert!(String::from_utf8_lossy(&out.stderr).contains("lock"));
    drop(held);
    qemu_clean(&img);
}

#[test]
fn readers_share_with_readers() {
    let dir = tempdir();
    let img = qemu_create(dir.path(), "a.vmdk", "16M", &[]);
    let sock = dir.path().join("nbd.sock");
    let i = s(&img);
    {
        let _held = Holder::vmdk_serve(&img, &sock, &["-r"]);
        qemu_img(&["info", &i]);
        let r = tool("qemu-io", &["-r", "-f", "vmdk", "-c", "read 0 4k", &i]);
        assert_eq!(r.code, 0, "qemu-io -r under a vmdk reader: {}", r.stderr);
        // qemu-io without -r opens for writing, which a reader excludes.
        refused(
            &tool("qemu-io", &["-f", "vmdk", "-c", "write 0 4k", &i]),
            "Failed to get \"write\" lock",
            "qemu-io write under a vmdk reader",
        );
    }
    let sock2 = dir.path().join("nbd2.sock");
    let _held = Holder::qemu_nbd(&img, &sock2, &["-r"]);
    vmdk_ok(&["info", &i]);
    vmdk_ok(&["check", &i]);
    refused(
        &vmdk(&["io", "-c", "write 0 4k", &i]),
        "Failed to get \"write\" lock",
        "vmdk write under a qemu reader",
    );
}

#[test]
fn every_file_of_the_image_is_locked() {
    let dir = tempdir();
    // A flat extent: QEMU locks the data file too.
    let flat = qemu_create_sub(dir.path(), "f.vmdk", "8M", "monolithicFlat");
    let sock = dir.path().join("f.sock");
    let held = Holder::vmdk_serve(&flat, &sock, &[]);
    let data = dir.path().join("f-flat.vmdk");
    refused(
        &tool("qemu-io", &["-f", "raw", "-c", "truncate 4M", &s(&data)]),
        "lock",
        "qemu resizing the flat extent of a served image",
    );
    drop(held);

    // Backing files: a chain served for writing keeps writers off its base.
    let base = qemu_create(dir.path(), "base.vmdk", "8M", &[]);
    let top = qemu_child(dir.path(), "top.vmdk", &base, None);
    let sock = dir.path().join("t.sock");
    let _held = Holder::vmdk_serve(&top, &sock, &[]);
    refused(
        &tool("qemu-io", &["-f", "vmdk", "-c", "write 0 4k", &s(&base)]),
        "Failed to get \"write\" lock",
        "qemu-io writing the base of a served overlay",
    );
    // Reading the base is fine.
    qemu_img(&["info", &s(&base)]);
}

#[test]
fn twogb_extents_locked_against_qemu() {
    let dir = tempdir();
    let img = qemu_create_sub(dir.path(), "s.vmdk", "5G", "twoGbMaxExtentSparse");
    {
        let _held = Holder::qemu_nbd(&img, &dir.path().join("q.sock"), &[]);
        refused(
            &vmdk(&["io", "-c", "write 0 4k", &s(&img)]),
            "Failed to get \"write\" lock",
            "vmdk writing a split image qemu serves",
        );
    }
    // Our locks cover every extent, not only the descriptor: qemu opening one extent file
    // on its own is kept out.
    let _held = Holder::vmdk_serve(&img, &dir.path().join("v.sock"), &[]);
    let ext = dir.path().join("s-s002.vmdk");
    refused(
        &tool("qemu-img", &["info", "-f", "vmdk", &s(&ext)]),
        "Failed to get shared \"write\" lock",
        "qemu-img info of an extent of a served image",
    );
}

// ---- -U means read-only ------------------------------------------------------------------
//
// qemu-img (10.0.2) refuses force-share for anything it opens to write: `check -r`,
// `snapshot -c/-a/-d`, `bench -w` and qemu-io without `-r` say `Could not open 'X':
// force-share=on can only be used with read-only images` (qemu-io: `can't open device X:
// ...`) and exit 1; `resize`, `commit` and `amend` (and qemu-nbd) do not take `-U` at all
// (`invalid option -- 'U'`, exit 1). Ours refuse `-U` in every command that writes the image,
// with qemu's message after our usual `vmdk: 'X': ` and exit 1, before opening anything:
// the files are left as they were. `convert -U` shares its sources only, as qemu-img's does:
// the target is never opened shared.

/// qemu's refusal of force-share for writers, word for word.
const FORCE_SHARE: &str = "force-share=on can only be used with read-only images";

/// The files of an overlay and its base, 16 MiB with data in both.
fn chain(d: &Path) -> (PathBuf, PathBuf) {
    let base = qemu_written(d, "base.vmdk", "16M", &["write -P 0x11 0 1M"]);
    let top = qemu_child(d, "top.vmdk", &base, None);
    qemu_io(&top, &["write -P 0x22 1M 1M"]);
    (base, top)
}

/// Ours refuses: exit 1, qemu's message naming `image`, nothing on stdout, every file in
/// `files` as it was.
fn ours_refuse_u(args: &[&str], image: &Path, files: &[&Path]) {
    let before: Vec<Vec<u8>> = files.iter().map(|f| sha(f)).collect();
    let r = vmdk(args);
    assert_eq!(r.code, 1, "vmdk {args:?}: {}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stderr,
        format!("vmdk: '{}': {FORCE_SHARE}\n", s(image)),
        "vmdk {args:?}"
    );
    assert_eq!(r.stdout, "", "vmdk {args:?}");
    for (f, b) in files.iter().zip(before) {
        assert!(sha(f) == b, "vmdk {args:?} changed {}", f.display());
    }
}

/// qemu-img refuses the same way: exit 1, `qemu-img: Could not open 'IMAGE': ` and the
/// message.
fn qemu_refuses_u(args: &[&str], image: &Path) {
    let r = tool("qemu-img", args);
    assert_eq!(r.code, 1, "qemu-img {args:?}: {}{}", r.stdout, r.stderr);
    assert_eq!(
        r.stderr,
        format!("qemu-img: Could not open '{}': {FORCE_SHARE}\n", s(image)),
        "qemu-img {args:?}"
    );
}

/// qemu-img has no `-U` for this writer: exit 1, "invalid option".
fn qemu_takes_no_u(args: &[&str]) {
    let r = tool("qemu-img", args);
    assert_eq!(r.code, 1, "qemu-img {args:?}: {}{}", r.stdout, r.stderr);
    assert_contains!(r.stderr, "invalid option -- 'U'", "qemu-img {args:?}");
}

#[test]
fn resize_refuses_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    qemu_takes_no_u(&["resize", "-U", &i, "32M"]);
    ours_refuse_u(&["resize", "-U", &i, "32M"], &img, &[&img]);
    ours_refuse_u(&["resize", "-U", &i, "+1M"], &img, &[&img]);
    ours_refuse_u(&["resize", "-U", "--shrink", &i, "8M"], &img, &[&img]);
    vmdk_ok(&["resize", &i, "32M"]);
}

#[test]
fn rebase_refuses_force_share() {
    let d = tempdir();
    let (base, top) = chain(d.path());
    let other = qemu_create(d.path(), "other.vmdk", "16M", &[]);
    let t = s(&top);
    // qemu-img cannot rebase a VMDK at all (on qcow2 its -U shares only the backing files it
    // reads): exit 1 either way.
    for args in [
        &["rebase", "-U", "-b", "other.vmdk", "-F", "vmdk", &t][..],
        &["rebase", "-U", "-u", "-b", "other.vmdk", "-F", "vmdk", &t],
    ] {
        let r = tool("qemu-img", args);
        assert_eq!(r.code, 1, "qemu-img {args:?}: {}", r.stderr);
        ours_refuse_u(args, &top, &[&top, &base, &other]);
    }
    ours_refuse_u(&["rebase", "-U", "-b", "", &t], &top, &[&top, &base]);
    vmdk_ok(&["rebase", "-b", "other.vmdk", "-F", "vmdk", &t]);
}

#[test]
fn check_repair_refuses_force_share() {
    let d = tempdir();
    let img = qemu_written(d.path(), "a.vmdk", "16M", &["write -P 0x11 0 1M"]);
    let i = s(&img);
    for mode in ["all", "leaks"] {
        let args = ["check", "-U", "-r", mode, &i];
        qemu_refuses_u(&args, &img);
        ours_refuse_u(&args, &img, &[&img]);
    }
    // Before anything is opened: a missing file is refused the same way, by both.
    let missing = d.path().join("missing.vmdk");
    let m = s(&missing);
    qemu_refuses_u(&["check", "-U", "-r", "all", &m], &missing);
    ours_refuse_u(&["check", "-U", "-r", "all", &m], &missing, &[]);
    // Checking without repairing reads: -U is fine there, for both.
    assert_eq!(tool("qemu-img", &["check", "-U", &i]).code, 0);
    vmdk_ok(&["check", "-U", &i]);
}

#[test]
fn commit_refuses_force_share() {
    let d = tempdir();
    let (base, top) = chain(d.path());
    let t = s(&top);
    qemu_takes_no_u(&["commit", "-U", &t]);
    ours_refuse_u(&["commit", "-U", &t], &top, &[&top, &base]);
    ours_refuse_u(&["commit", "-U", "-d", &t], &top, &[&top, &base]);
}

#[test]
fn compact_refuses_force_share() {
    // No qemu-img counterpart (VMware's vdiskmanager -k).
    let d = tempdir();
    let img = qemu_written(d.path(), "a.vmdk", "16M", &["write -P 0 0 1M"]);
    ours_refuse_u(&["compact", "-U", &s(&img)], &img, &[&img]);
}

#[test]
fn amend_refuses_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    let args = ["amend", "-U", "-o", "adapter_type=lsilogic", &i];
    qemu_takes_no_u(&args);
    ours_refuse_u(&args, &img, &[&img]);
}

#[test]
fn snapshot_changes_refuse_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    for op in ["-c", "-a", "-d"] {
        let args = ["snapshot", "-U", op, "s1", &i];
        qemu_refuses_u(&args, &img);
        ours_refuse_u(&args, &img, &[&img]);
    }
    // Listing reads.
    assert_eq!(tool("qemu-img", &["snapshot", "-U", "-l", &i]).code, 0);
    vmdk_ok(&["snapshot", "-U", "-l", &i]);
}

#[test]
fn bench_writes_refuse_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    let args = ["bench", "-U", "-w", "-c", "1", &i];
    qemu_refuses_u(&args, &img);
    ours_refuse_u(&args, &img, &[&img]);
    assert_eq!(tool("qemu-img", &["bench", "-U", "-c", "1", &i]).code, 0);
    vmdk_ok(&["bench", "-U", "-c", "1", &i]);
}

#[test]
fn io_writes_refuse_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    for cmd in ["write -P 1 0 4k", "write -z 0 64k", "discard 0 64k"] {
        let r = tool("qemu-io", &["-U", "-f", "vmdk", "-c", cmd, &i]);
        assert_eq!(r.code, 1, "qemu-io {cmd}: {}{}", r.stdout, r.stderr);
        assert_eq!(
            r.stderr,
            format!("qemu-io: can't open device {i}: {FORCE_SHARE}\n")
        );
        ours_refuse_u(&["io", "-U", "-c", cmd, &i], &img, &[&img]);
    }
    // Read-only, -U reads, in both (ours opens read-only by itself when it only reads).
    let r = tool(
        "qemu-io",
        &["-U", "-r", "-f", "vmdk", "-c", "read 0 4k", &i],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    vmdk_ok(&["io", "-U", "-r", "-c", "read 0 4k", &i]);
    vmdk_ok(&["io", "-U", "-c", "read 0 4k", &i]);
}

#[test]
fn serve_and_mount_read_write_refuse_force_share() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    let i = s(&img);
    let sock = d.path().join("nbd.sock");
    // qemu-nbd takes no -U.
    let r = tool("qemu-nbd", &["-U", "-k", &s(&sock), "-f", "vmdk", &i]);
    assert_eq!(r.code, 1, "qemu-nbd -U: {}", r.stderr);
    assert_contains!(r.stderr, "invalid option -- 'U'");
    ours_refuse_u(&["serve", "-U", "-k", &s(&sock), &i], &img, &[&img]);
    assert!(!sock.exists(), "a refused server left its socket");
    // Read-only, -U serves: while a writer holds the image, too.
    let held = Holder::qemu_nbd(&img, &d.path().join("holder.sock"), &[]);
    let ro = Holder::vmdk_serve(&img, &sock, &["-r", "-U"]);
    drop(ro);
    drop(held);
    // Refused before FUSE is asked for anything: no FUSE needed.
    let mnt = d.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ours_refuse_u(&["mount", "-U", "--rw", &i, &s(&mnt)], &img, &[&img]);
}

#[test]
fn convert_shares_its_sources_never_its_target() {
    let d = tempdir();
    let src = qemu_written(d.path(), "src.vmdk", "16M", &["write -P 0x33 0 1M"]);
    let dst = qemu_create(d.path(), "dst.vmdk", "16M", &[]);
    let (sp, dp) = (s(&src), s(&dst));
    // A writer holds the source: -U reads it anyway, into a new file or onto an existing
    // target (-n), for both.
    let held = Holder::qemu_nbd(&src, &d.path().join("src.sock"), &[]);
    for (prog, out) in [("qemu-img", "theirs.vmdk"), ("vmdk", "ours.vmdk")] {
        let out = s(&d.path().join(out));
        let args = ["convert", "-U", "-O", "vmdk", &sp, &out];
        let r = if prog == "vmdk" {
            vmdk(&args)
        } else {
            tool(prog, &args)
        };
        assert_eq!(r.code, 0, "{prog} {args:?}: {}", r.stderr);
        let args = ["convert", "-U", "-n", "-O", "vmdk", &sp, &dp];
        let r = if prog == "vmdk" {
            vmdk(&args)
        } else {
            tool(prog, &args)
        };
        assert_eq!(r.code, 0, "{prog} {args:?}: {}", r.stderr);
    }
    drop(held);
    qemu_io(&dst, &["read -P 0x33 0 1M"]);
    // A writer holds the target: -U does not open it shared; both are refused by the lock
    // and leave it alone.
    let held = Holder::qemu_nbd(&dst, &d.path().join("dst.sock"), &[]);
    let before = sha(&dst);
    let args = ["convert", "-U", "-n", "-O", "vmdk", &sp, &dp];
    refused(
        &tool("qemu-img", &args),
        "Failed to get \"write\" lock",
        "qemu-img convert -U -n",
    );
    refused(
        &vmdk(&args),
        "Failed to get \"write\" lock",
        "vmdk convert -U -n",
    );
    assert!(sha(&dst) == before, "the held target changed");
    drop(held);
}

// ---- self-overwrite -----------------------------------------------------------------------

#[test]
fn convert_and_create_never_overwrite_their_input() {
    let dir = tempdir();
    let d = dir.path();
    let img = qemu_written(d, "ex.vmdk", "8M", &["write -P 0x77 0 256k"]);
    let flat = qemu_create_sub(d, "fl.vmdk", "8M", "monolithicFlat");
    let base = qemu_create(d, "base.vmdk", "8M", &[]);
    let top = qemu_child(d, "top.vmdk", &base, None);
    std::os::unix::fs::symlink("ex.vmdk", d.join("sym.vmdk")).unwrap();
    std::fs::hard_link(&img, d.join("hard.vmdk")).unwrap();
    std::fs::hard_link(d.join("fl-flat.vmdk"), d.join("flat-hard.raw")).unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = [
        "ex.vmdk",
        "fl.vmdk",
        "fl-flat.vmdk",
        "base.vmdk",
        "top.vmdk",
    ]
    .iter()
    .map(|n| (d.join(n), sha(&d.join(n))))
    .collect();
    let i = s(&img);
    let cases: Vec<Vec<String>> = vec![
        vec![
            "convert".into(),
            "-O".into(),
            "vmdk".into(),
            i.clone(),
            i.clone(),
        ],
        vec![
            "convert".into(),
            "-O".into(),
            "raw".into(),
            i.clone(),
            i.clone(),
        ],
        vec![
            "convert".into(),
            "-U".into(),
            "-O".into(),
            "vmdk".into(),
            i.clone(),
            i.clone(),
        ],
        vec![
            "convert".into(),
            "-O".into(),
            "vmdk".into(),
            "-o".into(),
            "subformat=streamOptimized".into(),
            i.clone(),
            s(&d.join("sym.vmdk")),
        ],
        vec![
            "convert".into(),
            "-O".into(),
            "raw".into(),
            i.clone(),
            s(&d.join("hard.vmdk")),
        ],
        // An extent file of the source, by its own name and by a hard link.
        vec![
            "convert".into(),
            "-O".into(),
            "raw".into(),
            s(&flat),
            s(&d.join("fl-flat.vmdk")),
        ],
        vec![
            "convert".into(),
            "-O".into(),
            "raw".into(),
            s(&flat),
            s(&d.join("flat-hard.raw")),
        ],
        // The backing file of the source.
        vec![
            "convert".into(),
            "-O".into(),
            "raw".into(),
            s(&top),
            s(&base),
        ],
        // A raw source onto itself.
        vec![
            "convert".into(),
            "-f".into(),
            "raw".into(),
            "-O".into(),
            "raw".into(),
            s(&d.join("fl-flat.vmdk")),
            s(&d.join("flat-hard.raw")),
        ],
        vec![
            "create".into(),
            "-b".into(),
            "ex.vmdk".into(),
            "-F".into(),
            "vmdk".into(),
            i.clone(),
        ],
        vec![
            "create".into(),
            "-b".into(),
            "ex.vmdk".into(),
            "-F".into(),
            "vmdk".into(),
            s(&d.join("hard.vmdk")),
        ],
    ];
    for c in &cases {
        let args: Vec<&str> = c.iter().map(|a| a.as_str()).collect();
        let r = vmdk(&args);
        assert_ne!(r.code, 0, "{args:?} succeeded");
        assert_contains!(r.stderr, "refusing to overwrite", "{args:?}");
    }
    for (p, bytes) in &before {
        assert!(sha(p) == *bytes, "{} changed", p.display());
    }
    qemu_clean(&img);
    // A different output is fine, of course.
    vmdk_ok(&["convert", "-O", "vmdk", &i, &s(&d.join("copy.vmdk"))]);
    qemu_img(&["compare", &i, &s(&d.join("copy.vmdk"))]);
}

#[test]
fn creating_over_an_image_in_use_is_refused() {
    let dir = tempdir();
    let img = qemu_written(dir.path(), "busy.vmdk", "8M", &["write -P 0x33 0 64k"]);
    let before = sha(&img);
    let sock = dir.path().join("b.sock");
    let held = Holder::qemu_nbd(&img, &sock, &["-r"]);
    let src = qemu_create(dir.path(), "other.vmdk", "8M", &[]);
    // qemu-img refuses to truncate an image another process has open; so do we.
    refused(
        &vmdk(&["create", &s(&img), "8M"]),
        "lock",
        "create over a served image",
    );
    refused(
        &vmdk(&["convert", "-O", "raw", &s(&src), &s(&img)]),
        "lock",
        "convert onto a served image",
    );
    drop(held);
    assert!(sha(&img) == before, "the image in use was changed");
}

// ---- format detection ---------------------------------------------------------------------

/// Files of other formats: made by qemu-img where it can make them, by hand (the header
/// fields their probes look at) where it cannot.
fn foreign_files(d: &Path) -> Vec<(PathBuf, &'static str, &'static str)> {
    let mut v = Vec::new();
    for (fmt, opts, desc) in [
        ("qcow2", "", "qcow2"),
        ("qcow", "", "qcow (version 1)"),
        ("qed", "", "QED"),
        ("vdi", "", "VirtualBox VDI"),
        ("vpc", "", "VHD (Virtual PC)"),
        ("vpc", "subformat=fixed", "VHD (Virtual PC)"),
        ("vhdx", "", "VHDX"),
        ("parallels", "", "Parallels"),
    ] {
        let p = d.join(format!(
            "disk-{fmt}{}.img",
            if opts.is_empty() { "" } else { "-fixed" }
        ));
        let ps = s(&p);
        let mut args = vec!["create", "-q", "-f", fmt];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([ps.as_str(), "4M"]);
        qemu_img(&args);
        v.push((p, fmt, desc));
    }
    let luks = d.join("disk.luks");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=123456",
        "-f",
        "luks",
        "-o",
        "key-secret=sec0,iter-time=10",
        &s(&luks),
        "4M",
    ]);
    v.push((luks, "luks", "LUKS-encrypted"));
    let mut iso = vec![0u8; 64 << 10];
    iso[0x8000..0x8007].copy_from_slice(b"\x01CD001\x01");
    std::fs::write(d.join("cd.iso"), iso).unwrap();
    v.push((d.join("cd.iso"), "iso9660", "ISO 9660 (CD/DVD)"));
    let mut dmg = vec![0x41u8; 8192];
    let n = dmg.len();
    dmg[n - 512..n - 508].copy_from_slice(b"koly");
    std::fs::write(d.join("a.dmg"), dmg).unwrap();
    v.push((d.join("a.dmg"), "dmg", "Apple DMG"));
    let mut bochs = vec![0u8; 4096];
    bochs[..23].copy_from_slice(b"Bochs Virtual HD Image\0");
    std::fs::write(d.join("b.bochs"), bochs).unwrap();
    v.push((d.join("b.bochs"), "bochs", "Bochs"));
    let mut cloop =
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
            .to_vec();
    cloop.resize(4096, 0);
    std::fs::write(d.join("c.cloop"), cloop).unwrap();
    v.push((d.join("c.cloop"), "cloop", "cloop"));
    v
}

#[test]
fn other_formats_are_named_and_refused_unless_raw_is_asked_for() {
    let dir = tempdir();
    let d = dir.path();
    for (file, name, desc) in foreign_files(d) {
        let f = s(&file);
        let out = d.join("out.vmdk");
        // qcow2 is read by convert, map, compare and dd (tests/qcow2.rs); check and io
        // still name and refuse it.
        let readable = name == "qcow2";
        if !readable {
            let r = vmdk(&["convert", "-O", "vmdk", &f, &s(&out)]);
            refused(
                &r,
                &format!("is a {desc} image"),
                &format!("convert {name}"),
            );
            assert!(!out.exists(), "convert of {name} created its output");
        }
        let cmds: &[&[&str]] = if readable {
            &[&["check"]]
        } else {
            &[&["map"], &["check"], &["compare", &f]]
        };
        for cmd in cmds {
            let mut args = cmd.to_vec();
            args.push(&f);
            let r = vmdk(&args);
            assert_ne!(r.code, 0, "{args:?}");
            assert_contains!(r.stderr, &format!("is a {desc} image"), "{args:?}");
        }
        let r = vmdk(&["io", "-c", "read 0 512", &f]);
        refused(&r, &format!("is a {desc} image"), &format!("io on {name}"));
        // info says what it is.
        let info = vmdk(&["info", "--output=json", &f]).json();
        assert_eq!(info["format"], name, "{}", file.display());
        let human = vmdk_ok(&["info", &f]);
        assert!(human.contains(&format!("file format: {name}")), "{human}");
        // -f raw reads the bytes as they are.
        let raw = d.join("out.raw");
        vmdk_ok(&["convert", "-f", "raw", "-O", "raw", &f, &s(&raw)]);
        let want = std::fs::read(&file).unwrap();
        let mut got = std::fs::read(&raw).unwrap();
        got.truncate(want.len());
        assert!(got == want, "{name} as raw");
        std::fs::remove_file(&raw).unwrap();
    }
    // Sizes where the header has them in a fixed field, as qemu-img reports them.
    for (file, name, _) in foreign_files(d) {
        if !["qcow2", "qcow", "qed", "vdi", "vpc", "parallels"].contains(&name) {
            continue;
        }
        let ours = vmdk(&["info", "--output=json", &s(&file)]).json();
        let theirs: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &s(&file)])).unwrap();
        if theirs["format"] != name {
            // qemu probes only the start of a file, so it takes a fixed VHD (raw data plus
            // a footer) for raw; we name it, and its size is the footer's.
            assert_eq!(
                (name, &theirs["format"]),
                ("vpc", &serde_json::json!("raw"))
            );
            assert_eq!(
                ours["virtual-size"], 4212736,
                "fixed VHD sized by its CHS geometry"
            );
            continue;
        }
        assert_eq!(ours["virtual-size"], theirs["virtual-size"], "{name}");
    }
}

// ---- the path gate ---------------------------------------------------------------------------

#[test]
fn path_gate_judges_location() {
    let top = tempdir();
    let t = top.path().canonicalize().unwrap();
    std::fs::create_dir_all(t.join("vm")).unwrap();
    std::fs::create_dir_all(t.join("shared/deep")).unwrap();
    std::fs::create_dir_all(t.join("elsewhere")).unwrap();
    let base = qemu_written(&t.join("vm"), "base.vmdk", "8M", &["write -P 0x42 0 64k"]);

    // qemu-img writes the absolute path the user typed: inside the directory, so it opens.
    let abs_child = t.join("vm/abs.vmdk");
    qemu_overlay(&abs_child, &s(&base), "", "");
    vmdk_ok(&["io", "-c", "read -P 0x42 0 64k", &s(&abs_child)]);
    vmdk_ok(&["map", &s(&abs_child)]);
    // And so does ours.
    let ours = t.join("vm/ours.vmdk");
    vmdk_ok(&["create", "-q", "-b", &s(&base), "-F", "vmdk", &s(&ours)]);
    vmdk_ok(&["io", "-c", "read -P 0x42 0 64k", &s(&ours)]);

    // Outside the directory: refused with the offending name, the flag hint only from the
    // CLI; --allow-path and VMDK_ALLOW_PATHS admit exactly the named tree.
    let shared_base = qemu_create(&t.join("shared/deep"), "sb.vmdk", "8M", &[]);
    qemu_io(&shared_base, &["write -P 0x24 0 64k"]);
    let other = qemu_create(&t.join("elsewhere"), "o.vmdk", "8M", &[]);
    for (child, backing) in [
        ("rel.vmdk", "../shared/deep/sb.vmdk".to_string()),
        ("absout.vmdk", s(&shared_base)),
    ] {
        let c = t.join("vm").join(child);
        let r = vmdk(&["create", "-b", &backing, "-F", "vmdk", &s(&c)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_contains!(r.stderr, "--allow-path", "create tells how to open it");
        let r = vmdk(&["io", "-c", "read -P 0x24 0 64k", &s(&c)]);
        refused(&r, &backing, "outside without --allow-path");
        assert_contains!(r.stderr, "lies outside the image's directory");
        assert_contains!(r.stderr, "hint: ");
        vmdk_ok(&[
            "io",
            "--allow-path",
            &s(&t.join("shared")),
            "-c",
            "read -P 0x24 0 64k",
            &s(&c),
        ]);
        Run::of(
            vmdk_command(&["io", "-c", "read -P 0x24 0 64k", &s(&c)]).env(
                "VMDK_ALLOW_PATHS",
                format!("{}:{}", s(&t.join("nope")), s(&t.join("shared/deep"))),
            ),
        )
        .expect(0, "VMDK_ALLOW_PATHS");
        // Another tree stays shut.
        refused(
            &vmdk(&[
                "io",
                "--allow-path",
                &s(&t.join("elsewhere")),
                "-c",
                "read 0 4k",
                &s(&c),
            ]),
            "lies outside",
            "allowed the wrong tree",
        );
    }
    let _ = other;

    // A symlink inside the directory that leads out is judged by where it leads.
    std::os::unix::fs::symlink(&shared_base, t.join("vm/link.vmdk")).unwrap();
    let via_link = t.join("vm/vialink.vmdk");
    vmdk_ok(&[
        "create",
        "-q",
        "-b",
        "link.vmdk",
        "-F",
        "vmdk",
        &s(&via_link),
    ]);
    refused(
        &vmdk(&["map", &s(&via_link)]),
        "resolves to",
        "symlink leading out",
    );
    vmdk_ok(&["map", "--allow-path", &s(&t.join("shared")), &s(&via_link)]);

    // Devices are refused even when their directory is allowed.
    let desc = t.join("vm/dev.vmdk");
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"/dev/zero\" 0\n",
    )
    .unwrap();
    refused(&vmdk(&["info", &s(&desc)]), "/dev/zero", "device extent");
    refused(
        &vmdk(&["map", "--allow-path", "/dev", &s(&desc)]),
        "device",
        "device extent in an allowed directory",
    );
}
