//! Property tests: random write / write-zeroes / discard / read sequences, from one and
//! from several threads, against a plain in-memory model, on every writable subformat; the
//! sparse images check clean afterwards (the space discards and zero writes free goes back).

use crate::common::*;

use proptest::prelude::*;
use std::sync::Arc;
use vmdk::{create, CreateOptions, OpenOptions, Subformat};

const SIZE: u64 = 3 << 20;

#[derive(Debug, Clone)]
enum Act {
    Write(u64, usize, u8),
    Zero(u64, usize),
    Discard(u64, usize),
    Read(u64, usize),
}

fn act() -> impl Strategy<Value = Act> {
    let off = 0..SIZE;
    prop_oneof![
        (off.clone(), 1usize..200_000, any::<u8>()).prop_map(|(o, l, b)| Act::Write(o, l, b)),
        (off.clone(), 1usize..200_000).prop_map(|(o, l)| Act::Zero(o, l)),
        (off.clone(), 1usize..400_000).prop_map(|(o, l)| Act::Discard(o, l)),
        (off, 1usize..200_000).prop_map(|(o, l)| Act::Read(o, l)),
    ]
}

fn clamp(off: u64, len: usize) -> (u64, usize) {
    let len = len.min((SIZE - off) as usize);
    (off, len)
}

fn run(sub: Subformat, zeroed: bool, backing: bool, acts: &[Act]) {
    let d = Dir::new();
    let disk = d.path("disk.vmdk");
    let mut model = vec![0u8; SIZE as usize];
    let mut opts = CreateOptions {
        subformat: sub,
        zeroed_grain: zeroed,
        ..Default::default()
    };
    if backing {
        let base = d.path("base.vmdk");
        qemu_img(&["create", "-f", "vmdk", base.to_str().unwrap(), "3M"]);
        qemu_io(&base, &["write -P 0x5a 64k 1M", "write -P 0xa5 2000k 300k"]);
        model = qemu_raw(&base);
        opts.backing_file = Some("base.vmdk".into());
    }
    create(&disk, SIZE, &opts).unwrap();
    let img = OpenOptions::new().writable(true).open(&disk).unwrap();
    for a in acts {
        match *a {
            Act::Write(o, l, b) => {
                let (o, l) = clamp(o, l);
                img.write_at(&vec![b; l], o).unwrap();
                model[o as usize..o as usize + l].fill(b);
            }
            Act::Zero(o, l) => {
                let (o, l) = clamp(o, l);
                img.write_zeroes(o, l as u64, true).unwrap();
                model[o as usize..o as usize + l].fill(0);
            }
            Act::Discard(o, l) => {
                let (o, l) = clamp(o, l);
                let end = o + l as u64;
                match sub {
                    Subformat::MonolithicSparse | Subformat::TwoGbMaxExtentSparse => {
                        if backing && !zeroed {
                            let e = img.discard(o, l as u64).unwrap_err();
                            assert_eq!(e.kind(), vmdk::ErrorKind::Unsupported, "{e}");
                            continue;
                        }
                        img.discard(o, l as u64).unwrap();
                        // The whole grains inside read as zeros, the rest keeps its data.
                        let g = 65536;
                        let (a, b) = (o.next_multiple_of(g), end / g * g);
                        if a < b {
                            model[a as usize..b as usize].fill(0);
                        }
                    }
                    _ => {
                        // Flat extents are punched where the file system can.
                        img.discard(o, l as u64).unwrap();
                        let mut buf = vec![0u8; l];
                        img.read_at(&mut buf, o).unwrap();
                        let range = o as usize..end as usize;
                        assert!(
                            buf.iter().all(|&b| b == 0) || buf == model[range.clone()],
                            "discard at {o}+{l} left neither zeros nor the data"
                        );
                        model[range].copy_from_slice(&buf);
                    }
                }
            }
            Act::Read(o, l) => {
                let (o, l) = clamp(o, l);
                let mut buf = vec![0u8; l];
                img.read_at(&mut buf, o).unwrap();
                assert!(
                    buf == model[o as usize..o as usize + l],
                    "read at {o}+{l} differs"
                );
            }
        }
    }
    img.flush().unwrap();
    drop(img);
    assert_same("final", &our_raw(&disk), &model);
    if matches!(
        sub,
        Subformat::MonolithicSparse | Subformat::TwoGbMaxExtentSparse
    ) {
        let img = OpenOptions::new().open(&disk).unwrap();
        let r = vmdk::check(&img).unwrap();
        assert!(r.is_clean(), "check: {:?} {:?}", r.corruptions, r.leaks);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn sparse(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::MonolithicSparse, false, false, &acts);
    }

    #[test]
    fn sparse_zeroed_grain(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::MonolithicSparse, true, false, &acts);
    }

    #[test]
    fn sparse_overlay(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::MonolithicSparse, false, true, &acts);
    }

    #[test]
    fn sparse_overlay_zeroed_grain(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::MonolithicSparse, true, true, &acts);
    }

    #[test]
    fn two_gb_sparse(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::TwoGbMaxExtentSparse, true, false, &acts);
    }

    #[test]
    fn flat(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::MonolithicFlat, false, false, &acts);
    }

    #[test]
    fn two_gb_flat(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::TwoGbMaxExtentFlat, false, false, &acts);
    }

    #[test]
    fn vmfs(acts in proptest::collection::vec(act(), 1..25)) {
        run(Subformat::Vmfs, false, false, &acts);
    }
}

/// Several threads write disjoint, interleaved stripes (sharing grains and grain tables)
/// while others read; the result equals the model and qemu-img agrees.
#[test]
fn concurrent_writers_and_readers() {
    for sub in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentFlat] {
        let d = Dir::new();
        let disk = d.path("disk.vmdk");
        create(
            &disk,
            SIZE,
            &CreateOptions {
                subformat: sub,
                ..Default::default()
            },
        )
        .unwrap();
        let img = Arc::new(OpenOptions::new().writable(true).open(&disk).unwrap());
        let stripe = 24 * 1024; // not grain aligned: threads share grains
        let threads = 8;
        std::thread::scope(|s| {
            for t in 0..threads {
                let img = img.clone();
                s.spawn(move || {
                    let mut off = t * stripe;
                    while off + stripe <= SIZE as usize {
                        img.write_at(&vec![t as u8 + 1; stripe], off as u64)
                            .unwrap();
                        off += stripe * threads;
                    }
                });
            }
            for _ in 0..2 {
                let img = img.clone();
                s.spawn(move || {
                    let mut buf = vec![0u8; 100_000];
                    for i in 0..50u64 {
                        img.read_at(&mut buf, (i * 61_000) % (SIZE - 100_000))
                            .unwrap();
                    }
                });
            }
        });
        img.flush().unwrap();
        drop(img);
        let mut model = vec![0u8; SIZE as usize];
        for t in 0..threads {
            let mut off = t * stripe;
            while off + stripe <= SIZE as usize {
                model[off..off + stripe].fill(t as u8 + 1);
                off += stripe * threads;
            }
        }
        assert_same("concurrent", &our_raw(&disk), &model);
        assert_same("qemu", &qemu_raw(&disk), &model);
        qemu_img(&["check", disk.to_str().unwrap()]);
    }
}
