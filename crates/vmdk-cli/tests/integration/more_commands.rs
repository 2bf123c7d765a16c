//! qemu-img commands beyond the everyday ones: `measure`, `snapshot`, `dd` and `bench`,
//! against qemu-img on the same images where qemu-img can answer, and against what our own
//! conversions produce where it cannot (QEMU's VMDK driver does not measure); `io`'s
//! command language against qemu-io; and what the help, `-o help`, the completion scripts
//! and the man pages say, against what the commands take.

use crate::common::*;
use vmdk_test_support::qemu::qemu_overlay;
use vmdk_test_support::qemu::SUBFORMATS;

fn scribbled(dir: &std::path::Path) -> std::path::PathBuf {
    let img = qemu_create(dir, "m.vmdk", "64M", &[]);
    qemu_io(
        &img,
        &[
            "write -P 1 0 1M",
            "write -P 2 10M 100k",
            "write -P 3 40M 4k",
        ],
    );
    img
}

#[test]
fn measure_matches_what_convert_writes() {
    let dir = tempdir();
    let img = scribbled(dir.path());
    let i = s(&img);
    for sub in [
        "monolithicSparse",
        "twoGbMaxExtentSparse",
        "streamOptimized",
        "monolithicFlat",
    ] {
        let o = format!("subformat={sub}");
        let m = vmdk(&["measure", "--output=json", "-O", "vmdk", "-o", &o, &i]).json();
        let required = m["required"].as_u64().unwrap();
        let full = m["fully-allocated"].as_u64().unwrap();
        let out = dir.path().join(format!("out-{sub}.vmdk"));
        vmdk_ok(&["convert", "-O", "vmdk", "-o", &o, &i, &s(&out)]);
        let mut written = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("out-{sub}"))
            {
                written += e.metadata().unwrap().len();
            }
        }
        match sub {
            // The exact layout: header, descriptor, tables, and one grain per touched grain.
            "monolithicSparse" => assert_eq!(required, written, "{sub}"),
            // Descriptor files are counted at one block.
            "twoGbMaxExtentSparse" | "monolithicFlat" => {
                assert!(
                    required >= written && required - written < 512,
                    "{sub}: {required} vs {written}"
                )
            }
            // Compressed sizes are known only after compressing: an upper bound.
            _ => assert!(required >= written, "{sub}: {required} < {written}"),
        }
        assert!(full >= required, "{sub}");
    }
    // An empty image of a given size is its metadata; and raw as qemu-img says.
    let m = vmdk_ok(&["measure", "-O", "vmdk", "--size", "1G"]);
    assert!(
        m.starts_with("required size: 196608\nfully allocated size: 1073938432\n"),
        "{m}"
    );
    assert_eq!(
        vmdk_ok(&["measure", "-O", "raw", &i]),
        qemu_img(&["measure", "-O", "raw", &i])
    );
    assert_eq!(
        vmdk_ok(&["measure", "--output=json", "-O", "raw", "--size", "3G"]),
        qemu_img(&["measure", "--output=json", "-O", "raw", "--size", "3G"])
    );
    // qemu-img cannot measure for VMDK at all.
    assert_ne!(
        tool("qemu-img", &["measure", "-O", "vmdk", "--size", "1G"]).code,
        0
    );
}

#[test]
fn snapshot_list_is_empty_and_the_rest_fails_like_qemu() {
    let dir = tempdir();
    let img = qemu_create(dir.path(), "a.vmdk", "1M", &[]);
    let i = s(&img);
    assert_eq!(
        vmdk_ok(&["snapshot", "-l", &i]),
        qemu_img(&["snapshot", "-l", &i])
    );
    for (flag, msg) in [
        ("-c", "Could not create snapshot"),
        ("-a", "Could not apply snapshot"),
        ("-d", "Could not delete snapshot"),
    ] {
        let ours = vmdk(&["snapshot", flag, "s1", &i]);
        let theirs = tool("qemu-img", &["snapshot", flag, "s1", &i]);
        assert_eq!(ours.code, 1);
        assert_eq!(theirs.code, 1);
        assert!(
            ours.stderr.contains(msg) && theirs.stderr.contains(msg),
            "{}",
            ours.stderr
        );
    }
}

#[test]
fn dd_copies_the_blocks_asked_for() {
    let dir = tempdir();
    let img = scribbled(dir.path());
    let i = s(&img);
    let full = dir.path().join("full.raw");
    qemu_img(&["convert", "-O", "raw", &i, &s(&full)]);
    let all = std::fs::read(&full).unwrap();
    let d = |n: &str| s(&dir.path().join(n));
    // Plain count, as qemu-img dd.
    vmdk_ok(&[
        "dd",
        "bs=1M",
        "count=2",
        &format!("if={i}"),
        &format!("of={}", d("a.raw")),
    ]);
    qemu_img(&[
        "dd",
        "bs=1M",
        "count=2",
        &format!("if={i}"),
        &format!("of={}", d("qa.raw")),
    ]);
    assert!(std::fs::read(d("a.raw")).unwrap() == std::fs::read(d("qa.raw")).unwrap());
    // skip + count: the three blocks asked for (qemu-img 10 sizes this output
    // count*bs - skip*bs and copies one block).
    vmdk_ok(&[
        "dd",
        "bs=64k",
        "skip=2",
        "count=3",
        &format!("if={i}"),
        &format!("of={}", d("b.raw")),
    ]);
    assert!(std::fs::read(d("b.raw")).unwrap() == all[2 * 65536..5 * 65536]);
    // skip alone: the rest of the disk; osize pads with zeros.
    vmdk_ok(&[
        "dd",
        "bs=1M",
        "skip=10",
        "osize=60M",
        &format!("if={i}"),
        &format!("of={}", d("c.raw")),
    ]);
    let c = std::fs::read(d("c.raw")).unwrap();
    assert_eq!(c.len(), 60 << 20);
    assert!(c[..54 << 20] == all[10 << 20..]);
    assert!(c[54 << 20..].iter().all(|&b| b == 0));
    // To a VMDK, checked by qemu.
    vmdk_ok(&[
        "dd",
        "-O",
        "vmdk",
        "bs=1M",
        "count=11",
        &format!("if={i}"),
        &format!("of={}", d("e.vmdk")),
    ]);
    qemu_img(&["check", &d("e.vmdk")]);
    let e = dir.path().join("e.raw");
    qemu_img(&["convert", "-O", "raw", &d("e.vmdk"), &s(&e)]);
    assert!(std::fs::read(&e).unwrap() == all[..11 << 20]);
    // Errors: past the end, onto the input.
    assert_ne!(
        vmdk(&[
            "dd",
            "bs=1M",
            "skip=65",
            &format!("if={i}"),
            &format!("of={}", d("x.raw"))
        ])
        .code,
        0
    );
    let r = vmdk(&["dd", &format!("if={i}"), &format!("of={i}")]);
    assert!(
        r.code != 0 && r.stderr.contains("refusing to overwrite"),
        "{}",
        r.stderr
    );
}

#[test]
fn bench_prints_what_qemu_img_bench_prints() {
    let dir = tempdir();
    let img = qemu_create(dir.path(), "b.vmdk", "16M", &[]);
    let i = s(&img);
    for args in [
        &["-c", "500"][..],
        &[
            "-w", "-c", "500", "-d", "4", "-s", "8k", "-S", "16k", "-o", "4k",
        ],
    ] {
        let mut a = vec!["bench"];
        a.extend_from_slice(args);
        a.push(&i);
        let ours = vmdk_ok(&a);
        let theirs = qemu_img(&a);
        let first = |t: &str| t.lines().next().unwrap().to_string();
        assert_eq!(first(&ours), first(&theirs));
        let last = ours.lines().last().unwrap();
        assert!(
            last.starts_with("Run completed in ") && last.ends_with(" seconds."),
            "{ours}"
        );
    }
    qemu_img(&["check", &i]);
}

#[test]
fn info_children_match_qemu() {
    let dir = tempdir();
    for sub in SUBFORMATS {
        let img = qemu_create_sub(dir.path(), &format!("{sub}.vmdk"), "5G", sub);
        let i = s(&img);
        let ours = vmdk(&["info", "--output=json", &i]).json();
        let theirs: serde_json::Value =
            serde_json::from_str(&qemu_img(&["info", "--output=json", &i])).unwrap();
        assert_eq!(ours["children"], theirs["children"], "{sub}");
        let child = |t: &str| t[t.find("Child node").unwrap_or(t.len())..].to_string();
        assert_eq!(
            child(&vmdk_ok(&["info", &i])),
            child(&qemu_img(&["info", &i])),
            "{sub}"
        );
    }
}

fn allocated(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

#[test]
fn convert_options_scripts_use() {
    let dir = tempdir();
    let d = dir.path();
    let img = scribbled(d);
    let i = s(&img);
    let p = |n: &str| d.join(n);
    // -S 0: nothing left sparse.
    vmdk_ok(&["convert", "-S", "0", "-O", "raw", &i, &s(&p("full.raw"))]);
    assert!(allocated(&p("full.raw")) >= 64 << 20);
    vmdk_ok(&["convert", "-O", "raw", &i, &s(&p("sparse.raw"))]);
    assert!(allocated(&p("sparse.raw")) < 4 << 20);
    vmdk_ok(&["convert", "-S", "0", "-O", "vmdk", &i, &s(&p("full.vmdk"))]);
    let m = vmdk(&["map", "--output=json", &s(&p("full.vmdk"))]).json();
    assert!(
        m.as_array().unwrap().iter().all(|e| e["data"] == true),
        "{m}"
    );
    qemu_img(&["compare", &i, &s(&p("full.vmdk"))]);
    // -n: into an existing target, overwriting what it held.
    std::fs::write(p("busy.raw"), vec![0xeeu8; 64 << 20]).unwrap();
    vmdk_ok(&["convert", "-n", &i, &s(&p("busy.raw"))]);
    qemu_img(&["compare", "-f", "vmdk", "-F", "raw", &i, &s(&p("busy.raw"))]);
    let busy = qemu_written(d, "busy.vmdk", "64M", &["write -P 0xee 0 64M"]);
    vmdk_ok(&["convert", "-n", "-O", "vmdk", &i, &s(&busy)]);
    qemu_img(&["compare", &i, &s(&busy)]);
    qemu_img(&["check", &s(&busy)]);
    // --target-is-zero: zeros are not written (a fresh target stays sparse).
    qemu_img(&["create", "-q", "-f", "raw", &s(&p("zero.raw")), "64M"]);
    vmdk_ok(&["convert", "-n", "--target-is-zero", &i, &s(&p("zero.raw"))]);
    assert!(allocated(&p("zero.raw")) < 4 << 20);
    qemu_img(&["compare", "-f", "vmdk", "-F", "raw", &i, &s(&p("zero.raw"))]);
    let small = qemu_create(d, "small.vmdk", "1M", &[]);
    assert_ne!(
        vmdk(&["convert", "-n", "-O", "vmdk", &i, &s(&small)]).code,
        0
    );
    assert_ne!(
        vmdk(&["convert", "--target-is-zero", &i, &s(&p("x.raw"))]).code,
        0
    );
    // -B: an overlay holding what the source's top layer holds.
    let top = qemu_child(d, "top.vmdk", &img, None);
    qemu_io(&top, &["write -P 0x44 5M 64k", "write -z 0 64k"]);
    vmdk_ok(&[
        "convert",
        "-O",
        "vmdk",
        "-B",
        "m.vmdk",
        "-F",
        "vmdk",
        &s(&top),
        &s(&p("ov.vmdk")),
    ]);
    assert!(qemu_img(&["info", &s(&p("ov.vmdk"))]).contains("backing file: m.vmdk"));
    qemu_img(&["compare", &s(&top), &s(&p("ov.vmdk"))]);
    let ours: Vec<serde_json::Value> = vmdk(&["map", "--output=json", &s(&p("ov.vmdk"))])
        .json()
        .as_array()
        .unwrap()
        .clone();
    let own: u64 = ours
        .iter()
        .filter(|e| e["depth"] == 0 && (e["data"] == true || e["zero"] == true))
        .map(|e| e["length"].as_u64().unwrap())
        .sum();
    assert!(
        own <= 2 * 65536,
        "the overlay holds only the top layer's grains: {own}"
    );
    // -t none: durable before returning (and still the same image).
    vmdk_ok(&[
        "convert",
        "-t",
        "none",
        "-O",
        "vmdk",
        &i,
        &s(&p("sync.vmdk")),
    ]);
    qemu_img(&["compare", &i, &s(&p("sync.vmdk"))]);
    // Accepted for compatibility.
    vmdk_ok(&[
        "convert",
        "-W",
        "-m",
        "4",
        "-T",
        "none",
        "-O",
        "raw",
        &i,
        &s(&p("w.raw")),
    ]);
}

#[test]
fn convert_salvage_turns_read_errors_into_zeros() {
    let dir = tempdir();
    let d = dir.path();
    let mut data = vec![0u8; 1 << 20];
    for (k, b) in data.iter_mut().enumerate() {
        *b = (k % 251) as u8 | 1;
    }
    std::fs::write(d.join("in.raw"), &data).unwrap();
    let st = d.join("s.vmdk");
    vmdk_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&d.join("in.raw")),
        &s(&st),
    ]);
    // Break the zlib stream of the first grain (its marker sits right after the header
    // area, at sector 128).
    patch(&st, 65536 + 12 + 2, &[0xff; 16]);
    let out = d.join("out.raw");
    let r = vmdk(&["convert", "-O", "raw", &s(&st), &s(&out)]);
    assert_ne!(r.code, 0);
    let r = vmdk(&["convert", "--salvage", "-O", "raw", &s(&st), &s(&out)]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_contains!(r.stderr, "warning: error while reading offset 0");
    let got = std::fs::read(&out).unwrap();
    assert!(
        got[..65536].iter().all(|&b| b == 0),
        "the broken grain reads as zeros"
    );
    assert!(got[65536..] == data[65536..], "the rest is intact");
}

#[test]
fn compare_exit_status_says_which_step_failed_as_qemu_img_does() {
    // A grain whose zlib stream is broken: reading it fails, and qemu-img compare exits 4
    // ("Error while reading offset 0"), with and without -s; an image that does not open
    // is 2.
    let dir = tempdir();
    let d = dir.path();
    let a = qemu_create(d, "a.vmdk", "8M", &[]);
    qemu_io(&a, &["write -P 1 0 64k"]);
    let st = d.join("s.vmdk");
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        &s(&a),
        &s(&st),
    ]);
    let broken = d.join("broken.vmdk");
    std::fs::copy(&st, &broken).unwrap();
    patch(&broken, 65536 + 12 + 2, &[0xff; 16]);
    let (st, broken, missing) = (s(&st), s(&broken), s(&d.join("missing.vmdk")));
    for args in [
        vec!["compare", &st, &broken],
        vec!["compare", "-s", &st, &broken],
        vec!["compare", &st, &missing],
    ] {
        let ours = vmdk(&args);
        let theirs = tool("qemu-img", &args);
        assert_eq!(
            ours.code, theirs.code,
            "{args:?}: {} / {}",
            ours.stderr, theirs.stderr
        );
        assert_ne!(ours.code, 0);
    }
}

/// Lines of `out` with the timing figures (which differ from run to run) blanked.
fn untimed(out: &str) -> String {
    out.lines()
        .map(|l| {
            if l.contains(" ops; ") {
                l.split(" ops; ").next().unwrap().to_string()
            } else if l.matches(',').count() == 4 && l.starts_with(|c: char| c.is_ascii_digit()) {
                l.split(',').take(2).collect::<Vec<_>>().join(",")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn io_commands_match_qemu_io() {
    let dir = tempdir();
    let cmds = [
        "writev -P 1 0 4k 8k",
        "readv -P 1 0 4k 8k",
        "readv -C 0 4k",
        "aio_write -P 2 64k 4k",
        "aio_read -P 2 64k 4k",
        "aio_flush",
        "write -C -P 3 1M 512",
        "read -C -P 3 1M 512",
        "alloc 0 128k",
        "alloc 1M",
        "alloc 2M 64k",
        "length",
        "sleep 10",
        "help alloc",
        "help read",
        "write -c 256k 64k",
        "read -P 0xcd 256k 64k",
        "close",
        "open -r IMG",
        "length",
        "read -P 1 0 4k",
    ];
    let ours = qemu_create(dir.path(), "o.vmdk", "16M", &[]);
    let theirs = qemu_create(dir.path(), "q.vmdk", "16M", &[]);
    let args = |img: &std::path::Path| {
        let mut v = vec!["-f".to_string(), "vmdk".to_string()];
        for c in cmds {
            v.push("-c".into());
            v.push(c.replace("IMG", &s(img)));
        }
        v.push(s(img));
        v
    };
    let mut a: Vec<String> = vec!["io".into()];
    a.extend(args(&ours));
    let a: Vec<&str> = a.iter().map(|x| x.as_str()).collect();
    let r = vmdk(&a);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let q: Vec<String> = args(&theirs);
    let q: Vec<&str> = q.iter().map(|x| x.as_str()).collect();
    let t = tool("qemu-io", &q);
    assert_eq!(t.code, 0, "{}{}", t.stdout, t.stderr);
    // `help read` is qemu's long text; compare its first line only.
    let norm = |o: &str| {
        untimed(o)
            .lines()
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with(' ')
                    && !l.starts_with("Use")
                    && !l.starts_with("Reads")
                    && !l.starts_with("Example")
                    && !l.starts_with("Note")
            })
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    let ours_lines = norm(&r.stdout);
    let theirs_lines: Vec<String> = norm(&t.stdout);
    for l in &theirs_lines {
        if l.contains(" -- ") {
            // qemu's usage strings list options ours may describe differently.
            continue;
        }
        assert!(
            ours_lines.contains(l),
            "qemu-io printed {l:?}, we did not:\n{}",
            r.stdout
        );
    }
    // Without an open image, commands say so; discard deallocates whole grains.
    let r = vmdk(&["io", "-c", "close", "-c", "length", &s(&ours)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no file open, try 'help open'"));
    let r = vmdk(&["io", "-c", "discard 0 1M", "-c", "alloc 0 1M", &s(&ours)]);
    assert!(
        r.stdout
            .contains("0/1048576 bytes allocated at offset 0 bytes"),
        "{}",
        r.stdout
    );
    qemu_img(&["check", &s(&ours)]);
}

#[test]
fn serve_takes_a_qemu_nbd_command_line() {
    let dir = tempdir();
    let img = qemu_written(dir.path(), "n.vmdk", "8M", &["write -P 0x5c 0 64k"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pid_file = dir.path().join("nbd.pid");
    let p = port.to_string();
    // What a qemu-nbd user types: -f, -b, -p, -x, -t, -e, --fork, --pid-file. --fork
    // returns once the server is listening.
    vmdk_ok(&[
        "serve",
        "--fork",
        "--pid-file",
        &s(&pid_file),
        "-f",
        "vmdk",
        "-b",
        "127.0.0.1",
        "-p",
        &p,
        "-x",
        "disk",
        "-t",
        "-e",
        "2",
        &s(&img),
    ]);
    // The daemon must not outlive the test whatever happens (it would keep the test
    // harness's inherited descriptors open).
    struct Daemon(Option<i32>);
    impl Drop for Daemon {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                // SAFETY: kill sends a signal; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    // --fork returns only once the pid file is written.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file exists when --fork returns")
        .trim()
        .parse()
        .unwrap();
    let mut daemon = Daemon(Some(pid));
    let url = format!("nbd://127.0.0.1:{p}/disk");
    let r = tool("qemu-io", &["-f", "raw", "-c", "read -P 0x5c 0 64k", &url]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // SAFETY: kill sends a signal to the server we started; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "pid file not removed on exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    daemon.0 = None;
    qemu_img(&["check", &s(&img)]);
    assert_ne!(vmdk(&["serve", "-f", "raw", &s(&img)]).code, 0);
}

/// qemu-io's read and write accept `-p` (once "use pread/pwrite") and ignore it, for old
/// scripts; its aio_read, aio_write, readv and writev refuse it. The same here, side by side
/// with qemu-io 10.
#[test]
fn io_p_is_ignored_where_qemu_io_ignores_it() {
    let dir = tempdir();
    let ours = qemu_create(dir.path(), "o.vmdk", "1M", &[]);
    let theirs = qemu_create(dir.path(), "q.vmdk", "1M", &[]);
    let run = |img: &std::path::Path, c: &str| {
        let ours = vmdk(&["io", "-f", "vmdk", "-c", c, &s(img)]);
        let theirs = tool("qemu-io", &["-f", "vmdk", "-c", c, &s(img)]);
        (ours, theirs)
    };
    for c in [
        "write -pP 0xde 65536 65536",
        "read -pP 0xde 65536 65536",
        "w -p -P 0x11 0 512",
        "r -p -v 0 512",
        "write -p -z 4096 512",
        "read -C -p 4096 512",
    ] {
        let (o, _) = run(&ours, c);
        let (_, t) = run(&theirs, c);
        assert_eq!(
            (o.code, t.code),
            (0, 0),
            "{c}: {}{} / {}",
            o.stdout,
            o.stderr,
            t.stderr
        );
        assert_eq!(untimed(&o.stdout), untimed(&t.stdout), "{c}");
    }
    for c in [
        "aio_read -p 0 512",
        "aio_write -p 0 512",
        "readv -p 0 512",
        "writev -p 0 512",
    ] {
        let (o, t) = run(&ours, c);
        let name = c.split(' ').next().unwrap();
        let refusal = format!("{name}: invalid option -- 'p'");
        assert_eq!((o.code, t.code), (1, 1), "{c}");
        assert_contains!(o.stdout, &refusal, "{c}");
        assert_contains!(t.stderr, &refusal, "{c}: qemu-io");
    }
    qemu_img(&["compare", &s(&ours), &s(&theirs)]);
}

// ---- What the help says against what the code takes ---------------------------------------
//
// Every format the help names (option help of -f/-F/-O, command summaries, the errors for
// a format a command does not take and for an image of another format) is checked against
// what the command really takes, found by running it: each format qemu-img can create is
// tried with each format option.

/// The image formats qemu-img lists ("Supported image formats") that `qemu-img create`
/// makes and `qemu-img info` then names back: the formats help text is checked for. Each
/// is left in `dir` as `img.FMT` (1 MiB), with an overlay `ovl.FMT` of it where the format
/// has backing files.
fn qemu_image_formats(dir: &std::path::Path) -> Vec<String> {
    let help = tool("qemu-img", &["--help"]).stdout;
    let list = help
        .split("Supported image formats:")
        .nth(1)
        .expect("qemu-img --help lists its formats");
    let list = list.trim_start().split("\n\n").next().unwrap();
    let mut formats = Vec::new();
    for f in list.split_whitespace() {
        let img = s(&dir.join(format!("img.{f}")));
        // Protocol drivers fail at once; `timeout` guards against one that would not.
        let made = tool(
            "timeout",
            &["20", "qemu-img", "create", "-q", "-f", f, &img, "1M"],
        );
        if made.code != 0 {
            continue;
        }
        let info = tool("qemu-img", &["info", "--output=json", &img]);
        let named = serde_json::from_str::<serde_json::Value>(&info.stdout)
            .ok()
            .and_then(|v| v["format"].as_str().map(str::to_string));
        if named.as_deref() == Some(f) {
            let ovl = s(&dir.join(format!("ovl.{f}")));
            let b = format!("img.{f}");
            let _ = tool(
                "qemu-img",
                &["create", "-q", "-f", f, "-b", &b, "-F", f, &ovl],
            );
            formats.push(f.to_string());
        } else {
            let _ = std::fs::remove_file(&img);
        }
    }
    for must in ["vmdk", "raw", "qcow2", "vdi", "vpc", "vhdx", "qed"] {
        assert!(
            formats.iter().any(|f| f == must),
            "{must} not in {formats:?}"
        );
    }
    formats
}

/// The formats of `universe` that `text` names as words ("VMDK", "qcow2,"), leaving out
/// file names and paths ("X.ova/DISK.vmdk") and longer words ("VMDKs", "vmdkmount").
fn formats_named(text: &str, universe: &[String]) -> std::collections::BTreeSet<String> {
    text.split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !w.contains('.') && !w.contains('/'))
        .map(|w| w.to_ascii_lowercase())
        .filter(|w| universe.contains(w))
        .collect()
}

/// Each option of `vmdk CMD... --help` that takes an image format (-f, -F or -O with a
/// `<FMT>` value), with its help text.
fn format_options(cmd: &[&str]) -> Vec<(String, String)> {
    let mut args = cmd.to_vec();
    args.push("--help");
    let help = vmdk_ok(&args);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in help.lines() {
        let body = line.trim_start();
        // Options are indented by 2 (6 without a short form); their help, when on lines of
        // its own, by 10.
        if body.starts_with('-') && line.len() - body.len() <= 6 {
            out.extend(current.take());
            let (spec, text) = body.split_once("  ").unwrap_or((body, ""));
            let short = &spec[..2];
            if spec.contains("<FMT>") && ["-f", "-F", "-O"].contains(&short) {
                current = Some((short.to_string(), text.trim().to_string()));
            }
        } else if line.is_empty() || !line.starts_with(' ') {
            out.extend(current.take());
        } else if let Some((_, text)) = &mut current {
            text.push(' ');
            text.push_str(line.trim());
        }
    }
    out.extend(current);
    out
}

/// The one-line summaries of `vmdk CMD... --help`'s subcommands.
fn summaries(cmd: &[&str]) -> Vec<(String, String)> {
    let mut args = cmd.to_vec();
    args.push("--help");
    let help = vmdk_ok(&args);
    let list = help.split("Commands:\n").nth(1).expect("a command list");
    list.lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let (name, about) = l.trim().split_once(' ')?;
            (name != "help").then(|| (name.to_string(), about.trim().to_string()))
        })
        .collect()
}

/// One way to run a command with a format option set to `F`, in a directory holding
/// `img.F`, `ovl.F` (where F has backing files), `v.vmdk`, `vovl.vmdk` (an overlay of
/// `v.vmdk`) and `r.raw` (1 MiB of zeros). The format is taken if any of `runs` exits
/// with one of `ok`.
struct Probe {
    cmd: &'static [&'static str],
    opt: &'static str,
    runs: &'static [&'static [&'static str]],
    ok: &'static [i32],
}

const PROBES: &[Probe] = &[
    Probe {
        cmd: &["info"],
        opt: "-f",
        runs: &[&["info", "-f", "F", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["map"],
        opt: "-f",
        runs: &[&["map", "-f", "F", "img.F"]],
        ok: &[0],
    },
    // A raw image cannot be checked: qemu-img's exit status 63 is the answer for it.
    Probe {
        cmd: &["check"],
        opt: "-f",
        runs: &[&["check", "-f", "F", "img.F"]],
        ok: &[0, 63],
    },
    Probe {
        cmd: &["convert"],
        opt: "-f",
        runs: &[&["convert", "-f", "F", "img.F", "out"]],
        ok: &[0],
    },
    Probe {
        cmd: &["convert"],
        opt: "-O",
        runs: &[&["convert", "-O", "F", "v.vmdk", "out"]],
        ok: &[0],
    },
    Probe {
        cmd: &["convert"],
        opt: "-F",
        runs: &[
            &[
                "convert", "-O", "vmdk", "-B", "img.F", "-F", "F", "v.vmdk", "out",
            ],
            &[
                "convert", "-O", "qcow2", "-B", "img.F", "-F", "F", "v.vmdk", "out",
            ],
        ],
        ok: &[0],
    },
    Probe {
        cmd: &["compare"],
        opt: "-f",
        runs: &[&["compare", "-f", "F", "img.F", "r.raw"]],
        ok: &[0],
    },
    Probe {
        cmd: &["compare"],
        opt: "-F",
        runs: &[&["compare", "-F", "F", "r.raw", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["create"],
        opt: "-f",
        runs: &[&["create", "-f", "F", "out", "1M"]],
        ok: &[0],
    },
    Probe {
        cmd: &["create"],
        opt: "-F",
        runs: &[&["create", "-b", "img.F", "-F", "F", "out"]],
        ok: &[0],
    },
    Probe {
        cmd: &["io"],
        opt: "-f",
        runs: &[&["io", "-f", "F", "-c", "read 0 512", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["serve"],
        opt: "-f",
        runs: &[&[
            "serve",
            "-f",
            "F",
            "-r",
            "-k",
            "nbd.sock",
            "--fork",
            "--pid-file",
            "nbd.pid",
            "img.F",
        ]],
        ok: &[0],
    },
    Probe {
        cmd: &["dd"],
        opt: "-f",
        runs: &[&["dd", "-f", "F", "if=img.F", "of=out"]],
        ok: &[0],
    },
    Probe {
        cmd: &["dd"],
        opt: "-O",
        runs: &[&["dd", "-O", "F", "if=v.vmdk", "of=out"]],
        ok: &[0],
    },
    Probe {
        cmd: &["measure"],
        opt: "-f",
        runs: &[&["measure", "-f", "F", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["measure"],
        opt: "-O",
        runs: &[&["measure", "-O", "F", "--size", "1M"]],
        ok: &[0],
    },
    Probe {
        cmd: &["snapshot"],
        opt: "-f",
        runs: &[&["snapshot", "-l", "-f", "F", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["bench"],
        opt: "-f",
        runs: &[&["bench", "-c", "1", "-f", "F", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["commit"],
        opt: "-f",
        runs: &[&["commit", "-f", "F", "ovl.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["compact"],
        opt: "-f",
        runs: &[&["compact", "-f", "F", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["rebase"],
        opt: "-f",
        runs: &[&["rebase", "-f", "F", "-u", "-b", "", "ovl.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["rebase"],
        opt: "-F",
        runs: &[&["rebase", "-u", "-b", "img.F", "-F", "F", "vovl.vmdk"]],
        ok: &[0],
    },
    Probe {
        cmd: &["amend"],
        opt: "-f",
        runs: &[&["amend", "-f", "F", "-o", "hwversion=6", "img.F"]],
        ok: &[0],
    },
    Probe {
        cmd: &["resize"],
        opt: "-f",
        runs: &[&["resize", "-f", "F", "img.F", "2M"]],
        ok: &[0],
    },
    Probe {
        cmd: &["ova", "create"],
        opt: "-f",
        runs: &[&["ova", "create", "-f", "F", "-o", "out.ova", "img.F"]],
        ok: &[0],
    },
];

/// A directory for one run: copies of the pristine images (runs write into them).
fn fresh(pristine: &std::path::Path) -> tempfile::TempDir {
    let w = tempdir();
    for e in std::fs::read_dir(pristine).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), w.path().join(e.file_name())).unwrap();
    }
    w
}

/// Run `args` (with `F` standing for `format`) in a fresh copy of `pristine`; a server
/// that --fork left running is stopped.
fn run_probe(pristine: &std::path::Path, args: &[&str], format: &str) -> Run {
    let w = fresh(pristine);
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if *a == "F" {
                format.to_string()
            } else {
                a.replace(".F", &format!(".{format}"))
            }
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = vmdk_in(w.path(), &args);
    if let Ok(pid) = std::fs::read_to_string(w.path().join("nbd.pid")) {
        let pid: i32 = pid.trim().parse().unwrap();
        // SAFETY: kill sends a signal to the server this run started; no memory involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.path().join("nbd.pid").exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    r
}

/// A set of format names.
type Formats = std::collections::BTreeSet<String>;

/// The formats each probe's option takes (and, per format, the first run's exit status).
fn taken_formats(
    pristine: &std::path::Path,
    universe: &[String],
) -> Vec<(Formats, Vec<(String, i32)>)> {
    PROBES
        .iter()
        .map(|p| {
            let mut taken = std::collections::BTreeSet::new();
            let mut codes = Vec::new();
            for f in universe {
                let mut first = None;
                for run in p.runs {
                    let r = run_probe(pristine, run, f);
                    first.get_or_insert(r.code);
                    if p.ok.contains(&r.code) {
                        taken.insert(f.clone());
                    }
                }
                codes.push((f.clone(), first.unwrap()));
            }
            (taken, codes)
        })
        .collect()
}

#[test]
fn help_names_exactly_the_formats_each_option_takes() {
    let pristine = tempdir();
    let p = pristine.path();
    let universe = qemu_image_formats(p);
    qemu_create(p, "v.vmdk", "1M", &[]);
    qemu_overlay(p.join("vovl.vmdk"), "v.vmdk", "", "");
    std::fs::write(p.join("r.raw"), vec![0u8; 1 << 20]).unwrap();
    let taken = taken_formats(p, &universe);
    let set = |v: &[&str]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    // Sanity: the probes do run (a broken fixture would make every set empty).
    let convert_f = PROBES
        .iter()
        .position(|p| p.cmd == ["convert"] && p.opt == "-f")
        .unwrap();
    assert_eq!(taken[convert_f].0, set(&["qcow2", "raw", "vmdk"]));

    // Every format option in the help has a probe, and says what its probe found.
    let mut commands: Vec<Vec<String>> = summaries(&[])
        .into_iter()
        .map(|(name, _)| vec![name])
        .collect();
    commands.extend(
        summaries(&["ova"])
            .into_iter()
            .map(|(n, _)| vec!["ova".into(), n]),
    );
    let mut checked = 0;
    let mut wrong = Vec::new();
    for cmd in &commands {
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        for (opt, text) in format_options(&cmd) {
            let i = PROBES
                .iter()
                .position(|p| p.cmd == cmd.as_slice() && p.opt == opt)
                .unwrap_or_else(|| panic!("vmdk {cmd:?} {opt} takes a format: add a probe"));
            let named = formats_named(&text, &universe);
            if named != taken[i].0 {
                wrong.push(format!(
                    "vmdk {} {opt}: the help names {named:?}, the command takes {:?} ({text})",
                    cmd.join(" "),
                    taken[i].0
                ));
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        PROBES.len(),
        "a probe for an option the help does not show"
    );

    // A summary that names formats names those its command's options take together
    // (`inspect`, with no format option: those it calls safe).
    let inspect_safe: std::collections::BTreeSet<String> = universe
        .iter()
        .filter(|f| vmdk_in(p, &["inspect", &format!("img.{f}")]).code == 0)
        .cloned()
        .collect();
    let mut summaries_all: Vec<(Vec<&str>, String)> = Vec::new();
    let top = summaries(&[]);
    let ova = summaries(&["ova"]);
    for (n, about) in &top {
        summaries_all.push((vec![n.as_str()], about.clone()));
    }
    for (n, about) in &ova {
        summaries_all.push((vec!["ova", n.as_str()], about.clone()));
    }
    for (cmd, about) in &summaries_all {
        let named = formats_named(about, &universe);
        if named.is_empty() {
            continue;
        }
        let takes: std::collections::BTreeSet<String> = if cmd == &["inspect"] {
            inspect_safe.clone()
        } else {
            PROBES
                .iter()
                .zip(&taken)
                .filter(|(p, _)| p.cmd == cmd.as_slice())
                .flat_map(|(_, t)| t.0.iter().cloned())
                .collect()
        };
        if named != takes {
            wrong.push(format!(
                "vmdk {cmd:?}: \"{about}\" names {named:?}; it takes {takes:?}"
            ));
        }
    }
    // Told a format it does not take, each command's error names those it does.
    for (probe, (takes, _)) in PROBES.iter().zip(&taken) {
        let mut named = Formats::new();
        for run in probe.runs {
            let r = run_probe(p, run, "vdi");
            let line = r.stderr.lines().next().unwrap_or_default();
            let message = line.strip_prefix("vmdk: ").unwrap_or(line);
            named.extend(formats_named(message, &universe));
        }
        named.remove("vdi");
        if &named != takes {
            wrong.push(format!(
                "vmdk {} {} vdi: the error names {named:?}; it takes {takes:?}",
                probe.cmd.join(" "),
                probe.opt
            ));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));

    // An image of another format given without -f: the error names the formats the
    // command takes, and offers -f raw only where -f raw reads the file's bytes.
    for (probe, (takes, codes)) in PROBES.iter().zip(&taken) {
        if probe.opt != "-f" || ["info", "create"].contains(&probe.cmd[0]) {
            continue;
        }
        let run: Vec<&str> = {
            let r = probe.runs[0];
            let at = r.iter().position(|a| *a == "-f").unwrap();
            r[..at]
                .iter()
                .chain(&r[at + 2..])
                .map(|a| if a.starts_with("ovl.") { "img.F" } else { a })
                .collect()
        };
        let r = run_probe(p, &run, "vdi");
        assert_ne!(r.code, 0, "{run:?}");
        let message = r.stderr.lines().next().unwrap_or_default().to_string();
        let (_, readable) = message
            .split_once(" image, not ")
            .filter(|(what, _)| what.contains("this is a") && what.contains("VDI"))
            .unwrap_or_else(|| panic!("{run:?}: {}", r.stderr));
        let named = formats_named(readable, &universe);
        let mut expected = takes.clone();
        expected.remove("vdi");
        assert_eq!(&named, &expected, "{run:?}: {message}");
        let raw_reads = codes.iter().any(|(f, c)| f == "raw" && *c == 0);
        assert_eq!(
            r.stderr.contains("-f raw"),
            raw_reads,
            "{run:?}: the -f raw hint: {}",
            r.stderr
        );
    }
}

/// `-o help` lists exactly the options each command takes: every one listed is taken, and
/// every other one (qemu-img's for the format, and ours for `create`) is refused as
/// invalid.
#[test]
fn option_help_lists_exactly_the_options_taken() {
    let dir = tempdir();
    let d = dir.path();
    qemu_create(d, "v.vmdk", "1M", &[]);
    let keys = |help: &str| -> Vec<String> {
        help.lines()
            .skip(1)
            .filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.to_string()))
            .collect()
    };
    let qemu_keys = |fmt: &str| keys(&qemu_img(&["create", "-f", fmt, "-o", "help"]));
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("vmdk", vec!["create"], "out 1M"),
        ("vmdk", vec!["convert", "-O", "vmdk"], "v.vmdk out"),
        ("qcow2", vec!["convert", "-O", "qcow2"], "v.vmdk out"),
        ("vmdk", vec!["amend"], "v.vmdk"),
    ];
    let create_keys = keys(&vmdk_in(d, &["create", "-o", "help"]).stdout);
    for (fmt, cmd, rest) in cases {
        let mut args = cmd.clone();
        args.extend(["-o", "help"]);
        let listed = keys(&vmdk_in(d, &args).stdout);
        assert!(!listed.is_empty(), "{cmd:?}");
        let mut all = qemu_keys(fmt);
        all.extend(create_keys.iter().cloned());
        all.extend(listed.iter().cloned());
        all.sort();
        all.dedup();
        for key in all {
            let opt = format!("{key}=x");
            let mut args = cmd.clone();
            args.extend(["-o", &opt]);
            args.extend(rest.split(' '));
            let w = fresh(d);
            let r = vmdk_in(w.path(), &args);
            let refused = r.stderr.contains(&format!("Invalid parameter '{key}'"))
                || r.stderr
                    .contains(&format!("Changing '{key}' is not supported"));
            assert_eq!(
                refused,
                !listed.contains(&key),
                "{cmd:?} -o {key}: listed {listed:?}: {}",
                r.stderr
            );
        }
    }
}

/// The names of every command, `ova`'s own included, from `vmdk --help`.
fn command_names() -> Vec<String> {
    let mut names: Vec<String> = summaries(&[]).into_iter().map(|(n, _)| n).collect();
    names.extend(summaries(&["ova"]).into_iter().map(|(n, _)| n));
    names
}

/// Whether `word` stands alone somewhere in `text` (not inside a longer name).
fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    text.match_indices(word)
        .any(|(i, _)| !text[..i].ends_with(ident) && !text[i + word.len()..].starts_with(ident))
}

#[test]
fn completion_scripts_cover_every_command() {
    let names = command_names();
    assert!(names.len() > 20, "{names:?}");
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = vmdk_ok(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}");
        for n in &names {
            assert!(has_word(&script, n), "{shell}: no {n}");
        }
        // Options too (fish writes long ones as `-l from-ovf`).
        assert!(
            script.contains("from-ovf") && script.contains("allow-path"),
            "{shell}"
        );
    }
    let r = vmdk(&["completions", "tcsh"]);
    assert_eq!(r.code, 2);
    assert_contains!(r.stderr, "possible values: bash");
    // bash loads it, registers it for vmdk, and completes a command and an option.
    let vmdk_bin = env!("CARGO_BIN_EXE_vmdk");
    let script = format!(
        "source <('{vmdk_bin}' completions bash) && complete -p vmdk && \
         COMP_WORDS=(vmdk con) COMP_CWORD=1 && _vmdk vmdk con vmdk && echo \"${{COMPREPLY[*]}}\" && \
         COMP_WORDS=(vmdk ova create --from) COMP_CWORD=3 && _vmdk vmdk --from create && \
         echo \"${{COMPREPLY[*]}}\""
    );
    let r = tool("bash", &["-c", &script]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("complete ") && lines[0].ends_with(" vmdk"),
        "{}",
        r.stdout
    );
    assert_eq!(lines[1], "convert", "{}", r.stdout);
    assert_eq!(lines[2], "--from-ovf", "{}", r.stdout);
}

#[test]
fn man_pages_for_every_command_render() {
    let dir = tempdir();
    let out = dir.path().join("share/man/man1");
    vmdk_ok(&["manpages", &s(&out)]);
    let mut want: Vec<String> = vec!["vmdk.1".into()];
    for (n, _) in summaries(&[]) {
        want.push(format!("vmdk-{n}.1"));
    }
    for (n, _) in summaries(&["ova"]) {
        want.push(format!("vmdk-ova-{n}.1"));
    }
    want.sort();
    let mut got: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, want);
    let abouts: Vec<(String, String)> = summaries(&[])
        .into_iter()
        .map(|(n, a)| (format!("vmdk-{n}.1"), a))
        .chain(
            summaries(&["ova"])
                .into_iter()
                .map(|(n, a)| (format!("vmdk-ova-{n}.1"), a)),
        )
        .collect();
    assert!(
        tool("sh", &["-c", "command -v groff"]).code == 0,
        "groff is missing (Debian's groff-base; .ci/run installs it)"
    );
    for page in &got {
        let path = s(&out.join(page));
        // -ww: every warning; -z: no output, only the diagnostics.
        let check = tool("groff", &["-man", "-Tutf8", "-ww", "-z", &path]);
        assert_eq!((check.code, check.stderr.as_str()), (0, ""), "{page}");
        let text = tool(
            "groff",
            &["-man", "-Tutf8", "-P", "-c", "-P", "-b", "-P", "-u", &path],
        )
        .expect(0, page);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
        if let Some((_, about)) = abouts.iter().find(|(p, _)| p == page) {
            let about = about.split_whitespace().collect::<Vec<_>>().join(" ");
            let about = about.trim_end_matches('.');
            assert!(text.contains(about), "{page} lacks \"{about}\": {text}");
        }
    }
}

/// `fuzz/run-ci.sh` runs every fuzz target by default, and its header names each one with
/// its time budget (a target added to `fuzz/Cargo.toml` must be added there too).
#[test]
fn fuzz_ci_script_names_every_target() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    let mut bins: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|b| b.lines().find_map(|l| l.trim().strip_prefix("name = ")))
        .map(|n| n.trim_matches('"'))
        .collect();
    bins.sort();
    let script = std::fs::read_to_string(fuzz.join("run-ci.sh")).unwrap();
    let default = script
        .split("targets=${FUZZ_TARGETS:-\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the default target list");
    let mut listed: Vec<&str> = default.split_whitespace().collect();
    listed.sort();
    assert_eq!(listed, bins, "run-ci.sh's default targets");
    // The header: write_image's line, then the others' (up to the FUZZ_TARGETS line).
    let header: String = script
        .lines()
        .take_while(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let budgets = header
        .split("FUZZ_WRITE_SECS")
        .nth(1)
        .and_then(|h| h.split("FUZZ_TARGETS").next())
        .expect("the header's time budgets");
    let mut named: Vec<&str> = budgets
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| bins.contains(w))
        .collect();
    named.sort();
    assert_eq!(named, bins, "run-ci.sh's header");
    let words = [
        "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve",
    ];
    let count = words
        .get(bins.len() - 1)
        .expect("a word for the number of targets");
    assert!(
        header.contains(&format!("(default: all {count})")),
        "the header's count of targets: {header}"
    );
}
