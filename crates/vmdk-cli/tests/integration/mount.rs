//! End-to-end tests of `vmdk mount`: the built binary mounts images qemu-img made, and
//! ordinary tools (cmp, dd, cp, python's lseek, qemu-img, fsck.ext4, debugfs, blkid,
//! losetup, mkfs.ext4, fstrim) use the file it exposes. Afterwards images are checked with
//! qemu directly.
//!
//! FUSE is required: where /dev/fuse or fusermount3 is missing every test fails saying so,
//! unless `VMDK_TEST_NO_FUSE=1` marks the machine as FUSE-less, in which case each test
//! prints why it does nothing. The `fstrim` test also needs root (a loop device, an ext4
//! mount): as any other user it fails, unless `VMDK_TEST_NO_MOUNT=1` says the machine cannot
//! mount. Every mount is guarded: dropping the guard unmounts (lazily if it must) and reaps
//! the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use vmdk_test_support::qemu::qemu_to_vmdk;

use crate::common::*;

const MIB: u64 = 1024 * 1024;

/// How long a mount gets to appear, or a mount process to exit after an unmount.
const DEADLINE: Duration = Duration::from_secs(20);

/// Whether FUSE tests can run here; panics (fails the test) when FUSE is missing and the
/// machine is not marked FUSE-less.
fn fuse_ready(test: &str) -> bool {
    let mut missing = Vec::new();
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse does not exist");
    }
    let fusermount = Command::new("fusermount3")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !fusermount {
        missing.push("fusermount3 is not installed (Debian package fuse3)");
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("VMDK_TEST_NO_FUSE").as_deref() == Ok("1") {
        eprintln!(
            "{test}: not run: {} and VMDK_TEST_NO_FUSE=1 marks this machine as FUSE-less",
            missing.join("; ")
        );
        return false;
    }
    panic!(
        "{test}: FUSE is needed: {}. Install fuse3 and give the test access to /dev/fuse, \
         or set VMDK_TEST_NO_FUSE=1 to mark this machine as FUSE-less",
        missing.join("; ")
    );
}

/// Whether `dir` is a mount point now (per /proc/self/mountinfo).
fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

/// A running `vmdk mount -f`; dropping it unmounts and reaps the process.
struct Mounted {
    child: Option<Child>,
    dir: PathBuf,
}

impl Mounted {
    /// `vmdk mount -f ARGS IMAGE DIR`, once the disk file shows up in DIR.
    fn start(image: &Path, dir: &Path, args: &[&str]) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vmdk"))
            .arg("mount")
            .arg("-f")
            .args(args)
            .arg(image)
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning vmdk mount");
        let mut m = Mounted {
            child: Some(child),
            dir: dir.to_path_buf(),
        };
        let t0 = Instant::now();
        while !is_mounted(dir) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let out = m.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "vmdk mount exited ({status}) before mounting:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                t0.elapsed() < DEADLINE,
                "mount did not appear in {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn disk(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// Wait for the process to exit on its own, at most DEADLINE; its status and stderr.
    fn wait(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("still running");
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("vmdk mount still running {DEADLINE:?} after it should have exited");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Unmount with `fusermount3 -u` and expect the process to exit 0.
    fn unmount(mut self) {
        fusermount_u(&self.dir);
        let (status, err) = self.wait();
        assert!(status.success(), "vmdk mount exited {status}: {err}");
        assert!(!is_mounted(&self.dir));
    }

    /// Send `sig` and expect the process to unmount and exit 0.
    fn signal(mut self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: kill takes plain integers; `pid` is our child, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        let (status, err) = self.wait();
        assert!(status.success(), "vmdk mount exited {status}: {err}");
        assert!(!is_mounted(&self.dir), "still mounted after signal {sig}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.dir)
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t0.elapsed() < DEADLINE {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn fusermount_u(dir: &Path) {
    let r = tool("fusermount3", &["-u", &s(dir)]);
    assert_eq!(r.code, 0, "fusermount3 -u: {}", r.stderr);
}

/// A monolithicSparse image of `size` with recognisable data written by qemu-io, some of it
/// in the last megabyte and some across a 64 KiB grain boundary.
fn populated(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = qemu_create(dir, name, &size.to_string(), &[]);
    qemu_io(
        &p,
        &[
            "write -P 0xab 1M 128k",
            "write -P 0x11 3000k 100k",
            &format!("write -P 0x5c {} 64k", size / 2),
            &format!("write -P 0xee {} 1M", size - MIB),
        ],
    );
    p
}

/// `qemu-img convert -O raw` of `image` into `dir/name`.
fn qemu_raw(image: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    qemu_img(&["convert", "-O", "raw", &s(image), &s(&out)]);
    out
}

fn cmp(a: &Path, b: &Path) {
    let r = tool("cmp", &[&s(a), &s(b)]);
    assert_eq!(r.code, 0, "cmp {a:?} {b:?}: {}{}", r.stdout, r.stderr);
}

#[test]
fn every_subformat_reads_like_qemu() {
    if !fuse_ready("every_subformat_reads_like_qemu") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    // Past 2 GiB, so the twoGbMaxExtent layouts have more than one extent.
    let big = 2048 * MIB + 64 * MIB;
    let small_src = populated(d, "small.vmdk", 64 * MIB);
    let big_src = populated(d, "big.vmdk", big);
    for (sub, src) in [
        ("monolithicSparse", &small_src),
        ("monolithicFlat", &small_src),
        ("streamOptimized", &small_src),
        ("twoGbMaxExtentSparse", &big_src),
        ("twoGbMaxExtentFlat", &big_src),
    ] {
        let img = d.join(format!("{sub}.vmdk"));
        qemu_to_vmdk(src, &img, "", &format!("subformat={sub}"));
        let raw = qemu_raw(&img, d, &format!("{sub}.raw"));
        let m = Mounted::start(&img, &d.join(format!("mnt-{sub}")), &[]);
        let meta = std::fs::metadata(m.disk()).unwrap();
        assert_eq!(meta.len(), std::fs::metadata(&raw).unwrap().len(), "{sub}");
        cmp(&raw, &m.disk());
        // Read-only by default: the file cannot be opened for writing.
        let w = std::fs::OpenOptions::new().write(true).open(m.disk());
        assert!(w.is_err(), "{sub}: read-only mount opened for writing");
        m.unmount();
        std::fs::remove_file(&raw).unwrap();
    }
}

#[test]
fn rw_writes_reach_the_image() {
    if !fuse_ready("rw_writes_reach_the_image") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let img = populated(d, "rw.vmdk", 64 * MIB);
    let expected = qemu_raw(&img, d, "expected.raw");
    let pattern = d.join("pattern");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(&pattern, &bytes).unwrap();
    // The same dd onto the expected raw file and onto the mounted disk: unaligned, over
    // allocated and unallocated grains, and into the last grain.
    let dds = [
        vec!["bs=4096", "seek=250"],   // into the 0xab data and past it
        vec!["bs=1", "seek=12345678"], // unaligned, in a hole
        vec!["bs=512", "seek=131000", "count=72"], // up to the disk's end
    ];
    let m = Mounted::start(&img, &d.join("mnt"), &["--rw"]);
    for target in [expected.clone(), m.disk()] {
        for ops in &dds {
            let mut args = vec![
                format!("if={}", s(&pattern)),
                format!("of={}", s(&target)),
                "conv=notrunc,fsync".into(),
                "status=none".into(),
            ];
            args.extend(ops.iter().map(|o| o.to_string()));
            let r = Command::new("dd").args(&args).output().unwrap();
            assert!(
                r.status.success(),
                "dd {args:?}: {}",
                String::from_utf8_lossy(&r.stderr)
            );
        }
    }
    // Growing or shrinking the disk is refused.
    let trunc = tool("truncate", &["-s", "1M", &s(&m.disk())]);
    assert_ne!(trunc.code, 0, "truncate of the mounted disk succeeded");
    m.unmount();
    let check = tool("qemu-img", &["check", &s(&img)]);
    assert_eq!(check.code, 0, "qemu-img check: {}", check.stdout);
    let got = qemu_raw(&img, d, "got.raw");
    cmp(&expected, &got);
}

#[test]
fn sigterm_and_sigint_flush_and_unmount() {
    if !fuse_ready("sigterm_and_sigint_flush_and_unmount") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let img = qemu_create(d, "s.vmdk", "16M", &[]);
    for (sig, byte) in [(libc::SIGTERM, 0x42u8), (libc::SIGINT, 0x43)] {
        let m = Mounted::start(&img, &d.join("mnt"), &["--rw"]);
        // No fsync: the signal must flush what was written before it unmounts.
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.disk())
            .and_then(|f| {
                use std::os::unix::fs::FileExt;
                f.write_all_at(&[byte; 70000], 5 * MIB)
            })
            .unwrap();
        m.signal(sig);
        let check = tool("qemu-img", &["check", &s(&img)]);
        assert_eq!(check.code, 0, "qemu-img check: {}", check.stdout);
        let out = tool(
            "qemu-io",
            &[
                "-f",
                "vmdk",
                "-c",
                &format!("read -P {byte} 5M 70000"),
                &s(&img),
            ],
        );
        assert!(
            out.stdout.contains("read 70000/70000") && !out.stdout.contains("fail"),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn busy_mount_detaches_on_signal_and_exits_when_released() {
    if !fuse_ready("busy_mount_detaches_on_signal_and_exits_when_released") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let img = populated(d, "b.vmdk", 16 * MIB);
    let mut m = Mounted::start(&img, &d.join("mnt"), &[]);
    let held = std::fs::File::open(m.disk()).unwrap();
    let pid = m.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill takes plain integers; `pid` is our child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    while is_mounted(&m.dir) {
        assert!(t0.elapsed() < DEADLINE, "busy mount not detached");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Detached, yet the open file still reads the disk.
    {
        use std::os::unix::fs::FileExt;
        let mut b = vec![0u8; 4096];
        held.read_exact_at(&mut b, MIB).unwrap();
        assert!(b.iter().all(|&x| x == 0xab));
    }
    drop(held);
    let (status, err) = m.wait();
    assert!(status.success(), "vmdk mount exited {status}: {err}");
}

#[test]
fn seek_data_and_hole_keep_copies_sparse() {
    if !fuse_ready("seek_data_and_hole_keep_copies_sparse") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let size = 64 * MIB;
    let img = populated(d, "h.vmdk", size);
    let raw = qemu_raw(&img, d, "h.raw");
    let m = Mounted::start(&img, &d.join("mnt"), &[]);
    let disk = s(&m.disk());
    // lseek(2) as python's os.lseek issues it, against what qemu wrote.
    let script = format!(
        "import os\n\
         f = os.open({disk:?}, os.O_RDONLY)\n\
         def sk(o, w):\n\
         \x20   try: return os.lseek(f, o, w)\n\
         \x20   except OSError as e: return -e.errno\n\
         print(sk(0, os.SEEK_DATA), sk(1048576, os.SEEK_HOLE), sk(1048576 + 131072, os.SEEK_DATA),\n\
         \x20     sk(0, os.SEEK_HOLE), sk({last}, os.SEEK_HOLE), sk({size}, os.SEEK_DATA))\n",
        last = size - MIB,
    );
    let out = tool("python3", &["-c", &script]).expect(0, "python3 lseek");
    // Data at 1M (128k), 3000k (100k, in 64 KiB grains: 2944k..3136k), 32M, the last 1M.
    let enxio = -libc::ENXIO;
    assert_eq!(
        out.trim(),
        format!(
            "{} {} {} 0 {size} {enxio}",
            MIB,
            MIB + 128 * 1024,
            2944 * 1024
        )
    );
    // cp --sparse=always and qemu-img convert (which asks SEEK_DATA/SEEK_HOLE through its
    // file driver) keep the holes: their copies take about what the data takes.
    let cp = d.join("cp.raw");
    tool("cp", &["--sparse=always", &disk, &s(&cp)]).expect(0, "cp --sparse");
    let conv = d.join("conv.raw");
    qemu_img(&["convert", "-f", "raw", "-O", "raw", &disk, &s(&conv)]);
    for copy in [&cp, &conv] {
        cmp(&raw, copy);
        use std::os::unix::fs::MetadataExt;
        let used = std::fs::metadata(copy).unwrap().blocks() * 512;
        assert!(
            used <= 4 * MIB,
            "{copy:?} takes {used} bytes: holes were filled"
        );
    }
    let map = qemu_img(&["map", "--output=json", "-f", "raw", &disk]);
    assert!(
        map.contains("\"data\": false"),
        "qemu-img map sees no hole: {map}"
    );
    m.unmount();
}

#[test]
fn ext4_checks_clean_through_the_mount() {
    if !fuse_ready("ext4_checks_clean_through_the_mount") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let content = d.join("content");
    std::fs::create_dir_all(content.join("dir")).unwrap();
    let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(content.join("dir/file.txt"), &text).unwrap();
    let raw = d.join("fs.raw");
    tool(
        "mkfs.ext4",
        &["-q", "-F", "-d", &s(&content), &s(&raw), "64M"],
    )
    .expect(0, "mkfs.ext4");
    let img = d.join("fs.vmdk");
    qemu_to_vmdk(&raw, &img, "", "");
    let m = Mounted::start(&img, &d.join("mnt"), &[]);
    let disk = s(&m.disk());
    // Through a read-only loop device where this machine allows one, else on the file.
    let lo = tool("losetup", &["-r", "-f", "--show", &disk]);
    let dev = if lo.code == 0 {
        lo.stdout.trim().to_string()
    } else {
        eprintln!(
            "losetup -r unavailable here ({}); checking the mounted file directly",
            lo.stderr.trim()
        );
        disk.clone()
    };
    let fsck = tool("fsck.ext4", &["-n", "-f", &dev]);
    let blkid = tool("blkid", &["-o", "value", "-s", "TYPE", &dev]);
    let cat = tool("debugfs", &["-R", "cat /dir/file.txt", &dev]);
    if lo.code == 0 {
        tool("losetup", &["-d", &dev]).expect(0, "losetup -d");
    }
    assert_eq!(
        fsck.code, 0,
        "fsck.ext4 -n -f: {}{}",
        fsck.stdout, fsck.stderr
    );
    assert_eq!(blkid.stdout.trim(), "ext4", "blkid: {}", blkid.stderr);
    assert_eq!(cat.stdout, text, "debugfs cat: {}", cat.stderr);
    m.unmount();
}

#[test]
fn daemon_mode_returns_once_mounted() {
    if !fuse_ready("daemon_mode_returns_once_mounted") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let img = populated(d, "dm.vmdk", 16 * MIB);
    let raw = qemu_raw(&img, d, "dm.raw");
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let pid_file = d.join("pid");
    let guard = Mounted {
        child: None,
        dir: mnt.clone(),
    };
    let out = vmdk(&[
        "mount",
        "--name",
        "dm.img",
        "--pid-file",
        &s(&pid_file),
        &s(&img),
        &s(&mnt),
    ]);
    assert_eq!(out.code, 0, "vmdk mount: {}", out.stderr);
    // Ready the moment the command returns, under the chosen name.
    assert!(is_mounted(&mnt));
    cmp(&raw, &mnt.join("dm.img"));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    fusermount_u(&mnt);
    let t0 = Instant::now();
    // SAFETY: kill with signal 0 only asks whether the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            t0.elapsed() < DEADLINE,
            "daemon still running after unmount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_file.exists(), "pid file left behind");
    drop(guard);
}

#[test]
fn hostile_images_fail_to_mount() {
    if !fuse_ready("hostile_images_fail_to_mount") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    let good = populated(d, "good.vmdk", 16 * MIB);
    // A sparse header cut short.
    let truncated = d.join("truncated.vmdk");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..300]).unwrap();
    // A descriptor whose extent leaves the image's directory.
    let sub = d.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(d.join("outside.img"), vec![0u8; MIB as usize]).unwrap();
    let escaping = sub.join("escape.vmdk");
    std::fs::write(
        &escaping,
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"../outside.img\" 0\n\n\
         ddb.virtualHWVersion = \"4\"\n",
    )
    .unwrap();
    for (img, what) in [
        (&truncated, "truncated"),
        (&escaping, "outside the image's directory"),
    ] {
        for foreground in [true, false] {
            let mnt = d.join("mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            let _guard = Mounted {
                child: None,
                dir: mnt.clone(),
            };
            let mut args = vec!["mount"];
            if foreground {
                args.push("-f");
            }
            let (i, m) = (s(img), s(&mnt));
            args.extend([i.as_str(), m.as_str()]);
            let out = vmdk(&args);
            assert_ne!(out.code, 0, "{what}: mounted");
            assert!(
                out.stderr
                    .contains(img.file_name().unwrap().to_str().unwrap())
                    && out.stderr.to_lowercase().contains(what),
                "{what}: unclear error: {}",
                out.stderr
            );
            assert!(!is_mounted(&mnt), "{what}: left a mount behind");
        }
    }
    // And a mount point that is not a directory.
    let out = vmdk(&["mount", &s(&good), &s(&truncated)]);
    assert_ne!(out.code, 0);
    assert_contains!(out.stderr, "not a directory");
}

/// Undo steps run in reverse on drop, so a failing test still unmounts and detaches.
struct Undo(Vec<(String, Vec<String>)>);

impl Undo {
    fn push(&mut self, cmd: &str, args: &[&str]) {
        self.0
            .push((cmd.into(), args.iter().map(|a| a.to_string()).collect()));
    }

    /// Run the last step now (it must succeed).
    fn pop(&mut self) {
        let (cmd, args) = self.0.pop().expect("an undo step");
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        tool(&cmd, &args).expect(0, &format!("{cmd} {args:?}"));
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        while let Some((cmd, args)) = self.0.pop() {
            let _ = Command::new(&cmd).args(&args).status();
        }
    }
}

/// Bytes an image file takes on the host.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Whether this machine can run the test that needs root (loop devices, mounting a file
/// system): it fails, saying what is missing, unless `VMDK_TEST_NO_MOUNT=1` marks the
/// machine as one that cannot mount, in which case the test says why it does nothing.
fn root_ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("VMDK_TEST_NO_MOUNT").as_deref() == Ok("1") {
        eprintln!("{test}: not run: it needs root (losetup, mount) and VMDK_TEST_NO_MOUNT=1");
        return false;
    }
    panic!(
        "{test}: needs root (losetup, mount, as the CI machine runs the tests); set \
         VMDK_TEST_NO_MOUNT=1 to mark this machine as one that cannot mount"
    );
}

/// A guest's `fstrim` gives the space of deleted files back: a 1 GiB image through `vmdk
/// mount --rw`, a loop device, ext4, 200 MiB written and deleted, `fstrim`; the image gives
/// back at least 150 MiB, stops growing when the guest does it again, checks clean (ours
/// and qemu-img's), and the file that stayed is byte-exact, read through ext4 from the
/// image as qemu-img converts it; qemu-img and we read the whole disk alike. Needs root
/// (loop devices, mounting), FUSE and e2fsprogs/util-linux, like the machine the tests run
/// on: anything missing fails the test, saying what.
#[test]
fn fstrim_through_the_mount_gives_space_back() {
    let test = "fstrim_through_the_mount_gives_space_back";
    if !fuse_ready(test) || !root_ready(test) {
        return;
    }
    for (t, package) in [
        ("losetup", "mount"),
        ("fstrim", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
        ("fsck.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
    ] {
        assert!(
            Command::new(t)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok(),
            "{test}: {t} is not installed (Debian package {package})"
        );
    }
    let t = tempdir();
    let d = t.path();
    let img = qemu_create(d, "trim.vmdk", "1G", &[]);
    let fs = d.join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    let m = Mounted::start(&img, &d.join("mnt"), &["--rw"]);
    let disk = s(&m.disk());
    let mut undo = Undo(Vec::new());
    let lo = tool("losetup", &["-f", "--show", &disk]);
    assert_eq!(
        lo.code, 0,
        "{test}: losetup -f --show {disk} failed (this test needs loop devices): {}",
        lo.stderr
    );
    let dev = lo.stdout.trim().to_string();
    undo.push("losetup", &["-d", &dev]);
    tool("mkfs.ext4", &["-q", "-F", &dev]).expect(0, "mkfs.ext4");
    tool("mount", &[&dev, &s(&fs)]).expect(0, "mount");
    undo.push("umount", &[&s(&fs)]);
    // Everything the guest wrote reaches the image: ext4's data and journal (syncfs), then
    // the loop device's flush down to the FUSE file and the image.
    let sync = |what: &str| tool("sync", &["-f", &s(&fs)]).expect(0, what);
    // 20 MiB that stay, 200 MiB that go.
    let keep: Vec<u8> = (0..20 * MIB as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.join("keep.bin")).unwrap();
        f.write_all(&keep).unwrap();
        f.sync_all().unwrap();
    }
    sync("sync -f");
    let start = allocated(&img);
    let mut peaks = Vec::new();
    let mut trimmed = Vec::new();
    for round in 0..2 {
        let big = fs.join("big.bin");
        let chunk = vec![round as u8 + 0x5a; MIB as usize];
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&big).unwrap();
            for _ in 0..200 {
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        sync("sync -f");
        peaks.push((allocated(&img), std::fs::metadata(&img).unwrap().len()));
        std::fs::remove_file(&big).unwrap();
        sync("sync -f");
        let out = tool("fstrim", &["-v", &s(&fs)]).expect(0, "fstrim");
        eprintln!("round {round}: {}", out.trim());
        sync("sync -f");
        trimmed.push(allocated(&img));
    }
    undo.pop(); // umount
    undo.pop(); // losetup -d
    m.unmount();
    let (peak, peak_len) = peaks[0];
    eprintln!(
        "image: {} KiB allocated with keep.bin, {} KiB after 200 MiB more, {} KiB after \
         fstrim (given back: {} KiB); second round {} KiB / {} KiB; file length {} -> {}",
        start / 1024,
        peak / 1024,
        trimmed[0] / 1024,
        peak.saturating_sub(trimmed[0]) / 1024,
        peaks[1].0 / 1024,
        trimmed[1] / 1024,
        peak_len,
        peaks[1].1
    );
    // The 200 MiB did reach the image (and keep.bin before them), so the figures mean
    // something.
    assert!(
        start >= 20 * MIB,
        "keep.bin is not in the image: {start} bytes"
    );
    assert!(
        peak >= start + 200 * MIB,
        "the 200 MiB are not in the image: {peak} bytes"
    );
    assert!(
        peak >= trimmed[0] + 150 * MIB,
        "fstrim gave back {} KiB, less than 150 MiB",
        (peak.saturating_sub(trimmed[0])) / 1024
    );
    // keep.bin's grains stayed.
    assert!(
        trimmed[0] >= 20 * MIB,
        "fstrim took keep.bin's space: {trimmed:?}"
    );
    assert!(
        trimmed[1] < trimmed[0] + 8 * MIB && peaks[1].1 < peak_len + 8 * MIB,
        "the image kept growing: {peaks:?} {trimmed:?}"
    );
    // Clean with both checkers.
    vmdk_ok(&["check", &s(&img)]);
    let check = qemu_img(&["check", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    // The disk as qemu-img reads it and as we do: the same bytes; the file that stayed,
    // byte-exact, and the file system clean.
    let theirs = qemu_raw(&img, d, "theirs.raw");
    let ours = d.join("ours.raw");
    vmdk_ok(&["convert", "-O", "raw", &s(&img), &s(&ours)]);
    cmp(&theirs, &ours);
    tool("fsck.ext4", &["-n", "-f", &s(&theirs)]).expect(0, "fsck.ext4 -n -f");
    let out = d.join("keep.out");
    tool(
        "debugfs",
        &["-R", &format!("dump /keep.bin {}", s(&out)), &s(&theirs)],
    )
    .expect(0, "debugfs dump");
    assert!(std::fs::read(&out).unwrap() == keep, "keep.bin changed");
}
