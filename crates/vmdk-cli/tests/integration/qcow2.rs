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
    let out = qemu_io_as("qcow2", image, cmds);
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
    qemu_written(dir, "vbase.vmdk", SIZE, &["write -P 0xaa 0 2M"]);
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
    assert_contains!(r.stderr, needle, "{args:?}: wanted '{needle}' in:\n");
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
    truncate(&t, 50);
    refused(&["info", &s(&t)], "");
    let t = copy("trunc2.qcow2");
    truncate(&t, 65536);
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

/// Host offset of the L2 entry of cluster `index` in the table the first L1 entry names
/// (`entry_size`: 8, or 16 with extended L2).
fn l2_entry(path: &Path, index: u64, entry_size: u64) -> u64 {
    let l1 = be64(path, 40);
    (be64(path, l1) & 0x00ff_ffff_ffff_fe00) + index * entry_size
}

/// Convert `p` to raw with qemu-img and with us: either both fail, qemu saying `qemu_says`
/// and we `we_say`, naming the file (`None`: both succeed with the same bytes).
fn as_qemu_reads(p: &Path, fail: Option<(&str, &[&str])>) {
    let dir = p.parent().unwrap();
    let stem = p.file_stem().unwrap().to_str().unwrap();
    let (want, ours) = (
        dir.join(format!("{stem}.want")),
        dir.join(format!("{stem}.ours")),
    );
    let q = tool("qemu-img", &["convert", "-O", "raw", &s(p), &s(&want)]);
    let r = vmdk(&["convert", "-O", "raw", &s(p), &s(&ours)]);
    assert!(!r.stderr.contains("panicked"), "{stem}: {}", r.stderr);
    match fail {
        Some((qemu_says, we_say)) => {
            assert_eq!(q.code, 1, "{stem}: qemu-img convert succeeded");
            assert_contains!(q.stderr, qemu_says, "{stem}: qemu said");
            assert_eq!(r.code, 1, "{stem}: we converted what qemu refuses");
            let name = format!("'{}'", s(p));
            for needle in we_say.iter().chain([&name.as_str()]) {
                assert_contains!(r.stderr, needle, "{stem}: no '{needle}' in");
            }
        }
        None => {
            assert_eq!(q.code, 0, "{stem}: qemu-img: {}", q.stderr);
            assert_eq!(r.code, 0, "{stem}: {}", r.stderr);
            assert!(
                std::fs::read(&want).unwrap() == std::fs::read(&ours).unwrap(),
                "{stem}: we read other bytes than qemu"
            );
        }
    }
}

/// A raw deflate stream of stored blocks holding `data` (no compression needed to test what
/// a stream inflates to).
fn stored_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut blocks = data.chunks(65535).peekable();
    while let Some(b) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let n = b.len() as u16;
        out.extend(n.to_le_bytes());
        out.extend((!n).to_le_bytes());
        out.extend(b);
    }
    out
}

/// qemu inflates a compressed cluster into a cluster-sized buffer and fails the read (EIO)
/// unless the buffer comes out full: a stream of 100 bytes in a 64 KiB cluster is corrupt,
/// where we used to pad it with zeros. Once the buffer is full, what follows is ignored: a
/// stream running past the cluster, or cut by its L2 entry's sector count after filling it,
/// reads as qemu reads it (we used to refuse both).
#[test]
fn compressed_clusters_inflate_to_a_whole_cluster_or_fail_as_in_qemu() {
    let d = tempdir();
    let base = qcreate(d.path(), "comp.qcow2", "", None);
    qio(
        &base,
        &["write -c -P 0x11 0 64k", "write -c -P 0x22 64k 64k"],
    );
    // 64 KiB clusters: offset in bits 0..54, extra sectors above.
    let at = l2_entry(&base, 1, 8);
    assert_ne!(be64(&base, at) & 1 << 62, 0, "cluster 1 is not compressed");
    let with_stream = |name: &str, stream: &[u8], stored: u64| {
        let p = d.path().join(name);
        std::fs::copy(&base, &p).unwrap();
        let off = std::fs::metadata(&p).unwrap().len().next_multiple_of(512);
        patch(&p, off, stream);
        let sectors = stored.div_ceil(512);
        let entry = 1u64 << 62 | (sectors - 1) << 54 | off;
        patch(&p, at, &entry.to_be_bytes());
        p
    };
    let short = stored_deflate(&[0x33; 100]);
    let p = with_stream("short.qcow2", &short, short.len() as u64);
    as_qemu_reads(
        &p,
        Some((
            "Input/output error",
            &[
                "compressed cluster at host offset",
                "(guest offset 65536)",
                "inflates to only 100 of the 65536 bytes",
            ],
        )),
    );
    // compare reads it through the same decoder, and fails as qemu-img compare does: a
    // read error (exit 4).
    let r = vmdk(&["compare", &s(&p), &s(&base)]);
    let theirs = tool("qemu-img", &["compare", &s(&p), &s(&base)]);
    assert_eq!(
        (r.code, theirs.code),
        (4, 4),
        "{} / {}",
        r.stderr,
        theirs.stderr
    );
    assert_contains!(r.stderr, "inflates to only 100");
    // 100 bytes more than a cluster.
    let long = stored_deflate(&[0x44; 65636]);
    as_qemu_reads(&with_stream("long.qcow2", &long, long.len() as u64), None);
    // 1000 bytes more, but the entry's sectors end 502 bytes into the second block.
    let cut = stored_deflate(&[0x55; 66535]);
    as_qemu_reads(&with_stream("cut.qcow2", &cut, 65535 + 5 + 5 + 1), None);
}

/// Bit 0 of an L2 entry means "reads as zeros" from version 3 on; in a version 2 image it is
/// reserved, and qemu reports the cluster as corrupt ("Zero cluster entry found in pre-v3
/// image") whether or not the entry also names a host cluster. We read it as zeros.
#[test]
fn a_zero_flag_in_a_version_2_image_is_corruption_as_in_qemu() {
    let d = tempdir();
    let base = qcreate(d.path(), "v2.qcow2", "compat=0.10", None);
    fill(&base);
    // Cluster 1 holds data (written at 0..1M); cluster 40 (2.5 MiB) nothing.
    for (name, cluster, entry) in [
        ("v2-data.qcow2", 1, None),
        ("v2-plain.qcow2", 40, Some(1u64)),
    ] {
        let p = d.path().join(name);
        std::fs::copy(&base, &p).unwrap();
        let at = l2_entry(&p, cluster, 8);
        let e = entry.unwrap_or(be64(&p, at) | 1);
        patch(&p, at, &e.to_be_bytes());
        let guest = format!("(guest offset {})", cluster << 16);
        let we_say = ["zero flag set in a version 2 image", guest.as_str()];
        as_qemu_reads(
            &p,
            Some(("Zero cluster entry found in pre-v3 image", &we_say)),
        );
        // Every walk of the map meets it.
        refused(&["map", "--output=json", &s(&p)], we_say[0]);
        refused(&["measure", "-O", "vmdk", &s(&p)], we_say[0]);
    }
}

/// A change to one table entry.
type Edit = dyn Fn(u64) -> u64;

/// The other checks qemu makes of L1 and L2 entries as it reads (`qcow2_get_host_offset`):
/// each entry it refuses we refuse, naming the file and the guest offset; entries it reads
/// (reserved bits set, data past the end of the file) we read as it does.
#[test]
fn l1_and_l2_entries_are_checked_as_qemu_checks_them() {
    let d = tempdir();
    let base = qcreate(d.path(), "base.qcow2", "", None);
    fill(&base);
    let ext = qcreate(d.path(), "ext.qcow2", "extended_l2=on", None);
    fill(&ext);
    let variant = |from: &Path, name: &str, at: u64, f: &Edit| {
        let p = d.path().join(name);
        std::fs::copy(from, &p).unwrap();
        let v = f(be64(&p, at));
        patch(&p, at, &v.to_be_bytes());
        p
    };
    let l1 = be64(&base, 40);
    let e1 = l2_entry(&base, 1, 8);
    let x1 = l2_entry(&ext, 1, 16);
    let qemu_corrupt = "Image is corrupt";
    let refused_cases: [(&str, &Path, u64, &Edit, &[&str]); 6] = [
        (
            "unaligned-data.qcow2",
            &base,
            e1,
            &|e| e + 512,
            &["is not cluster-aligned", "(guest offset 65536)"],
        ),
        (
            "unaligned-zero.qcow2",
            &base,
            e1,
            &|e| (e + 512) | 1,
            &["is not cluster-aligned", "(guest offset 65536)"],
        ),
        (
            "unaligned-l2.qcow2",
            &base,
            l1,
            &|e| e + 512,
            &["L2 table offset", "of L1 entry 0 (guest offset 0)"],
        ),
        (
            "compressed-at-0.qcow2",
            &base,
            e1,
            &|_| 1 << 62,
            &[
                "compressed cluster at host offset 0",
                "(guest offset 65536)",
            ],
        ),
        (
            "ext-alloc-and-zero.qcow2",
            &ext,
            x1 + 8,
            &|b| b | 1 << 32 | 1,
            &["both allocated and zero", "(guest offset 65536)"],
        ),
        (
            "ext-alloc-no-host.qcow2",
            &ext,
            x1,
            &|_| 0,
            &["without a host cluster", "(guest offset 65536)"],
        ),
    ];
    for (name, from, at, f, we_say) in refused_cases {
        let p = variant(from, name, at, f);
        // qemu reports a corrupt image, except for the stream at offset 0 (the header),
        // which only fails to inflate.
        let qemu_says = if name.starts_with("compressed") {
            "Input/output error"
        } else {
            qemu_corrupt
        };
        as_qemu_reads(&p, Some((qemu_says, we_say)));
    }
    let read_cases: [(&str, u64, &Edit); 3] = [
        // Reserved bits: 1-8 and 56-61 of an L2 entry, 1-8 and 56-62 of an L1 entry.
        ("reserved-l2.qcow2", e1, &|e| e | 1 << 56 | 1 << 5),
        ("reserved-l1.qcow2", l1, &|e| e | 1 << 57 | 2),
        // A data cluster past the end of the file reads as zeros.
        ("past-eof.qcow2", e1, &|_| 1 << 63 | 1 << 40),
    ];
    for (name, at, f) in read_cases {
        as_qemu_reads(&variant(&base, name, at, f), None);
    }
}
