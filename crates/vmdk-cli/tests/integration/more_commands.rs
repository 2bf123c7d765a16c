//! qemu-img commands beyond the everyday ones: `measure`, `snapshot`, `dd` and `bench`,
//! against qemu-img on the same images where qemu-img can answer, and against what our own
//! conversions produce where it cannot (QEMU's VMDK driver does not measure).

use crate::common::*;

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
    for sub in [
        "monolithicSparse",
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
        "streamOptimized",
    ] {
        let img = qemu_create(
            dir.path(),
            &format!("{sub}.vmdk"),
            "5G",
            &[&format!("subformat={sub}")],
        );
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
    let busy = qemu_create(d, "busy.vmdk", "64M", &[]);
    qemu_io(&busy, &["write -P 0xee 0 64M"]);
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
    assert!(
        r.stderr.contains("warning: error while reading offset 0"),
        "{}",
        r.stderr
    );
    let got = std::fs::read(&out).unwrap();
    assert!(
        got[..65536].iter().all(|&b| b == 0),
        "the broken grain reads as zeros"
    );
    assert!(got[65536..] == data[65536..], "the rest is intact");
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
    let img = qemu_create(dir.path(), "n.vmdk", "8M", &[]);
    qemu_io(&img, &["write -P 0x5c 0 64k"]);
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
