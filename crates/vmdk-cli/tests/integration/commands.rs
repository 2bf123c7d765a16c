//! `vmdk create`, `convert`, `compare` and `io`, with qemu-img / qemu-io as the oracle.

use std::path::Path;
use vmdk_test_support::qemu::SUBFORMATS_AND_VMFS;

use crate::common::vmdk_io as io;
use crate::common::*;

#[test]
fn create_every_subformat() {
    let d = tempdir();
    for sub in SUBFORMATS_AND_VMFS {
        let p = d.path().join(format!("{sub}.vmdk"));
        let out = vmdk_ok(&["create", "-o", &format!("subformat={sub}"), &s(&p), "3M"]);
        assert_eq!(
            out,
            format!(
                "Formatting '{}', fmt=vmdk size=3145728 compat6=off hwversion=undefined subformat={sub}\n",
                s(&p)
            )
        );
        let v: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &s(&p)])).unwrap();
        assert_eq!(v["virtual-size"], 3145728, "{sub}");
        assert_eq!(v["format-specific"]["data"]["create-type"], sub);
        assert_eq!(tool("qemu-img", &["check", &s(&p)]).code, 0, "{sub}");
    }
}

#[test]
fn create_options_like_qemu() {
    let d = tempdir();
    let p = d.path().join("x.vmdk");
    let q = d.path().join("q.vmdk");
    let opts = "subformat=streamOptimized,adapter_type=lsilogic,zeroed_grain=on,hwversion=6,toolsversion=5";
    let ours = vmdk_ok(&["create", "-o", opts, &s(&p), "1M"]);
    let theirs = qemu_img(&["create", "-f", "vmdk", "-o", opts, &s(&q), "1M"]);
    assert_eq!(ours.replace(&s(&p), "F"), theirs.replace(&s(&q), "F"));
    // Sizes with suffixes, rounded up to whole sectors.
    vmdk_ok(&["create", "-q", &s(&p), "1.5k"]);
    assert_eq!(
        vmdk(&["info", "--output=json", &s(&p)]).json()["virtual-size"],
        1536
    );
    vmdk_ok(&["create", "-q", &s(&p), "1000"]);
    assert_eq!(
        vmdk(&["info", "--output=json", &s(&p)]).json()["virtual-size"],
        1024
    );
    // Bad options.
    for (args, msg) in [
        (
            vec!["create", "-o", "bogus=1", "y.vmdk", "1M"],
            "Invalid parameter 'bogus'",
        ),
        (
            vec!["create", "-o", "subformat=foo", "y.vmdk", "1M"],
            "subformat",
        ),
        (
            vec!["create", "-o", "zeroed_grain=maybe", "y.vmdk", "1M"],
            "zeroed_grain",
        ),
        (
            vec!["create", "y.vmdk", "12abc"],
            "Invalid image size specified: '12abc'.",
        ),
        (
            vec!["create", "y.vmdk"],
            "Image creation needs a size parameter",
        ),
        (
            vec!["create", "-b", "a.vmdk", "-F", "qcow2", "y.vmdk", "1M"],
            "backing format",
        ),
    ] {
        let r = vmdk(&args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.stderr.starts_with("vmdk: "), "{args:?}: {}", r.stderr);
        assert_contains!(r.stderr, msg, "{args:?}");
    }
    assert!(!d.path().join("y.vmdk").exists());
}

#[test]
fn create_with_backing_takes_its_size() {
    let d = tempdir();
    qemu_written(d.path(), "base.vmdk", "6M", &["write -P 3 1M 64k"]);
    let top = d.path().join("top.vmdk");
    let out = vmdk_ok(&["create", "-b", "base.vmdk", "-F", "vmdk", &s(&top)]);
    assert_eq!(
        out,
        format!(
            "Formatting '{}', fmt=vmdk size=6291456 backing_file=base.vmdk backing_fmt=vmdk \
             compat6=off hwversion=undefined\n",
            s(&top)
        )
    );
    qemu_io(&top, &["read -P 3 1M 64k"]);
    let v: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", &s(&top)])).unwrap();
    assert_eq!(v["backing-filename"], "base.vmdk");
    assert_eq!(v["virtual-size"], 6291456);
    // -u needs an explicit size.
    let r = vmdk(&[
        "create",
        "-u",
        "-b",
        "base.vmdk",
        &s(&d.path().join("u.vmdk")),
    ]);
    assert_eq!(r.code, 1);
    // Like qemu-img 10, a backing file without its format is refused rather than guessed,
    // after the backing file was opened (so that a missing one is reported as missing);
    // with -u without opening it. Nothing is created.
    for (extra, detected) in [(&[][..], true), (&["-u"][..], false)] {
        let out = d.path().join("nofmt.vmdk");
        let mut args = vec!["create"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-b", "base.vmdk"]);
        let o = s(&out);
        args.extend_from_slice(&[&o, "1M"]);
        let ours = vmdk(&args);
        let mut q = vec!["create", "-f", "vmdk"];
        q.extend_from_slice(&args[1..]);
        let theirs = tool("qemu-img", &q);
        assert_eq!((ours.code, theirs.code), (1, 1), "{args:?}");
        for r in [&ours, &theirs] {
            assert!(
                r.stderr
                    .contains("Backing file specified without backing format"),
                "{}",
                r.stderr
            );
            assert_eq!(r.stderr.contains("Detected format of vmdk."), detected);
        }
        assert!(!out.exists());
    }
}

#[test]
fn convert_to_raw_and_vmdk() {
    let d = tempdir();
    let a = qemu_create(d.path(), "a.vmdk", "8M", &[]);
    qemu_io(&a, &["write -P 1 60k 10k", "write -P 2 3M 1M"]);
    let ours = d.path().join("ours.raw");
    let theirs = d.path().join("theirs.raw");
    vmdk_ok(&["convert", "-O", "raw", &s(&a), &s(&ours)]);
    qemu_img(&["convert", "-O", "raw", &s(&a), &s(&theirs)]);
    assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap());

    // raw (probed) -> streamOptimized, with threads, a level and a progress bar.
    let st = d.path().join("st.vmdk");
    vmdk_ok(&[
        "convert",
        "-p",
        "-m",
        "2",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized,compression_level=9",
        &s(&ours),
        &s(&st),
    ]);
    assert_eq!(
        qemu_img(&["compare", &s(&a), &s(&st)]),
        "Images are identical.\n"
    );
    let sparse = d.path().join("sp.vmdk");
    vmdk_ok(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "vmdk",
        "-o",
        "adapter_type=lsilogic",
        &s(&st),
        &s(&sparse),
    ]);
    assert_eq!(tool("qemu-img", &["compare", &s(&a), &s(&sparse)]).code, 0);
    assert_eq!(
        vmdk(&["info", "--output=json", &s(&sparse)]).json()["format-specific"]["data"]
            ["adapter-type"],
        "lsilogic"
    );

    for args in [
        vec!["convert", "-O", "qcow2", "-o", "bogus=1", "a", "b"],
        vec!["convert", "-O", "raw", "-o", "subformat=x", "a", "b"],
        vec!["convert", "-O", "vmdk", "-o", "bogus=1", "a", "b"],
    ] {
        let r = vmdk(&args);
        assert_eq!(r.code, 1, "{args:?}");
        assert!(r.stderr.starts_with("vmdk: "), "{}", r.stderr);
    }
    let r = vmdk(&[
        "convert",
        "-O",
        "raw",
        &s(&d.path().join("missing")),
        &s(&ours),
    ]);
    assert_eq!(r.code, 1);
}

#[test]
fn compare_like_qemu() {
    let d = tempdir();
    let a = qemu_written(d.path(), "a.vmdk", "4M", &["write -P 1 0 1M"]);
    let b = qemu_written(d.path(), "b.vmdk", "4M", &["write -P 1 0 1M"]);
    let same = |x: &Path, y: &Path, extra: &[&str]| {
        let (xs, ys) = (s(x), s(y));
        let mut args = vec!["compare"];
        args.extend_from_slice(extra);
        args.push(&xs);
        args.push(&ys);
        let ours = vmdk(&args);
        let theirs = tool("qemu-img", &args);
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        assert_eq!(ours.code, theirs.code, "{args:?}");
        ours.code
    };
    assert_eq!(same(&a, &b, &[]), 0);
    qemu_io(&b, &["write -P 2 700005 3"]);
    assert_eq!(same(&a, &b, &[]), 1);

    // Different sizes: the extra part must be zero unless strict.
    let c = qemu_written(d.path(), "c.vmdk", "6M", &["write -P 1 0 1M"]);
    assert_eq!(same(&a, &c, &[]), 0);
    assert_eq!(same(&a, &c, &["-s"]), 1);
    qemu_io(&c, &["write -P 3 5M 512"]);
    assert_eq!(same(&a, &c, &[]), 1);

    // Strict mode also compares allocation.
    let e = qemu_create(d.path(), "e.vmdk", "4M", &[]);
    qemu_io(&e, &["write -P 1 0 1M", "write -P 0 2M 64k"]);
    assert_eq!(same(&a, &e, &[]), 0);
    assert_eq!(same(&a, &e, &["-s"]), 1);

    // raw against vmdk.
    let raw = d.path().join("a.raw");
    qemu_img(&["convert", "-O", "raw", &s(&a), &s(&raw)]);
    assert_eq!(same(&a, &raw, &[]), 0);

    let r = vmdk(&["compare", &s(&a), &s(&d.path().join("missing.vmdk"))]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.starts_with("vmdk: "), "{}", r.stderr);
    let r = vmdk(&["compare", "-q", &s(&a), &s(&b)]);
    assert_eq!((r.code, r.stdout.as_str()), (1, ""));
}

#[test]
fn io_reads_and_writes_like_qemu_io() {
    let d = tempdir();
    let ours = qemu_create(d.path(), "ours.vmdk", "4M", &[]);
    let theirs = qemu_create(d.path(), "theirs.vmdk", "4M", &[]);
    let cmds = [
        "write -P 0xab 60k 10k",
        "write 1M 64k",
        "read -P 0xab 60k 10k",
        "read -v 61435 40",
        "read -P 0xcd -s 4k -l 1k 1020k 8k",
        "map",
        "flush",
    ];
    let o = io(&ours, &cmds).expect(0, "vmdk io");
    let t = qemu_io(&theirs, &cmds);
    assert_eq!(untimed(&o), untimed(&t));
    // The timing lines have qemu-io's shape.
    let timing = o.lines().nth(1).unwrap();
    assert!(
        timing.starts_with("10 KiB, 1 ops; ")
            && timing.contains(" sec (")
            && timing.ends_with(" ops/sec)"),
        "{timing}"
    );
    // Same data on disk as qemu-io wrote.
    assert_eq!(
        tool("qemu-img", &["compare", &s(&ours), &s(&theirs)]).code,
        0
    );
    qemu_io(&ours, &["read -P 0xab 60k 10k", "read -P 0xcd 1M 64k"]);
    // And qemu-io's info lines.
    let o = io(&ours, &["info"]).expect(0, "info");
    let t = qemu_io(&ours, &["info"]);
    let t_lines: Vec<&str> = t.lines().collect();
    for line in &t_lines {
        assert!(o.lines().any(|l| l == *line), "missing {line:?} in\n{o}");
    }
}

#[test]
fn io_failures() {
    let d = tempdir();
    let img = qemu_written(d.path(), "a.vmdk", "1M", &["write -P 1 0 64k"]);
    // Pattern mismatch: reported, later commands still run, exit status 1.
    let r = io(&img, &["read -P 2 0 4k", "read -P 1 0 4k"]);
    assert_eq!(r.code, 1);
    assert!(r
        .stdout
        .starts_with("Pattern verification failed at offset 0, 4096 bytes\n"));
    assert_eq!(
        r.stdout.matches("read 4096/4096 bytes at offset 0").count(),
        2
    );
    let q = tool("qemu-io", &["-f", "vmdk", "-c", "read -P 2 0 4k", &s(&img)]);
    assert_eq!(q.code, 1);
    assert_eq!(
        untimed(&q.stdout),
        untimed(&r.stdout)
            .lines()
            .take(2)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    // Out of range, unknown command, read-only.
    let r = io(&img, &["read 2M 4k"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("read failed: "), "{}", r.stdout);
    let r = io(&img, &["bogus"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("command \"bogus\" not found"));
    let r = vmdk(&["io", "-r", "-c", "write 0 512", &s(&img)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("write failed: "), "{}", r.stdout);
    let r = io(&img, &["read 0"]);
    assert_eq!(r.code, 1);
    let r = io(&img, &["read -P 300 0 512"]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stdout, "300 is not a valid pattern byte");
    // Nothing was written by any of that.
    qemu_io(&img, &["read -P 1 0 64k", "read -P 0 64k 960k"]);
    let r = vmdk(&["io", "-c", "read 0 512", &s(&d.path().join("missing.vmdk"))]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("vmdk: "));
}

#[test]
fn io_discard_and_zero_writes() {
    let d = tempdir();
    let img = qemu_create(d.path(), "z.vmdk", "4M", &["zeroed_grain=on"]);
    let r = io(
        &img,
        &[
            "write -P 1 0 1M",
            "discard 64k 128k",
            "write -z -u 512k 64k",
            "read -P 0 64k 128k",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r
        .stdout
        .contains("discard 131072/131072 bytes at offset 65536\n"));
    qemu_io(
        &img,
        &[
            "read -P 1 0 64k",
            "read -P 0 64k 128k",
            "read -P 0 512k 64k",
            "read -P 1 576k 448k",
        ],
    );
    assert_eq!(tool("qemu-img", &["check", &s(&img)]).code, 0);
    // Stdin holds the commands when there is no -c.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vmdk"))
        .args(["io", &s(&img)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"write -P 7 2M 4k\n\nread -P 7 2M 4k\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("read 4096/4096 bytes at offset 2097152"));
}

/// Bytes a file takes on its host.
fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Both checkers find nothing wrong (ours counts leaked grains, qemu-img does not).
fn both_clean(img: &Path) {
    let ours = vmdk(&["check", &s(img)]);
    assert_eq!(ours.code, 0, "vmdk check: {}{}", ours.stdout, ours.stderr);
    assert!(ours.stdout.starts_with("No errors"), "{}", ours.stdout);
    let theirs = tool("qemu-img", &["check", &s(img)]);
    assert_eq!(theirs.code, 0, "qemu-img check: {}", theirs.stdout);
}

/// Issue 20's scenario: `io -c "discard 0 32M"` on a sparse image gives the 32 MiB back to
/// the host, both checkers stay clean, and a later 32 MiB write elsewhere takes the freed
/// space instead of growing the file; `write -z -u` does the same on a zeroed_grain image;
/// freed space at the end cuts the file; a streamOptimized image says it cannot.
#[test]
fn io_discard_gives_space_back() {
    const MIB: u64 = 1 << 20;
    let d = tempdir();
    for (name, opts, free) in [
        ("sparse.vmdk", &[][..], "discard 0 32M"),
        ("zeroed.vmdk", &["zeroed_grain=on"][..], "write -z -u 0 32M"),
    ] {
        let img = qemu_create(d.path(), name, "128M", opts);
        qemu_io(&img, &["write -P 0x11 0 64M"]);
        let (full, len) = (allocated(&img), std::fs::metadata(&img).unwrap().len());
        let r = io(&img, &[free]);
        assert_eq!(r.code, 0, "{name}: {}{}", r.stdout, r.stderr);
        let freed = allocated(&img);
        assert!(
            freed + 31 * MIB < full,
            "{name}: {free} gave back {} KiB of {} KiB",
            (full - freed) / 1024,
            full / 1024
        );
        both_clean(&img);
        let r = io(&img, &["write -P 0x22 96M 32M"]);
        assert_eq!(r.code, 0, "{name}: {}{}", r.stdout, r.stderr);
        assert_eq!(
            std::fs::metadata(&img).unwrap().len(),
            len,
            "{name}: the write grew the file instead of taking the freed space"
        );
        assert!(
            allocated(&img) < full + MIB,
            "{name}: {} KiB",
            allocated(&img) / 1024
        );
        both_clean(&img);
        qemu_io(
            &img,
            &[
                "read -P 0 0 32M",
                "read -P 0x11 32M 32M",
                "read -P 0 64M 32M",
                "read -P 0x22 96M 32M",
            ],
        );
    }
    // Space freed at the end of the file cuts it.
    let img = qemu_written(d.path(), "tail.vmdk", "128M", &["write -P 0x11 0 64M"]);
    let len = std::fs::metadata(&img).unwrap().len();
    assert_eq!(io(&img, &["discard 32M 32M"]).code, 0);
    let cut = std::fs::metadata(&img).unwrap().len();
    assert!(cut + 32 * MIB <= len, "{len} -> {cut}");
    both_clean(&img);
    qemu_io(&img, &["read -P 0x11 0 32M", "read -P 0 32M 96M"]);
    // A streamOptimized image cannot deallocate its compressed grains, and says so.
    let img = qemu_create_sub(d.path(), "stream.vmdk", "128M", "streamOptimized");
    qemu_io(&img, &["write -P 0x11 0 1M"]);
    let r = io(&img, &["discard 0 1M"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    // On stdout, where qemu-io too reports a command that failed.
    assert!(r.stdout.starts_with("discard failed: "), "{}", r.stdout);
    assert_contains!(
        r.stdout,
        "stream.vmdk': cannot deallocate the grains of a compressed \
             (streamOptimized) image: convert it to another subformat first"
    );
    qemu_io(&img, &["read -P 0x11 0 1M"]);
}

#[test]
fn errors_are_prefixed() {
    let r = vmdk(&["info", "/nonexistent/x.vmdk"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.starts_with("vmdk: "), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let d = tempdir();
    let p = d.path().join("not.vmdk");
    std::fs::write(&p, b"hello").unwrap();
    let r = vmdk(&["info", "-f", "vmdk", &s(&p)]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "not a VMDK image");
    // Probed as raw otherwise, like qemu-img.
    let v = vmdk(&["info", "--output=json", &s(&p)]).json();
    assert_eq!(v["format"], "raw");
    assert_eq!(v["virtual-size"], 5);
}

/// The `-p` records printed when stderr is not a terminal (here a pipe), as qemu-img prints
/// them: `    (P/100%)` ended by `\r`, starting at 0.00, rising, ending at 100.00 and a
/// newline. Returns the percentages.
fn progress_records(stderr: &str, what: &str) -> Vec<f64> {
    let body = stderr
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("{what}: progress does not end the line: {stderr:?}"));
    let pcts: Vec<f64> = body
        .split('\r')
        .map(|r| {
            r.strip_prefix("    (")
                .and_then(|r| r.strip_suffix("/100%)"))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: not a progress record: {r:?} in {stderr:?}"))
        })
        .collect();
    assert_eq!(pcts.first(), Some(&0.0), "{what}: {stderr:?}");
    assert_eq!(pcts.last(), Some(&100.0), "{what}: {stderr:?}");
    assert!(pcts.windows(2).all(|w| w[0] < w[1]), "{what}: {pcts:?}");
    // Throttled: at most one record per percent.
    assert!(pcts.len() <= 101, "{what}: {} records", pcts.len());
    pcts
}

#[test]
fn progress_without_a_terminal() {
    let d = tempdir();
    let a = qemu_create(d.path(), "a.vmdk", "256M", &[]);
    qemu_io(&a, &["write -P 1 0 200M", "write -P 2 250M 1M"]);
    let raw = d.path().join("a.raw");
    let r = vmdk(&["convert", "-p", "-O", "raw", &s(&a), &s(&raw)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    let pcts = progress_records(&r.stderr, "convert");
    assert!(pcts.len() > 10, "{pcts:?}");
    // Without -p, or with -q, nothing.
    for flags in [&["-O", "raw"][..], &["-p", "-q", "-O", "raw"]] {
        let mut args = vec!["convert"];
        args.extend_from_slice(flags);
        let (src, dst) = (s(&a), s(&d.path().join("b.raw")));
        args.extend([src.as_str(), dst.as_str()]);
        let r = vmdk(&args);
        assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{flags:?}");
    }

    // compare reaches 100%, the verdict on stdout as without -p.
    let r = vmdk(&["compare", "-p", &s(&a), &s(&raw)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "Images are identical.\n");
    progress_records(&r.stderr, "compare");
    // Also when it stops at the first difference.
    qemu_io(&a, &["write -P 3 1M 512"]);
    let r = vmdk(&["compare", "-p", &s(&a), &s(&raw)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout, "Content mismatch at offset 1048576!\n");
    progress_records(&r.stderr, "compare (different)");
    let r = vmdk(&["compare", "-p", "-q", &s(&a), &s(&raw)]);
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (1, "", ""));
}
