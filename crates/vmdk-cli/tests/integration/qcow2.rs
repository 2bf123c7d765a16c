//! qcow2 as a source (and, further down, a target), with qemu-img as the oracle: every
//! shape qemu-img and qemu-io can make is converted to raw and to every VMDK subformat and
//! must read byte for byte as qemu reads it; `info` and `map` print what qemu-img prints;
//! hostile files get clear errors.

use std::path::{Path, PathBuf};

use crate::common::*;
use serde_json::Value;

const SIZE: &str = "12M";

/// `qemu-io -f qcow2 -c CMD... IMAGE`, expecting success.
fn qio(image: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let img = s(image);
    args.push(&img);
    let out = tool("qemu-io", &args).expect(0, &format!("qemu-io {cmds:?}"));
    assert!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
}

/// `qemu-img create -f qcow2 [-o OPTS] [-b BACKING -F FMT] PATH SIZE`.
fn qcreate(dir: &Path, name: &str, opts: &str, backing: Option<(&str, &str)>) -> PathBuf {
    let p = dir.join(name);
    let ps = s(&p);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    if let Some((b, f)) = backing {
        args.extend(["-b", b, "-F", f]);
    }
    args.extend([ps.as_str(), SIZE]);
    qemu_img(&args);
    p
}

/// Data with some structure: patterns, a zero run inside written data, untouched holes.
fn fill(image: &Path) {
    qio(
        image,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 1536k 300k",
            "write -z 256k 128k",
            "write -P 0x33 5M 64k",
            "write -P 0x44 12286k 2k",
        ],
    );
}

/// The images to read: (name, path), every shape qemu makes.
fn shapes(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for (name, opts) in [
        ("v2", "compat=0.10"),
        ("v3", "compat=1.1"),
        ("c512", "cluster_size=512"),
        ("c4k", "cluster_size=4096"),
        ("c2m", "cluster_size=2M"),
        ("lazy", "lazy_refcounts=on"),
        ("prealloc", "preallocation=metadata"),
        ("extl2", "extended_l2=on"),
        ("extl2-c16k", "extended_l2=on,cluster_size=16k"),
    ] {
        let p = qcreate(dir, &format!("{name}.qcow2"), opts, None);
        fill(&p);
        out.push((name.to_string(), p));
    }
    // Compressed clusters, from qemu-img convert -c and from qemu-io's write -c, with zero
    // clusters written over data.
    let plain = &out[1].1.clone();
    let comp = dir.join("comp.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", &s(plain), &s(&comp)]);
    out.push(("convert-c".into(), comp));
    let wc = qcreate(dir, "writec.qcow2", "", None);
    qio(
        &wc,
        &[
            "write -c -P 0x55 0 64k",
            "write -c -P 0x56 64k 64k",
            "write -c -P 0x57 1M 64k",
            "write -P 0x58 2M 128k",
            "write -z 2M 64k",
            "write -z 4M 1M",
        ],
    );
    out.push(("write-c-z".into(), wc));
    // A 3-level chain: data in the base, overwritten, zeroed and discarded above.
    let base = qcreate(dir, "base.qcow2", "", None);
    fill(&base);
    let mid = qcreate(dir, "mid.qcow2", "", Some(("base.qcow2", "qcow2")));
    qio(&mid, &["write -P 0x66 512k 1M", "write -c -P 0x67 3M 64k"]);
    let top = qcreate(dir, "top.qcow2", "", Some(("mid.qcow2", "qcow2")));
    qio(&top, &["write -z 0 128k", "write -P 0x77 700k 10k"]);
    out.push(("chain3".into(), top));
    // Extended L2 over a backing file: subclusters allocated, zeroed and left to the base.
    let xtop = qcreate(
        dir,
        "xtop.qcow2",
        "extended_l2=on",
        Some(("base.qcow2", "qcow2")),
    );
    qio(
        &xtop,
        &[
            "write -P 0x88 4k 2k",
            "write -z 64k 4k",
            "write -P 0x99 5M 8k",
        ],
    );
    out.push(("extl2-over-base".into(), xtop));
    // A qcow2 over a VMDK.
    let vbase = qemu_create(dir, "vbase.vmdk", SIZE, &[]);
    qemu_io(&vbase, &["write -P 0xaa 0 2M"]);
    let over = qcreate(dir, "over-vmdk.qcow2", "", Some(("vbase.vmdk", "vmdk")));
    qio(&over, &["write -P 0xbb 1M 64k"]);
    out.push(("over-vmdk".into(), over));
    out
}

/// A big-endian u64 of a file (qcow2's byte order).
fn be64(path: &Path, offset: u64) -> u64 {
    read_u64(path, offset).swap_bytes()
}

/// A `map --output=json` listing without the host offsets of stretches that hold no data:
/// qemu lists where a preallocated or zeroed-over cluster lies, we say only "zeros".
fn map_without_zero_offsets(text: &str) -> Value {
    let v: Value = serde_json::from_str(text).unwrap();
    let mut out: Vec<Value> = Vec::new();
    for mut e in v.as_array().unwrap().iter().cloned() {
        if e["data"] == false {
            e.as_object_mut().unwrap().remove("offset");
        }
        // Without offsets, stretches qemu kept apart may now be one.
        if let Some(last) = out.last_mut() {
            let same = ["depth", "present", "zero", "data", "compressed", "offset"]
                .iter()
                .all(|k| last.get(k) == e.get(k));
            if same && e["data"] == false {
                let len = last["length"].as_u64().unwrap() + e["length"].as_u64().unwrap();
                last["length"] = len.into();
                continue;
            }
        }
        out.push(e);
    }
    Value::Array(out)
}

fn qemu_raw(src: &Path, dst: &Path) {
    qemu_img(&["convert", "-O", "raw", &s(src), &s(dst)]);
}

#[test]
fn every_qcow2_shape_converts_to_raw_and_every_vmdk_subformat() {
    let d = tempdir();
    for (name, img) in shapes(d.path()) {
        let want = d.path().join(format!("{name}.want"));
        qemu_raw(&img, &want);
        let ours = d.path().join(format!("{name}.raw"));
        vmdk_ok(&["convert", "-O", "raw", &s(&img), &s(&ours)]);
        assert!(
            std::fs::read(&want).unwrap() == std::fs::read(&ours).unwrap(),
            "{name}: raw output differs from qemu-img's"
        );
        for sub in [
            "monolithicSparse",
            "monolithicFlat",
            "twoGbMaxExtentSparse",
            "streamOptimized",
        ] {
            let out = d.path().join(format!("{name}-{sub}.vmdk"));
            vmdk_ok(&[
                "convert",
                "-O",
                "vmdk",
                "-o",
                &format!("subformat={sub}"),
                &s(&img),
                &s(&out),
            ]);
            qemu_img(&["check", "-q", &s(&out)]);
            qemu_img(&["compare", "-q", &s(&want), &s(&out)]);
        }
        // compare reads qcow2 too.
        vmdk_ok(&["compare", "-q", &s(&img), &s(&want)]);
    }
}

#[test]
fn zero_clusters_become_zero_grains_and_holes_stay_holes() {
    let d = tempdir();
    let wc = qcreate(d.path(), "z.qcow2", "", None);
    qio(&wc, &["write -P 1 0 4M", "write -z 1M 2M"]);
    let out = d.path().join("z.vmdk");
    vmdk_ok(&["convert", "-O", "vmdk", &s(&wc), &s(&out)]);
    let map: Value = serde_json::from_str(&qemu_img(&["map", "--output=json", &s(&out)])).unwrap();
    let data: u64 = map
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert_eq!(data, 2 << 20, "only the written 2 MiB is data: {map}");
}

#[test]
fn info_and_map_match_qemu_img() {
    let d = tempdir();
    for (name, img) in shapes(d.path()) {
        let i = s(&img);
        let ours = vmdk(&["info", "--output=json", &i]);
        assert_eq!(ours.code, 0, "{name}: {}", ours.stderr);
        let theirs: Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &i])).unwrap();
        assert_eq!(ours.json(), theirs, "{name}: info");
        let human = vmdk_ok(&["info", &i]);
        assert_eq!(human, qemu_img(&["info", &i]), "{name}: human info");
        if name == "prealloc" {
            // qemu reports the holes of preallocated clusters as zeros (it guesses
            // preallocation from refcounts); we report them as data (MapReporter::for_qcow2).
            continue;
        }
        let ours = vmdk_ok(&["map", "--output=json", &i]);
        let theirs = qemu_img(&["map", "--output=json", &i]);
        assert_eq!(
            map_without_zero_offsets(&ours),
            map_without_zero_offsets(&theirs),
            "{name}: map"
        );
    }
    let top = d.path().join("top.qcow2");
    let ours = vmdk(&["info", "--backing-chain", "--output=json", &s(&top)]).json();
    let theirs: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--backing-chain",
        "--output=json",
        &s(&top),
    ]))
    .unwrap();
    assert_eq!(ours, theirs, "backing chain info");
}

#[test]
fn dd_reads_qcow2() {
    let d = tempdir();
    let img = qcreate(d.path(), "a.qcow2", "", None);
    fill(&img);
    let want = d.path().join("want.raw");
    qemu_raw(&img, &want);
    let out = d.path().join("out.raw");
    vmdk_ok(&[
        "dd",
        &format!("if={}", s(&img)),
        &format!("of={}", s(&out)),
        "bs=64k",
        "skip=8",
        "count=40",
    ]);
    let w = std::fs::read(&want).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), w[8 << 16..48 << 16]);
}

/// Run a command on a hostile image: it must fail cleanly (no panic) with `needle` in the
/// message.
fn refused(args: &[&str], needle: &str) {
    let r = vmdk(args);
    assert_ne!(r.code, 0, "{args:?} succeeded");
    assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    assert!(
        r.stderr.contains(needle),
        "{args:?}: wanted '{needle}' in:\n{}",
        r.stderr
    );
}

#[test]
fn hostile_qcow2_files_get_clear_errors() {
    let d = tempdir();
    let good = qcreate(d.path(), "good.qcow2", "", None);
    fill(&good);
    let copy = |n: &str| {
        let p = d.path().join(n);
        std::fs::copy(&good, &p).unwrap();
        p
    };
    let to_raw = |p: &Path| {
        [
            "convert".to_string(),
            "-O".into(),
            "raw".into(),
            s(p),
            s(&d.path().join("out.raw")),
        ]
    };
    let run = |p: &Path, needle: &str| {
        let a = to_raw(p);
        let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
        refused(&a, needle);
    };
    // Truncated inside the header, and before the L1 table.
    let t = copy("trunc.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(50)
        .unwrap();
    refused(&["info", &s(&t)], "");
    let t = copy("trunc2.qcow2");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t)
        .unwrap()
        .set_len(65536)
        .unwrap();
    run(&t, "past the end");
    // L1 table past the end of the file.
    let p = copy("l1.qcow2");
    patch(&p, 40, &(1u64 << 40).to_be_bytes());
    run(&p, "L1 table");
    // cluster_bits 30 and more.
    for bits in [30u32, 31, 63] {
        let p = copy(&format!("bits{bits}.qcow2"));
        patch(&p, 20, &bits.to_be_bytes());
        run(&p, "cluster size");
    }
    // A huge L1 size (memory bound).
    let p = copy("l1big.qcow2");
    patch(&p, 36, &u32::MAX.to_be_bytes());
    run(&p, "32 MiB");
    // A huge refcount table.
    let p = copy("rt.qcow2");
    patch(&p, 56, &u32::MAX.to_be_bytes());
    run(&p, "refcount table");
    // An L1 entry pointing at itself as an L2 table, and past the end of the file.
    let l1 = be64(&good, 40);
    let p = copy("loop.qcow2");
    patch(&p, l1, &(l1 | 1 << 63).to_be_bytes());
    // Reading the L1 as an L2 table gives unaligned or past-EOF data offsets: an error,
    // or data; never a hang or a panic.
    let r = vmdk(&to_raw(&p).iter().map(|x| x.as_str()).collect::<Vec<_>>());
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    let p = copy("l2eof.qcow2");
    patch(&p, l1, &(1u64 << 40).to_be_bytes());
    run(&p, "L2 table");
    // A refcount table entry that points back at the refcount table itself (a loop):
    // readers never follow refcounts, so the data still reads as qemu reads it.
    let p = copy("refloop.qcow2");
    let rt = be64(&good, 48);
    patch(&p, rt, &rt.to_be_bytes());
    let want = d.path().join("want.raw");
    qemu_raw(&good, &want);
    let out = d.path().join("refloop.raw");
    vmdk_ok(&["convert", "-O", "raw", &s(&p), &s(&out)]);
    assert!(std::fs::read(&want).unwrap() == std::fs::read(&out).unwrap());
    // External data files and unknown incompatible features.
    let p = copy("datafile.qcow2");
    patch(&p, 72, &4u64.to_be_bytes());
    run(&p, "external data file");
    let p = copy("unknown.qcow2");
    patch(&p, 72, &(1u64 << 40).to_be_bytes());
    run(&p, "incompatible feature");
}

#[test]
fn backing_files_pass_the_path_gate() {
    let d = tempdir();
    let outside = d.path().join("outside");
    let inside = d.path().join("inside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&inside).unwrap();
    let base = qcreate(&outside, "base.qcow2", "", None);
    fill(&base);
    let top = qcreate(
        &inside,
        "top.qcow2",
        "",
        Some(("../outside/base.qcow2", "qcow2")),
    );
    let out = s(&d.path().join("o.raw"));
    refused(&["convert", "-O", "raw", &s(&top), &out], "outside");
    refused(&["info", "--backing-chain", &s(&top)], "outside");
    // Allowed explicitly, it reads as qemu reads it.
    vmdk_ok(&[
        "convert",
        "--allow-path",
        &s(&outside),
        "-O",
        "raw",
        &s(&top),
        &out,
    ]);
    let want = d.path().join("want.raw");
    qemu_raw(&top, &want);
    assert!(std::fs::read(&want).unwrap() == std::fs::read(&out).unwrap());
}
