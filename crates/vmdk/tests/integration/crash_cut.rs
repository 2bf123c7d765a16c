//! Power-loss testing of every operation that changes an image: each runs in a namespace
//! that records every write, `set_len`, `punch_hole` and flush (`common/crash.rs`), and the
//! files a power loss could leave behind are checked at every flush boundary and at a few
//! hundred random cuts (changes after a file's last flush lost or kept independently): the
//! images open, check clean but for leaks (ours on every state, `qemu-img check` on a
//! sample), every guest sector holds one of the contents it was allowed to hold, and each
//! operation keeps its promise (commit and rebase never change the overlay's guest view,
//! resize never changes the old range, amend, compact and repair never change data).

use crate::common::crash::*;
use crate::common::*;
use vmdk_test_support::qemu::{qemu_create_as, qemu_overlay};

use std::path::Path;
use std::sync::Arc;

use vmdk::ops::amend::{amend, AmendOptions};
use vmdk::ops::commit::{commit, CommitOptions};
use vmdk::ops::convert::{convert_to_vmdk, ConvertOptions};
use vmdk::ops::rebase::{rebase, RebaseOptions};
use vmdk::ops::repair::{repair, RepairMode};
use vmdk::ops::resize::{resize, ResizeOptions};
use vmdk::{create, AdapterType, CreateOptions, MemNamespace, Namespace, Subformat};

const GRAIN: u64 = 65536;
/// `qemu-img check` one distinct state in this many.
const QEMU_EVERY: usize = 4;

/// Files made by `build` in a host directory (qemu-img's images), as `/d/NAME`.
fn qemu_files(build: impl FnOnce(&Path)) -> Files {
    let d = Dir::new();
    build(d.0.path());
    load_dir(d.0.path())
}

/// Files made by `build` in a memory namespace (our subformats).
fn mem_files(build: impl FnOnce(&Arc<MemNamespace>)) -> Files {
    let ns = Arc::new(MemNamespace::new());
    build(&ns);
    files_of(&ns)
}

fn create_in(ns: &Arc<MemNamespace>, name: &str, size: u64, sub: Subformat, backing: Option<&str>) {
    let opts = CreateOptions {
        subformat: sub,
        backing_file: backing.map(str::to_string),
        namespace: Some(ns.clone() as Arc<dyn Namespace>),
        ..Default::default()
    };
    create(Path::new(name), size, &opts).unwrap();
}

fn write_in(ns: &Arc<MemNamespace>, name: &str, writes: &[(u64, usize, u8)]) {
    let img = opts_in(ns).writable(true).open(name).unwrap();
    for &(at, len, seed) in writes {
        let mut buf = vec![0u8; len];
        pattern(&mut buf, seed);
        img.write_at(&buf, at).unwrap();
    }
    img.flush().unwrap();
}

fn q(p: &Path, name: &str) -> String {
    p.join(name).to_str().unwrap().to_string()
}

fn verify(expects: Vec<Expect>) -> Verify {
    Verify {
        expects,
        qemu_every: QEMU_EVERY,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Writes, write_zeroes and discard (durable).

#[derive(Debug, Clone, Copy)]
enum Act {
    Write(u64, usize, u8),
    Zeroes(u64, u64, bool),
    Discard(u64, u64),
}

impl Act {
    /// The bytes it changes.
    fn range(self) -> (u64, u64) {
        match self {
            Act::Write(at, len, _) => (at, at + len as u64),
            Act::Zeroes(at, len, _) | Act::Discard(at, len) => (at, at + len),
        }
    }
}

/// Apply `acts` to `image` opened durable, flushing only at the end: every sector may hold
/// what it held before with any of the actions over it applied (each may be lost).
fn guest_writes(name: &str, start: &Files, image: &str, chain: bool, acts: &[Act]) -> Tried {
    guest_writes_with(name, start, image, chain, acts, verify(vec![]))
}

/// [`guest_writes`], checked as `v` says besides.
fn guest_writes_with(
    name: &str,
    start: &Files,
    image: &str,
    chain: bool,
    acts: &[Act],
    v: Verify,
) -> Tried {
    let mut versions = vec![view(start, image, chain)];
    let run = record(start, |ns| {
        let img = ns.opts().writable(true).durable(true).open(image).unwrap();
        for a in acts {
            match *a {
                Act::Write(at, len, seed) => {
                    let mut buf = vec![0u8; len];
                    pattern(&mut buf, seed);
                    img.write_at(&buf, at).unwrap();
                }
                Act::Zeroes(at, len, unmap) => img.write_zeroes(at, len, unmap).unwrap(),
                Act::Discard(at, len) => img.discard(at, len).unwrap(),
            }
            versions.push(view_in(&ns.dyn_ns(), image, chain));
        }
        img.flush().unwrap();
    });
    assert_ne!(
        versions[0],
        *versions.last().unwrap(),
        "{name}: nothing changed"
    );
    let all: Vec<&[u8]> = versions.iter().map(|v| &v[..]).collect();
    let ranges: Vec<(u64, u64)> = acts.iter().map(|a| a.range()).collect();
    run.verify(
        name,
        &Verify {
            durable_on_return: true,
            expects: vec![Expect::new(image, chain, Allowed::writes(&all, &ranges))],
            ..v
        },
    )
}

fn scattered_writes() -> Vec<Act> {
    vec![
        Act::Write(100, 1000, 0x11),
        Act::Write(4 * GRAIN, 3 * GRAIN as usize, 0x22),
        Act::Write(10 * GRAIN + 5000, 70000, 0x44),
        Act::Write(20 * GRAIN, 4096, 0x55),
        // In place, over what the first writes allocated.
        Act::Write(0, 512, 0x66),
        Act::Write(5 * GRAIN - 700, 1400, 0x77),
    ]
}

#[test]
fn write_monolithic_sparse() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
    });
    guest_writes(
        "write/monolithicSparse",
        &start,
        "/d/disk.vmdk",
        false,
        &scattered_writes(),
    );
}

#[test]
fn write_overlay() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "base.vmdk"), "2M"]);
        qemu_io(&d.join("base.vmdk"), &["write -P 0xaa 0 2M"]);
        qemu_overlay(q(d, "disk.vmdk"), "base.vmdk", "", "");
    });
    guest_writes(
        "write/overlay",
        &start,
        "/d/disk.vmdk",
        true,
        &scattered_writes(),
    );
}

#[test]
fn write_split_sparse_and_flat() {
    // A descriptor file: the CID changes in another file than the data.
    let start = mem_files(|ns| {
        create_in(
            ns,
            "/d/split.vmdk",
            2 << 20,
            Subformat::TwoGbMaxExtentSparse,
            None,
        );
        create_in(ns, "/d/flat.vmdk", 2 << 20, Subformat::MonolithicFlat, None);
    });
    guest_writes(
        "write/twoGbMaxExtentSparse",
        &start,
        "/d/split.vmdk",
        false,
        &scattered_writes(),
    );
    guest_writes(
        "write/monolithicFlat",
        &start,
        "/d/flat.vmdk",
        false,
        &scattered_writes(),
    );
}

#[test]
fn write_cowd_and_stream_optimized() {
    // COWD moves its header's free-sector field past new space before anything points
    // there; qemu's streamOptimized files take new grains compressed, at the end.
    let start = qemu_files(|d| {
        let mut disk = vec![0u8; 2 << 20];
        pattern(&mut disk[..300_000], 0x13);
        build::write(
            d,
            "cowd.vmdk",
            &build::cowd(&disk, 16, None, &build::nonzero),
        );
        let stream = q(d, "stream.vmdk");
        qemu_create_as("vmdk", &stream, "2M", "subformat=streamOptimized");
        qemu_io(&d.join("stream.vmdk"), &["write -P 0x31 0 192k"]);
    });
    let acts = [
        Act::Write(100, 1000, 0x11),
        Act::Write(4 * GRAIN, 3 * GRAIN as usize, 0x22),
        Act::Write(10 * GRAIN + 5000, 70000, 0x44),
        Act::Write(20 * GRAIN, 4096, 0x55),
    ];
    let mut cowd = verify(vec![]);
    // qemu-img does not check COWD extents.
    cowd.qemu_every = 0;
    guest_writes_with("write/COWD", &start, "/d/cowd.vmdk", false, &acts, cowd);
    // Grains already stored cannot be overwritten in a compressed image.
    guest_writes(
        "write/streamOptimized",
        &start,
        "/d/stream.vmdk",
        false,
        &acts[1..],
    );
}

#[test]
fn write_grain_table_allocation() {
    // An empty grain directory (tables allocated on demand, as some tools leave them): the
    // table must be durable before the directory points at it.
    let start = qemu_files(|d| {
        let disk = d.join("disk.vmdk");
        create(&disk, 64 << 20, &CreateOptions::default()).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        let h = vmdk::format::sparse_header::SparseHeader::parse(&bytes).unwrap();
        let s = vmdk::FileStorage::open(&disk, true).unwrap();
        let n = h.gd_entries() as usize * 4;
        vmdk::Storage::write_at(&s, &vec![0u8; n], h.gd_offset * 512).unwrap();
        vmdk::Storage::write_at(&s, &vec![0u8; n], h.rgd_offset * 512).unwrap();
    });
    guest_writes(
        "write/new grain tables",
        &start,
        "/d/disk.vmdk",
        false,
        &[
            Act::Write(40 << 20, 4096, 0x11),
            Act::Write(1 << 20, 4096, 0x22),
            Act::Write((40 << 20) + 8192, 4096, 0x33),
        ],
    );
}

#[test]
fn write_zeroes_with_zeroed_grains() {
    let start = qemu_files(|d| {
        let disk = q(d, "disk.vmdk");
        qemu_create_as("vmdk", &disk, "2M", "zeroed_grain=on");
        qemu_io(&d.join("disk.vmdk"), &["write -P 0x77 0 1M"]);
    });
    guest_writes(
        "write_zeroes/zeroed_grain",
        &start,
        "/d/disk.vmdk",
        false,
        &[
            Act::Zeroes(0, 4 * GRAIN, true),
            Act::Write(8 * GRAIN, GRAIN as usize, 0x22),
            Act::Zeroes(6 * GRAIN + 100, GRAIN, false),
            Act::Zeroes(12 * GRAIN, 8 * GRAIN, true),
            Act::Write(2 * GRAIN, 700, 0x33),
        ],
    );
}

/// qemu-img's zeroed-grain overlay `disk.vmdk` over a base of `size` full of 0xaa, after
/// `fill` has written into the overlay (given its host path).
fn zeroed_overlay(size: &str, fill: impl FnOnce(&Path)) -> Files {
    qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "base.vmdk"), size]);
        qemu_io(&d.join("base.vmdk"), &[&format!("write -P 0xaa 0 {size}")]);
        qemu_overlay(q(d, "disk.vmdk"), "base.vmdk", "zeroed_grain=on", "");
        fill(&d.join("disk.vmdk"));
    })
}

#[test]
fn write_zeroes_and_discard_over_backing() {
    let start = zeroed_overlay("2M", |disk| qemu_io(disk, &["write -P 0x55 0 1M"]));
    guest_writes(
        "write_zeroes+discard/overlay",
        &start,
        "/d/disk.vmdk",
        true,
        &[
            Act::Zeroes(0, 2 * GRAIN, true),
            Act::Discard(4 * GRAIN, 2 * GRAIN),
            Act::Zeroes(20 * GRAIN, 2 * GRAIN, true),
            Act::Write(3 * GRAIN, 1000, 0x44),
            Act::Discard(8 * GRAIN + 512, GRAIN),
        ],
    );
}

#[test]
fn discard_monolithic_sparse() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
        qemu_io(&d.join("disk.vmdk"), &["write -P 0x31 0 1536k"]);
    });
    guest_writes(
        "discard/monolithicSparse",
        &start,
        "/d/disk.vmdk",
        false,
        &[
            Act::Discard(0, 2 * GRAIN),
            Act::Discard(5 * GRAIN + 100, 3 * GRAIN),
            Act::Write(GRAIN, 4096, 0x12),
            Act::Discard(20 * GRAIN, 4 * GRAIN),
            Act::Zeroes(16 * GRAIN, 2 * GRAIN, true),
        ],
    );
}

/// Discards and zero writes give grains back (punched, the file cut at the end) and later
/// writes reuse that space: every cut still holds old or new data per sector, so the cleared
/// entries are durable before their space is punched or reused.
#[test]
fn discard_and_reuse_of_the_freed_space() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "4M"]);
        qemu_io(
            &d.join("disk.vmdk"),
            &["write -P 0x11 0 1M", "write -P 0x22 2M 256k"],
        );
    });
    guest_writes(
        "discard+reuse/monolithicSparse",
        &start,
        "/d/disk.vmdk",
        false,
        &[
            Act::Discard(2 * GRAIN, 3 * GRAIN),
            Act::Zeroes(8 * GRAIN, 2 * GRAIN, true),
            Act::Write(3 << 20, 4 * GRAIN as usize, 0x33),
            Act::Discard(2 << 20, 256 << 10),
        ],
    );
}

/// The same over a backing file: discarded grains become zeroed-grain entries before their
/// space goes, so no cut lets the backing file show through a grain that held data.
#[test]
fn overlay_discard_and_reuse_of_the_freed_space() {
    let start = zeroed_overlay("2M", |disk| qemu_io(disk, &["write -P 0x11 0 512k"]));
    guest_writes(
        "discard+reuse/overlay",
        &start,
        "/d/disk.vmdk",
        true,
        &[
            Act::Discard(GRAIN, 3 * GRAIN),
            Act::Write(1 << 20, 2 * GRAIN as usize, 0x33),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// create

fn create_run(sub: Subformat, with_backing: bool) -> Run {
    let start = if with_backing {
        qemu_files(|d| {
            qemu_img(&["create", "-f", "vmdk", &q(d, "base.vmdk"), "2M"]);
            qemu_io(&d.join("base.vmdk"), &["write -P 0xaa 64k 1M"]);
        })
    } else {
        Files::new()
    };
    record(&start, |ns| {
        let opts = CreateOptions {
            subformat: sub,
            backing_file: with_backing.then(|| "base.vmdk".to_string()),
            namespace: Some(ns.dyn_ns()),
            ..Default::default()
        };
        create(Path::new("/d/disk.vmdk"), 2 << 20, &opts).unwrap();
    })
}

fn create_cuts(name: &str, sub: Subformat, with_backing: bool) {
    let run = create_run(sub, with_backing);
    let want = view(&run.end, "/d/disk.vmdk", true);
    run.verify(
        name,
        &Verify {
            may_not_open: true,
            durable_on_return: true,
            ..verify(vec![Expect::new(
                "/d/disk.vmdk",
                true,
                Allowed::exactly(&want),
            )])
        },
    );
}

#[test]
fn create_every_subformat() {
    create_cuts(
        "create/monolithicSparse",
        Subformat::MonolithicSparse,
        false,
    );
    create_cuts("create/overlay", Subformat::MonolithicSparse, true);
    create_cuts(
        "create/twoGbMaxExtentSparse",
        Subformat::TwoGbMaxExtentSparse,
        false,
    );
    create_cuts("create/monolithicFlat", Subformat::MonolithicFlat, false);
    create_cuts("create/streamOptimized", Subformat::StreamOptimized, false);
}

#[test]
fn create_is_durable_when_it_returns() {
    // Regression: create flushed nothing, so a power loss just after it returned could
    // leave an empty file or a descriptor naming empty extents.
    for sub in [Subformat::MonolithicSparse, Subformat::TwoGbMaxExtentSparse] {
        let run = create_run(sub, false);
        let files = run.state(&Cut {
            cut: run.events.len(),
            keep: Keep::None,
        });
        assert_eq!(
            view(&files, "/d/disk.vmdk", false),
            vec![0; 2 << 20],
            "{sub:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// convert (durable), into an existing image (-n) and a new one

/// Loses every unflushed write of a grain or more (data), keeping the small ones (table
/// entries, descriptors).
fn data_writes(e: &Event) -> bool {
    matches!(&e.kind, Kind::Write { data, .. } if data.len() as u64 >= GRAIN)
}

/// A source with data and zeros, and (`existing`) a target holding other data.
fn convert_start(existing: bool) -> Files {
    qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "src.vmdk"), "2M"]);
        qemu_io(
            &d.join("src.vmdk"),
            &[
                "write -P 0x21 0 300k",
                "write -P 0 512k 128k",
                "write -P 0x23 1M 200k",
            ],
        );
        if existing {
            qemu_img(&["create", "-f", "vmdk", &q(d, "dst.vmdk"), "2M"]);
            qemu_io(
                &d.join("dst.vmdk"),
                &["write -P 0x91 128k 640k", "write -P 0x92 1500k 64k"],
            );
        }
    })
}

/// Convert `src.vmdk` into `dst.vmdk` with durable output: every sector of the target
/// holds what it held (zeros for a new one) or the source's.
fn convert_run(start: &Files, existing: bool) -> (Run, Verify) {
    let src = view(start, "/d/src.vmdk", false);
    let old = if existing {
        view(start, "/d/dst.vmdk", false)
    } else {
        vec![0; src.len()]
    };
    let run = record(start, |ns| {
        let source = ns.opts().open("/d/src.vmdk").unwrap();
        let opts = ConvertOptions {
            target_exists: existing,
            target_namespace: Some(ns.dyn_ns()),
            threads: 1,
            durable: true,
            ..Default::default()
        };
        let create = CreateOptions {
            namespace: Some(ns.dyn_ns()),
            ..Default::default()
        };
        convert_to_vmdk(
            &source,
            Path::new("/d/dst.vmdk"),
            &create,
            &opts,
            &|_, _| {},
        )
        .unwrap();
    });
    assert_eq!(view(&run.end, "/d/dst.vmdk", false), src);
    let v = Verify {
        durable_on_return: true,
        may_not_open: !existing,
        ..verify(vec![Expect::new(
            "/d/dst.vmdk",
            false,
            Allowed::any_of(&[&old, &src]),
        )])
    };
    (run, v)
}

#[test]
fn convert_into_existing_image() {
    let (run, v) = convert_run(&convert_start(true), true);
    run.verify("convert -n", &v);
}

#[test]
fn convert_into_new_image() {
    let (run, v) = convert_run(&convert_start(false), false);
    run.verify("convert", &v);
}

#[test]
fn durable_convert_writes_data_before_entries() {
    // Regression: convert wrote its VMDK output without durable writes and never flushed,
    // whatever the cache mode, so a power loss could keep a new grain's table entry and
    // lose its data (or the file's growth): the target checked corrupt.
    let (run, v) = convert_run(&convert_start(true), true);
    run.verify_every_cut("convert -n, unflushed data lost", &v, data_writes);
}

// ---------------------------------------------------------------------------------------
// commit

/// A base with data and an overlay with data of its own over part of it.
fn commit_chain(d: &Path) {
    commit_chain_of(d, "monolithicSparse")
}

/// A base with data and an overlay (`subformat`) with data of its own over part of it.
fn commit_chain_of(d: &Path, subformat: &str) {
    qemu_img(&["create", "-f", "vmdk", &q(d, "base.vmdk"), "2M"]);
    qemu_io(
        &d.join("base.vmdk"),
        &["write -P 0xb1 0 512k", "write -P 0xb2 1M 256k"],
    );
    qemu_overlay(
        q(d, "top.vmdk"),
        "base.vmdk",
        &format!("subformat={subformat}"),
        "",
    );
    qemu_io(
        &d.join("top.vmdk"),
        &[
            "write -P 0x71 64k 100k",
            "write -P 0 640k 64k",
            "write -P 0x72 1100k 300k",
            "write -P 0x73 1900k 4k",
        ],
    );
}

fn commit_run(start: &Files, opts: CommitOptions, top: &str, base: &str) -> (Run, Verify) {
    let top_view = view(start, top, true);
    let base_old = view(start, base, false);
    let run = record(start, |ns| {
        commit(Path::new(top), &opts, &ns.opts(), &|_, _| {}).unwrap();
    });
    let base_new = view(&run.end, base, false);
    assert_ne!(base_old, base_new, "the base did not change");
    let v = Verify {
        // The base's CID changes with its first write, the overlay's parentCID after the
        // base is flushed: a cut in between leaves them apart (as qemu-img's would).
        cid_tolerant: true,
        durable_on_return: true,
        ..verify(vec![
            Expect::new(top, true, Allowed::exactly(&top_view)),
            Expect::new(base, false, Allowed::any_of(&[&base_old, &base_new])),
        ])
    };
    (run, v)
}

fn commit_cuts(name: &str, start: &Files, opts: CommitOptions, top: &str, base: &str) {
    let (run, v) = commit_run(start, opts, top, base);
    run.verify(name, &v);
}

#[test]
fn commit_into_base() {
    let start = qemu_files(commit_chain);
    commit_cuts(
        "commit",
        &start,
        CommitOptions::default(),
        "/d/top.vmdk",
        "/d/base.vmdk",
    );
    commit_cuts(
        "commit -d",
        &start,
        CommitOptions {
            keep_overlay: true,
            ..Default::default()
        },
        "/d/top.vmdk",
        "/d/base.vmdk",
    );
}

#[test]
fn commit_descriptor_file_overlay() {
    // The overlay's parentCID is in a descriptor file, its grains in an extent file.
    let start = qemu_files(|d| commit_chain_of(d, "twoGbMaxExtentSparse"));
    commit_cuts(
        "commit/descriptor file",
        &start,
        CommitOptions::default(),
        "/d/top.vmdk",
        "/d/base.vmdk",
    );
}

#[test]
fn commit_into_lower_base() {
    // Regression: the base named (-b) was looked up among the host's files, whatever the
    // namespace the chain was in.
    let start = qemu_files(|d| {
        commit_chain(d);
        qemu_overlay(q(d, "top2.vmdk"), "top.vmdk", "", "");
        qemu_io(
            &d.join("top2.vmdk"),
            &["write -P 0x81 0 8k", "write -P 0x82 1M 64k"],
        );
    });
    let opts = CommitOptions {
        base: Some("/d/base.vmdk".into()),
        ..Default::default()
    };
    let (run, v) = commit_run(&start, opts, "/d/top2.vmdk", "/d/base.vmdk");
    // The image between is left stale (its parentCID no longer the base's), by design.
    run.verify(
        "commit -b",
        &Verify {
            stale_at_end: true,
            ..v
        },
    );
}

#[test]
fn commit_is_durable_when_it_returns() {
    // Regression: the emptied overlay was cut after its last flush, and a descriptor file's
    // new parentCID was never flushed, so a power loss just after commit returned could
    // undo them.
    for sub in ["monolithicSparse", "twoGbMaxExtentSparse"] {
        let start = qemu_files(|d| commit_chain_of(d, sub));
        let (run, _) = commit_run(
            &start,
            CommitOptions::default(),
            "/d/top.vmdk",
            "/d/base.vmdk",
        );
        let lost = run.lost(&Cut {
            cut: run.events.len(),
            keep: Keep::None,
        });
        assert!(lost.is_empty(), "{sub}: not flushed: {lost:?}");
    }
}

#[test]
fn commit_base_grains_are_durable_before_their_entries() {
    // Regression: the base was written without durable writes, so a power loss could keep
    // a new grain's table entry and lose its data (or the file's growth): the base then
    // checked corrupt ("cluster offset points after end of file").
    let start = qemu_files(commit_chain);
    let (run, v) = commit_run(
        &start,
        CommitOptions::default(),
        "/d/top.vmdk",
        "/d/base.vmdk",
    );
    run.verify_every_cut("commit, unflushed data lost", &v, data_writes);
}

// ---------------------------------------------------------------------------------------
// rebase (safe mode)

fn rebase_run(start: &Files, top: &str, backing: &str) -> (Run, Verify) {
    let top_view = view(start, top, true);
    let run = record(start, |ns| {
        let r = RebaseOptions {
            backing: backing.to_string(),
            unsafe_mode: false,
        };
        rebase(Path::new(top), &r, &ns.opts(), &|_, _| {}).unwrap();
    });
    let v = Verify {
        durable_on_return: true,
        ..verify(vec![Expect::new(top, true, Allowed::exactly(&top_view))])
    };
    (run, v)
}

fn rebase_bases(d: &Path) {
    qemu_img(&["create", "-f", "vmdk", &q(d, "old-base.vmdk"), "2M"]);
    qemu_io(
        &d.join("old-base.vmdk"),
        &["write -P 0xb1 0 512k", "write -P 0xb2 1M 256k"],
    );
    qemu_img(&["create", "-f", "vmdk", &q(d, "nb.vmdk"), "2M"]);
    qemu_io(
        &d.join("nb.vmdk"),
        &["write -P 0xb1 0 128k", "write -P 0xc3 900k 300k"],
    );
}

/// An overlay (`subformat`) over `old-base.vmdk`, with `nb.vmdk` beside it.
fn rebase_start(subformat: &str) -> Files {
    qemu_files(|d| {
        rebase_bases(d);
        qemu_overlay(
            q(d, "top.vmdk"),
            "old-base.vmdk",
            &format!("subformat={subformat}"),
            "",
        );
        qemu_io(&d.join("top.vmdk"), &["write -P 0x71 64k 100k"]);
    })
}

#[test]
fn rebase_onto_another_base() {
    let start = rebase_start("monolithicSparse");
    let (run, v) = rebase_run(&start, "/d/top.vmdk", "nb.vmdk");
    run.verify("rebase", &v);
    let (run, v) = rebase_run(&start, "/d/top.vmdk", "");
    run.verify("rebase (flatten)", &v);
}

#[test]
fn rebase_copies_are_durable_before_their_entries() {
    // Regression: the overlay was written without durable writes, so a power loss could
    // keep a copied grain's table entry and lose its data: the guest saw zeros where the
    // old backing file had data.
    let (run, v) = rebase_run(&rebase_start("monolithicSparse"), "/d/top.vmdk", "nb.vmdk");
    run.verify_every_cut("rebase, unflushed data lost", &v, data_writes);
}

#[test]
fn rebase_descriptor_file_overlay() {
    // The new backing name is shorter: the descriptor file gets shorter.
    let (run, v) = rebase_run(
        &rebase_start("twoGbMaxExtentSparse"),
        "/d/top.vmdk",
        "nb.vmdk",
    );
    run.verify("rebase/descriptor file", &v);
}

/// Loses every unflushed write to a descriptor file `top.vmdk`, keeping its `set_len`s.
fn descriptor_writes(e: &Event) -> bool {
    e.file.ends_with("top.vmdk") && matches!(e.kind, Kind::Write { .. })
}

#[test]
fn shorter_descriptor_file_is_never_cut_short() {
    // Regression: a descriptor file rewritten shorter was written and cut in one go, so a
    // power loss could keep the cut and lose the new text: the old text, cut short (its
    // last lines gone or half there).
    let (run, v) = rebase_run(
        &rebase_start("twoGbMaxExtentSparse"),
        "/d/top.vmdk",
        "nb.vmdk",
    );
    run.verify_every_cut("rebase, descriptor text lost", &v, descriptor_writes);
}

// ---------------------------------------------------------------------------------------
// resize

/// Resize `image` to `new_size`: every state has the old or the new size, and the old
/// range (as far as both sizes reach) holds the old data. Only the first 4 MiB are read and
/// compared; the rest must read as zeros before and after (the map says so, cheaply).
fn resize_cuts(name: &str, start: &Files, image: &str, new_size: u64) {
    let ns = mem_of(start);
    let img = opts_in(&ns).open(image).unwrap();
    let old_size = img.size();
    let old = read_all(&img, 4 << 20).unwrap();
    drop(img);
    let run = record(start, |ns| {
        let r = ResizeOptions {
            shrink: new_size < old_size,
        };
        resize(Path::new(image), new_size, &r, &ns.opts()).unwrap();
    });
    let prefix = &old[..old.len().min(new_size as usize)];
    run.verify(
        name,
        &Verify {
            durable_on_return: true,
            ..verify(vec![Expect::new(
                image,
                false,
                Allowed::with_sizes(&[&old, prefix], &[old_size, new_size]),
            )])
        },
    );
}

#[test]
fn resize_grow() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
        qemu_io(
            &d.join("disk.vmdk"),
            &["write -P 0x41 0 100k", "write -P 0x42 1900k 148k"],
        );
    });
    resize_cuts("resize/grow", &start, "/d/disk.vmdk", 3 << 20);
    // Past what the directory's sector can hold: both directories move to the end.
    resize_cuts(
        "resize/grow, directories moved",
        &start,
        "/d/disk.vmdk",
        5 << 30,
    );
}

#[test]
fn resize_grow_split_and_flat() {
    let start = mem_files(|ns| {
        create_in(
            ns,
            "/d/split.vmdk",
            1 << 20,
            Subformat::TwoGbMaxExtentSparse,
            None,
        );
        write_in(
            ns,
            "/d/split.vmdk",
            &[(0, 100_000, 1), (900_000, 148_576, 2)],
        );
        create_in(ns, "/d/flat.vmdk", 1 << 20, Subformat::MonolithicFlat, None);
        write_in(
            ns,
            "/d/flat.vmdk",
            &[(0, 100_000, 1), (900_000, 148_576, 2)],
        );
    });
    // Fills the first extent to 2 GiB, then a new extent file.
    resize_cuts(
        "resize/grow twoGbMaxExtentSparse",
        &start,
        "/d/split.vmdk",
        (2 << 30) + (1 << 20),
    );
    resize_cuts(
        "resize/grow monolithicFlat",
        &start,
        "/d/flat.vmdk",
        3 << 20,
    );
}

/// A 4 MiB disk with data in its first MiB and zeros allocated past 1.5 MiB.
fn shrinkable() -> Files {
    qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "4M"]);
        // Zeros allocated past the new end (dropped), data before it.
        qemu_io(
            &d.join("disk.vmdk"),
            &[
                "write -P 0x41 0 1M",
                "write -P 0 2M 256k",
                "write -P 0 3968k 128k",
            ],
        );
    })
}

#[test]
fn resize_shrink_is_durable_when_it_returns() {
    // Regression: the dropped grains were punched out after the last flush, so a power
    // loss just after resize returned could bring them back as leaked space.
    let run = record(&shrinkable(), |ns| {
        let r = ResizeOptions { shrink: true };
        resize(Path::new("/d/disk.vmdk"), 1536 << 10, &r, &ns.opts()).unwrap();
    });
    let lost = run.lost(&Cut {
        cut: run.events.len(),
        keep: Keep::None,
    });
    assert!(lost.is_empty(), "not flushed: {lost:?}");
}

#[test]
fn resize_shrink() {
    resize_cuts("resize/shrink", &shrinkable(), "/d/disk.vmdk", 1536 << 10);
    let start = mem_files(|ns| {
        create_in(ns, "/d/flat.vmdk", 4 << 20, Subformat::MonolithicFlat, None);
        write_in(
            ns,
            "/d/flat.vmdk",
            &[(0, 100_000, 1), (3 << 20, 100_000, 2)],
        );
        create_in(
            ns,
            "/d/split.vmdk",
            (2 << 30) + (1 << 20),
            Subformat::TwoGbMaxExtentSparse,
            None,
        );
        write_in(ns, "/d/split.vmdk", &[(0, 100_000, 1)]);
    });
    resize_cuts(
        "resize/shrink monolithicFlat",
        &start,
        "/d/flat.vmdk",
        1 << 20,
    );
    // Drops the second extent file.
    resize_cuts(
        "resize/shrink twoGbMaxExtentSparse",
        &start,
        "/d/split.vmdk",
        1 << 20,
    );
}

// ---------------------------------------------------------------------------------------
// compact

/// Data grains, some overwritten with zeros (qemu allocates them), the last ones at the
/// top of the file.
fn fill_for_compact(disk: &Path) {
    qemu_io(
        disk,
        &[
            "write -P 0x11 0 256k",
            "write -P 0x22 1M 128k",
            "write -P 0 64k 128k",
            "write -P 0x33 2M 64k",
            "write -P 0x44 3M 192k",
        ],
    );
}

fn compact_cuts(name: &str, start: &Files, chain: bool) {
    let image = "/d/disk.vmdk";
    let old = view(start, image, chain);
    let run = record(start, |ns| {
        let stats = vmdk::ops::compact::compact(Path::new(image), &ns.opts(), &|_, _| {}).unwrap();
        assert!(stats.zero_grains > 0 && stats.moved_grains > 0, "{stats:?}");
    });
    assert!(
        run.end[Path::new(image)].len() < run.start[Path::new(image)].len(),
        "{name}: compact did not shrink the file"
    );
    run.verify(
        name,
        &Verify {
            durable_on_return: true,
            ..verify(vec![Expect::new(image, chain, Allowed::exactly(&old))])
        },
    );
}

#[test]
fn compact_monolithic_sparse() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "4M"]);
        fill_for_compact(&d.join("disk.vmdk"));
    });
    compact_cuts("compact", &start, false);
}

#[test]
fn compact_overlay_with_zeroed_grains() {
    // Over a backing file, zero grains become zeroed-grain entries (the backing file must
    // not show through).
    let start = zeroed_overlay("4M", fill_for_compact);
    compact_cuts("compact/overlay", &start, true);
}

// ---------------------------------------------------------------------------------------
// check -r

/// The grain tables (primary and redundant) of a monolithicSparse file, and its grain
/// directory entries: (gd, rgd, per-table offsets).
fn tables(file: &[u8]) -> (u64, u64, Vec<u64>, Vec<u64>) {
    let h = vmdk::format::sparse_header::SparseHeader::parse(file).unwrap();
    let entry =
        |at: u64| u32::from_le_bytes(file[at as usize..at as usize + 4].try_into().unwrap()) as u64;
    let n = h.gd_entries();
    let gd: Vec<u64> = (0..n)
        .map(|i| entry(h.gd_offset * 512 + i * 4) * 512)
        .collect();
    let rgd: Vec<u64> = (0..n)
        .map(|i| entry(h.rgd_offset * 512 + i * 4) * 512)
        .collect();
    (h.gd_offset * 512, h.rgd_offset * 512, gd, rgd)
}

fn put(file: &mut [u8], at: u64, v: u32) {
    file[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}

fn get(file: &[u8], at: u64) -> u32 {
    u32::from_le_bytes(file[at as usize..at as usize + 4].try_into().unwrap())
}

fn repair_cuts(name: &str, start: &Files, mode: RepairMode, corruptions: u64) {
    let image = "/d/disk.vmdk";
    let old = view(start, image, false);
    let run = record(start, |ns| {
        let out = repair(Path::new(image), mode, &ns.opts()).unwrap();
        assert_eq!(out.report.corruption_count(), 0, "{name}: {:?}", out.report);
    });
    let new = view(&run.end, image, false);
    if mode == RepairMode::Leaks {
        assert_eq!(old, new, "{name}: repairing leaks changed data");
    }
    run.verify(
        name,
        &Verify {
            durable_on_return: true,
            corruptions_allowed: corruptions,
            ..verify(vec![Expect::new(
                image,
                false,
                Allowed::any_of(&[&old, &new]),
            )])
        },
    );
}

#[test]
fn repair_leaks() {
    let start = qemu_files(|d| {
        let disk = d.join("disk.vmdk");
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
        qemu_io(&disk, &["write -P 0x51 0 1M", "write -P 0x52 1920k 128k"]);
        // Unreference grain 3 (inside the file) and the last grain (at its end), in both
        // tables.
        let mut f = std::fs::read(&disk).unwrap();
        let (_, _, gd, rgd) = tables(&f);
        for t in [gd[0], rgd[0]] {
            put(&mut f, t + 3 * 4, 0);
            put(&mut f, t + 31 * 4, 0);
        }
        std::fs::write(&disk, f).unwrap();
    });
    repair_cuts("check -r leaks", &start, RepairMode::Leaks, 0);
}

#[test]
fn repair_all() {
    let start = qemu_files(|d| {
        let disk = d.join("disk.vmdk");
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
        qemu_io(&disk, &["write -P 0x51 0 1M", "write -P 0x52 1920k 128k"]);
        let mut f = std::fs::read(&disk).unwrap();
        let (_, _, gd, rgd) = tables(&f);
        // Grain 2's primary entry points past the end (the redundant one is right), grain
        // 5's primary entry is lost (the redundant copy still has it), grain 3 leaks.
        let past = (f.len() as u32 / 512) + 1000;
        put(&mut f, gd[0] + 2 * 4, past);
        put(&mut f, gd[0] + 5 * 4, 0);
        put(&mut f, gd[0] + 3 * 4, 0);
        put(&mut f, rgd[0] + 3 * 4, 0);
        assert_ne!(get(&f, rgd[0] + 2 * 4), 0);
        std::fs::write(&disk, f).unwrap();
    });
    repair_cuts("check -r all", &start, RepairMode::All, 1);
}

// ---------------------------------------------------------------------------------------
// amend

fn amend_cuts(name: &str, start: &Files, image: &str) {
    let old = view(start, image, false);
    let run = record(start, |ns| {
        let img = ns
            .opts()
            .writable(true)
            .open_backing(false)
            .open(image)
            .unwrap();
        amend(
            &img,
            &AmendOptions {
                adapter_type: Some(AdapterType::Lsilogic),
                hwversion: Some("10".into()),
                toolsversion: Some("12345".into()),
                ..Default::default()
            },
        )
        .unwrap();
    });
    run.verify(
        name,
        &Verify {
            durable_on_return: true,
            ..verify(vec![Expect::new(image, false, Allowed::exactly(&old))])
        },
    );
}

#[test]
fn amend_descriptor() {
    let start = qemu_files(|d| {
        qemu_img(&["create", "-f", "vmdk", &q(d, "disk.vmdk"), "2M"]);
        qemu_io(&d.join("disk.vmdk"), &["write -P 0x61 0 100k"]);
        qemu_create_as(
            "vmdk",
            q(d, "split.vmdk"),
            "2M",
            "subformat=twoGbMaxExtentSparse",
        );
        qemu_io(&d.join("split.vmdk"), &["write -P 0x62 0 100k"]);
    });
    amend_cuts("amend/embedded descriptor", &start, "/d/disk.vmdk");
    amend_cuts("amend/descriptor file", &start, "/d/split.vmdk");
}
