//! qcow2 as a convert target, with qemu-img as the oracle: every VMDK subformat qemu-img
//! makes is converted with every option combination, and each result must pass
//! `qemu-img check` without errors or leaks, read as its source (`qemu-img compare`) and
//! show the asked-for shape in `qemu-img info`; `-B` outputs over a VMDK and a qcow2
//! backing file hold only what differs from the backing file.

use std::path::{Path, PathBuf};
use vmdk_test_support::qemu::qemu_to_vmdk;
use vmdk_test_support::qemu::SUBFORMATS;

use crate::common::*;
use serde_json::Value;

/// Not a multiple of any cluster size above 512: the last cluster is partial.
const SIZE: u64 = (9 << 20) + 3 * 512;

/// A raw disk with structure: patterned data, a zero run inside data, holes, data in the
/// partial last cluster.
fn patterned_raw(dir: &Path) -> PathBuf {
    let p = dir.join("src.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(SIZE).unwrap();
    let w = |at: u64, data: &[u8]| {
        use std::os::unix::fs::FileExt;
        f.write_all_at(data, at).unwrap();
    };
    let pattern: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    w(0, &pattern);
    w(200_000, &vec![0u8; 150_000]);
    w(3 << 20, &vec![0x5a; 64 << 10]);
    w((5 << 20) + 4097, b"odd place");
    w(SIZE - 1000, &vec![0x77; 1000]);
    p
}

/// The VMDK subformats qemu-img writes, each made from the patterned raw disk.
fn vmdk_sources(dir: &Path, raw: &Path) -> Vec<(String, PathBuf)> {
    SUBFORMATS
        .iter()
        .map(|sub| {
            let p = dir.join(format!("{sub}.vmdk"));
            qemu_to_vmdk(raw, &p, "", &format!("subformat={sub}"));
            (sub.to_string(), p)
        })
        .collect()
}

fn info(p: &Path) -> Value {
    let r = tool("qemu-img", &["info", "--output=json", &s(p)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()
}

/// `qemu-img check` finds nothing wrong (no errors, no leaks).
fn assert_checks(p: &Path, what: &str) {
    let r = tool("qemu-img", &["check", "--output=json", &s(p)]);
    assert_eq!(
        r.code, 0,
        "{what}: qemu-img check:\n{}{}",
        r.stdout, r.stderr
    );
    let j = r.json();
    for k in ["corruptions", "leaks", "check-errors"] {
        assert!(j.get(k).is_none_or(|v| v == 0), "{what}: {k} in {j}");
    }
}

fn assert_same(a: &Path, b: &Path, what: &str) {
    let r = tool("qemu-img", &["compare", &s(a), &s(b)]);
    assert_eq!(
        r.code, 0,
        "{what}: qemu-img compare: {}{}",
        r.stdout, r.stderr
    );
}

/// `qemu-img map --output=json` entries of the image's own layer (depth 0).
fn own_map(p: &Path) -> Vec<Value> {
    let r = tool("qemu-img", &["map", "--output=json", &s(p)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["depth"] == 0)
        .cloned()
        .collect()
}

fn bytes_where(map: &[Value], f: impl Fn(&Value) -> bool) -> u64 {
    map.iter()
        .filter(|e| f(e))
        .map(|e| e["length"].as_u64().unwrap())
        .sum()
}

/// Bytes of the clusters of `raw` (of `cluster` bytes) that hold a non-zero byte.
fn nonzero_cluster_bytes(raw: &Path, cluster: u64) -> u64 {
    let b = std::fs::read(raw).unwrap();
    b.chunks(cluster as usize)
        .filter(|c| c.iter().any(|&x| x != 0))
        .map(|c| c.len() as u64)
        .sum()
}

/// (our extra args, expected cluster size, compat, lazy refcounts)
fn combos() -> Vec<(Vec<&'static str>, u64, &'static str, bool)> {
    vec![
        (vec![], 65536, "1.1", false),
        (vec!["-o", "cluster_size=512"], 512, "1.1", false),
        (vec!["-o", "cluster_size=2M"], 2 << 20, "1.1", false),
        (vec!["-o", "compat=0.10"], 65536, "0.10", false),
        (
            vec!["-o", "compat=1.1,lazy_refcounts=on"],
            65536,
            "1.1",
            true,
        ),
        (vec!["-o", "preallocation=metadata"], 65536, "1.1", false),
        (
            vec!["-o", "preallocation=metadata,cluster_size=512,compat=0.10"],
            512,
            "0.10",
            false,
        ),
        (vec!["-c"], 65536, "1.1", false),
        (
            vec!["-c", "-o", "cluster_size=512,compat=0.10"],
            512,
            "0.10",
            false,
        ),
        (
            vec!["-c", "-o", "cluster_size=2M,lazy_refcounts=on"],
            2 << 20,
            "1.1",
            true,
        ),
        (vec!["-S", "0"], 65536, "1.1", false),
    ]
}

#[test]
fn every_vmdk_subformat_to_qcow2_with_every_option() {
    let d = tempdir();
    let raw = patterned_raw(d.path());
    let out = d.path().join("out.qcow2");
    for (sub, src) in vmdk_sources(d.path(), &raw) {
        for (args, cluster, compat, lazy) in combos() {
            let what = format!("{sub} {args:?}");
            let _ = std::fs::remove_file(&out);
            let mut a = vec!["convert".to_string(), "-O".into(), "qcow2".into()];
            a.extend(args.iter().map(|x| x.to_string()));
            a.extend([s(&src), s(&out)]);
            let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
            vmdk(&a).expect(0, &what);
            assert_checks(&out, &what);
            assert_same(&src, &out, &what);
            let i = info(&out);
            assert_eq!(i["format"], "qcow2", "{what}");
            assert_eq!(i["virtual-size"], SIZE, "{what}");
            assert_eq!(i["cluster-size"], cluster, "{what}");
            let fs = &i["format-specific"]["data"];
            assert_eq!(fs["compat"], compat, "{what}");
            if compat == "1.1" {
                assert_eq!(fs["lazy-refcounts"], lazy, "{what}");
            }
            let map = own_map(&out);
            let data = bytes_where(&map, |e| e["data"] == true);
            if args.iter().any(|a| a.starts_with("preallocation=metadata")) || args == ["-S", "0"] {
                // Every cluster mapped.
                assert_eq!(data, SIZE, "{what}: {map:?}");
            } else {
                // Exactly the clusters holding non-zero bytes are allocated.
                assert_eq!(
                    data,
                    nonzero_cluster_bytes(&raw, cluster),
                    "{what}: {map:?}"
                );
            }
            if args.contains(&"-c") {
                assert!(
                    map.iter().any(|e| e["compressed"] == true),
                    "{what}: nothing compressed: {map:?}"
                );
                // The patterned data compresses: the file is smaller than the data.
                let len = std::fs::metadata(&out).unwrap().len();
                assert!(len < 800_000 + 6 * cluster, "{what}: {len} bytes");
            }
        }
    }
}

#[test]
fn qcow2_and_raw_sources_to_qcow2() {
    let d = tempdir();
    let raw = patterned_raw(d.path());
    let q = d.path().join("q.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", &s(&raw), &s(&q)]);
    for (src, args) in [(&raw, vec![]), (&q, vec![]), (&q, vec!["-c"])] {
        let out = d.path().join("o.qcow2");
        let _ = std::fs::remove_file(&out);
        let mut a = vec!["convert", "-O", "qcow2"];
        a.extend(args.iter());
        let (ss, os) = (s(src), s(&out));
        a.extend([ss.as_str(), os.as_str()]);
        vmdk(&a).expect(0, &format!("{a:?}"));
        assert_checks(&out, &ss);
        assert_same(src, &out, &ss);
    }
}

/// A changed copy of `raw`: new data, zeros over data, data where the base has a hole.
fn changed_copy(dir: &Path, raw: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = dir.join("changed.raw");
    std::fs::copy(raw, &p).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(&vec![0u8; 300_000], 350_000).unwrap(); // zeros over data
    f.write_all_at(&vec![0xab; 70_000], 3 << 20).unwrap(); // new data over data
    f.write_all_at(b"new", 7 << 20).unwrap(); // data over a hole
    p
}

#[test]
fn backing_file_outputs_hold_only_the_differences() {
    let d = tempdir();
    let raw = patterned_raw(d.path());
    let changed = changed_copy(d.path(), &raw);
    let bvmdk = d.path().join("base.vmdk");
    qemu_to_vmdk(&raw, &bvmdk, "", "");
    let bq = d.path().join("base.qcow2");
    qemu_img(&["convert", "-O", "qcow2", &s(&raw), &s(&bq)]);
    // The source is a VMDK overlay of the base (its own layer holds the changes) and a
    // flat copy of the changed disk: either way only the differences are stored.
    let sources = [changed.clone(), {
        let p = d.path().join("changed.vmdk");
        qemu_to_vmdk(&changed, &p, "", "");
        p
    }];
    let out = d.path().join("out.qcow2");
    for (base, fmt) in [(&bvmdk, "vmdk"), (&bq, "qcow2")] {
        let name = base.file_name().unwrap().to_str().unwrap();
        for src in &sources {
            for (args, compat) in [
                (vec![], "1.1"),
                (vec!["-F", fmt], "1.1"),
                (vec!["-o", "compat=0.10"], "0.10"),
                (vec!["-c"], "1.1"),
                (vec!["-o", "cluster_size=512"], "1.1"),
                (vec!["-o", "cluster_size=2M", "-F", fmt], "1.1"),
            ] {
                let what = format!("{name} {} {args:?}", src.display());
                let _ = std::fs::remove_file(&out);
                // The backing name is written as given: relative to the output's directory.
                let (ss, os) = (s(src), s(&out));
                let mut a = vec!["convert", "-O", "qcow2", "-B", name];
                a.extend(args.iter());
                a.extend([ss.as_str(), os.as_str()]);
                vmdk(&a).expect(0, &what);
                assert_checks(&out, &what);
                assert_same(src, &out, &what);
                let i = info(&out);
                assert_eq!(i["backing-filename"], name, "{what}");
                assert_eq!(i["backing-filename-format"], fmt, "{what}");
                assert_eq!(i["format-specific"]["data"]["compat"], compat, "{what}");
                let map = own_map(&out);
                let own = bytes_where(&map, |e| e["data"] == true);
                let zero = bytes_where(&map, |e| e["data"] == false && e["zero"] == true);
                let cs = i["cluster-size"].as_u64().unwrap();
                // The 70 000 new bytes and the 3 at 7 MiB, in whole clusters, plus (v2) the
                // zeros; never the unchanged data.
                let new_data = 70_000u64.next_multiple_of(cs) + 2 * cs;
                if compat == "1.1" {
                    assert!(own <= new_data, "{what}: {own} bytes of own data: {map:?}");
                    assert!(zero >= 300_000 - 2 * cs.min(300_000 / 2), "{what}: {map:?}");
                } else {
                    assert_eq!(zero, 0, "{what}");
                    assert!(own <= new_data + 300_000 + 2 * cs, "{what}: {own}");
                }
            }
        }
    }
    // An absolute backing name is kept absolute.
    let _ = std::fs::remove_file(&out);
    vmdk_ok(&[
        "convert",
        "-O",
        "qcow2",
        "-B",
        &s(&bq),
        &s(&changed),
        &s(&out),
    ]);
    assert_eq!(info(&out)["backing-filename"], s(&bq));
    assert_same(&changed, &out, "absolute backing name");
    assert_checks(&out, "absolute backing name");
}

#[test]
fn refused_combinations_say_why() {
    let d = tempdir();
    let raw = patterned_raw(d.path());
    let out = d.path().join("o.qcow2");
    let (r, o) = (s(&raw), s(&out));
    for (args, msg) in [
        (vec!["-o", "cluster_size=1000"], "power of two"),
        (vec!["-o", "cluster_size=4M"], "power of two"),
        (
            vec!["-o", "compat=0.10,lazy_refcounts=on"],
            "Lazy refcounts",
        ),
        (vec!["-o", "compat=2"], "compat"),
        (vec!["-o", "preallocation=full"], "preallocation"),
        (vec!["-o", "bogus=1"], "Invalid parameter 'bogus'"),
        (vec!["-c", "-o", "preallocation=metadata"], "preallocation"),
        (vec!["-B", "missing.qcow2"], "could not open backing file"),
        (vec!["-F", "qcow2"], "backing file"),
        (vec!["-n"], "-n"),
    ] {
        let mut a = vec!["convert", "-O", "qcow2"];
        a.extend(args.iter());
        a.extend([r.as_str(), o.as_str()]);
        let run = vmdk(&a);
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        assert_contains!(run.stderr, msg, "{args:?}");
    }
    // The source is never overwritten by its own output.
    let q = d.path().join("q.qcow2");
    vmdk_ok(&["convert", "-O", "qcow2", &r, &s(&q)]);
    let run = vmdk(&["convert", "-O", "qcow2", &s(&q), &s(&q)]);
    assert_eq!(run.code, 1);
    assert_contains!(run.stderr, "refusing to overwrite");
    assert_same(&raw, &q, "source kept");
}
