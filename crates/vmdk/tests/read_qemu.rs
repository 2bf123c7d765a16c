//! Every byte we read from qemu-made images equals what `qemu-img convert -O raw` reads.

mod common;
use common::*;

fn check_subformat(sub: &str, extra: &str, size: &str) {
    let d = Dir::new();
    let img = d.path("disk.vmdk");
    let opts = if extra.is_empty() {
        format!("subformat={sub}")
    } else {
        format!("subformat={sub},{extra}")
    };
    qemu_img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        &opts,
        img.to_str().unwrap(),
        size,
    ]);
    if sub == "streamOptimized" {
        // qemu can only write stream images through convert.
        let raw = d.path("src.raw");
        qemu_img(&["create", "-f", "raw", raw.to_str().unwrap(), size]);
        qemu_io_raw(&raw);
        qemu_img(&[
            "convert",
            "-O",
            "vmdk",
            "-o",
            &opts,
            raw.to_str().unwrap(),
            img.to_str().unwrap(),
        ]);
    } else {
        scribble(&img);
    }
    assert_same(&format!("{sub} {extra}"), &our_raw(&img), &qemu_raw(&img));
}

fn qemu_io_raw(raw: &std::path::Path) {
    run(std::process::Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 4k",
        "-c",
        "write -P 0x22 60k 8k",
        "-c",
        "write -P 0x33 1M 200k",
        "-c",
        "write -P 0x44 3000k 1k",
        raw.to_str().unwrap(),
    ]));
}

#[test]
fn monolithic_sparse() {
    check_subformat("monolithicSparse", "", "5M");
}

#[test]
fn monolithic_sparse_zeroed_grain() {
    check_subformat("monolithicSparse", "zeroed_grain=on", "5M");
}

#[test]
fn monolithic_flat() {
    check_subformat("monolithicFlat", "", "5M");
}

#[test]
fn two_gb_sparse() {
    check_subformat("twoGbMaxExtentSparse", "", "5M");
}

#[test]
fn two_gb_flat() {
    check_subformat("twoGbMaxExtentFlat", "", "5M");
}

#[test]
fn stream_optimized() {
    check_subformat("streamOptimized", "", "5M");
}
