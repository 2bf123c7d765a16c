//! Image lifecycle commands against qemu as the oracle: `commit` (compared with qemu-img
//! commit on a copy of the same chain), `rebase` (qemu-img cannot rebase VMDK at all, safe
//! or `-u`: the guest-visible content must stay byte-identical and qemu must accept the
//! result), and `amend` (qemu-img refuses; only the amended descriptor lines may change).

use std::path::{Path, PathBuf};

use crate::common::*;

fn raw_of(img: &Path) -> Vec<u8> {
    let out = img.with_extension("content.raw");
    qemu_img(&["convert", "-U", "-O", "raw", &s(img), &s(&out)]);
    let d = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    d
}

/// base <- mid <- top, each layer written by qemu-io (data, zeros, unaligned pieces).
fn chain(dir: &Path, prefix: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = qemu_create(dir, &format!("{prefix}base.vmdk"), "32M", &[]);
    qemu_io(&base, &["write -P 0x11 0 8M", "write -P 0x12 20M 3M"]);
    let mid = qemu_child(dir, &format!("{prefix}mid.vmdk"), &base, None);
    qemu_io(
        &mid,
        &[
            "write -P 0x21 1M 100k",
            "write -z 21M 64k",
            "write -P 0x22 30M 2M",
        ],
    );
    let top = qemu_child(dir, &format!("{prefix}top.vmdk"), &mid, None);
    qemu_io(
        &top,
        &[
            "write -P 0x31 3000 5000",
            "write -z 0 64k",
            "write -P 0x32 7M 2M",
        ],
    );
    (base, mid, top)
}

#[test]
fn commit_matches_qemu_and_empties_the_overlay() {
    let dir = tempdir();
    let d = dir.path();
    let (_, mid, top) = chain(d, "a-");
    let (_, qmid, qtop) = chain(d, "q-");
    let want = raw_of(&top);
    let before = std::fs::metadata(&top).unwrap().len();
    assert_eq!(vmdk_ok(&["commit", &s(&top)]), "Image committed.\n");
    assert_eq!(qemu_img(&["commit", &s(&qtop)]), "Image committed.\n");
    // The base took the data, as qemu's did; the overlay still reads the same.
    assert!(
        raw_of(&mid) == raw_of(&qmid),
        "committed base differs from qemu's"
    );
    assert!(raw_of(&mid)[..want.len()] == want[..]);
    assert!(raw_of(&top) == want);
    for f in [&top, &mid] {
        qemu_img(&["check", &s(f)]);
        vmdk_ok(&["check", &s(f)]);
    }
    // Emptied: no grain of its own left, and the file shrank (qemu leaves it full).
    let m = vmdk(&["map", "--output=json", &s(&top)]).json();
    assert!(
        m.as_array()
            .unwrap()
            .iter()
            .all(|e| e["depth"].as_u64() != Some(0) || !e["data"].as_bool().unwrap()),
        "{m}"
    );
    assert!(std::fs::metadata(&top).unwrap().len() < before);
    assert_eq!(
        std::fs::metadata(&qtop).unwrap().len(),
        before,
        "control: qemu-img commit leaves a VMDK overlay full"
    );
}

#[test]
fn commit_keep_and_deeper_base() {
    let dir = tempdir();
    let d = dir.path();
    let (base, mid, top) = chain(d, "k-");
    let want = raw_of(&top);
    let size = std::fs::metadata(&top).unwrap().len();
    vmdk_ok(&["commit", "-d", &s(&top)]);
    assert_eq!(
        std::fs::metadata(&top).unwrap().len(),
        size,
        "-d keeps the overlay"
    );
    assert!(raw_of(&top) == want);
    qemu_img(&["check", &s(&top)]);
    // -b: into the bottom of the chain; the base then reads as the whole chain did.
    let (base2, _mid2, top2) = chain(d, "b-");
    let want2 = raw_of(&top2);
    vmdk_ok(&["commit", "-b", &s(&base2), &s(&top2)]);
    assert!(raw_of(&base2) == want2);
    qemu_img(&["check", &s(&base2)]);
    // Not in the chain: refused, nothing written.
    let other = qemu_create(d, "other.vmdk", "32M", &[]);
    let r = vmdk(&["commit", "-b", &s(&other), &s(&top)]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "not in the backing chain");
    let _ = (base, mid);
}

#[test]
fn rebase_keeps_the_guest_view() {
    let dir = tempdir();
    let d = dir.path();
    let (base, mid, top) = chain(d, "r-");
    qemu_written(d, "other.vmdk", "32M", &["write -P 0x41 0 16M"]);
    let small = qemu_written(d, "small.vmdk", "8M", &["write -P 0x51 0 8M"]);
    let want = raw_of(&top);
    // qemu-img cannot do any of this for VMDK.
    assert_ne!(
        tool(
            "qemu-img",
            &["rebase", "-b", "other.vmdk", "-F", "vmdk", &s(&top)]
        )
        .code,
        0
    );
    for new in ["other.vmdk", "small.vmdk", "r-base.vmdk", "r-mid.vmdk"] {
        vmdk_ok(&["rebase", "-b", new, "-F", "vmdk", &s(&top)]);
        let info = qemu_img(&["info", &s(&top)]);
        assert!(info.contains(&format!("backing file: {new}")), "{info}");
        assert!(raw_of(&top) == want, "content changed rebasing onto {new}");
        qemu_img(&["check", &s(&top)]);
    }
    // Flatten: standalone, same content.
    vmdk_ok(&["rebase", "-b", "", &s(&top)]);
    assert!(!qemu_img(&["info", &s(&top)]).contains("backing file"));
    assert!(raw_of(&top) == want);
    qemu_img(&["check", &s(&top)]);
    let _ = (base, mid, small);
}

#[test]
fn rebase_unsafe_only_rewrites_the_reference() {
    let dir = tempdir();
    let d = dir.path();
    let base = qemu_written(d, "base.vmdk", "8M", &["write -P 0x61 0 1M"]);
    let top = qemu_child(d, "top.vmdk", &base, None);
    std::fs::copy(&base, d.join("copy.vmdk")).unwrap();
    let grains_before = vmdk_ok(&["map", "--output=json", &s(&top)]);
    vmdk_ok(&["rebase", "-u", "-b", "copy.vmdk", &s(&top)]);
    let info = qemu_img(&["info", &s(&top)]);
    assert!(info.contains("backing file: copy.vmdk"), "{info}");
    // parentCID follows the new parent, so we open it without --ignore-cid-mismatch.
    vmdk_ok(&["io", "-c", "read -P 0x61 0 1M", &s(&top)]);
    let after = vmdk_ok(&["map", "--output=json", &s(&top)]);
    assert_eq!(grains_before.replace("base.vmdk", "copy.vmdk"), after);
    qemu_img(&["check", &s(&top)]);
    // A name that does not exist yet is accepted with -u (fixing references is its job).
    vmdk_ok(&["rebase", "-u", "-b", "later.vmdk", &s(&top)]);
    assert!(qemu_img(&["info", &s(&top)]).contains("backing file: later.vmdk"));
}

#[test]
fn amend_changes_only_the_named_lines() {
    let dir = tempdir();
    let d = dir.path();
    for sub in ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse"] {
        let img = qemu_create_sub(d, &format!("{sub}.vmdk"), "20M", sub);
        qemu_io(&img, &["write -P 0x71 0 1M"]);
        let want = raw_of(&img);
        let desc = |p: &Path| {
            let b = std::fs::read(p).unwrap();
            let t = String::from_utf8_lossy(&b[..b.len().min(20 * 512 + 512)]).into_owned();
            t.lines()
                .filter(|l| l.contains('=') && !l.contains('\0'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let before = desc(&img);
        assert_ne!(
            tool(
                "qemu-img",
                &["amend", "-o", "adapter_type=lsilogic", &s(&img)]
            )
            .code,
            0
        );
        vmdk_ok(&[
            "amend",
            "-o",
            "adapter_type=lsilogic,toolsversion=12345",
            &s(&img),
        ]);
        let after = desc(&img);
        let changed: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        let mut keys: Vec<&str> = changed
            .iter()
            .map(|l| l.split('=').next().unwrap().trim())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ddb.adapterType",
                "ddb.geometry.cylinders",
                "ddb.geometry.heads",
                "ddb.toolsVersion"
            ],
            "{sub}: {changed:?}"
        );
        assert!(after.iter().any(|l| l == "ddb.adapterType = \"lsilogic\""));
        assert!(after.iter().any(|l| l == "ddb.geometry.heads = \"255\""));
        assert_eq!(before.len(), after.len());
        vmdk_ok(&["amend", "-o", "compat6=on", &s(&img)]);
        assert!(desc(&img)
            .iter()
            .any(|l| l == "ddb.virtualHWVersion = \"6\""));
        assert!(raw_of(&img) == want);
        qemu_img(&["check", &s(&img)]);
        let r = vmdk(&["amend", "-o", "subformat=monolithicFlat", &s(&img)]);
        assert_ne!(r.code, 0);
    }
}

#[test]
fn resize_grows_every_writable_subformat() {
    let dir = tempdir();
    let d = dir.path();
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let img = qemu_create_sub(d, &format!("{sub}.vmdk"), "100M", sub);
        qemu_io(&img, &["write -P 7 0 1M", "write -P 8 99M 1M"]);
        let i = s(&img);
        // qemu-img cannot resize a VMDK at all.
        assert_ne!(tool("qemu-img", &["resize", &i, "5G"]).code, 0);
        assert_eq!(vmdk_ok(&["resize", &i, "5G"]), "Image resized.\n");
        let info: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &i])).unwrap();
        assert_eq!(info["virtual-size"], 5u64 << 30, "{sub}");
        qemu_img(&["check", &i]);
        vmdk_ok(&["check", &i]);
        // Old data intact; the new space reads as zeros and takes writes, from qemu too.
        qemu_io(
            &img,
            &[
                "read -P 7 0 1M",
                "read -P 8 99M 1M",
                "read -P 0 100M 1M",
                "write -P 9 4G 1M",
                "read -P 9 4G 1M",
            ],
        );
        qemu_img(&["check", &i]);
        vmdk_ok(&["io", "-c", "read -P 9 4G 1M", "-c", "read -P 0 3G 64k", &i]);
        // Relative sizes.
        vmdk_ok(&["resize", "-q", &i, "+1G"]);
        assert!(qemu_img(&["info", &i]).contains("virtual size: 6 GiB"));
        qemu_img(&["check", &i]);
    }
    // A directory with no room left moves to the end of the file.
    let big = qemu_written(d, "big.vmdk", "64M", &["write -P 5 0 64k"]);
    vmdk_ok(&["resize", &s(&big), "300G"]);
    qemu_img(&["check", &s(&big)]);
    qemu_io(
        &big,
        &[
            "read -P 5 0 64k",
            "write -P 6 299G 64k",
            "read -P 6 299G 64k",
        ],
    );
    qemu_img(&["check", &s(&big)]);
}

#[test]
fn resize_shrinks_only_when_asked_and_only_zeros_past_the_end() {
    let dir = tempdir();
    let d = dir.path();
    let flat = qemu_create_sub(d, "f.vmdk", "5G", "twoGbMaxExtentFlat");
    qemu_io(&flat, &["write -P 3 0 1M", "write -P 4 4G 1M"]);
    let f = s(&flat);
    let r = vmdk(&["resize", &f, "100M"]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "--shrink");
    vmdk_ok(&["resize", "--shrink", &f, "100M"]);
    assert!(qemu_img(&["info", &f]).contains("virtual size: 100 MiB"));
    assert!(!d.join("f-f003.vmdk").exists() && !d.join("f-f002.vmdk").exists());
    assert_eq!(
        std::fs::metadata(d.join("f-f001.vmdk")).unwrap().len(),
        100 << 20
    );
    qemu_io(&flat, &["read -P 3 0 1M"]);
    qemu_img(&["check", &f]);
    // Sparse extents shrink when nothing but zeros lies past the new end: allocated data
    // there refuses the shrink (naming its offset) before anything changes; grains of
    // zeros are dropped. qemu-img refuses to resize VMDK at all.
    let sparse = qemu_create(d, "s.vmdk", "100M", &[]);
    qemu_io(
        &sparse,
        &["write -P 5 0 1M", "write -P 6 60M 4k", "write -P 0 80M 64k"],
    );
    let before = raw_of(&sparse);
    let r = vmdk(&["resize", "--shrink", &s(&sparse), "10M"]);
    assert_ne!(r.code, 0);
    assert_contains!(r.stderr, "offset 62914560");
    assert_eq!(
        raw_of(&sparse),
        before,
        "a refused shrink changed the image"
    );
    vmdk_ok(&["resize", "--shrink", &s(&sparse), "61M"]);
    assert!(qemu_img(&["info", &s(&sparse)]).contains("virtual size: 61 MiB"));
    qemu_img(&["check", &s(&sparse)]);
    vmdk_ok(&["check", &s(&sparse)]);
    assert!(
        raw_of(&sparse) == before[..61 << 20],
        "content changed by the shrink"
    );
    // twoGbMaxExtentSparse: whole extents past the new end go when they hold only zeros.
    let split = qemu_create_sub(d, "t.vmdk", "5G", "twoGbMaxExtentSparse");
    qemu_io(&split, &["write -P 7 0 1M", "write -P 0 4500M 64k"]);
    vmdk_ok(&["resize", "--shrink", &s(&split), "3G"]);
    assert!(qemu_img(&["info", &s(&split)]).contains("virtual size: 3 GiB"));
    assert!(!d.join("t-s003.vmdk").exists());
    qemu_img(&["check", &s(&split)]);
    vmdk_ok(&["check", &s(&split)]);
    qemu_io(&split, &["read -P 7 0 1M", "read -P 0 1M 1M"]);
    let stream = qemu_create_sub(d, "st.vmdk", "100M", "streamOptimized");
    assert_ne!(vmdk(&["resize", &s(&stream), "1G"]).code, 0);
    // qemu-io's truncate, through vmdk io.
    vmdk_ok(&[
        "io",
        "-c",
        "truncate 200M",
        "-c",
        "write -P 1 150M 64k",
        &s(&sparse),
    ]);
    qemu_io(&sparse, &["read -P 1 150M 64k"]);
    qemu_img(&["check", &s(&sparse)]);
}
