//! End-to-end tests of `vmdk serve`: the built binary serves images made by qemu-img /
//! qemu-io, and real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy) plus a hand-written
//! hostile client talk to it over TCP and Unix sockets. Afterwards the image files are
//! checked and read back with qemu directly.
//!
//! Tests skip (with a note on stderr) when qemu-img/qemu-io or the libnbd tools are missing.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// How long a server gets to start listening, or to exit after a signal.
const DEADLINE: Duration = Duration::from_secs(10);

fn have(tool: &str) -> bool {
    Command::new(tool)
        // openssl has a `version` command and no `--version` option.
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether the test must stop because one of `tools` is missing. A missing client fails
/// the test (CI installs them all: `.ci/run`), so a green run always means the clients ran;
/// only `VMDK_TEST_ALLOW_MISSING_TOOLS=1` turns that into a skip with a notice, for
/// machines known to lack them.
fn skip_without(tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            assert!(
                std::env::var_os("VMDK_TEST_ALLOW_MISSING_TOOLS").is_some_and(|v| v == "1"),
                "{t} is not installed (install qemu-utils and libnbd-bin, as .ci/run does, or \
                 set VMDK_TEST_ALLOW_MISSING_TOOLS=1 to skip)"
            );
            eprintln!("SKIPPED: {t} is not installed (VMDK_TEST_ALLOW_MISSING_TOOLS=1)");
            return true;
        }
    }
    false
}

// ---- the server under test ----------------------------------------------------------------

static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Where a server listens.
#[derive(Clone, Debug)]
enum Endpoint {
    Tcp(u16),
    Unix(PathBuf),
}

/// A running `vmdk serve`; killed and reaped when dropped.
struct Served {
    child: Option<Child>,
    endpoint: Endpoint,
    log: PathBuf,
}

impl Served {
    /// Serve `image` on a free loopback TCP port with the extra `args`.
    fn tcp(image: &Path, args: &[&str]) -> Served {
        let mut last = String::new();
        for _ in 0..5 {
            // The kernel picks a free port; there is a small window in which someone else
            // may take it, hence the retries.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("probing for a free port")
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut full = vec!["-b", &addr];
            full.extend_from_slice(args);
            match Served::start(image, &full, Endpoint::Tcp(port)) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("vmdk serve did not start: {last}");
    }

    /// Serve `image` on the Unix socket `sock` with the extra `args`.
    fn unix(image: &Path, sock: &Path, args: &[&str]) -> Served {
        let sock_s = s(sock);
        let mut full = vec!["-k", &sock_s];
        full.extend_from_slice(args);
        Served::start(image, &full, Endpoint::Unix(sock.to_path_buf()))
            .unwrap_or_else(|e| panic!("vmdk serve did not start: {e}"))
    }

    fn start(image: &Path, args: &[&str], endpoint: Endpoint) -> Result<Served, String> {
        let n = SERVER_SEQ.fetch_add(1, Ordering::Relaxed);
        let log = image.with_file_name(format!(
            "{}.serve{n}.log",
            image.file_name().unwrap().to_string_lossy()
        ));
        let child = Command::new(env!("CARGO_BIN_EXE_vmdk"))
            .arg("serve")
            .args(args)
            .arg(image)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning vmdk serve");
        let mut served = Served {
            child: Some(child),
            endpoint,
            log,
        };
        // Poll until the server answers with an NBD greeting (no fixed sleeps). The probe
        // connection then hangs up, which the server treats as a failed handshake: it
        // neither counts as a client nor ends a non-persistent server.
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = served.child.as_mut().unwrap().try_wait().unwrap() {
                served.child = None;
                return Err(format!("exited with {status}: {}", served.log_text()));
            }
            if served.probe() {
                return Ok(served);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not listening after {DEADLINE:?}: {}",
                    served.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn probe(&self) -> bool {
        let mut greeting = [0u8; 18];
        match &self.endpoint {
            Endpoint::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.read_exact(&mut greeting)
            }),
            Endpoint::Unix(p) => UnixStream::connect(p).and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.read_exact(&mut greeting)
            }),
        }
        .map(|_| greeting[..8] == *b"NBDMAGIC")
        .unwrap_or(false)
    }

    /// The export's URI (default export name).
    fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(port) => format!("nbd://127.0.0.1:{port}"),
            Endpoint::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
        }
    }

    fn port(&self) -> u16 {
        match self.endpoint {
            Endpoint::Tcp(p) => p,
            Endpoint::Unix(_) => panic!("not a TCP server"),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send `sig` (e.g. "TERM") and wait for the exit; returns the status and how long the
    /// server took to go.
    fn signal(&mut self, sig: &str) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("server already stopped");
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-s", sig, &child.id().to_string()])
            .status()
            .expect("running kill")
            .success();
        assert!(ok, "kill -s {sig} failed");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, t0.elapsed());
            }
            if t0.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server still running {DEADLINE:?} after SIG{sig}: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait for the server to exit on its own.
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let t0 = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if t0.elapsed() > DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit by itself: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop with SIGTERM, asserting a prompt, successful exit.
    fn stop(&mut self) {
        let (status, took) = self.signal("TERM");
        assert_eq!(status.code(), Some(0), "exit status: {}", self.log_text());
        assert!(took < Duration::from_secs(5), "took {took:?} to stop");
        if let Endpoint::Unix(p) = &self.endpoint {
            assert!(!p.exists(), "socket file left behind");
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `qemu-nbd -r -f vmdk -t` on a Unix socket, the oracle for what an export
/// says; killed and reaped when dropped.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    /// Serve `image` read-only from a socket in `dir`, with the extra `args` (e.g. `-A`).
    fn start(dir: &Path, image: &Path, args: &[&str]) -> QemuNbd {
        let n = SERVER_SEQ.fetch_add(1, Ordering::Relaxed);
        let sock = dir.join(format!("qemu-nbd{n}.sock"));
        let child = Command::new("qemu-nbd")
            .args(["-r", "-f", "vmdk", "-t", "-k", &s(&sock)])
            .args(args)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning qemu-nbd");
        let q = QemuNbd { child, sock };
        let deadline = Instant::now() + DEADLINE;
        while !(q.sock.exists() && tool("nbdinfo", &["--size", &q.url()]).code == 0) {
            assert!(Instant::now() < deadline, "qemu-nbd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        q
    }

    fn url(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- client helpers -----------------------------------------------------------------------

/// Run a tool expecting success; returns stdout.
fn ok(name: &str, args: &[&str]) -> String {
    tool(name, args).expect(0, &format!("{name} {args:?}"))
}

/// `qemu-io -f raw [-t writeback] -c CMD... URL`, expecting success and no failed command.
fn qemu_io_nbd(url: &str, cmds: &[String]) -> String {
    qemu_io_nbd_with(&[], url, cmds)
}

/// `qemu_io_nbd` with extra qemu-io options (e.g. `-r`).
fn qemu_io_nbd_with(opts: &[&str], url: &str, cmds: &[String]) -> String {
    let mut args = vec!["-f", "raw", "-t", "writeback"];
    args.extend_from_slice(opts);
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let r = tool("qemu-io", &args);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        r.code == 0 && !all.contains("failed") && !all.contains("rror"),
        "qemu-io {cmds:?} on {url}: exit {}\n{all}",
        r.code
    );
    r.stdout
}

fn cmds(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.to_string()).collect()
}

/// Regions of an allocation map as (start, length, data), neighbours with the same data
/// flag merged.
type Regions = Vec<(u64, u64, bool)>;

fn push_region(out: &mut Regions, start: u64, len: u64, data: bool) {
    if let Some(last) = out.last_mut() {
        if last.2 == data && last.0 + last.1 == start {
            last.1 += len;
            return;
        }
    }
    out.push((start, len, data));
}

/// `qemu-img map --output=json` of an image or export. For an export (`nbd`), also
/// checks the flags our server must produce: data is never zero, non-data always is.
fn qemu_map(args: &[&str], nbd: bool) -> Regions {
    let mut full = vec!["map", "--output=json"];
    full.extend_from_slice(args);
    let out = ok("qemu-img", &full);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut regions = Vec::new();
    let mut next = 0;
    for e in v.as_array().unwrap() {
        let start = e["start"].as_u64().unwrap();
        let len = e["length"].as_u64().unwrap();
        let data = e["data"].as_bool().unwrap();
        let zero = e["zero"].as_bool().unwrap();
        assert_eq!(start, next, "map not contiguous: {out}");
        next = start + len;
        if nbd {
            // Data may read as zeros (a flat extent's host hole); what is not data does.
            assert!(data || zero, "export map entry {e}");
        } else if !data {
            // Unallocated and zeroed grains both read as zeros.
            assert!(zero, "image map entry {e}");
        }
        push_region(&mut regions, start, len, data);
    }
    regions
}

/// `nbdinfo --map URL`: lines of "offset length type description".
fn nbdinfo_map(url: &str) -> Regions {
    let out = ok("nbdinfo", &["--map", url]);
    let mut regions = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (start, len, ty): (u64, u64, u32) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        // Our server says plain data (0), hole+zero (3), or zero without a hole (2: a
        // flat extent's host hole, allocated but reading as zeros, as qemu-nbd says).
        assert!(ty == 0 || ty == 2 || ty == 3, "unexpected type in {line:?}");
        push_region(&mut regions, start, len, ty & 1 == 0);
    }
    regions
}

fn virtual_size(args: &[&str]) -> u64 {
    let mut full = vec!["info", "--output=json"];
    full.extend_from_slice(args);
    let v: serde_json::Value = serde_json::from_str(&ok("qemu-img", &full)).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

/// Everything a read-only export must agree on with qemu's own view of `image`.
fn check_read_only_export(dir: &Path, image: &Path) {
    let img = s(image);
    let srv = Served::tcp(image, &["--read-only", "--persistent"]);
    let url = srv.url();

    let size = virtual_size(&["-U", "-f", "vmdk", &img]);
    assert_eq!(virtual_size(&[&url]), size);

    let out = ok(
        "qemu-img",
        &["compare", "-U", "-f", "raw", &url, "-F", "vmdk", &img],
    );
    assert!(out.contains("identical"), "{out}");

    let theirs = qemu_map(&["-U", "-f", "vmdk", &img], false);
    let ours = qemu_map(&["-f", "raw", &url], true);
    assert_eq!(ours, theirs, "qemu-img map of export vs image");
    assert_eq!(nbdinfo_map(&url), theirs, "nbdinfo --map vs qemu-img map");
    // Block status word for word as qemu-nbd's, flat extents' host holes included.
    let qemu = QemuNbd::start(dir, image, &[]);
    assert_eq!(
        ok("nbdinfo", &["--map", &url]),
        ok("nbdinfo", &["--map", &qemu.url()]),
        "nbdinfo --map of ours vs qemu-nbd's"
    );
    drop(qemu);

    let want = dir.join(format!(
        "{}.want.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    let got = dir.join(format!(
        "{}.got.raw",
        image.file_name().unwrap().to_string_lossy()
    ));
    ok(
        "qemu-img",
        &["convert", "-U", "-f", "vmdk", "-O", "raw", &img, &s(&want)],
    );
    ok("nbdcopy", &[&url, &s(&got)]);
    assert!(
        std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
        "nbdcopy output differs from qemu-img convert"
    );
}

/// A 64 MiB monolithicSparse image with data across grain and grain-table boundaries,
/// explicit zeros written as data, and holes.
fn sparse_image(dir: &Path, name: &str, opts: &[&str]) -> PathBuf {
    let img = qemu_create(dir, name, "64M", opts);
    qemu_io(
        &img,
        &[
            "write -P 0xaa 60k 8k",    // across the first grain boundary
            "write -P 0xbb 1020k 72k", // three grains
            "write -P 0xcc 32764k 8k", // across the first grain table's end
            "write -P 0 40M 64k",      // zeros as data
            "write -P 0xdd 65532k 4k", // end of the last grain
        ],
    );
    img
}

fn tools_for_reads() -> bool {
    skip_without(&["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"])
}

// ---- read-only exports of every layout ----------------------------------------------------

#[test]
fn serves_monolithic_sparse() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "sparse.vmdk", &["subformat=monolithicSparse"]);
    check_read_only_export(dir.path(), &img);
}

/// A 4 EiB disk is served with its true size (qemu connects) and block status costs what
/// the map holds, not the bytes asked about; a size past what NBD clients take (the
/// 2^63 - 2^30 QEMU limit) is refused when the image is opened, before anything is served.
#[test]
fn serves_a_4_eib_disk_and_refuses_bigger() {
    if skip_without(&["qemu-img"]) {
        return;
    }
    let dir = tempdir();
    let desc = |name: &str, sectors: u64| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"monolithicFlat\"\nRW {sectors} ZERO\n"
            ),
        )
        .unwrap();
        p
    };
    let size = 1u64 << 62;
    let img = desc("big.vmdk", size / 512);
    let t0 = Instant::now();
    let server = Served::tcp(&img, &["-r", "-t"]);
    let url = server.url();
    assert_eq!(virtual_size(&["-f", "raw", &url]), size);
    let start = format!("--start-offset={}", size - 16 * 1024 * MIB);
    let out = ok(
        "qemu-img",
        &[
            "map",
            "--output=json",
            "-f",
            "raw",
            &start,
            "--max-length=16G",
            &url,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v.as_array().unwrap()[..];
    assert_eq!(e.len(), 1, "{out}");
    assert_eq!(e[0]["start"], size - 16 * 1024 * MIB, "{out}");
    assert_eq!(e[0]["length"], 16 * 1024 * MIB, "{out}");
    assert_eq!(
        (&e[0]["zero"], &e[0]["data"]),
        (&true.into(), &false.into()),
        "{out}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    drop(server);

    let huge = desc("huge.vmdk", (1u64 << 55) - 1);
    let r = vmdk(&["serve", "-r", "-b", "127.0.0.1:0", &s(&huge)]);
    assert_ne!(r.code, 0, "served: {}", r.stderr);
    assert!(
        r.stderr.contains("huge.vmdk") && r.stderr.contains("QEMU"),
        "{}",
        r.stderr
    );
}

#[test]
fn serves_zeroed_grains() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "zeroed.vmdk", &["zeroed_grain=on"]);
    qemu_io(
        &img,
        &[
            "write -z 1M 128k", // over data: becomes zeroed grains
            "write -z 8M 192k", // never allocated
            "write -z 40M 64k", // over explicit zero data
        ],
    );
    // Make sure the image really has zeroed grains, or this test proves nothing.
    let map = ok("qemu-img", &["map", "--output=json", &s(&img)]);
    assert!(
        map.contains(r#""present": true, "zero": true, "data": false"#),
        "{map}"
    );
    check_read_only_export(dir.path(), &img);
}

#[test]
fn serves_two_level_chain() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let base = sparse_image(dir.path(), "base.vmdk", &[]);
    let top = qemu_child(dir.path(), "top.vmdk", &base, None);
    qemu_io(
        &top,
        &[
            "write -P 0x11 64k 4k",  // partly overrides a base grain
            "write -P 0x12 5M 100k", // over a base hole
            "write -z 1024k 64k",    // zeros over base data
        ],
    );
    check_read_only_export(dir.path(), &top);
}

#[test]
fn serves_two_gb_max_extent_flat() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let img = qemu_create_sub(dir.path(), "flat.vmdk", "8M", "twoGbMaxExtentFlat");
    qemu_io(&img, &["write -P 0x42 100k 50k", "write -P 0x43 8188k 4k"]);
    check_read_only_export(dir.path(), &img);
}

/// `qemu:allocation-depth` (`-A`, as qemu-nbd's) says which layer of a chain holds each
/// stretch, word for word as qemu-nbd says it: a sparse overlay over a sparse base and over a
/// flat base, each overlay larger than its base (the part beyond the base counts as the
/// base's), with zeroed grains in both layers; `base:allocation` beside it in the same
/// session agrees too, and without `-A` the context is neither listed nor selectable.
#[test]
fn allocation_depth_as_qemu_nbd() {
    if skip_without(&["qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let base = sparse_image(dir.path(), "base.vmdk", &[]);
    qemu_io(&base, &["write -z 2M 64k"]);
    let top = qemu_child(dir.path(), "top.vmdk", &base, Some("80M"));
    qemu_io(
        &top,
        &[
            "write -P 0x11 56k 16k", // over a base grain's edge
            "write -P 0x12 5M 100k", // over a base hole
            "write -z 1024k 64k",    // zeros over base data
            "write -P 0x13 70M 4k",  // beyond the base's end
        ],
    );
    let fbase = qemu_create_sub(dir.path(), "fbase.vmdk", "6M", "monolithicFlat");
    qemu_io(&fbase, &["write -P 0x21 0 1M", "write -P 0x22 3M 4k"]);
    let ftop = qemu_child(dir.path(), "ftop.vmdk", &fbase, Some("8M"));
    qemu_io(&ftop, &["write -P 0x23 512k 64k", "write -z 3M 64k"]);

    for image in [&top, &ftop] {
        let ours = Served::tcp(image, &["-r", "-A", "--persistent"]);
        let qemu = QemuNbd::start(dir.path(), image, &["-A"]);
        for ctx in ["qemu:allocation-depth", "base:allocation"] {
            let map = format!("--map={ctx}");
            let want = ok("nbdinfo", &[&map, &qemu.url()]);
            assert_eq!(
                ok("nbdinfo", &[&map, &ours.url()]),
                want,
                "{ctx} of {image:?}"
            );
            assert!(want.lines().count() > 2, "{want}");
        }
        let list = ok("nbdinfo", &["--list", &ours.url()]);
        assert!(list.contains("qemu:allocation-depth"), "{list}");
    }
    let depth = ok(
        "nbdinfo",
        &[
            "--map=qemu:allocation-depth",
            &QemuNbd::start(dir.path(), &top, &["-A"]).url(),
        ],
    );
    for want in ["local", "backing depth 2", "absent"] {
        assert!(depth.contains(want), "{want} in {depth}");
    }

    let plain = Served::tcp(&top, &["-r", "--persistent"]);
    let list = ok("nbdinfo", &["--list", &plain.url()]);
    assert!(!list.contains("qemu:allocation-depth"), "{list}");
    let r = tool("nbdinfo", &["--map=qemu:allocation-depth", &plain.url()]);
    assert_ne!(r.code, 0, "allocation depth without -A: {}", r.stdout);
}

/// A read-only export takes any number of connections and advertises multi-conn, so a
/// client may read it over several (nbdcopy does); a writable one takes one, as qemu-nbd,
/// and advertises multi-conn only with `--shared` above one (every connection shares the
/// one open image, so a flush on any makes every completed write durable).
#[test]
fn multi_conn_on_read_only_exports() {
    if skip_without(&["qemu-img", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_create(dir.path(), "mc.vmdk", "8M", &[]);
    let multi = |url: &str| -> bool {
        let v: serde_json::Value = serde_json::from_str(&ok("nbdinfo", &["--json", url])).unwrap();
        v["exports"][0]["can_multi_conn"].as_bool().unwrap()
    };
    let ro = Served::tcp(&img, &["-r", "--persistent"]);
    // Several clients at once: these hold their connections while nbdinfo is served.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", ro.port())).unwrap();
            c.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut greeting = [0u8; 18];
            c.read_exact(&mut greeting).unwrap();
            c
        })
        .collect();
    assert!(multi(&ro.url()), "read-only export: multi-conn");
    drop(held);
    drop(ro);
    let rw = Served::tcp(&img, &["--persistent"]);
    assert!(
        !multi(&rw.url()),
        "writable export, one client: no multi-conn"
    );
    drop(rw);
    let rw = Served::tcp(&img, &["--persistent", "-e", "3"]);
    assert!(multi(&rw.url()), "writable export, -e 3: multi-conn");
}

/// A flat extent whose file ends before the extent does (and mid-way through a read) reads
/// as zeros past the file's end, as qemu's driver reads it: large reads, which the server
/// sends straight from the file (`sendfile`), pad the rest with zeros; block status says
/// zero there, as qemu-nbd's does.
#[test]
fn serves_short_flat_file() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let img = qemu_create_sub(dir.path(), "short.vmdk", "8M", "monolithicFlat");
    qemu_io(&img, &["write -P 0x5a 0 8M"]);
    let flat = dir.path().join("short-flat.vmdk");
    let f = std::fs::OpenOptions::new().write(true).open(&flat).unwrap();
    f.set_len(5 * MIB + 1000).unwrap();
    drop(f);
    check_read_only_export(dir.path(), &img);
}

#[test]
fn serves_stream_optimized_qemu_layout() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let src = sparse_image(dir.path(), "src.vmdk", &[]);
    let img = dir.path().join("stream-qemu.vmdk");
    ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "vmdk",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &s(&src),
            &s(&img),
        ],
    );
    check_read_only_export(dir.path(), &img);
}

#[test]
fn serves_stream_optimized_vmware_layout() {
    if tools_for_reads() {
        return;
    }
    let dir = tempdir();
    let src = sparse_image(dir.path(), "src.vmdk", &[]);
    let img = dir.path().join("stream-vmware.vmdk");
    vmdk_ok(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&src),
        &s(&img),
    ]);
    check_read_only_export(dir.path(), &img);
}

#[test]
fn read_only_refuses_writes() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "ro.vmdk", &[]);
    let before = std::fs::read(&img).unwrap();
    let mut srv = Served::tcp(&img, &["-r", "-t"]);

    // qemu refuses to open a read-only export for writing...
    let r = tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 0 4k", &srv.url()],
    );
    assert_ne!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // ...and a client that writes anyway gets EPERM.
    let mut c = RawClient::tcp(srv.port());
    assert_eq!(c.flags & 2, 2, "read-only flag not advertised");
    assert_eq!(c.write(0, &[1u8; 4096]), 1);
    assert_eq!(c.request(CMD_WRITE_ZEROES, 0, 0, 4096), 1);
    assert_eq!(c.request(CMD_TRIM, 0, 0, 4096), 1);
    let (err, data) = c.read(60 * KIB, 8192);
    assert_eq!(err, 0);
    assert!(data.iter().all(|&b| b == 0xaa));
    c.disconnect();
    // Reading still works.
    qemu_io_nbd_with(
        &["-r"],
        &srv.url(),
        &cmds(&["read -P 0xaa 60k 8k", "read -P 0xbb 1020k 72k"]),
    );
    srv.stop();
    assert!(
        std::fs::read(&img).unwrap() == before,
        "read-only export modified the image"
    );
}

/// Without --persistent the server exits (status 0) once its client has gone; clients
/// that never finish negotiating do not count. A named export is found by its name.
#[test]
fn non_persistent_named_export() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_create(dir.path(), "once.vmdk", "8M", &[]);
    let mut srv = Served::tcp(&img, &["-x", "disk0", "-D", "a test disk"]);
    let url = srv.url();
    let r = tool(
        "qemu-io",
        &["-f", "raw", "-c", "read 0 4k", &format!("{url}/nope")],
    );
    assert_ne!(r.code, 0, "unknown export name accepted: {}", r.stdout);
    if have("nbdinfo") {
        let list = ok("nbdinfo", &["--list", &url]);
        assert!(
            list.contains("disk0") && list.contains("a test disk"),
            "{list}"
        );
    }
    qemu_io_nbd(&format!("{url}/disk0"), &cmds(&["write -P 0x77 1M 64k"]));
    let status = srv.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", srv.log_text());
    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    qemu_io(&img, &["read -P 0x77 1M 64k", "read -P 0 0 1M"]);
}

/// --ignore-cid-mismatch and --allow-unsafe-paths reach the image opener: without them
/// the server refuses to start (status 1, a message naming the problem), with them it serves.
#[test]
fn open_options_are_honoured() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    // A child whose parent was written after the child was made.
    let base = qemu_create(dir.path(), "cidbase.vmdk", "8M", &[]);
    let top = qemu_child(dir.path(), "cidtop.vmdk", &base, None);
    qemu_io(&base, &["write -P 0x5 0 4k"]);
    let r = vmdk(&["serve", "-b", "127.0.0.1:1", &s(&top)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "parentCID");
    let srv = Served::tcp(&top, &["-r", "-t", "--ignore-cid-mismatch"]);
    qemu_io_nbd_with(&["-r"], &srv.url(), &cmds(&["read -P 0x5 0 4k"]));
    drop(srv);

    // A child naming its parent by an absolute path outside its directory.
    let other = tempdir();
    let far = qemu_written(other.path(), "far.vmdk", "8M", &["write -P 0x6 4k 4k"]);
    let child = dir.path().join("farchild.vmdk");
    ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-b",
            &s(&far),
            "-F",
            "vmdk",
            &s(&child),
        ],
    );
    let r = vmdk(&["serve", "-b", "127.0.0.1:1", &s(&child)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let srv = Served::tcp(&child, &["-r", "-t", "--allow-unsafe-paths"]);
    qemu_io_nbd_with(
        &["-r"],
        &srv.url(),
        &cmds(&["read -P 0x6 4k 4k", "read -P 0 0 4k"]),
    );
}

// ---- writes -------------------------------------------------------------------------------

/// Writes, zero writes, discards and flushes over a Unix socket; after SIGTERM the image is
/// clean and holds everything.
#[test]
fn writes_over_unix_socket_are_durable() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "rw.vmdk", &["zeroed_grain=on"]);
    let sock = dir.path().join("nbd.sock");
    let mut srv = Served::unix(&img, &sock, &["--persistent"]);
    let url = srv.url();
    let writes = cmds(&[
        "write -P 0x51 62k 4k",     // across a grain boundary, into allocated grains
        "write -P 0x52 7M 130k",    // new grains, last one partial
        "write -P 0x53 32760k 16k", // new grain table
        "write -z 1020k 72k",       // over data, partial grains at both ends
        "write -z 12M 256k",        // fresh zeroed grains
        "discard 40M 64k",          // a whole allocated grain (of zeros)
        "discard 65472k 64k",       // the last grain (contents unspecified afterwards)
        "flush",
    ]);
    qemu_io_nbd(&url, &writes);
    let reads = cmds(&[
        "read -P 0xaa 60k 2k",
        "read -P 0x51 62k 4k",
        "read -P 0xaa 66k 2k",
        "read -P 0x52 7M 130k",
        "read -P 0 7298k 62k",
        "read -P 0x53 32760k 16k",
        "read -P 0 1020k 72k",
        "read -P 0 12M 256k",
        "read -P 0 40M 64k",
    ]);
    qemu_io_nbd(&url, &reads);
    // A client that only writes (no flush, no FUA) and then goes away.
    {
        let mut c = RawClient::unix(&sock);
        assert_eq!(c.write(50 * MIB + 512, &[0x54; 3 * 4096]), 0);
    }
    srv.stop();

    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    let mut on_disk: Vec<&str> = reads.iter().map(|c| c.as_str()).collect();
    on_disk.push("read -P 0x54 52429312 12k");
    on_disk.push("read -P 0 50M 512");
    on_disk.push("read -P 0 52441600 3584");
    qemu_io(&img, &on_disk);
    // Zero writes became zeroed (or unallocated) grains, not data.
    let map = qemu_map(&["-f", "vmdk", &s(&img)], false);
    for (start, len, data) in map {
        if start <= 12 * MIB && 12 * MIB + 256 * KIB <= start + len {
            assert!(!data, "zero write left data at {start}+{len}");
        }
    }
}

/// Bytes a file takes on its host.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// NBD TRIM, and WRITE_ZEROES without NO_HOLE, give the grains' space back to the host:
/// qemu-io's `discard` and `write -z -u` through the export shrink the image on disk while
/// `write -z` (NO_HOLE) keeps its grains; a later write takes the freed space (the file does
/// not grow); nbdcopy of a mostly empty raw disk over the data (zero requests that may
/// trim) leaves little allocated; both checkers are clean and the data is qemu's.
#[test]
fn trim_and_zero_writes_give_space_back() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo", "nbdcopy"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_written(dir.path(), "trim.vmdk", "128M", &["write -P 0x11 0 96M"]);
    let (full, len) = (allocated(&img), std::fs::metadata(&img).unwrap().len());
    let sock = dir.path().join("nbd.sock");
    let mut srv = Served::unix(&img, &sock, &["--persistent"]);
    let url = srv.url();
    let info = ok("nbdinfo", &[&url]);
    assert!(info.contains("can_trim: true"), "{info}");
    qemu_io_nbd(
        &url,
        &cmds(&[
            "discard 0 32M",       // TRIM
            "write -z -u 32M 16M", // WRITE_ZEROES
            "write -z 48M 16M",    // WRITE_ZEROES with NO_HOLE
            "flush",
        ]),
    );
    let after = allocated(&img);
    assert!(
        after + 47 * MIB < full && after + 49 * MIB > full,
        "48 MiB should have gone back: {} KiB -> {} KiB",
        full / 1024,
        after / 1024
    );
    assert_eq!(
        nbdinfo_map(&url),
        vec![
            (0, 48 * MIB, false),
            (48 * MIB, 48 * MIB, true),
            (96 * MIB, 32 * MIB, false)
        ]
    );
    qemu_io_nbd(&url, &cmds(&["write -P 0x22 96M 32M", "flush"]));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), len, "the file grew");
    assert!(allocated(&img) < full, "{} KiB", allocated(&img) / 1024);
    qemu_io_nbd(
        &url,
        &cmds(&[
            "read -P 0 0 64M",
            "read -P 0x11 64M 32M",
            "read -P 0x22 96M 32M",
        ]),
    );
    // nbdcopy of a raw disk that is a hole but for 8 MiB.
    let raw = dir.path().join("src.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&raw).unwrap();
        f.set_len(128 * MIB).unwrap();
        f.write_all_at(&vec![0x33; 8 * MIB as usize], 8 * MIB)
            .unwrap();
    }
    ok("nbdcopy", &[&s(&raw), &url]);
    srv.stop();
    assert!(
        allocated(&img) < 10 * MIB,
        "{} KiB left after nbdcopy",
        allocated(&img) / 1024
    );
    let check = ok("qemu-img", &["check", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    let ours = tool(env!("CARGO_BIN_EXE_vmdk"), &["check", &s(&img)]);
    assert_eq!(ours.code, 0, "vmdk check: {}{}", ours.stdout, ours.stderr);
    let cmp = ok(
        "qemu-img",
        &["compare", "-f", "raw", &s(&raw), "-F", "vmdk", &s(&img)],
    );
    assert!(cmp.contains("identical"), "{cmp}");
}

/// An image on a full file system: writes through the export fail with NBD's ENOSPC (as
/// qemu-nbd answers; qemu-io then says "No space left on device"), the server keeps
/// serving, and the image checks clean afterwards (ours and qemu's: no leaked clusters).
#[test]
fn full_file_system_is_reported_as_enospc() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let Some(fs) = Tmpfs::mount("2m", "full_file_system_is_reported_as_enospc") else {
        return;
    };
    let img = qemu_create(fs.path(), "full.vmdk", "64M", &[]);
    // The server's log goes next to the image: keep it off the small file system.
    let logs = tempdir();
    let link = logs.path().join("full.vmdk");
    std::os::unix::fs::symlink(&img, &link).unwrap();
    let mut srv = Served::tcp(&link, &["--persistent"]);
    let url = srv.url();
    // 3 MiB of writes into 2 MiB.
    let mut args = vec!["-f", "raw", "-t", "writeback"];
    let writes: Vec<String> = (0..48)
        .map(|i| format!("write -P {} {}k 64k", i + 1, i * 64))
        .collect();
    for w in &writes {
        args.extend(["-c", w.as_str()]);
    }
    args.push(&url);
    let r = tool("qemu-io", &args);
    let out = format!("{}{}", r.stdout, r.stderr);
    assert!(
        out.contains("No space left on device"),
        "qemu-io did not hear ENOSPC: {out}\nserver: {}",
        srv.log_text()
    );
    let wrote = out.matches("wrote 65536/65536").count();
    assert!(wrote > 0 && wrote < 48, "{out}");
    // The raw NBD error value is ENOSPC (28), not EIO.
    let mut c = RawClient::tcp(srv.port());
    assert_eq!(c.write(60 * MIB, &[7u8; 65536]), 28);
    c.disconnect();
    // Still serving, with everything that fitted.
    qemu_io_nbd(&url, &cmds(&["read -P 1 0 64k"]));
    qemu_io_nbd(
        &url,
        &[format!("read -P {wrote} {}k 64k", (wrote - 1) * 64)],
    );
    srv.stop();
    let check = vmdk(&["check", &s(&img)]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    let q = tool("qemu-img", &["check", &s(&img)]);
    assert_eq!(q.code, 0, "{}{}", q.stdout, q.stderr);
}

/// A write through a corrupt grain table is refused with an error, leaves the file as it
/// was, and the server goes on serving.
#[test]
fn writes_through_corrupt_tables_are_refused() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "bad.vmdk", &[]);
    // The first grain's entry points at the grain directory.
    let gd = read_u64(&img, 56);
    patch(&img, gte_offset(&img, 0), &(gd as u32).to_le_bytes());
    let before = std::fs::read(&img).unwrap();
    let mut srv = Served::tcp(&img, &["--persistent"]);
    let mut c = RawClient::tcp(srv.port());
    assert_eq!(c.write(4096, &[7u8; 4096]), 5, "EIO expected");
    // Elsewhere reads still work.
    let (err, data) = c.read(1020 * KIB, 4096);
    assert_eq!((err, data[0]), (0, 0xbb));
    c.disconnect();
    srv.stop();
    assert!(
        std::fs::read(&img).unwrap() == before,
        "the image changed although the write was refused"
    );
}

/// Four clients (`--shared 4`) write interleaved, unaligned ranges at once, so they
/// allocate and fill the same grains and grain tables concurrently.
#[test]
fn shared_concurrent_writers() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_create(dir.path(), "shared.vmdk", "64M", &[]);
    let mut srv = Served::tcp(&img, &["--shared", "4", "--persistent"]);
    const CHUNK: u64 = 96 * KIB; // 1.5 grains: neighbours share a grain
    const ROUNDS: u64 = 12;
    let cmd_for = |client: u64, k: u64, verb: &str| {
        // Every third round lands across the first grain table's end (32 MiB).
        let shift = match k % 3 {
            0 => 30 * MIB,
            _ => 0,
        };
        let off = (k * 4 + client) * CHUNK + shift;
        format!("{verb} -P {:#x} {off} {CHUNK}", 0x10 + client)
    };
    let url = srv.url();
    let mut children = Vec::new();
    for client in 0..4u64 {
        let mut args: Vec<String> = cmds(&["-f", "raw", "-t", "writeback"]);
        for k in 0..ROUNDS {
            args.push("-c".into());
            args.push(cmd_for(client, k, "write"));
        }
        args.push(url.clone());
        children.push(
            Command::new("qemu-io")
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for c in children {
        let out = c.wait_with_output().unwrap();
        let all = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !all.contains("failed"), "{all}");
    }
    srv.stop();

    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    let mut reads = Vec::new();
    for client in 0..4 {
        for k in 0..ROUNDS {
            reads.push(cmd_for(client, k, "read"));
        }
    }
    let reads: Vec<&str> = reads.iter().map(|c| c.as_str()).collect();
    qemu_io(&img, &reads);
}

// ---- signals ------------------------------------------------------------------------------

/// SIGINT with a client still connected (idle, after unflushed writes): the server exits
/// promptly with status 0 and the writes are in the image.
#[test]
fn sigint_with_idle_client_is_prompt_and_durable() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_create(dir.path(), "sig.vmdk", "16M", &[]);
    let mut srv = Served::tcp(&img, &["--durable"]);
    let mut c = RawClient::tcp(srv.port());
    assert_eq!(c.write(0, &[0x61; 70 * 1024]), 0);
    assert_eq!(c.write(9 * MIB + 4096, &[0x62; 4096]), 0);
    assert_eq!(c.request(CMD_WRITE_ZEROES, 0, 4096, 8192), 0);
    let (status, took) = srv.signal("INT");
    assert_eq!(status.code(), Some(0), "{}", srv.log_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The idle client sees the connection end.
    assert!(c.is_closed());

    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    qemu_io(
        &img,
        &[
            "read -P 0x61 0 4k",
            "read -P 0 4k 8k",
            "read -P 0x61 12k 58k",
            "read -P 0 70k 4k",
            "read -P 0x62 9220k 4k",
        ],
    );
}

/// SIGTERM while a client has pipelined reads and stopped reading the replies (so workers
/// are stuck sending): the server still exits, with status 0, within its grace period.
#[test]
fn sigterm_with_stuck_client() {
    if skip_without(&["qemu-img"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_create_sub(dir.path(), "stuck.vmdk", "64M", "twoGbMaxExtentFlat");
    let mut srv = Served::tcp(&img, &[]);
    let mut c = RawClient::tcp(srv.port());
    for i in 0..400u64 {
        c.send_header(CMD_READ, 0, (i % 60) * MIB, 1 << 20);
    }
    // Let the replies fill the socket buffers.
    let mut first = [0u8; 16];
    c.stream.read_exact(&mut first).unwrap();
    let (status, took) = srv.signal("TERM");
    assert_eq!(status.code(), Some(0), "{}", srv.log_text());
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

// ---- hostile clients ----------------------------------------------------------------------

#[test]
fn hostile_clients_do_not_hurt() {
    if skip_without(&["qemu-img", "qemu-io"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "hostile.vmdk", &[]);
    let mut srv = Served::tcp(&img, &["--persistent", "--shared", "2"]);
    let port = srv.port();
    let url = srv.url();
    let healthy = || {
        qemu_io_nbd(
            &url,
            &cmds(&["read -P 0xaa 60k 8k", "read -P 0xbb 1020k 72k"]),
        )
    };

    let connect = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    // Garbage instead of the client flags: dropped.
    let mut c = connect();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed(&mut c), "garbage handshake not dropped");
    healthy();

    // An option claiming 1 GiB of data: refused with ERR_TOO_BIG, then dropped.
    let mut c = connect();
    c.read_exact(&mut greeting).unwrap();
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.write_all(&opt).unwrap();
    let mut rep = [0u8; 20];
    c.read_exact(&mut rep).unwrap();
    assert_eq!(
        u32::from_be_bytes(rep[12..16].try_into().unwrap()),
        (1 << 31) + 9
    );
    assert!(closed(&mut c), "oversized option not dropped");
    healthy();

    // Requests the server must refuse without losing the connection.
    let mut c = RawClient::tcp(port);
    let size = c.size;
    assert_eq!(size, 64 * MIB);
    assert_eq!(c.request(CMD_READ, 0, 0, 1 << 30), EINVAL, "1 GiB read");
    assert_eq!(
        c.request(CMD_READ, 0, size - 512, 4096),
        EINVAL,
        "read past end"
    );
    assert_eq!(
        c.request(CMD_READ, 0, u64::MAX - 10, 4096),
        EINVAL,
        "offset overflow"
    );
    assert_eq!(c.write(size - 512, &[9u8; 1024]), ENOSPC, "write past end");
    assert_eq!(
        c.request(CMD_WRITE_ZEROES, 0, size, 1),
        ENOSPC,
        "zeroes past end"
    );
    assert_eq!(c.request(CMD_TRIM, 0, size - 1, 2), EINVAL, "trim past end");
    assert_eq!(c.request(99, 0, 0, 0), EINVAL, "unknown command");
    assert_eq!(c.request(CMD_READ, 0x8000, 0, 512), EINVAL, "unknown flag");
    let (err, data) = c.read(60 * KIB, 8192);
    assert_eq!(err, 0);
    assert!(
        data.iter().all(|&b| b == 0xaa),
        "connection unusable after errors"
    );
    c.disconnect();
    healthy();

    // A write header announcing more than the maximum payload: dropped.
    let mut c = RawClient::tcp(port);
    c.send_header(CMD_WRITE, 0, 0, 64 << 20);
    assert!(c.is_closed(), "oversized write not dropped");
    healthy();

    // A bad request magic: dropped.
    let mut c = RawClient::tcp(port);
    c.stream.write_all(&[0x55; 28]).unwrap();
    assert!(c.is_closed(), "bad magic not dropped");
    healthy();

    // Hanging up in the middle of a write payload: nothing of it may reach the image.
    let mut c = RawClient::tcp(port);
    c.send_header(CMD_WRITE, 0, 1020 * KIB, 1 << 20);
    c.stream.write_all(&[0xee; 300 * 1024]).unwrap();
    drop(c);
    // Hanging up in the middle of a request header, and in the handshake.
    let mut c = RawClient::tcp(port);
    c.stream.write_all(&REQUEST_MAGIC.to_be_bytes()).unwrap();
    drop(c);
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&3u32.to_be_bytes()).unwrap();
    drop(c);
    healthy();

    // Many pipelined requests, then hanging up without reading a single reply.
    let mut c = RawClient::tcp(port);
    // (Few enough that the headers fit in the socket buffers.)
    for i in 0..500u64 {
        c.send_header(CMD_READ, 0, (i % 64) * MIB, 64 * 1024);
    }
    drop(c);
    healthy();

    srv.stop();
    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    qemu_io(&img, &["read -P 0xbb 1020k 72k", "read -P 0 1092k 4k"]);
}

// ---- stalled handshakes -------------------------------------------------------------------

/// Open `n` connections that never send a byte (no client flags): each one is a handshake
/// the server waits on until its deadline.
fn stalled(srv: &Served, n: usize) -> Vec<Box<dyn std::any::Any>> {
    (0..n)
        .map(|_| -> Box<dyn std::any::Any> {
            match &srv.endpoint {
                Endpoint::Tcp(port) => Box::new(TcpStream::connect(("127.0.0.1", *port)).unwrap()),
                Endpoint::Unix(p) => Box::new(UnixStream::connect(p).unwrap()),
            }
        })
        .collect()
}

/// `nbdinfo --size URL`, timed.
fn timed_size(url: &str) -> (u64, Duration) {
    let t0 = Instant::now();
    let out = ok("nbdinfo", &["--size", url]);
    (out.trim().parse().expect("nbdinfo --size"), t0.elapsed())
}

/// Connections still negotiating hold no client slot (`-e`): five that connect and never
/// send their flags do not delay a real client on the default one-client writable export,
/// over TCP or a Unix socket, and the handshake deadline (10 s) still drops them. Before,
/// each held the only slot until its deadline: the real client waited about 50 s.
#[test]
fn stalled_handshakes_do_not_delay_a_client() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "stalled.vmdk", &[]);
    for unix in [false, true] {
        let sock = dir.path().join("stalled.sock");
        let mut srv = if unix {
            Served::unix(&img, &sock, &["--persistent"])
        } else {
            Served::tcp(&img, &["--persistent"])
        };
        let url = srv.url();
        let held = stalled(&srv, 5);
        // Let the server take them all in before the real client comes.
        std::thread::sleep(Duration::from_millis(300));
        let (size, took) = timed_size(&url);
        eprintln!("unix={unix}: nbdinfo served after {took:?} with 5 stalled handshakes");
        assert_eq!(size, 64 * MIB);
        assert!(
            took < Duration::from_secs(5),
            "unix={unix}: nbdinfo took {took:?} with 5 stalled handshakes"
        );
        // The writer gets the only slot as well, and its data lands.
        let t0 = Instant::now();
        qemu_io_nbd(
            &url,
            &cmds(&[
                "write -P 0x5a 8M 64k",
                "read -P 0x5a 8M 64k",
                "read -P 0xaa 60k 8k",
            ]),
        );
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "unix={unix}: qemu-io took {took:?}"
        );
        drop(held);
        srv.stop();
    }
    let check = ok("qemu-img", &["check", "-f", "vmdk", &s(&img)]);
    assert!(check.contains("No errors"), "{check}");
    qemu_io(&img, &["read -P 0x5a 8M 64k"]);
}

/// More stalled connections than the server negotiates with at once (16): it drops the
/// oldest handshake that has stalled for 2 s to take a waiting connection in, so a real
/// client behind 20 stalled peers is served after about 2 s, not after the 10 s deadline;
/// and every stalled peer is dropped, at the latest at its deadline.
#[test]
fn more_stalled_handshakes_than_the_pool() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "flood.vmdk", &[]);
    let srv = Served::tcp(&img, &["--persistent"]);
    let url = srv.url();
    let mut held = stalled(&srv, 20);
    std::thread::sleep(Duration::from_millis(300));
    let (size, took) = timed_size(&url);
    eprintln!("nbdinfo served after {took:?} with 20 stalled handshakes");
    assert_eq!(size, 64 * MIB);
    assert!(
        took < Duration::from_secs(8),
        "nbdinfo took {took:?} with 20 stalled handshakes"
    );
    // Every stalled connection has been dropped by the deadline (10 s after it was taken
    // in, or earlier to make room): each reads EOF or a reset.
    let t0 = Instant::now();
    for c in held.iter_mut() {
        let s: &mut dyn Stream = if let Some(t) = c.downcast_mut::<TcpStream>() {
            t.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            t
        } else {
            unreachable!()
        };
        let mut gone = false;
        while t0.elapsed() < Duration::from_secs(30) {
            if closed(s) {
                gone = true;
                break;
            }
        }
        assert!(gone, "a stalled connection was kept past its deadline");
    }
    qemu_io_nbd(&url, &cmds(&["read -P 0xaa 60k 8k"]));
}

/// `-e N` as qemu-nbd's `--shared`: with the default one client, a second real client waits
/// (in the listen backlog) while the first holds the slot, and is served once it leaves;
/// `-e 2` serves both at once.
#[test]
fn shared_limit_counts_negotiated_clients() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "slots.vmdk", &[]);
    for (args, waits) in [
        (&["--persistent"][..], true),
        (&["--persistent", "-e", "2"][..], false),
    ] {
        let srv = Served::tcp(&img, args);
        let first = RawClient::tcp(srv.port());
        let mut second = Command::new("nbdinfo")
            .args(["--size", &srv.url()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        let mut done = None;
        while t0.elapsed() < Duration::from_secs(2) {
            if let Some(st) = second.try_wait().unwrap() {
                done = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if waits {
            assert!(
                done.is_none(),
                "{args:?}: a second client was served beside the first"
            );
            first.disconnect();
        } else {
            assert!(
                done.is_some(),
                "{args:?}: the second client was not served beside the first"
            );
            first.disconnect();
        }
        let out = second.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (64 * MIB).to_string()
        );
    }
}

// ---- a minimal raw NBD client ---------------------------------------------------------------

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Whether the peer has closed `s` (EOF or reset within a few seconds). `s` must have a
/// read timeout.
fn closed(s: &mut dyn Stream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset by the server.
            Err(_) => return true,
        }
    }
    false
}

/// Fixed-newstyle client with simple replies: enough to misbehave precisely.
struct RawClient {
    stream: Box<dyn Stream>,
    size: u64,
    flags: u16,
    handle: u64,
}

impl RawClient {
    fn tcp(port: u16) -> RawClient {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        RawClient::handshake(Box::new(s))
    }

    fn unix(path: &Path) -> RawClient {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        RawClient::handshake(Box::new(s))
    }

    fn handshake(mut stream: Box<dyn Stream>) -> RawClient {
        let mut g = [0u8; 18];
        stream.read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], b"NBDMAGIC");
        assert_eq!(u64::from_be_bytes(g[8..16].try_into().unwrap()), IHAVEOPT);
        // FIXED_NEWSTYLE | NO_ZEROES, then NBD_OPT_GO for the default export.
        let mut out = 3u32.to_be_bytes().to_vec();
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&7u32.to_be_bytes());
        out.extend_from_slice(&6u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // name length
        out.extend_from_slice(&0u16.to_be_bytes()); // no info requests
        stream.write_all(&out).unwrap();
        let (mut size, mut flags) = (None, 0);
        loop {
            let mut h = [0u8; 20];
            stream.read_exact(&mut h).unwrap();
            let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0u8; len];
            stream.read_exact(&mut data).unwrap();
            assert_eq!(ty & (1 << 31), 0, "option error {ty:#x}");
            if ty == 3 && data[..2] == [0, 0] {
                size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap()));
                flags = u16::from_be_bytes(data[10..12].try_into().unwrap());
            }
            if ty == 1 {
                break;
            }
        }
        RawClient {
            stream,
            size: size.expect("no NBD_INFO_EXPORT"),
            flags,
            handle: 0,
        }
    }

    fn send_header(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> u64 {
        self.handle += 1;
        let mut h = REQUEST_MAGIC.to_be_bytes().to_vec();
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&cmd.to_be_bytes());
        h.extend_from_slice(&self.handle.to_be_bytes());
        h.extend_from_slice(&offset.to_be_bytes());
        h.extend_from_slice(&len.to_be_bytes());
        self.stream.write_all(&h).unwrap();
        self.handle
    }

    /// Read a simple reply for `handle`; returns its error value.
    fn reply(&mut self, handle: u64) -> u32 {
        let mut r = [0u8; 16];
        self.stream.read_exact(&mut r).unwrap();
        assert_eq!(
            u32::from_be_bytes(r[..4].try_into().unwrap()),
            SIMPLE_REPLY_MAGIC
        );
        assert_eq!(u64::from_be_bytes(r[8..16].try_into().unwrap()), handle);
        u32::from_be_bytes(r[4..8].try_into().unwrap())
    }

    /// A command without payload whose successful reply carries no data either.
    fn request(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> u32 {
        let h = self.send_header(cmd, flags, offset, len);
        self.reply(h)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        let h = self.send_header(CMD_WRITE, 0, offset, data.len() as u32);
        self.stream.write_all(data).unwrap();
        self.reply(h)
    }

    fn read(&mut self, offset: u64, len: u32) -> (u32, Vec<u8>) {
        let h = self.send_header(CMD_READ, 0, offset, len);
        let err = self.reply(h);
        let mut data = vec![0u8; if err == 0 { len as usize } else { 0 }];
        self.stream.read_exact(&mut data).unwrap();
        (err, data)
    }

    fn disconnect(mut self) {
        self.send_header(CMD_DISC, 0, 0, 0);
        assert!(
            self.is_closed(),
            "server kept the connection after NBD_CMD_DISC"
        );
    }

    fn is_closed(&mut self) -> bool {
        closed(&mut self.stream)
    }
}

// ---- extended headers, TLS and qemu-nbd's command line ----------------------------------

/// qemu 10's NBD client negotiates extended headers: writes, zeroes, discards, reads and
/// block status through them leave the image exactly as qemu-io leaves a copy it edits
/// directly; libnbd 1.14 (structured replies only) still reads the same export.
#[test]
fn extended_headers_with_qemu_byte_exact() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = sparse_image(dir.path(), "ext.vmdk", &["subformat=monolithicSparse"]);
    let reference = dir.path().join("ref.vmdk");
    std::fs::copy(&img, &reference).unwrap();
    let edits = [
        "write -P 0x11 0 64k",
        "write -P 0x22 1000k 200k",
        "write -z 1020k 64k",
        // Over zeros written as data: our TRIM deallocates the grain (it reads as zeros),
        // qemu's VMDK driver keeps it, so the contents agree.
        "discard 40M 64k",
        "write -P 0x33 63M 4k",
    ];
    let mut srv = Served::tcp(&img, &["-t", "-v"]);
    qemu_io_nbd(&srv.url(), &cmds(&edits));
    qemu_io_nbd(
        &srv.url(),
        &cmds(&[
            "read -P 0x11 0 64k",
            "read -P 0x22 1000k 20k",
            "read -P 0 1020k 64k",
            "read -P 0x22 1084k 116k",
        ]),
    );
    // Block status through extended headers matches what the image says of itself.
    let ours = qemu_map(&["-f", "raw", &srv.url()], true);
    assert_eq!(nbdinfo_map(&srv.url()), ours, "libnbd and qemu disagree");
    let log = without_colours(&srv.log_text());
    assert!(
        log.contains("extended=true"),
        "qemu did not negotiate extended headers: {log}"
    );
    assert!(
        log.contains("extended=false"),
        "libnbd 1.14 should have used structured replies only: {log}"
    );
    srv.stop();

    qemu_io(&reference, &edits);
    let out = ok("qemu-img", &["compare", &s(&img), &s(&reference)]);
    assert!(out.contains("identical"), "{out}");
    ok("qemu-img", &["check", &s(&img)]);
}

/// `text` without the terminal colour escapes of the server's log.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made
/// with openssl, in qemu's directory layouts: `server/` (ca-cert.pem, server-cert.pem,
/// server-key.pem), `client/` (ca-cert.pem, client-cert.pem, client-key.pem) and
/// `anon/` (ca-cert.pem only: a client without a certificate).
fn make_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let pki = dir.join("pki");
    let (server, client, anon) = (dir.join("server"), dir.join("client"), dir.join("anon"));
    for d in [&pki, &server, &client, &anon] {
        std::fs::create_dir_all(d).unwrap();
    }
    let f = |n: &str| s(&pki.join(n));
    std::fs::write(
        pki.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = v3_ca\n\
         [dn]\nCN = vmdk test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )
    .unwrap();
    ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-config",
            &f("ca.cnf"),
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &f("ca-key.pem"),
            "-out",
            &f("ca-cert.pem"),
            "-days",
            "2",
        ],
    );
    for (who, usage, san, serial) in [
        ("server", "serverAuth", "IP:127.0.0.1,DNS:localhost", "2"),
        ("client", "clientAuth", "DNS:client", "3"),
    ] {
        std::fs::write(
            pki.join(format!("{who}.ext")),
            format!(
                "basicConstraints = critical,CA:FALSE\n\
                 keyUsage = critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage = {usage}\nsubjectAltName = {san}\n\
                 subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
            ),
        )
        .unwrap();
        ok(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={who}"),
                "-keyout",
                &f(&format!("{who}-key.pem")),
                "-out",
                &f(&format!("{who}.csr")),
            ],
        );
        ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &f(&format!("{who}.csr")),
                "-CA",
                &f("ca-cert.pem"),
                "-CAkey",
                &f("ca-key.pem"),
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                &f(&format!("{who}.ext")),
                "-out",
                &f(&format!("{who}-cert.pem")),
            ],
        );
    }
    let copy = |name: &str, to: &Path| {
        std::fs::copy(pki.join(name), to.join(name)).unwrap();
    };
    for d in [&server, &client, &anon] {
        copy("ca-cert.pem", d);
    }
    copy("server-cert.pem", &server);
    copy("server-key.pem", &server);
    copy("client-cert.pem", &client);
    copy("client-key.pem", &client);
    (server, client, anon)
}

/// A raw client against a server that requires TLS.
fn tls_required_raw(port: u16) {
    fn start(port: u16) -> TcpStream {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..8], b"NBDMAGIC");
        s.write_all(&3u32.to_be_bytes()).unwrap();
        s
    }
    fn option(s: &mut TcpStream, opt: u32, data: &[u8]) -> (u32, String) {
        let mut out = IHAVEOPT.to_be_bytes().to_vec();
        out.extend_from_slice(&opt.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
        s.write_all(&out).unwrap();
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), opt);
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let mut msg = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        s.read_exact(&mut msg).unwrap();
        (ty, String::from_utf8_lossy(&msg).into_owned())
    }
    const TLS_REQD: u32 = (1 << 31) + 5;
    let mut s = start(port);
    for opt in [3u32, 8, 11, 7] {
        // LIST, STRUCTURED_REPLY, EXTENDED_HEADERS, GO (an empty GO request).
        let data: &[u8] = if opt == 7 { &[0, 0, 0, 0, 0, 0] } else { &[] };
        let (ty, msg) = option(&mut s, opt, data);
        assert_eq!(ty, TLS_REQD, "option {opt}: {msg}");
        assert!(msg.contains("STARTTLS"), "{msg}");
    }
    // STARTTLS is acknowledged; plain NBD instead of a TLS ClientHello ends the session.
    assert_eq!(option(&mut s, 5, &[]).0, 1);
    s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&[0u8; 8]).unwrap();
    assert!(
        closed(&mut s),
        "server kept a connection that sent garbage after STARTTLS"
    );
    // EXPORT_NAME before TLS cannot be answered with an error: the session ends.
    let mut s = start(port);
    let mut out = IHAVEOPT.to_be_bytes().to_vec();
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    s.write_all(&out).unwrap();
    assert!(closed(&mut s), "EXPORT_NAME before TLS was not refused");
}

/// qemu's client TLS object and `--image-opts` string for an NBD server on `port`.
fn qemu_tls_args(creds: &Path, port: u16) -> (String, String) {
    (
        format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            creds.display()
        ),
        format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},tls-creds=tls0"
        ),
    )
}

/// `vmdk serve --object tls-creds-x509,...,endpoint=server --tls-creds tls0`, exactly as
/// qemu-nbd takes it: qemu (with a client certificate, as verify-peer=on, the default,
/// requires) and libnbd (`nbds://`) read and write byte-exact over TLS; a client without a
/// certificate, and a client that does not start TLS, are refused with clear errors; with
/// verify-peer=off a client without a certificate gets in.
#[test]
fn tls_as_qemu_nbd_takes_it() {
    if skip_without(&["qemu-img", "qemu-io", "nbdinfo", "nbdcopy", "openssl"]) {
        return;
    }
    let dir = tempdir();
    let (server, client, anon) = make_pki(dir.path());
    let img = sparse_image(dir.path(), "tls.vmdk", &["subformat=monolithicSparse"]);
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server",
        server.display()
    );
    let srv = Served::tcp(&img, &["--object", &object, "--tls-creds", "tls0", "-t"]);
    let port = srv.port();

    // qemu over TLS, with its client certificate: write, read back, convert.
    let (obj, opts) = qemu_tls_args(&client, port);
    let r = tool(
        "qemu-io",
        &[
            "--object",
            &obj,
            "--image-opts",
            &opts,
            "-c",
            "write -P 0x77 2M 192k",
            "-c",
            "read -P 0x77 2M 192k",
            "-c",
            "read -P 0xaa 60k 8k",
        ],
    );
    assert!(
        r.code == 0 && !r.stdout.contains("failed"),
        "qemu-io over TLS: {}{}",
        r.stdout,
        r.stderr
    );
    let got = dir.path().join("tls.got.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "--object",
            &obj,
            "--image-opts",
            &opts,
            "-O",
            "raw",
            &s(&got),
        ],
    );
    let want = dir.path().join("tls.want.raw");
    ok(
        "qemu-img",
        &[
            "convert",
            "-U",
            "-f",
            "vmdk",
            "-O",
            "raw",
            &s(&img),
            &s(&want),
        ],
    );
    assert!(
        std::fs::read(&want).unwrap() == std::fs::read(&got).unwrap(),
        "qemu-img convert over TLS differs from the image"
    );

    // libnbd over TLS (nbds://, certificates from the client directory).
    let url = format!(
        "nbds://127.0.0.1:{port}/?tls-certificates={}",
        client.display()
    );
    let out = ok("nbdinfo", &["--json", &url]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["exports"][0]["export-size"].as_u64(),
        Some(std::fs::metadata(&want).unwrap().len())
    );
    let copied = dir.path().join("tls.nbdcopy.raw");
    ok("nbdcopy", &[&url, &s(&copied)]);
    assert!(std::fs::read(&want).unwrap() == std::fs::read(&copied).unwrap());

    // A client that does not start TLS is told TLS is required.
    let r = tool("qemu-img", &["info", &format!("nbd://127.0.0.1:{port}")]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "TLS", "plain qemu client");
    // libnbd says only "not supported"; its debug output shows the server's reason.
    let r = Command::new("nbdinfo")
        .arg(format!("nbd://127.0.0.1:{port}"))
        .env("LIBNBD_DEBUG", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains("TLS is required"),
        "plain libnbd client: {stderr}"
    );
    // The rules before TLS, byte by byte: options other than STARTTLS get ERR_TLS_REQD,
    // EXPORT_NAME ends the session, and what follows STARTTLS must be TLS.
    tls_required_raw(port);
    // verify-peer=on: a client without a certificate fails the TLS handshake.
    let (obj_anon, opts_anon) = qemu_tls_args(&anon, port);
    let r = tool(
        "qemu-img",
        &["info", "--object", &obj_anon, "--image-opts", &opts_anon],
    );
    assert_ne!(
        r.code, 0,
        "a client without a certificate got in: {}",
        r.stdout
    );
    // The server is unharmed by all that.
    let r = tool(
        "qemu-io",
        &[
            "--object",
            &obj,
            "--image-opts",
            &opts,
            "-c",
            "read -P 0x77 2M 4k",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    drop(srv);
    ok("qemu-img", &["check", &s(&img)]);

    // verify-peer=off: the certificate-less client gets in.
    let object_off = format!("{object},verify-peer=off");
    let srv = Served::tcp(
        &img,
        &["--object", &object_off, "--tls-creds", "tls0", "-r"],
    );
    let (obj_anon, opts_anon) = qemu_tls_args(&anon, srv.port());
    let r = tool(
        "qemu-io",
        &[
            "--object",
            &obj_anon,
            "--image-opts",
            &opts_anon,
            "-r",
            "-c",
            "read -P 0x77 2M 192k",
        ],
    );
    assert!(
        r.code == 0 && !r.stdout.contains("failed"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    drop(srv);

    // Credentials that cannot be loaded: refused up front, naming the file.
    let r = vmdk(&[
        "serve",
        "--object",
        "tls-creds-x509,id=tls0,dir=/nonexistent,endpoint=server",
        "--tls-creds",
        "tls0",
        &s(&img),
    ]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "/nonexistent");
    let r = vmdk(&[
        "serve",
        "--object",
        &object,
        "--tls-creds",
        "tls1",
        &s(&img),
    ]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "tls1");
    let r = vmdk(&[
        "serve",
        "--object",
        &format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=client",
            server.display()
        ),
        "--tls-creds",
        "tls0",
        &s(&img),
    ]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "server endpoint");
}

/// qemu-nbd's options each do what qemu-nbd's do: `-k SOCKET --fork --pid-file` (returns
/// once listening, the pid file names the server, both files gone after SIGTERM), `-f vmdk`,
/// `-x NAME`, `-r` (read-only: writes refused), `-e 2` (a second client is served while
/// one is connected; multi-conn advertised), `-t` (still serving after clients leave).
#[test]
fn qemu_nbd_options_each_take_effect() {
    if skip_without(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = tempdir();
    let img = qemu_written(dir.path(), "opts.vmdk", "8M", &["write -P 0x3c 0 64k"]);
    let sock = dir.path().join("nbd.sock");
    let pid_file = dir.path().join("nbd.pid");
    vmdk_ok(&[
        "serve",
        "-k",
        &s(&sock),
        "--fork",
        "--pid-file",
        &s(&pid_file),
        "-f",
        "vmdk",
        "-x",
        "disk",
        "-r",
        "-e",
        "2",
        "-t",
        &s(&img),
    ]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file exists when --fork returns")
        .trim()
        .parse()
        .unwrap();
    /// Kills the daemon if the test fails before it stops it.
    struct Daemon(Option<i32>);
    impl Drop for Daemon {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                // SAFETY: kill sends a signal; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let mut daemon = Daemon(Some(pid));
    assert!(sock.exists(), "--fork returned before the socket existed");
    let url = format!("nbd+unix:///disk?socket={}", sock.display());

    // One client holds a connection; with -e 2 another is still served.
    let mut first = UnixStream::connect(&sock).unwrap();
    first.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut greeting = [0u8; 18];
    first.read_exact(&mut greeting).unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok("nbdinfo", &["--json", &url])).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["is_read_only"], true, "-r");
    assert_eq!(e["can_multi_conn"], true, "-e 2");
    assert_eq!(e["export-size"], 8 << 20);
    drop(first);
    // -r: writes refused; -t: still serving after those clients left.
    let r = tool("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &url]);
    assert!(
        r.code != 0 || r.stdout.contains("failed") || r.stderr.contains("failed"),
        "write to a read-only export: {}{}",
        r.stdout,
        r.stderr
    );
    qemu_io_nbd_with(&["-r"], &url, &cmds(&["read -P 0x3c 0 64k"]));
    // A wrong export name is refused.
    let r = tool(
        "nbdinfo",
        &[&format!("nbd+unix:///other?socket={}", sock.display())],
    );
    assert_ne!(r.code, 0);

    // SAFETY: kill sends a signal to the server we started; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + DEADLINE;
    while pid_file.exists() || sock.exists() {
        assert!(
            Instant::now() < deadline,
            "pid file or socket left after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.0 = None;
    ok("qemu-img", &["check", &s(&img)]);
    // -f takes only vmdk.
    let r = vmdk(&["serve", "-f", "qcow2", "-k", &s(&sock), &s(&img)]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "vmdk");
}
