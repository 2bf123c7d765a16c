//! Protocol-level tests with a raw Rust client: negotiation details,
//! structured replies, error handling, hostile clients, shutdown.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;
use vmdk_nbd::ServerConfig;

const SIZE: u64 = 4 << 20;

fn persistent(max_clients: usize) -> ServerConfig {
    ServerConfig {
        export_name: "disk".into(),
        description: Some("test disk".into()),
        persistent: true,
        max_clients,
        ..Default::default()
    }
}

#[test]
fn option_negotiation() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export, persistent(2));
    let mut c = RawClient::start(srv.socket_addr());

    // LIST: one server entry carrying the description, then ACK.
    let r = c.option(OPT_LIST, &[]);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].0, REP_SERVER);
    assert_eq!(be32(&r[0].1), 4);
    assert_eq!(&r[0].1[4..8], b"disk");
    assert_eq!(&r[0].1[8..], b"test disk");
    assert_eq!(r[1].0, REP_ACK);
    assert_eq!(c.option(OPT_LIST, b"x")[0].0, REP_ERR_INVALID);

    // Unsupported / refused options.
    assert_eq!(c.option(OPT_STARTTLS, &[])[0].0, REP_ERR_POLICY);
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(c.option(0x1234, b"whatever")[0].0, REP_ERR_UNSUP);

    // INFO for an unknown export, then a malformed one.
    let r = c.option(OPT_INFO, &info_payload("nope", &[]));
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("nope"));
    assert_eq!(c.option(OPT_INFO, &[0, 0, 0, 9, 1])[0].0, REP_ERR_INVALID);

    // INFO with name, description and block size requested.
    let r = c.option(OPT_INFO, &info_payload("disk", &[1, 2, 3]));
    assert_eq!(r.last().unwrap().0, REP_ACK);
    let infos: Vec<(u16, &[u8])> = r
        .iter()
        .filter(|(t, _)| *t == REP_INFO)
        .map(|(_, d)| (be16(d), &d[2..]))
        .collect();
    let get = |t: u16| infos.iter().find(|(i, _)| *i == t).map(|(_, d)| *d);
    let export = get(0).unwrap();
    assert_eq!(be64(export), SIZE);
    let flags = be16(&export[8..]);
    assert_eq!(
        flags & (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_WRITE_ZEROES | TF_SEND_TRIM),
        TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_WRITE_ZEROES | TF_SEND_TRIM
    );
    assert_eq!(flags & TF_READ_ONLY, 0);
    assert_ne!(
        flags & TF_CAN_MULTI_CONN,
        0,
        "max_clients > 1 allows multi-conn"
    );
    assert_eq!(flags & TF_SEND_DF, 0, "DF requires structured replies");
    assert_eq!(get(1).unwrap(), b"disk");
    assert_eq!(get(2).unwrap(), b"test disk");
    let bs = get(3).unwrap();
    assert_eq!(
        (be32(bs), be32(&bs[4..]), be32(&bs[8..])),
        (512, 4096, 32 << 20)
    );

    // Meta contexts need structured replies first.
    let r = c.option(OPT_LIST_META_CONTEXT, &meta_payload("disk", &[]));
    assert_eq!(r[0].0, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[])[0].0, REP_ACK);

    for queries in [&[][..], &["base:"][..], &["base:allocation", "qemu:x"][..]] {
        let r = c.option(OPT_LIST_META_CONTEXT, &meta_payload("disk", queries));
        assert_eq!(r.len(), 2, "{queries:?}: {r:?}");
        assert_eq!(r[0].0, REP_META_CONTEXT);
        assert_eq!(&r[0].1[4..], b"base:allocation");
    }
    let r = c.option(
        OPT_LIST_META_CONTEXT,
        &meta_payload("disk", &["qemu:dirty-bitmap:x"]),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ACK);
    let r = c.option(OPT_LIST_META_CONTEXT, &meta_payload("other", &[]));
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    // Truncated query list.
    let mut bad = meta_payload("disk", &["base:allocation"]);
    bad.pop();
    assert_eq!(c.option(OPT_SET_META_CONTEXT, &bad)[0].0, REP_ERR_INVALID);
    // `base:` alone selects nothing in SET.
    let r = c.option(OPT_SET_META_CONTEXT, &meta_payload("disk", &["base:"]));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ACK);

    // Full GO with structured replies and base:allocation (empty name = default).
    let (size, flags, ctx) = c.go("", true, true);
    assert_eq!(size, SIZE);
    assert_ne!(flags & TF_SEND_DF, 0);
    let ctx = ctx.unwrap();

    c.request(0, CMD_BLOCK_STATUS, 1, 0, 65536);
    let ch = c.chunks();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].ty, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(be32(&ch[0].payload), ctx);
    c.request(0, CMD_DISC, 2, 0, 0);
    c.expect_closed();
}

#[test]
fn abort_and_legacy_export_name() {
    let export = MemExport::new(SIZE);
    export.fill(0, &[7u8; 512]);
    let srv = TestServer::tcp(export, persistent(4));

    let mut c = RawClient::start(srv.socket_addr());
    let r = c.option(OPT_ABORT, &[]);
    assert_eq!(r[0].0, REP_ACK);
    c.expect_closed();

    // EXPORT_NAME with NO_ZEROES: 10 bytes of export info, no padding.
    let mut c = RawClient::start(srv.socket_addr());
    c.send_option(OPT_EXPORT_NAME, b"disk");
    let info = c.read_n(10);
    assert_eq!(be64(&info), SIZE);
    assert_ne!(be16(&info[8..]) & TF_HAS_FLAGS, 0);
    c.request(0, CMD_READ, 9, 0, 512);
    assert_eq!(c.simple(), (0, 9));
    assert_eq!(c.read_n(512), vec![7u8; 512]);

    // Without NO_ZEROES the 124 zero bytes follow.
    let mut c = RawClient::connect(srv.socket_addr());
    c.greeting();
    c.s.write_all(&1u32.to_be_bytes()).unwrap();
    c.send_option(OPT_EXPORT_NAME, b"");
    let info = c.read_n(134);
    assert!(info[10..].iter().all(|&b| b == 0));
    c.request(0, CMD_FLUSH, 1, 0, 0);
    assert_eq!(c.simple(), (0, 1));

    // Unknown name via EXPORT_NAME: the only possible answer is hanging up.
    let mut c = RawClient::start(srv.socket_addr());
    c.send_option(OPT_EXPORT_NAME, b"wrong");
    c.expect_closed();

    // Unknown client flags.
    let mut c = RawClient::connect(srv.socket_addr());
    c.greeting();
    c.s.write_all(&0x8000_0001u32.to_be_bytes()).unwrap();
    c.expect_closed();

    assert_server_healthy(&srv.url());
}

#[test]
fn structured_sparse_reads_and_block_status() {
    let export = MemExport::new(SIZE);
    let data = pattern(8192, 1);
    export.fill(8192, &data); // blocks 2-3 allocated, the rest is a hole
    let srv = TestServer::tcp(export.clone(), persistent(1));
    let mut c = RawClient::start(srv.socket_addr());
    let (_, _, ctx) = c.go("disk", true, true);
    let ctx = ctx.unwrap();

    // [0, 24K): hole 8K, data 8K, hole 8K.
    c.request(0, CMD_READ, 1, 0, 24576);
    let ch = c.chunks();
    assert!(ch.iter().all(|x| x.handle == 1));
    let (bytes, holes) = assemble_read(&ch, 0, 24576);
    assert_eq!(holes, 2, "{ch:?}");
    assert_eq!(&bytes[8192..16384], &data[..]);
    assert!(bytes[..8192].iter().chain(&bytes[16384..]).all(|&b| b == 0));

    // Unaligned read straddling hole and data.
    c.request(0, CMD_READ, 2, 8000, 300);
    let (bytes, _) = assemble_read(&c.chunks(), 8000, 300);
    assert!(bytes[..192].iter().all(|&b| b == 0));
    assert_eq!(&bytes[192..], &data[..108]);

    // DF: exactly one content chunk, zeroes explicit.
    c.request(FLAG_DF, CMD_READ, 3, 0, 24576);
    let ch = c.chunks();
    let content: Vec<_> = ch.iter().filter(|x| x.ty != REPLY_TYPE_NONE).collect();
    assert_eq!(content.len(), 1);
    assert_eq!(content[0].ty, REPLY_TYPE_OFFSET_DATA);
    let (bytes, _) = assemble_read(&ch, 0, 24576);
    assert_eq!(&bytes[8192..16384], &data[..]);

    // A fully sparse region comes back as holes only.
    c.request(0, CMD_READ, 4, 1 << 20, 1 << 20);
    let ch = c.chunks();
    assert!(ch.iter().all(|x| x.ty == REPLY_TYPE_OFFSET_HOLE));

    // Block status: three extents, capped to the request.
    c.request(0, CMD_BLOCK_STATUS, 5, 0, 20000);
    let ch = c.chunks();
    assert_eq!(ch.len(), 1);
    let p = &ch[0].payload;
    assert_eq!(be32(p), ctx);
    let ext: Vec<(u32, u32)> = p[4..].chunks(8).map(|e| (be32(e), be32(&e[4..]))).collect();
    assert_eq!(ext, vec![(8192, 3), (8192, 0), (20000 - 16384, 3)]);

    // REQ_ONE: a single descriptor.
    c.request(FLAG_REQ_ONE, CMD_BLOCK_STATUS, 6, 0, 20000);
    let ch = c.chunks();
    assert_eq!(ch[0].payload.len(), 12);
    assert_eq!(be32(&ch[0].payload[4..]), 8192);

    // Errors come back as structured error chunks.
    c.request(0, CMD_BLOCK_STATUS, 7, SIZE - 512, 1024);
    assert_eq!(c.chunks()[0].error(), EINVAL);
    c.request(0, CMD_READ, 8, SIZE, 1);
    assert_eq!(c.chunks()[0].error(), EINVAL);

    // Zero-length read is harmless.
    c.request(0, CMD_READ, 9, 0, 0);
    let ch = c.chunks();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].ty, REPLY_TYPE_NONE);
}

#[test]
fn block_status_requires_negotiated_context() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(1));
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", true, false);
    c.request(0, CMD_BLOCK_STATUS, 1, 0, 4096);
    assert_eq!(c.chunks()[0].error(), EINVAL);
    // Without structured replies, DF is not a valid flag.
    c.request(0, CMD_DISC, 9, 0, 0);
    c.expect_closed(); // frees the single slot
    let mut c2 = RawClient::start(srv.socket_addr());
    c2.go("disk", false, false);
    c2.request(FLAG_DF, CMD_READ, 2, 0, 512);
    assert_eq!(c2.simple(), (EINVAL, 2));
}

#[test]
fn writes_zeroes_trim_and_errors_simple_replies() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), persistent(1));
    let mut c = RawClient::start(srv.socket_addr());
    let (_, flags, _) = c.go("disk", false, false);
    assert_eq!(flags & TF_SEND_DF, 0);

    let data = pattern(65536, 2);
    c.write_req(FLAG_FUA, 1, 65536, &data);
    assert_eq!(c.simple(), (0, 1));
    assert!(export.flushes.load(Ordering::SeqCst) >= 1, "FUA must flush");
    assert_eq!(&export.snapshot()[65536..131072], &data[..]);

    c.request(FLAG_NO_HOLE, CMD_WRITE_ZEROES, 2, 65536, 8192);
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(export.zeroes_no_hole.load(Ordering::SeqCst), 1);
    assert!(export.is_allocated(16), "NO_HOLE must not deallocate");
    c.request(0, CMD_WRITE_ZEROES, 3, 65536 + 8192, 8192);
    assert_eq!(c.simple(), (0, 3));
    assert_eq!(export.zeroes_may_trim.load(Ordering::SeqCst), 1);
    assert!(!export.is_allocated(18));
    c.request(0, CMD_TRIM, 4, 65536 + 16384, 16384);
    assert_eq!(c.simple(), (0, 4));
    assert_eq!(export.trims.load(Ordering::SeqCst), 1);
    let snap = export.snapshot();
    assert!(snap[65536..65536 + 32768].iter().all(|&b| b == 0));
    assert_eq!(&snap[65536 + 32768..131072], &data[32768..]);

    // Range errors: writes past the end are ENOSPC, reads/trims EINVAL.
    c.write_req(0, 5, SIZE - 512, &[1u8; 1024]);
    assert_eq!(c.simple(), (ENOSPC, 5));
    c.request(0, CMD_WRITE_ZEROES, 6, SIZE, 1);
    assert_eq!(c.simple(), (ENOSPC, 6));
    c.request(0, CMD_READ, 7, SIZE - 512, 1024);
    assert_eq!(c.simple(), (EINVAL, 7)); // and no payload follows
    c.request(0, CMD_TRIM, 8, u64::MAX - 10, 4096);
    assert_eq!(c.simple(), (EINVAL, 8));
    c.request(0, CMD_CACHE, 9, 0, 4096);
    assert_eq!(c.simple(), (0, 9));
    c.request(0x4000, CMD_FLUSH, 10, 0, 0);
    assert_eq!(c.simple(), (EINVAL, 10), "unknown flag");
    c.request(0, 42, 11, 0, 0);
    assert_eq!(c.simple(), (EINVAL, 11), "unknown command");

    // Still in sync: a normal read returns the right data.
    c.request(0, CMD_READ, 12, 131072 - 512, 512);
    assert_eq!(c.simple(), (0, 12));
    assert_eq!(c.read_n(512), data[65536 - 512..].to_vec());
}

#[test]
fn pipelined_requests_all_answered() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), persistent(1));
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", true, true);

    // Fire many requests without waiting, then match replies by handle.
    let mut expected = std::collections::HashMap::new();
    for i in 0..64u64 {
        let data = pattern(16384, i as u32);
        c.write_req(0, 1000 + i, i * 16384, &data);
        expected.insert(i, data);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        match c.read_reply() {
            Reply::Simple { error, handle } => {
                assert_eq!(error, 0);
                assert!(seen.insert(handle));
            }
            r => panic!("unexpected {r:?}"),
        }
    }
    for i in 0..64u64 {
        c.request(0, CMD_READ, 2000 + i, i * 16384, 16384);
    }
    let mut got = 0;
    while got < 64 {
        let ch = c.chunks();
        let h = ch[0].handle - 2000;
        let (bytes, _) = assemble_read(&ch, h * 16384, 16384);
        assert_eq!(bytes, expected[&h]);
        got += 1;
    }
}

// ---------------------------------------------------------------------------
// Hostile clients: each must only end its own connection.
// ---------------------------------------------------------------------------

#[test]
fn hostile_garbage_instead_of_handshake() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(2));
    let mut c = RawClient::connect(srv.socket_addr());
    c.greeting();
    c.s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    c.expect_closed();

    // Right flags, wrong option magic.
    let mut c = RawClient::start(srv.socket_addr());
    c.s.write_all(&[0xAB; 64]).unwrap();
    c.expect_closed();

    // Connect and vanish without a word.
    drop(RawClient::connect(srv.socket_addr()));

    assert_server_healthy(&srv.url());
}

#[test]
fn hostile_oversized_option() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(2));
    let mut c = RawClient::start(srv.socket_addr());
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&0xFFFF_FFF0u32.to_be_bytes());
    c.s.write_all(&b).unwrap();
    let (opt, ty, _) = c.read_option_reply();
    assert_eq!((opt, ty), (OPT_GO, REP_ERR_TOO_BIG));
    c.expect_closed();

    // Oversized EXPORT_NAME cannot be answered at all.
    let mut c = RawClient::start(srv.socket_addr());
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    b.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.s.write_all(&b).unwrap();
    c.expect_closed();

    assert_server_healthy(&srv.url());
}

#[test]
fn hostile_huge_read_request() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(2));
    // Simple replies: an error header and no 1 GiB payload.
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", false, false);
    c.request(0, CMD_READ, 1, 0, 1 << 30);
    assert_eq!(c.simple(), (EINVAL, 1));
    c.request(0, CMD_READ, 2, 0, 4096);
    assert_eq!(c.simple(), (0, 2));
    assert_eq!(c.read_n(4096), vec![0u8; 4096]);

    drop(c);

    // Structured replies: an error chunk.
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", true, false);
    c.request(0, CMD_READ, 3, 0, u32::MAX);
    assert_eq!(c.chunks()[0].error(), EINVAL);
    drop(c);

    assert_server_healthy(&srv.url());
}

#[test]
fn hostile_request_past_end_and_unknown_command() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(2));
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", false, false);
    c.request(0, CMD_READ, 1, u64::MAX - 100, 512);
    assert_eq!(c.simple(), (EINVAL, 1));
    c.request(0, 0x7777, 2, 0, 0);
    assert_eq!(c.simple(), (EINVAL, 2));
    drop(c);
    assert_server_healthy(&srv.url());
}

#[test]
fn hostile_write_disconnect_mid_payload() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), persistent(2));
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", false, false);
    let mut b = request_bytes(0, CMD_WRITE, 1, 0, 65536);
    b.extend_from_slice(&[0xFF; 1000]);
    c.s.write_all(&b).unwrap();
    drop(c);

    assert_server_healthy(&srv.url());
    // The partial write was never applied.
    assert!(export.snapshot()[..65536].iter().all(|&b| b == 0));
}

#[test]
fn hostile_oversized_write_and_bad_request_magic() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(2));
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", false, false);
    c.request(0, CMD_WRITE, 1, 0, 64 << 20);
    c.expect_closed();

    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", true, false);
    c.s.write_all(&[0x42; 28]).unwrap();
    c.expect_closed();

    assert_server_healthy(&srv.url());
}

#[test]
fn read_only_export() {
    let export = MemExport::new(SIZE);
    let cfg = ServerConfig {
        read_only: true,
        ..persistent(2)
    };
    let srv = TestServer::tcp(export.clone(), cfg);
    let mut c = RawClient::start(srv.socket_addr());
    let (_, flags, _) = c.go("disk", false, false);
    assert_ne!(flags & TF_READ_ONLY, 0);
    assert_eq!(
        flags & (TF_SEND_FUA | TF_SEND_TRIM | TF_SEND_WRITE_ZEROES),
        0
    );
    c.write_req(0, 1, 0, &[1u8; 4096]);
    assert_eq!(c.simple(), (EPERM, 1));
    c.request(0, CMD_WRITE_ZEROES, 2, 0, 4096);
    assert_eq!(c.simple(), (EPERM, 2));
    c.request(0, CMD_TRIM, 3, 0, 4096);
    assert_eq!(c.simple(), (EPERM, 3));
    c.request(0, CMD_READ, 4, 0, 4096);
    assert_eq!(c.simple(), (0, 4));
    c.read_n(4096);
    assert_eq!(export.writes.load(Ordering::SeqCst), 0);

    // A read-only export object is advertised read-only even without the flag.
    let srv2 = TestServer::tcp(MemExport::with_options(SIZE, true, false), persistent(1));
    let mut c = RawClient::start(srv2.socket_addr());
    let (_, flags, _) = c.go("", false, false);
    assert_ne!(flags & TF_READ_ONLY, 0);
    assert_eq!(flags & TF_CAN_MULTI_CONN, 0, "single client: no multi-conn");
}

#[test]
fn trim_not_advertised_without_support() {
    let srv = TestServer::tcp(MemExport::with_options(SIZE, false, false), persistent(1));
    let mut c = RawClient::start(srv.socket_addr());
    let (_, flags, _) = c.go("disk", false, false);
    assert_eq!(flags & TF_SEND_TRIM, 0);
    c.request(0, CMD_TRIM, 1, 0, 4096);
    assert_eq!(c.simple(), (EINVAL, 1));
}

// ---------------------------------------------------------------------------
// Connection limits and shutdown
// ---------------------------------------------------------------------------

#[test]
fn extra_clients_wait_for_a_free_slot() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(1));
    let mut a = RawClient::start(srv.socket_addr());
    a.go("disk", false, false);

    // The second connection sits in the backlog: no greeting yet.
    let mut b = RawClient::connect(srv.socket_addr());
    b.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 1];
    let r = b.s.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "second client got {r:?} while the first was connected"
    );

    a.request(0, CMD_DISC, 1, 0, 0);
    a.expect_closed();
    b.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(b.greeting(), 3);
}

#[test]
fn shutdown_with_idle_client_returns_promptly_and_flushes() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), persistent(4));
    let mut idle = RawClient::start(srv.socket_addr());
    idle.go("disk", true, true);
    let mut negotiating = RawClient::start(srv.socket_addr()); // stuck mid-handshake
    let before = export.flushes.load(Ordering::SeqCst);

    let t = Instant::now();
    srv.stop().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(
        export.flushes.load(Ordering::SeqCst) > before,
        "export not flushed"
    );
    idle.expect_closed();
    negotiating.expect_closed();
}

#[test]
fn shutdown_without_clients() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::unix(export.clone(), ServerConfig::default());
    let t = Instant::now();
    srv.stop().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(export.flushes.load(Ordering::SeqCst), 1);
}

#[test]
fn shutdown_unix_with_client_mid_handshake() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::unix(export.clone(), ServerConfig::default());
    let Addr::Unix(path) = &srv.addr else {
        unreachable!()
    };
    let mut c = std::os::unix::net::UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");

    let t = Instant::now();
    srv.stop().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert_eq!(export.flushes.load(Ordering::SeqCst), 1);
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn public_types_are_thread_safe() {
    fn check<T: Send + Sync>() {}
    check::<vmdk_nbd::Server>();
    check::<vmdk_nbd::ShutdownHandle>();
    fn clone<T: Clone>() {}
    clone::<vmdk_nbd::ShutdownHandle>();
}

#[test]
fn non_persistent_server_ends_after_client() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), ServerConfig::default());
    // A failed handshake does not count as the client.
    let mut junk = RawClient::connect(srv.socket_addr());
    junk.greeting();
    junk.s.write_all(b"junkjunk").unwrap();
    junk.expect_closed();

    let mut c = RawClient::start(srv.socket_addr());
    c.go("", false, false);
    c.write_req(0, 1, 0, &[9u8; 512]);
    assert_eq!(c.simple(), (0, 1));
    c.request(0, CMD_DISC, 2, 0, 0);
    c.expect_closed();

    let t = Instant::now();
    while !srv.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(5), "server did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.join().unwrap();
    assert!(export.flushes.load(Ordering::SeqCst) >= 1);
    assert_eq!(&export.snapshot()[..512], &[9u8; 512][..]);
}

// ---------------------------------------------------------------------------
// Handshakes hold no client slot
// ---------------------------------------------------------------------------

/// Whether `c` is still open: nothing to read within a short wait, and no EOF.
fn still_open(c: &mut RawClient) -> bool {
    c.s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let open = matches!(
        c.s.read(&mut b),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    );
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    open
}

/// Five peers that connect and never send their flags do not keep a real client off the
/// one-slot export: they negotiate in the handshake pool, not in client slots.
#[test]
fn stalled_handshakes_hold_no_slot() {
    let srv = TestServer::tcp(MemExport::new(SIZE), persistent(1));
    let mut stalled: Vec<RawClient> = (0..5)
        .map(|_| {
            let mut c = RawClient::connect(srv.socket_addr());
            c.greeting();
            c
        })
        .collect();
    let t = Instant::now();
    let mut c = RawClient::start(srv.socket_addr());
    c.go("disk", false, false);
    c.write_req(0, 1, 0, &[7u8; 4096]);
    assert_eq!(c.simple(), (0, 1));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "served after {:?} beside 5 stalled handshakes",
        t.elapsed()
    );
    for s in &mut stalled {
        assert!(still_open(s), "a stalled handshake was dropped early");
    }
}

/// With the handshake pool full of stalled peers, a waiting connection takes the place of
/// the oldest once it counts as stalled (a fifth of the 5 s deadline here): the real client
/// is served after about a second, not at the stalled peers' deadlines; the younger stalled
/// peers stay until theirs.
#[test]
fn full_handshake_pool_drops_the_oldest_stalled_handshake() {
    let config = ServerConfig {
        max_handshakes: 4,
        handshake_timeout: Duration::from_secs(5),
        ..persistent(1)
    };
    let srv = TestServer::tcp(MemExport::new(SIZE), config);
    let mut stalled: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut c = RawClient::connect(srv.socket_addr());
            c.greeting();
            c
        })
        .collect();
    let t = Instant::now();
    let mut c = RawClient::start(srv.socket_addr());
    let waited = t.elapsed();
    c.go("disk", false, false);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "greeted after {waited:?} (the oldest handshake counts as stalled after 1 s)"
    );
    stalled[0].expect_closed();
    for s in &mut stalled[1..] {
        assert!(still_open(s), "a younger stalled handshake was dropped");
    }
}

/// A burst of real clients larger than the handshake pool is served whole: a handshake
/// only milliseconds old is never dropped to make room, the rest wait in the backlog.
#[test]
fn burst_larger_than_the_pool_is_served() {
    let config = ServerConfig {
        max_handshakes: 2,
        ..persistent(16)
    };
    let srv = TestServer::tcp(MemExport::new(SIZE), config);
    let addr = srv.socket_addr();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RawClient::start(addr);
                c.go("disk", true, false);
                c.write_req(0, i, i * 4096, &[i as u8; 4096]);
                assert_eq!(c.simple(), (0, i));
                c
            })
        })
        .collect();
    for t in clients {
        let _keep = t.join().expect("a client of the burst failed");
    }
}

/// A client that finishes negotiating while every slot is taken waits for one (the GO
/// reply comes when the slot frees), however long that takes: the wait is not under the
/// handshake deadline.
#[test]
fn negotiated_client_waits_for_a_slot() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..persistent(1)
    };
    let srv = TestServer::tcp(MemExport::new(SIZE), config);
    // Both are taken in while the slot is free; `b` picks the export first.
    let mut a = RawClient::start(srv.socket_addr());
    let mut b = RawClient::start(srv.socket_addr());
    b.go("disk", false, false);
    a.send_option(OPT_GO, &info_payload("disk", &[]));
    a.s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut one = [0u8; 1];
    let r = a.s.read(&mut one);
    assert!(
        matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the second client got {r:?} while the first held the only slot"
    );
    b.request(0, CMD_DISC, 1, 0, 0);
    b.expect_closed();
    a.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The GO reply, up to its final ACK.
    loop {
        let (opt, ty, _) = a.read_option_reply();
        assert_eq!(opt, OPT_GO);
        assert_eq!(ty & 0x8000_0000, 0, "GO failed");
        if ty == REP_ACK {
            break;
        }
    }
    a.write_req(0, 5, 4096, &[3u8; 512]);
    assert_eq!(a.simple(), (0, 5));
}

// ---------------------------------------------------------------------------
// Serving over any byte stream
// ---------------------------------------------------------------------------

/// What a stream server writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `serve_stream` runs a listener's connection over plain byte streams: a scripted
/// client's write lands in the export, its read comes back after the GO replies, and the
/// export is flushed at the end.
#[test]
fn serve_stream_over_in_memory_bytes() {
    let export = MemExport::new(SIZE);
    let server = vmdk_nbd::Server::new(
        export.clone(),
        ServerConfig {
            workers_per_client: 1,
            ..persistent(1)
        },
    );
    let mut input = 3u32.to_be_bytes().to_vec();
    let go = info_payload("disk", &[]);
    input.extend_from_slice(&IHAVEOPT.to_be_bytes());
    input.extend_from_slice(&OPT_GO.to_be_bytes());
    input.extend_from_slice(&(go.len() as u32).to_be_bytes());
    input.extend_from_slice(&go);
    input.extend(request_bytes(0, CMD_WRITE, 1, 4096, 512));
    input.extend_from_slice(&[0x42; 512]);
    input.extend(request_bytes(0, CMD_READ, 2, 4096, 512));
    input.extend(request_bytes(0, CMD_DISC, 3, 0, 0));
    let out = Captured::default();
    server.serve_stream(&input[..], out.clone()).unwrap();
    let out = out.0.lock().unwrap().clone();
    assert_eq!(be64(&out), NBD_MAGIC);
    // The write's reply, then the read's with its data, end the output.
    let tail = &out[out.len() - 16 - 16 - 512..];
    assert_eq!(be32(tail), SIMPLE_MAGIC);
    assert_eq!((be32(&tail[4..]), be64(&tail[8..])), (0, 1));
    assert_eq!(be32(&tail[16..]), SIMPLE_MAGIC);
    assert_eq!((be32(&tail[20..]), be64(&tail[24..])), (0, 2));
    assert_eq!(&tail[32..], &[0x42; 512][..]);
    assert_eq!(&export.snapshot()[4096..4608], &[0x42; 512][..]);
    assert!(export.flushes.load(Ordering::SeqCst) >= 1);

    // Garbage instead of the client flags is an error, as on a socket.
    let err = server
        .serve_stream(&b"GET / HTTP/1.1\r\n"[..], std::io::sink())
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}
