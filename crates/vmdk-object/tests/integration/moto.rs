//! The object namespace against a real S3 server (moto on a loopback port): pinned
//! versions, cached concurrent reads, transparent retries, uploads that complete whole or
//! leave nothing behind.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Once};

use vmdk::storage::namespace::{Backend, Namespace, OpenMode};
use vmdk_object::{Config, ObjectBackend};
use vmdk_test_support::servers::{FaultProxy, Moto};

/// The test credentials, for every store any test builds (moto accepts any).
fn credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_ENDPOINT_URL");
    });
}

fn namespace(endpoint: &str, tweak: impl FnOnce(&mut Config)) -> Arc<dyn Namespace> {
    credentials();
    let mut cfg = Config {
        endpoint: Some(endpoint.to_string()),
        ..Config::default()
    };
    tweak(&mut cfg);
    ObjectBackend::new(cfg)
        .namespace_for(Path::new("s3://b/x"))
        .unwrap()
        .expect("s3:// names are the backend's")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] ^ seed)
        .collect()
}

#[test]
fn reads_are_ranged_concurrent_and_exact() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let data = pattern(9 << 20 | 12345, 1);
    moto.put("bkt", "d/obj", &data);
    let ns = namespace(&moto.endpoint(), |c| {
        c.block_size = 256 << 10;
        c.cache_bytes = 1 << 20;
        c.max_requests = 4;
    });
    let s = ns
        .open(Path::new("s3://bkt/d/obj"), OpenMode::read_only())
        .unwrap();
    assert_eq!(s.len().unwrap(), data.len() as u64);
    std::thread::scope(|sc| {
        for t in 0..6u64 {
            let (s, data) = (&s, &data);
            sc.spawn(move || {
                // Forward runs from different places, and odd ranges across blocks.
                let mut off = t * 1_234_567 % data.len() as u64;
                for i in 0..60u64 {
                    let len = (4096 + i * 7919 % 700_000) as usize;
                    let mut buf = vec![0u8; len];
                    let n = s.read_at(&mut buf, off).unwrap();
                    let want = &data[off as usize..(off as usize + len).min(data.len())];
                    assert_eq!(&buf[..n], want, "read {len} at {off}");
                    off = (off + len as u64) % data.len() as u64;
                }
            });
        }
    });
    let mut tail = [0u8; 100];
    assert_eq!(s.read_at(&mut tail, data.len() as u64 - 10).unwrap(), 10);
    assert_eq!(s.read_at(&mut tail, data.len() as u64).unwrap(), 0);
    assert!(s.write_at(b"x", 0).is_err(), "objects are read-only");
}

#[test]
fn an_object_replaced_mid_read_is_an_error_not_mixed_data() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let old = pattern(4 << 20, 1);
    moto.put("bkt", "obj", &old);
    let ns = namespace(&moto.endpoint(), |c| {
        c.block_size = 64 << 10;
        c.read_ahead_blocks = 0;
    });
    let s = ns
        .open(Path::new("s3://bkt/obj"), OpenMode::read_only())
        .unwrap();
    let mut buf = vec![0u8; 4096];
    s.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, old[..4096]);
    // Replaced by another writer (a signed upload: moto refuses anonymous overwrites).
    let mut w = ns.create_stream(Path::new("s3://bkt/obj"), false).unwrap();
    w.write_all(&pattern(4 << 20, 2)).unwrap();
    w.finish(false).unwrap();
    let e = s.read_at(&mut buf, 3 << 20).unwrap_err().to_string();
    assert!(e.contains("changed since it was opened"), "{e}");
    // What was read before the change is still the old object's.
    s.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, old[..4096]);
}

#[test]
fn retries_503_answers_transparently() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let data = pattern(3 << 20, 3);
    moto.put("bkt", "obj", &data);
    let proxy = FaultProxy::start(moto.port, 3);
    let ns = namespace(&proxy.endpoint(), |c| c.block_size = 128 << 10);
    let before = vmdk_object::stats();
    let s = ns
        .open(Path::new("s3://bkt/obj"), OpenMode::read_only())
        .unwrap();
    let mut buf = vec![0u8; data.len()];
    assert_eq!(s.read_at(&mut buf, 0).unwrap(), data.len());
    assert!(buf == data, "data read through retries differs");
    // Uploads retry too.
    let mut sink = ns.create_stream(Path::new("s3://bkt/up"), false).unwrap();
    let up = pattern(11 << 20, 4);
    sink.write_all(&up).unwrap();
    sink.finish(false).unwrap();
    assert!(moto.get("bkt", "up") == up, "uploaded object differs");
    let faults = proxy.faults.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        faults >= 3,
        "the proxy answered only {faults} requests with 503"
    );
    let after = vmdk_object::stats();
    assert!(after.retries > before.retries, "{before:?} -> {after:?}");
}

#[test]
fn uploads_complete_whole_or_leave_nothing() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let ns = namespace(&moto.endpoint(), |_| {});
    let data = pattern((21 << 20) + 777, 5);
    let mut sink = ns.create_stream(Path::new("s3://bkt/ok"), false).unwrap();
    for chunk in data.chunks(100_000) {
        sink.write_all(chunk).unwrap();
    }
    assert_eq!(sink.position(), data.len() as u64);
    sink.finish(true).unwrap();
    assert!(moto.get("bkt", "ok") == data);
    assert_eq!(moto.open_uploads("bkt"), 0);

    // Dropped before finishing (as on any error): aborted, parts and all.
    let mut sink = ns.create_stream(Path::new("s3://bkt/gone"), false).unwrap();
    sink.write_all(&data).unwrap();
    assert_eq!(moto.open_uploads("bkt"), 1);
    drop(sink);
    assert_eq!(
        moto.open_uploads("bkt"),
        0,
        "an aborted upload left parts behind"
    );
    assert!(!moto.exists("bkt", "gone"));

    // An empty output is still an object.
    let sink = ns
        .create_stream(Path::new("s3://bkt/empty"), false)
        .unwrap();
    sink.finish(false).unwrap();
    assert!(moto.get("bkt", "empty").is_empty());

    // What object storage cannot do is refused clearly.
    let e = ns.create(Path::new("s3://bkt/img.vmdk"), true).unwrap_err();
    assert!(e.to_string().contains("front to back"), "{e}");
    let mode = OpenMode {
        writable: true,
        ..OpenMode::read_only()
    };
    let e = ns.open(Path::new("s3://bkt/ok"), mode).unwrap_err();
    assert_eq!(e.kind(), vmdk::ErrorKind::ReadOnly, "{e}");
    assert!(ns.stream_only(Path::new("s3://bkt/x")));
    assert_eq!(ns.identity(Path::new("s3://bkt/nothing")).unwrap(), None);
    assert!(ns.identity(Path::new("s3://bkt/ok")).unwrap().is_some());
}

/// The writes an OVA writer makes (a head skipped and written last, member headers skipped
/// and written once their member is, data appended in odd-sized pieces) upload as the
/// bytes a file would hold; parts go up by position, out of order.
#[test]
fn skipped_ranges_filled_later_upload_as_a_file_would_hold_them() {
    let moto = Moto::start(&[]);
    moto.create_bucket("bkt");
    let ns = namespace(&moto.endpoint(), |c| {
        c.part_size = 5 << 20;
        c.upload_parallelism = 2;
    });
    let out = ns
        .create_append(Path::new("s3://bkt/a.ova"), false)
        .unwrap();
    let s = out.storage();
    let mut model = Vec::new();
    let mut put = |buf: &[u8], at: u64| {
        s.write_at(buf, at).unwrap();
        let end = at as usize + buf.len();
        if model.len() < end {
            model.resize(end, 0);
        }
        model[at as usize..end].copy_from_slice(buf);
    };
    let head = 3 * 512u64;
    let mut pos = head;
    for (m, len) in [(1u8, 7_340_033usize), (2, 100), (3, 9_000_000)] {
        let header = pos;
        let mut at = header + 512;
        let data = pattern(len, m);
        for piece in data.chunks(65_537) {
            put(piece, at);
            at += piece.len() as u64;
        }
        put(&[m; 512], header);
        let pad = at.next_multiple_of(512) - at;
        put(&vec![0; pad as usize], at);
        pos = at + pad;
    }
    put(&[0; 1024], pos);
    put(&[9; 1536], 0);
    drop(s);
    out.finish(false).unwrap();
    let got = moto.get("bkt", "a.ova");
    assert_eq!(got.len(), model.len());
    assert!(got == model, "uploaded bytes differ from the file's");
    assert_eq!(moto.open_uploads("bkt"), 0);

    // Bytes never skipped cannot be rewritten (their part may be gone), and the upload is
    // then refused as a whole and aborted.
    let out = ns.create_append(Path::new("s3://bkt/b"), false).unwrap();
    let s = out.storage();
    s.write_at(&vec![1; 6 << 20], 0).unwrap();
    let e = s.write_at(b"x", 10).unwrap_err().to_string();
    assert!(e.contains("can no longer be changed"), "{e}");
    drop(s);
    assert!(out.finish(false).is_err());
    assert_eq!(moto.open_uploads("bkt"), 0, "a refused upload left parts");
    assert!(!moto.exists("bkt", "b"));
}
