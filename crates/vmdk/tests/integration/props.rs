//! Property tests: random reads (any offset, any length up to a few grains, across grain and
//! extent boundaries) equal the bytes qemu reads; the same from 8 threads sharing one image.

use crate::common::*;
use vmdk_test_support::qemu::{qemu_overlay, qemu_to_vmdk};

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use vmdk::Image;

/// An image and the raw bytes qemu reads from it.
struct Fixture {
    _dir: Dir,
    path: PathBuf,
    oracle: Vec<u8>,
}

fn fixture(kind: &'static str) -> &'static Fixture {
    static SPARSE: OnceLock<Fixture> = OnceLock::new();
    static STREAM: OnceLock<Fixture> = OnceLock::new();
    static CHAIN: OnceLock<Fixture> = OnceLock::new();
    static MIXED: OnceLock<Fixture> = OnceLock::new();
    let cell = match kind {
        "sparse" => &SPARSE,
        "stream" => &STREAM,
        "chain" => &CHAIN,
        "mixed" => &MIXED,
        _ => unreachable!(),
    };
    cell.get_or_init(|| make_fixture(kind))
}

fn make_fixture(kind: &str) -> Fixture {
    let d = Dir::new();
    let path = match kind {
        "sparse" => {
            let p = d.path("s.vmdk");
            qemu_img(&["create", "-f", "vmdk", p.to_str().unwrap(), "4M"]);
            scribble(&p);
            qemu_io(&p, &["write -P 0x66 2047k 3k", "write -P 0x67 4032k 64k"]);
            p
        }
        "stream" => {
            let raw = d.path("src.raw");
            let mut data = vec![0u8; 4 << 20];
            let mut r = Rng(7);
            for chunk in [(0usize, 5000usize), (65000, 70000), (1 << 20, 300_000)] {
                for b in &mut data[chunk.0..chunk.0 + chunk.1] {
                    *b = r.next() as u8;
                }
            }
            data[(3 << 20)..(3 << 20) + 100_000].fill(0x42);
            std::fs::write(&raw, &data).unwrap();
            let p = d.path("st.vmdk");
            qemu_to_vmdk(&raw, &p, "", "subformat=streamOptimized");
            p
        }
        "chain" => {
            let base = d.path("base.vmdk");
            qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "4M"]);
            qemu_io(&base, &["write -P 0xa1 0 3M", "write -P 0xa2 3500k 100k"]);
            let child = d.path("child.vmdk");
            qemu_overlay(&child, "base.vmdk", "zeroed_grain=on", "");
            qemu_io(
                &child,
                &[
                    "write -P 0xc1 100k 10k",
                    "write -z 1M 128k",
                    "write -P 0xc2 2040k 100k",
                    "write -P 0xc3 3990k 106k",
                ],
            );
            child
        }
        "mixed" => {
            // FLAT (offset 2) + qemu sparse + ZERO + FLAT: qemu reads it too (only RW lines).
            let mut f = vec![0xeeu8; 1024];
            let mut a = vec![0u8; 300 * 512];
            pattern(&mut a, 0x31);
            f.extend_from_slice(&a);
            std::fs::write(d.path("a-flat.vmdk"), &f).unwrap();
            let s = d.path("b.vmdk");
            qemu_img(&["create", "-f", "vmdk", s.to_str().unwrap(), "1M"]);
            qemu_io(&s, &["write -P 0x41 0 10k", "write -P 0x42 900k 124k"]);
            let mut c = vec![0u8; 77 * 512];
            pattern(&mut c, 0x51);
            std::fs::write(d.path("c-flat.vmdk"), &c).unwrap();
            let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
                        createType=\"monolithicFlat\"\n\n\
                        RW 300 FLAT \"a-flat.vmdk\" 2\n\
                        RW 2048 SPARSE \"b.vmdk\"\n\
                        RW 129 ZERO\n\
                        RW 77 FLAT \"c-flat.vmdk\" 0\n";
            let p = d.path("mixed.vmdk");
            std::fs::write(&p, text).unwrap();
            p
        }
        _ => unreachable!(),
    };
    let oracle = if kind == "mixed" {
        // qemu skips ZERO lines (shifting the data after them); build the oracle from
        // the parts instead, each read by qemu.
        let mut o = std::fs::read(d.path("a-flat.vmdk")).unwrap()[1024..].to_vec();
        o.extend_from_slice(&qemu_raw(&d.path("b.vmdk")));
        o.extend_from_slice(&[0u8; 129 * 512]);
        o.extend_from_slice(&std::fs::read(d.path("c-flat.vmdk")).unwrap());
        o
    } else {
        qemu_raw(&path)
    };
    Fixture {
        _dir: d,
        path,
        oracle,
    }
}

fn image(kind: &'static str) -> &'static Image {
    static IMGS: OnceLock<Vec<(&'static str, Image)>> = OnceLock::new();
    let all = IMGS.get_or_init(|| {
        ["sparse", "stream", "chain", "mixed"]
            .into_iter()
            .map(|k| (k, Image::open(&fixture(k).path).unwrap()))
            .collect()
    });
    &all.iter().find(|(k, _)| *k == kind).unwrap().1
}

fn check_read(kind: &'static str, off: u64, len: usize) -> Result<(), TestCaseError> {
    let img = image(kind);
    let oracle = &fixture(kind).oracle;
    prop_assert_eq!(img.size(), oracle.len() as u64);
    let off = off % img.size();
    let len = len.min((img.size() - off) as usize);
    let mut buf = vec![0xa5u8; len];
    img.read_at(&mut buf, off)
        .map_err(|e| TestCaseError::fail(format!("{kind}: read {off}+{len}: {e}")))?;
    if buf[..] != oracle[off as usize..off as usize + len] {
        let i = buf
            .iter()
            .zip(&oracle[off as usize..])
            .position(|(a, b)| a != b)
            .unwrap();
        return Err(TestCaseError::fail(format!(
            "{kind}: read {off}+{len} differs at +{i}"
        )));
    }
    // map covers exactly the range, in order, without gaps.
    let map = img.map(off, len as u64).unwrap();
    let mut at = off;
    for e in &map {
        prop_assert_eq!(e.start, at);
        prop_assert!(e.length > 0);
        at += e.length;
    }
    prop_assert_eq!(at, off + len as u64);
    Ok(())
}

/// Offsets biased to land near grain and extent boundaries.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u64..64, 0u64..1024).prop_map(|(g, d)| (g * 65536).saturating_sub(512) + d),
        (0u64..2500).prop_map(|s| s * 512),
    ]
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..600,
        1usize..(3 * 65536 + 1000),
        Just(65536),
        Just(512)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_reads_sparse(off in offset(), len in length()) {
        check_read("sparse", off, len)?;
    }

    #[test]
    fn random_reads_stream(off in offset(), len in length()) {
        check_read("stream", off, len)?;
    }

    #[test]
    fn random_reads_chain(off in offset(), len in length()) {
        check_read("chain", off, len)?;
    }

    #[test]
    fn random_reads_mixed(off in offset(), len in length()) {
        check_read("mixed", off, len)?;
    }
}

#[test]
fn image_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Image>();
    assert_send_sync::<Arc<Image>>();
    assert_send_sync::<vmdk::Error>();
    assert_send_sync::<vmdk::MapEntry>();
}

/// Eight threads reading one shared image at random offsets; every read equals the oracle.
#[test]
fn concurrent_reads() {
    for kind in ["sparse", "stream", "chain", "mixed"] {
        let fx = fixture(kind);
        // A fresh image per kind, so the grain-table cache starts cold and is filled by
        // racing threads.
        let img = Arc::new(Image::open(&fx.path).unwrap());
        let oracle = Arc::new(fx.oracle.clone());
        let handles: Vec<_> = (0..8u64)
            .map(|t| {
                let img = img.clone();
                let oracle = oracle.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(t * 7919 + 1);
                    let size = img.size();
                    for _ in 0..300 {
                        let off = rng.below(size);
                        let len = (1 + rng.below(150_000)).min(size - off) as usize;
                        let mut buf = vec![0u8; len];
                        img.read_at(&mut buf, off).unwrap();
                        assert!(
                            buf[..] == oracle[off as usize..off as usize + len],
                            "{kind}: thread {t}: read {off}+{len} differs"
                        );
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }
}

/// Reads outside the disk are refused, not clamped or panicking.
#[test]
fn out_of_range_reads() {
    let img = image("sparse");
    let size = img.size();
    let mut b = [0u8; 16];
    for off in [size, size - 8, u64::MAX - 4, u64::MAX] {
        let e = img.read_at(&mut b, off).unwrap_err();
        assert_eq!(e.kind(), vmdk::ErrorKind::InvalidArgument, "{off}");
    }
    assert!(img.map(size - 1, 2).is_err());
    img.read_at(&mut [], size).unwrap();
}
