//! `vmdk io` and `vmdk convert` never lose data quietly: a write through a corrupt grain
//! table fails (non-zero exit, a message naming the file) and leaves the file byte-identical;
//! a full file system fails writes and conversions with the OS's message, and leaves the
//! image checking clean (ours and `qemu-img check`). The full file system is a small tmpfs
//! mounted here (the tests run as root; `VMDK_TEST_NO_MOUNT=1` skips those cases).

use std::path::Path;

use crate::common::*;

fn gd_sector(p: &Path) -> u64 {
    read_u64(p, 56)
}

/// Both checkers find nothing wrong.
fn assert_clean(image: &Path) {
    let r = vmdk(&["check", &s(image)]);
    assert_eq!(r.code, 0, "vmdk check: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("No errors were found on the image."));
    let q = tool("qemu-img", &["check", &s(image)]);
    assert_eq!(q.code, 0, "qemu-img check: {}{}", q.stdout, q.stderr);
}

#[test]
fn io_refuses_writes_through_corrupt_tables() {
    let d = tempdir();
    let p = qemu_create(d.path(), "a.vmdk", "64M", &[]);
    qemu_io(&p, &["write -P 1 0 64k", "write -P 2 33M 64k"]);
    let gd = gd_sector(&p);
    let t0 = read_u32(&p, gd * 512);
    let base = std::fs::read(&p).unwrap();
    // Each corruption `check` reports: where to patch what, then commands that go through
    // it and what their refusal says.
    let e0 = t0 as u64 * 512;
    let in_grain0 = [
        ("write -P 9 0 4k", "grain for sector 0"),
        ("write -z 512 1k", "grain for sector 0"),
    ];
    /// What is damaged, where to patch which value, what the refusal says about it, and
    /// commands going through it with the thing each names.
    type Case<'a> = (&'a str, u64, u32, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "entry -> descriptor",
            e0,
            1,
            "embedded descriptor",
            in_grain0.to_vec(),
        ),
        (
            "entry -> directory",
            e0,
            gd as u32,
            "grain directory",
            in_grain0.to_vec(),
        ),
        (
            "entry -> table",
            e0,
            t0,
            "a grain table",
            in_grain0.to_vec(),
        ),
        (
            "entry past EOF",
            e0,
            0x0400_0000,
            "past the end of the file",
            in_grain0.to_vec(),
        ),
        (
            "shared table",
            gd * 512 + 4,
            t0,
            "overlaps a grain table",
            vec![
                ("write -P 9 40M 4k", "grain table 1"),
                ("write -P 9 0 4k", "grain table 0"),
            ],
        ),
        (
            "table -> directory",
            gd * 512 + 4,
            gd as u32,
            "overlaps the grain directory",
            vec![("write -P 9 40M 4k", "grain table 1")],
        ),
    ];
    for (what, at, value, problem, cmds) in cases {
        std::fs::write(&p, &base).unwrap();
        patch(&p, at, &value.to_le_bytes());
        let c = vmdk(&["check", &s(&p)]);
        assert_eq!(c.code, 2, "{what}: check should flag it: {}", c.stdout);
        let before = std::fs::read(&p).unwrap();
        for (cmd, subject) in cmds {
            let r = vmdk(&["io", "-c", cmd, &s(&p)]);
            let out = format!("{}{}", r.stdout, r.stderr);
            assert_eq!(r.code, 1, "{what}: {cmd}: {out}");
            for needle in ["refusing to write", subject, problem, &s(&p)] {
                assert!(
                    out.contains(needle),
                    "{what}: {cmd}: wanted {needle:?}: {out}"
                );
            }
            assert!(
                std::fs::read(&p).unwrap() == before,
                "{what}: {cmd}: the file changed although the write was refused"
            );
        }
    }
}

#[test]
fn io_until_full_leaves_a_clean_image() {
    let Some(fs) = Tmpfs::mount("2m", "io_until_full_leaves_a_clean_image") else {
        return;
    };
    for (name, create) in [("ours.vmdk", true), ("qemu.vmdk", false)] {
        let p = fs.path().join(name);
        if create {
            vmdk_ok(&["create", "-q", "-f", "vmdk", &s(&p), "64M"]);
        } else {
            qemu_img(&["create", "-q", "-f", "vmdk", &s(&p), "64M"]);
        }
        // 3 MiB of writes into a 2 MiB file system.
        let cmds: Vec<String> = (0..48)
            .map(|i| format!("write -P {} {}k 64k", i + 1, i * 64))
            .collect();
        let mut args = vec!["io"];
        for c in &cmds {
            args.extend(["-c", c]);
        }
        let ps = s(&p);
        args.push(&ps);
        let r = vmdk(&args);
        let out = format!("{}{}", r.stdout, r.stderr);
        assert_eq!(r.code, 1, "{name}: {out}");
        assert!(
            out.contains("No space left on device") && out.contains(&ps),
            "{name}: {out}"
        );
        let wrote = out.matches("wrote 65536/65536").count();
        assert!(wrote > 0, "{name}: nothing fitted: {out}");
        assert_clean(&p);
        // What was written before the file system filled up is there.
        for i in [0, wrote - 1] {
            qemu_io(&p, &[&format!("read -P {} {}k 64k", i + 1, i * 64)]);
        }
        std::fs::remove_file(&p).unwrap();
    }
}

#[test]
fn convert_onto_a_full_file_system_fails_clearly() {
    let Some(fs) = Tmpfs::mount("2m", "convert_onto_a_full_file_system_fails_clearly") else {
        return;
    };
    let d = tempdir();
    // 4 MiB of incompressible data (so the compressed stream output fills up too).
    let src = d.path().join("src.raw");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..4 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&src, bytes).unwrap();
    for (name, args) in [
        ("out.vmdk", vec!["-O", "vmdk"]),
        (
            "stream.vmdk",
            vec!["-O", "vmdk", "-o", "subformat=streamOptimized"],
        ),
        (
            "split.vmdk",
            vec!["-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"],
        ),
        ("out.raw", vec!["-O", "raw"]),
    ] {
        let out = fs.path().join(name);
        let mut a = vec!["convert", "-f", "raw"];
        a.extend(args.iter().copied());
        let (srcs, outs) = (s(&src), s(&out));
        a.extend([srcs.as_str(), outs.as_str()]);
        let r = vmdk(&a);
        assert_eq!(r.code, 1, "{name}: {}{}", r.stdout, r.stderr);
        assert_contains!(r.stderr, "No space left on device", "{name}");
        let stem = name.split('.').next().unwrap();
        assert_contains!(r.stderr, stem, "{name}: names no file");
        for e in std::fs::read_dir(fs.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
}
