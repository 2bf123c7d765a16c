//! End-to-end tests with QEMU's NBD client (qemu-io, qemu-img).

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use vmdk_nbd::ServerConfig;

const MIB: u64 = 1 << 20;

fn cfg(max_clients: usize) -> ServerConfig {
    ServerConfig {
        persistent: true,
        max_clients,
        ..Default::default()
    }
}

#[test]
fn qemu_io_write_read_tcp() {
    if skip_without("qemu-io") {
        return;
    }
    let export = MemExport::new(4 * MIB);
    let srv = TestServer::tcp(export.clone(), cfg(1));
    let out = qemu_io(
        &srv.url(),
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "read -P 0 64k 64k",
        ],
    );
    assert_qemu_io_ok(&out);
    assert!(
        out.stdout.contains("wrote 65536/65536 bytes at offset 0"),
        "{}",
        out.all()
    );
    let snap = export.snapshot();
    assert!(snap[..65536].iter().all(|&b| b == 0xab));
    assert!(snap[65536..].iter().all(|&b| b == 0));

    // A mismatching pattern is detected, proving reads are really checked.
    let out = qemu_io(&srv.url(), &["read -P 0xcd 0 4k"]);
    assert!(
        out.all().contains("Pattern verification failed"),
        "{}",
        out.all()
    );
}

#[test]
fn qemu_io_write_read_unix_named_export() {
    if skip_without("qemu-io") {
        return;
    }
    let export = MemExport::new(4 * MIB);
    let config = ServerConfig {
        export_name: "vm-disk".into(),
        ..cfg(1)
    };
    let srv = TestServer::unix(export.clone(), config);
    let out = qemu_io(
        &srv.url_for("vm-disk"),
        &["write -P 0x11 1m 128k", "read -P 0x11 1m 128k", "flush"],
    );
    assert_qemu_io_ok(&out);
    // Default (empty) name reaches the same export.
    assert_qemu_io_ok(&qemu_io(&srv.url(), &["read -P 0x11 1m 128k"]));
    // A wrong name is refused.
    let out = qemu_io(&srv.url_for("nope"), &["read 0 4k"]);
    assert!(!out.success || out.all().contains("rror"), "{}", out.all());
    assert!(export.flushes.load(Ordering::SeqCst) >= 1);
}

#[test]
fn qemu_img_info_reports_size() {
    if skip_without("qemu-img") {
        return;
    }
    let srv = TestServer::tcp(MemExport::new(24 * MIB), cfg(1));
    let out = run(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", &srv.url()],
    );
    assert!(out.success, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["virtual-size"], 24 * MIB);
}

#[test]
fn qemu_img_map_reports_holes_and_data() {
    if skip_without("qemu-img") {
        return;
    }
    let export = MemExport::new(2 * MIB);
    export.fill(0, &pattern(65536, 3));
    export.fill(MIB, &pattern(131072, 4));
    let srv = TestServer::tcp(export, cfg(1));
    let out = run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &srv.url()],
    );
    assert!(out.success, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut data = Vec::new();
    let mut covered = 0;
    for e in v.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        assert_eq!(start, covered, "map not contiguous: {}", out.stdout);
        covered += len;
        if e["data"].as_bool().unwrap() {
            assert!(!e["zero"].as_bool().unwrap());
            data.push((start, len));
        } else {
            assert!(
                e["zero"].as_bool().unwrap(),
                "hole not reported as zero: {e}"
            );
        }
    }
    assert_eq!(covered, 2 * MIB);
    assert_eq!(data, vec![(0, 65536), (MIB, 131072)], "{}", out.stdout);
}

#[test]
fn qemu_img_compare_and_convert() {
    if skip_without("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let mut content = vec![0u8; size as usize];
    content[..MIB as usize].copy_from_slice(&pattern(MIB as usize, 5));
    content[5 * MIB as usize..6 * MIB as usize].copy_from_slice(&pattern(MIB as usize, 6));
    let export = MemExport::new(size);
    export.fill(0, &content[..MIB as usize]);
    export.fill(5 * MIB, &content[5 * MIB as usize..6 * MIB as usize]);
    let srv = TestServer::tcp(export.clone(), cfg(2));

    let raw = dir.path().join("same.raw");
    write_file(&raw, &content);
    let raw_s = raw.to_str().unwrap();
    let out = run(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", raw_s, &srv.url()],
    );
    assert!(out.success, "{}", out.all());

    let mut different = content.clone();
    different[3 * MIB as usize + 17] = 1;
    let raw2 = dir.path().join("diff.raw");
    write_file(&raw2, &different);
    let out = run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            raw2.to_str().unwrap(),
            &srv.url(),
        ],
    );
    assert!(
        !out.success && out.stdout.contains("Content mismatch at offset 3145728"),
        "{}",
        out.all()
    );

    // Export -> file (large sequential reads).
    let copy = dir.path().join("copy.raw");
    let out = run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &srv.url(),
            copy.to_str().unwrap(),
        ],
    );
    assert!(out.success, "{}", out.all());
    assert_eq!(std::fs::read(&copy).unwrap(), content);

    // File -> export (writes, zero detection).
    let export2 = MemExport::new(size);
    let srv2 = TestServer::unix(export2.clone(), cfg(1));
    let out = run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            raw2.to_str().unwrap(),
            &srv2.url(),
        ],
    );
    assert!(out.success, "{}", out.all());
    assert!(export2.snapshot() == different, "converted data differs");
}

#[test]
fn qemu_io_zeroes_discard_flush() {
    if skip_without("qemu-io") {
        return;
    }
    let export = MemExport::new(4 * MIB);
    let srv = TestServer::tcp(export.clone(), cfg(1));
    let out = qemu_io(
        &srv.url(),
        &[
            "write -P 0xcd 0 256k",
            "write -z 0 64k",
            "write -z -u 64k 64k",
            "discard 128k 64k",
            "flush",
            "read -P 0 0 192k",
            "read -P 0xcd 192k 64k",
        ],
    );
    assert_qemu_io_ok(&out);
    assert!(
        export.zeroes_no_hole.load(Ordering::SeqCst) >= 1,
        "write -z must send NO_HOLE"
    );
    assert!(
        export.zeroes_may_trim.load(Ordering::SeqCst) >= 1,
        "write -z -u may trim"
    );
    assert!(
        export.trims.load(Ordering::SeqCst) >= 1,
        "discard must reach the export"
    );
    assert!(export.flushes.load(Ordering::SeqCst) >= 1);
    assert!(export.is_allocated(0), "NO_HOLE zeroes stay allocated");
    assert!(!export.is_allocated(16), "unmapping zeroes deallocate");
    assert!(!export.is_allocated(32), "discard deallocates");
    let snap = export.snapshot();
    assert!(snap[..192 * 1024].iter().all(|&b| b == 0));
    assert!(snap[192 * 1024..256 * 1024].iter().all(|&b| b == 0xcd));
}

#[test]
fn concurrent_qemu_io_clients() {
    if skip_without("qemu-io") {
        return;
    }
    const CLIENTS: usize = 4;
    let export = MemExport::new(CLIENTS as u64 * MIB);
    let srv = TestServer::tcp(export.clone(), cfg(CLIENTS));
    let url = srv.url();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    let pat = format!("0x{:02x}", 0x10 + i);
                    let base = i as u64 * MIB;
                    let cmds: Vec<String> = (0..8)
                        .map(|k| format!("aio_write -P {pat} {} 128k", base + k * 131072))
                        .chain(["aio_flush".to_string()])
                        .chain([format!("read -P {pat} {base} 1m")])
                        .collect();
                    let cmds: Vec<&str> = cmds.iter().map(|s| s.as_str()).collect();
                    qemu_io(&url, &cmds)
                })
            })
            .collect();
        for h in handles {
            assert_qemu_io_ok(&h.join().unwrap());
        }
    });
    let snap = export.snapshot();
    for i in 0..CLIENTS {
        let r = &snap[i * MIB as usize..(i + 1) * MIB as usize];
        assert!(
            r.iter().all(|&b| b == 0x10 + i as u8),
            "client {i} data wrong"
        );
    }
    // And one more client sees everything.
    for i in 0..CLIENTS {
        let cmd = format!("read -P 0x{:02x} {} 1m", 0x10 + i, i as u64 * MIB);
        assert_qemu_io_ok(&qemu_io(&url, &[&cmd]));
    }
}

#[test]
fn qemu_io_read_only() {
    if skip_without("qemu-io") {
        return;
    }
    let export = MemExport::new(MIB);
    export.fill(0, &[0x77; 4096]);
    let config = ServerConfig {
        read_only: true,
        ..cfg(1)
    };
    let srv = TestServer::tcp(export.clone(), config);
    assert_qemu_io_ok(&qemu_io_with(&["-r"], &srv.url(), &["read -P 0x77 0 4k"]));
    // qemu refuses to open a read-only export for writing.
    let out = qemu_io(&srv.url(), &["write -P 1 0 4k"]);
    assert!(
        !out.success && out.all().contains("Permission denied"),
        "{}",
        out.all()
    );
    assert_eq!(export.writes.load(Ordering::SeqCst), 0);
}

/// A client that sends options and never reads the replies holds no client slot while it
/// negotiates: a real client on the one-slot export is served at once, beside it. And it is
/// still dropped at the handshake deadline: the server's handshake writes are under the
/// deadline too, so once its socket buffers are full it drops the client instead of
/// blocking in `write` for as long as the client likes.
#[test]
fn non_reading_client_is_dropped_at_the_handshake_deadline() {
    if skip_without("qemu-img") {
        return;
    }
    const DEADLINE: Duration = Duration::from_secs(3);
    for unix in [false, true] {
        let config = ServerConfig {
            // Big replies fill the socket buffers after a few dozen options.
            description: Some("d".repeat(4000)),
            handshake_timeout: DEADLINE,
            ..cfg(1)
        };
        let export = MemExport::new(24 * MIB);
        let srv = if unix {
            TestServer::unix(export, config)
        } else {
            TestServer::tcp(export, config)
        };
        let connected = Instant::now();
        let mut stuck = non_reading_client(&srv);
        let t0 = Instant::now();
        let out = run(
            "qemu-img",
            &["info", "--output=json", "-f", "raw", &srv.url()],
        );
        let took = t0.elapsed();
        assert!(out.success, "unix={unix}: {}", out.all());
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["virtual-size"], 24 * MIB);
        // Served beside the stuck client, not after its deadline.
        assert!(
            took < DEADLINE,
            "unix={unix}: served only after {took:?}: the stuck client held the slot"
        );
        // The stuck client is dropped at its deadline: what it was sent ends there.
        let mut buf = vec![0u8; 64 * 1024];
        let (gone, how) = loop {
            match stuck.read(&mut buf) {
                Ok(0) => break (connected.elapsed(), "end of stream".to_string()),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // Reset: the server closed with options unread.
                Err(e) => break (connected.elapsed(), e.to_string()),
            }
            assert!(
                connected.elapsed() < DEADLINE + Duration::from_secs(10),
                "unix={unix}: the stuck client was not dropped"
            );
        };
        assert!(
            gone >= DEADLINE - Duration::from_millis(100),
            "unix={unix}: the stuck client was dropped after {gone:?} ({how}), before its \
             deadline"
        );
    }
}

/// Connect, send the client flags and then options (LIST, and INFO for long unknown export
/// names) without ever reading a reply. Returns the connection, kept open (with a read
/// timeout of a few seconds, for the caller to see it closed).
fn non_reading_client(srv: &TestServer) -> Box<dyn std::io::Read> {
    let mut opts = Vec::new();
    opts.extend_from_slice(&3u32.to_be_bytes()); // fixed newstyle, no zeroes
    let name = "n".repeat(300);
    for i in 0..1000 {
        let (opt, data) = if i % 2 == 0 {
            (OPT_LIST, Vec::new())
        } else {
            (OPT_INFO, info_payload(&name, &[]))
        };
        opts.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opts.extend_from_slice(&opt.to_be_bytes());
        opts.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opts.extend_from_slice(&data);
    }
    fn send<S: std::io::Write>(s: &mut S, bytes: &[u8]) {
        // The server stops reading once it is stuck writing, and hangs up at its deadline:
        // neither is an error here.
        let _ = s.write_all(bytes);
    }
    match &srv.addr {
        Addr::Tcp(a) => {
            let mut s = std::net::TcpStream::connect(a).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            send(&mut s, &opts);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Box::new(s)
        }
        Addr::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
            send(&mut s, &opts);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Box::new(s)
        }
    }
}
