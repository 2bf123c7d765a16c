//! The chain and size operations called as a library user calls them (`vmdk::ops::*`),
//! each checked against qemu: what qemu reads afterwards, and `qemu-img check`.
//! (The CLI's tests reach the same functions through `vmdk`; `crash_cut.rs` and
//! `op_props.rs` cut them at every flush and run them in random sequences.)

use std::path::Path;

use vmdk::ops::amend::{amend, AmendOptions};
use vmdk::ops::commit::{commit, CommitOptions};
use vmdk::ops::rebase::{rebase, RebaseOptions};
use vmdk::ops::repair::{repair, RepairMode};
use vmdk::ops::resize::{resize, ResizeOptions};
use vmdk::{AdapterType, Image, OpenOptions};

use vmdk_test_support::qemu::{qemu_create_as, qemu_overlay};

use crate::common::{qemu_img, qemu_io, qemu_raw, Dir as TempDir};

const MIB: u64 = 1 << 20;

fn no_progress(_: u64, _: u64) {}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A base with `1` at 1M and an overlay with `2` at 3M, made by qemu.
fn chain(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = dir.path("base.vmdk");
    let top = dir.path("top.vmdk");
    qemu_create_as("vmdk", &base, "8M", "");
    qemu_io(&base, &["write -P 1 1M 64k"]);
    qemu_overlay(&top, "base.vmdk", "", "");
    qemu_io(&top, &["write -P 2 3M 64k"]);
    (base, top)
}

fn expected(writes: &[(u64, u8)]) -> Vec<u8> {
    let mut v = vec![0u8; 8 * MIB as usize];
    for &(at, p) in writes {
        v[at as usize..(at + 65536) as usize].fill(p);
    }
    v
}

#[test]
fn commit_moves_the_overlay_into_its_base() {
    let dir = TempDir::new();
    let (base, top) = chain(&dir);
    let c = CommitOptions::default();
    commit(&top, &c, &OpenOptions::new(), &no_progress).unwrap();
    assert_eq!(qemu_raw(&base), expected(&[(MIB, 1), (3 * MIB, 2)]));
    // The overlay is emptied: it still reads the same through its base.
    assert_eq!(qemu_raw(&top), expected(&[(MIB, 1), (3 * MIB, 2)]));
    assert!(Image::open(&top).unwrap().allocated_bytes() < 65536);
    qemu_img(&["check", s(&base)]);
    qemu_img(&["check", s(&top)]);
}

#[test]
fn rebase_keeps_the_guest_view_and_flattens() {
    let dir = TempDir::new();
    let (base, top) = chain(&dir);
    let before = qemu_raw(&top);
    // Onto nothing: the overlay takes what the base gave it.
    let r = RebaseOptions {
        backing: String::new(),
        unsafe_mode: false,
    };
    rebase(&top, &r, &OpenOptions::new(), &no_progress).unwrap();
    std::fs::remove_file(&base).unwrap();
    assert_eq!(qemu_raw(&top), before);
    assert!(Image::open(&top).unwrap().backing().is_none());
    qemu_img(&["check", s(&top)]);
}

#[test]
fn resize_grows_and_shrinks_as_qemu_reads_it() {
    let dir = TempDir::new();
    let img = dir.path("r.vmdk");
    qemu_create_as("vmdk", &img, "8M", "");
    qemu_io(&img, &["write -P 7 7M 64k", "write -P 8 1M 64k"]);
    let open = OpenOptions::new();
    resize(&img, 16 * MIB, &ResizeOptions::default(), &open).unwrap();
    let mut want = expected(&[(MIB, 8), (7 * MIB, 7)]);
    want.resize(16 * MIB as usize, 0);
    assert_eq!(qemu_raw(&img), want);
    qemu_img(&["check", s(&img)]);
    // A shrink needs `shrink`, as qemu-img's --shrink; it drops unallocated space only and
    // refuses to drop data (the grain at 7M).
    assert!(resize(&img, 12 * MIB, &ResizeOptions::default(), &open).is_err());
    let shrink = ResizeOptions { shrink: true };
    assert!(resize(&img, 4 * MIB, &shrink, &open).is_err());
    resize(&img, 12 * MIB, &shrink, &open).unwrap();
    assert_eq!(qemu_raw(&img), want[..12 * MIB as usize]);
    qemu_img(&["check", s(&img)]);
}

#[test]
fn amend_changes_descriptor_fields_only() {
    let dir = TempDir::new();
    let img = dir.path("a.vmdk");
    qemu_create_as("vmdk", &img, "8M", "");
    qemu_io(&img, &["write -P 5 0 64k"]);
    let before = qemu_raw(&img);
    let w = OpenOptions::new().writable(true).open(&img).unwrap();
    let mut m = AmendOptions::default();
    m.set_option("adapter_type", "lsilogic").unwrap();
    m.set_option("toolsversion", "12345").unwrap();
    amend(&w, &m).unwrap();
    drop(w);
    let d = Image::open(&img).unwrap();
    assert_eq!(d.descriptor().ddb("adapterType"), Some("lsilogic"));
    assert_eq!(d.descriptor().ddb("toolsVersion"), Some("12345"));
    assert_eq!(m.adapter_type, Some(AdapterType::Lsilogic));
    assert_eq!(qemu_raw(&img), before);
    qemu_img(&["check", s(&img)]);
    // The layout cannot change by amending.
    assert!(m.set_option("subformat", "monolithicFlat").is_err());
}

#[test]
fn repair_gives_back_leaked_clusters() {
    let dir = TempDir::new();
    let img = dir.path("l.vmdk");
    qemu_create_as("vmdk", &img, "8M", "");
    qemu_io(&img, &["write -P 3 0 64k", "write -P 4 64k 64k"]);
    // Grain 0's entry cleared in both table copies: its space is named by nothing, as a
    // crash between allocating and publishing leaves it.
    let mut bytes = std::fs::read(&img).unwrap();
    let h = vmdk::format::sparse_header::SparseHeader::parse(&bytes).unwrap();
    for gd in [h.gd_offset, h.rgd_offset] {
        let at = (gd * 512) as usize;
        let gt = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize * 512;
        bytes[gt..gt + 4].fill(0);
    }
    std::fs::write(&img, &bytes).unwrap();
    let report = vmdk::check(&Image::open(&img).unwrap()).unwrap();
    assert!(!report.leaks.is_empty(), "{report:?}");
    let out = repair(&img, RepairMode::Leaks, &OpenOptions::new()).unwrap();
    assert_eq!(
        out.report.leaks_fixed, report.leaked_clusters,
        "{:?}",
        out.report
    );
    assert!(out.report.is_clean(), "{:?}", out.report);
    assert_eq!(qemu_raw(&img), expected(&[(64 * 1024, 4)]));
    qemu_img(&["check", s(&img)]);
}
