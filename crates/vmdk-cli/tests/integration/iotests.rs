//! qemu's own VMDK iotests (`tests/qemu-iotests/` 020, 034, 037, 059, 063, 225 and 279 in
//! the QEMU tree), replayed against `vmdk`.
//!
//! Each test runs the iotest's command sequence twice, in two directories holding the same
//! file names: `ours/`, where every `qemu-img` and `qemu-io` step of the iotest is done by
//! `vmdk` (`vmdk create/commit/convert/info/map/check`, `vmdk io -c ...`), and `qemu/`,
//! where qemu-img and qemu-io do them. Then:
//!
//! * every step prints what qemu's tool prints (timing lines aside, the directory shown as
//!   `TEST_DIR` as the iotests' `_filter_testdir` does): the `read`/`wrote` lines the
//!   iotests' `.out` files hold, `Formatting ...`, `Image committed.`, map tables;
//! * where the iotest calls `_check_test_img`, both `vmdk check` and `qemu-img check` find
//!   our image clean;
//! * at the end `qemu-img compare` finds our image identical to the one qemu's tools made.
//!
//! Where the iotest expects a refusal, we refuse too (with our own message, which names the
//! file and the problem); where we deliberately differ from qemu, the test says why.
//! Parts of the iotests that exercise qemu's block layer rather than the format (059's
//! blkdebug/quorum JSON file names, 279's `--image-opts`, 225's `-blockdev` overrides)
//! are replayed with what they stand for, or left out, as each test says.

use std::path::{Path, PathBuf};
use vmdk_test_support::qemu::qemu_create_as;

use crate::common::*;

const K: u64 = 1 << 10;
const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

/// One replay: the same file names in `ours/` (made and changed only by `vmdk`) and in
/// `qemu/` (only by qemu-img and qemu-io).
struct Replay {
    _dir: tempfile::TempDir,
    ours: PathBuf,
    qemu: PathBuf,
}

impl Replay {
    fn new() -> Replay {
        let dir = tempdir();
        let ours = dir.path().join("ours");
        let qemu = dir.path().join("qemu");
        std::fs::create_dir(&ours).unwrap();
        std::fs::create_dir(&qemu).unwrap();
        Replay {
            _dir: dir,
            ours,
            qemu,
        }
    }

    fn ours(&self, name: &str) -> PathBuf {
        self.ours.join(name)
    }

    fn qemu(&self, name: &str) -> PathBuf {
        self.qemu.join(name)
    }

    /// `args` with `{}` standing for `dir`.
    fn args_in(dir: &Path, args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.replace("{}", &s(dir))).collect()
    }

    /// `vmdk ARGS` in `ours/` and `qemu-img ARGS` in `qemu/` (`{}` in an argument is the
    /// side's directory): both succeed and print the same. Returns the filtered output.
    fn img(&self, args: &[&str]) -> String {
        let o = Self::args_in(&self.ours, args);
        let q = Self::args_in(&self.qemu, args);
        let ours = vmdk_ok(&o.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = qemu_img(&q.iter().map(String::as_str).collect::<Vec<_>>());
        let ours = ours.replace(&s(&self.ours), "TEST_DIR");
        assert_eq!(
            ours,
            theirs.replace(&s(&self.qemu), "TEST_DIR"),
            "vmdk / qemu-img {args:?}"
        );
        ours
    }

    /// The same command, which both tools must refuse: exit status 1, the same stdout
    /// (usually nothing; `create` prints its "Formatting" line first). Returns (our stderr,
    /// qemu-img's stderr), both with the directory shown as TEST_DIR.
    fn img_fails(&self, args: &[&str]) -> (String, String) {
        let o = Self::args_in(&self.ours, args);
        let q = Self::args_in(&self.qemu, args);
        let ours = vmdk(&o.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = tool(
            "qemu-img",
            &q.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let (od, qd) = (s(&self.ours), s(&self.qemu));
        assert_eq!(
            (ours.code, ours.stdout.replace(&od, "TEST_DIR")),
            (1, theirs.stdout.replace(&qd, "TEST_DIR")),
            "vmdk / qemu-img {args:?}"
        );
        assert_eq!(theirs.code, 1, "qemu-img {args:?}");
        assert!(ours.stderr.starts_with("vmdk: "), "{}", ours.stderr);
        (
            ours.stderr.replace(&od, "TEST_DIR"),
            theirs.stderr.replace(&qd, "TEST_DIR"),
        )
    }

    /// The qemu-io commands `cmds` through `vmdk io` on `ours/NAME` and through qemu-io on
    /// `qemu/NAME`: both succeed and print the same, timing lines aside. Returns our output.
    fn io(&self, name: &str, cmds: &[String]) -> String {
        self.io_with(name, &[], cmds)
    }

    /// The same with options before the commands (`-r`).
    fn io_with(&self, name: &str, opts: &[&str], cmds: &[String]) -> String {
        let mut args = vec!["io"];
        args.extend_from_slice(opts);
        let mut qargs = vec!["-f", "vmdk"];
        qargs.extend_from_slice(opts);
        for c in cmds {
            args.extend(["-c", c.as_str()]);
            qargs.extend(["-c", c.as_str()]);
        }
        let (o, q) = (s(&self.ours(name)), s(&self.qemu(name)));
        args.push(&o);
        qargs.push(&q);
        let ours = vmdk(&args).expect(0, &format!("vmdk io {cmds:?}"));
        let theirs = tool("qemu-io", &qargs).expect(0, &format!("qemu-io {cmds:?}"));
        assert!(!ours.contains("failed"), "{ours}");
        assert_eq!(untimed(&ours), untimed(&theirs), "io {cmds:?}");
        ours
    }

    /// The same, with the commands on standard input, as 037's `backing_io ... | $QEMU_IO`
    /// does (qemu-io's `qemu-io> ` prompts dropped, as `_filter_qemu_io` does).
    fn io_stdin(&self, name: &str, cmds: &[String]) -> String {
        let script: String = cmds.iter().map(|c| format!("{c}\n")).collect();
        let run = |prog: &str, args: &[&str]| {
            use std::io::Write;
            use std::process::{Command, Stdio};
            let mut child = Command::new(prog)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("spawning {prog}: {e}"));
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).replace("qemu-io> ", "");
            assert!(
                out.status.success(),
                "{prog} {args:?}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        };
        let o = s(&self.ours(name));
        let q = s(&self.qemu(name));
        let ours = run(env!("CARGO_BIN_EXE_vmdk"), &["io", &o]);
        let theirs = run("qemu-io", &["-f", "vmdk", &q]);
        assert!(!ours.contains("failed"), "{ours}");
        assert_eq!(untimed(&ours), untimed(&theirs));
        ours
    }

    /// `_check_test_img`: our image is clean to `vmdk check` and to `qemu-img check`, and
    /// qemu's is clean too.
    fn check(&self, name: &str) {
        let o = s(&self.ours(name));
        vmdk(&["check", &o]).expect(0, &format!("vmdk check {name}"));
        assert_eq!(
            qemu_img(&["check", &o]),
            "No errors were found on the image.\n"
        );
        qemu_img(&["check", &s(&self.qemu(name))]);
    }

    /// Our image shows the guest the same bytes as qemu's (`qemu-img compare`).
    fn same(&self, name: &str) {
        assert_eq!(
            qemu_img(&["compare", &s(&self.ours(name)), &s(&self.qemu(name))]),
            "Images are identical.\n",
            "{name}"
        );
    }

    /// `mv` on both sides.
    fn mv(&self, from: &str, to: &str) {
        for d in [&self.ours, &self.qemu] {
            std::fs::rename(d.join(from), d.join(to)).unwrap();
        }
    }

    /// `cp` on both sides.
    fn cp(&self, from: &str, to: &str) {
        for d in [&self.ours, &self.qemu] {
            std::fs::copy(d.join(from), d.join(to)).unwrap();
        }
    }
}

/// common.pattern's `io OP START SIZE STEP COUNT`: COUNT commands `OP -P PAT OFF SIZE`, the
/// pattern taken from START (`(start >> 9) % 256`).
fn pattern_io(op: &str, start: u64, size: u64, step: u64, count: u64) -> Vec<String> {
    let pattern = (start >> 9) % 256;
    fixed_io(op, start, size, step, count, pattern)
}

/// common.pattern's `io_pattern` (and `io_zero` with pattern 0).
fn fixed_io(op: &str, start: u64, size: u64, step: u64, count: u64, pat: u64) -> Vec<String> {
    (0..count)
        .map(|i| format!("{op} -P {pat} {} {size}", start + i * step))
        .collect()
}

/// 037's `backing_io OFFSET SECTORS OP`: one 512-byte command per sector, each with its
/// own pattern.
fn backing_io(offset: u64, sectors: u64, op: &str) -> Vec<String> {
    (0..sectors)
        .map(|i| {
            let sec = offset / 512 + i;
            let pattern = ((sec % 256) + (sec / 256)) % 256;
            format!("{op} -P {pattern} {} 512", sec * 512)
        })
        .collect()
}

fn cmds(list: &[&str]) -> Vec<String> {
    list.iter().map(|c| c.to_string()).collect()
}

/// The qemu-iotests sample images (`sample_images/` in the QEMU tree), expanded:
/// `<repository>/../shared/samples/qemu-iotests`, as realworld.rs finds its samples.
fn sample(name: &str) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = repo.join("../shared/samples/qemu-iotests").join(name);
    assert!(
        p.is_file(),
        "qemu's iotest sample image is missing: expected {} (the shared/ folder beside the \
         repository checkout, as CI lays it out)",
        p.display()
    );
    p
}

/// iotest 020, "Commit changes to backing file": a 6G base written at 0 and 4G (sectors
/// alternating with the overlay's, and whole clusters), an overlay written in the gaps,
/// `commit`, then the base alone reads back both layers and zeros where neither wrote.
#[test]
fn iotest_020_commit_to_backing_file() {
    let r = Replay::new();
    let offsets = [0, 4 * G];
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "6G"]);
    let mut fill = Vec::new();
    for off in offsets {
        fill.extend(pattern_io("writev", off, 512, 1024, 64));
        fill.extend(pattern_io("writev", off + 64 * K, 65536, 65536, 1));
    }
    r.io("t.vmdk", &fill);
    r.check("t.vmdk");

    r.mv("t.vmdk", "t.vmdk.base");
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.base",
        "-F",
        "vmdk",
        "{}/t.vmdk",
        "6G",
    ]);
    let mut fill = Vec::new();
    for off in offsets {
        fill.extend(pattern_io("writev", off + 512, 512, 1024, 64));
        fill.extend(pattern_io("writev", off + 64 * K + 65536, 65536, 65536, 1));
    }
    r.io("t.vmdk", &fill);
    r.check("t.vmdk");

    assert_eq!(r.img(&["commit", "{}/t.vmdk"]), "Image committed.\n");
    r.mv("t.vmdk.base", "t.vmdk");

    let mut reads = Vec::new();
    for off in offsets {
        reads.extend(pattern_io("readv", off, 512, 1024, 64));
        reads.extend(pattern_io("readv", off + 512, 512, 1024, 64));
        reads.extend(pattern_io("readv", off + 64 * K, 65536, 65536, 1));
        reads.extend(pattern_io("readv", off + 64 * K + 65536, 65536, 65536, 1));
        reads.extend(fixed_io(
            "readv",
            off + 64 * K + 65536 * 4,
            65536,
            65536,
            1,
            0,
        ));
    }
    let out = r.io("t.vmdk", &reads);
    assert!(
        out.contains("read 512/512 bytes at offset 4294967808\n"),
        "{out}"
    );
    r.check("t.vmdk");
    r.same("t.vmdk");
}

/// iotest 034, "bdrv_write_zeroes with backing files": zero writes into an overlay over a
/// base of 0x55 (unaligned, across grains), reads of every piece, data written over the
/// zeroed stretch and zeroed again.
#[test]
fn iotest_034_zero_writes_over_a_backing_file() {
    let r = Replay::new();
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "128M"]);
    r.io("t.vmdk", &cmds(&["write -P 0x55 0 1M"]));
    r.mv("t.vmdk", "t.vmdk.base");
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.base",
        "-F",
        "vmdk",
        "{}/t.vmdk",
        "6G",
    ]);

    // == zero write with backing file ==
    let out = r.io("t.vmdk", &cmds(&["write -z 64k 192k", "write -z 513k 13k"]));
    assert!(
        out.starts_with("wrote 196608/196608 bytes at offset 65536\n"),
        "{out}"
    );
    r.check("t.vmdk");
    // == verifying patterns (3) ==
    r.io(
        "t.vmdk",
        &cmds(&[
            "read -P 0x55 0 64k",
            "read -P 0x0 64k 192k",
            "read -P 0x55 256k 257k",
            "read -P 0x0 513k 13k",
            "read -P 0x55 526k 498k",
        ]),
    );
    // == overwriting zero cluster ==
    r.io(
        "t.vmdk",
        &cmds(&[
            "write -P 0xa 60k 8k",
            "write -P 0xb 64k 8k",
            "write -P 0xc 76k 4k",
            "write -P 0xd 252k 8k",
            "write -P 0xe 248k 8k",
        ]),
    );
    r.check("t.vmdk");
    // == verifying patterns (4) ==
    r.io(
        "t.vmdk",
        &cmds(&[
            "read -P 0x55 0 60k",
            "read -P 0xa 60k 4k",
            "read -P 0xb 64k 8k",
            "read -P 0x0 72k 4k",
            "read -P 0xc 76k 4k",
            "read -P 0x0 80k 168k",
            "read -P 0xe 248k 8k",
            "read -P 0xd 256k 4k",
            "read -P 0x55 260k 64k",
        ]),
    );
    // == re-zeroing overwritten area ==
    r.io("t.vmdk", &cmds(&["write -z 64k 192k"]));
    r.check("t.vmdk");
    // == verifying patterns (5) ==
    r.io(
        "t.vmdk",
        &cmds(&[
            "read -P 0x55 0 60k",
            "read -P 0xa 60k 4k",
            "read -P 0x0 64k 192k",
            "read -P 0xd 256k 4k",
            "read -P 0x55 260k 253k",
            "read -P 0x0 513k 13k",
            "read -P 0x55 526k 498k",
        ]),
    );
    r.same("t.vmdk");
}

/// One section of 037: its writes, reads of what they wrote, and the (offset, sectors) of
/// the stretches around them that must still read the base's sectors.
type CowSection = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [(u64, u64)],
);

/// Bytes written over a header at an offset (059's `poke_file`).
type Poke = (u64, &'static [u8]);

/// iotest 037, "Test COW from backing files": a base whose every sector has its own
/// pattern, then writes into an overlay that cover part of one grain, two grains and many
/// grains; the rest of each touched grain must still read the base's sectors.
#[test]
fn iotest_037_copy_on_write_from_backing() {
    let r = Replay::new();
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "128M"]);
    r.io_stdin("t.vmdk", &backing_io(0, 256, "write"));
    r.mv("t.vmdk", "t.vmdk.base");
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.base",
        "-F",
        "vmdk",
        "{}/t.vmdk",
        "6G",
    ]);

    // (writes; then, for each written piece and each gap: pattern reads)
    let sections: [CowSection; 3] = [
        // == COW in a single cluster ==
        (
            &[
                "write -P 0x77 0 2k",
                "write -P 0x88 6k 2k",
                "write -P 0x99 9k 2k",
            ],
            &[
                "read -P 0x77 0 2k",
                "read -P 0x88 6k 2k",
                "read -P 0x99 9k 2k",
            ],
            &[(2 * K, 8), (8 * K, 2), (11 * K, 2)],
        ),
        // == COW in two-cluster allocations ==
        (
            &[
                "write -P 0x77 16k 6k",
                "write -P 0x88 26k 6k",
                "write -P 0x99 33k 5k",
            ],
            &[
                "read -P 0x77 16k 6k",
                "read -P 0x88 26k 6k",
                "read -P 0x99 33k 5k",
            ],
            &[(22 * K, 8), (32 * K, 2), (38 * K, 4)],
        ),
        // == COW in multi-cluster allocations ==
        (
            &[
                "write -P 0x77 48k 15k",
                "write -P 0x88 66k 14k",
                "write -P 0x99 83k 15k",
            ],
            &[
                "read -P 0x77 48k 15k",
                "read -P 0x88 66k 14k",
                "read -P 0x99 83k 15k",
            ],
            &[(63 * K, 6), (80 * K, 6), (98 * K, 4)],
        ),
    ];
    for (writes, reads, gaps) in sections {
        for w in writes {
            r.io("t.vmdk", &cmds(&[w]));
        }
        for (read, (off, sectors)) in reads.iter().zip(gaps) {
            r.io("t.vmdk", &cmds(&[read]));
            r.io_stdin("t.vmdk", &backing_io(*off, *sectors, "read"));
        }
    }
    r.check("t.vmdk");
    r.same("t.vmdk");
}

/// iotest 059, "Testing invalid granularity / too big L2 table size / too big L1 table
/// size": header fields poked in a fresh image. Both tools refuse to open it; ours names
/// the file and the field. qemu-io on our poked image prints exactly 059.out's line, so
/// the header we create has qemu's layout.
#[test]
fn iotest_059_corrupt_header_fields_are_refused() {
    let r = Replay::new();
    let cases: [(&[Poke], &str, &str); 3] = [
        (
            &[(20, &[0xff; 8])],
            "grain size",
            "Invalid granularity, image may be corrupt",
        ),
        (
            &[(44, &[0xff; 4])],
            "grain table size",
            "L2 table size too big",
        ),
        (
            &[(16, &[0xff; 4]), (44, &[1, 0, 0, 0])],
            "capacity",
            "L1 size too big",
        ),
    ];
    for (pokes, ours_says, qemu_says) in cases {
        let out = r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "64M"]);
        assert_eq!(
            out,
            "Formatting 'TEST_DIR/t.vmdk', fmt=vmdk size=67108864 compat6=off hwversion=undefined\n"
        );
        let img = r.ours("t.vmdk");
        for (offset, bytes) in pokes {
            patch(&img, *offset, bytes);
        }
        let ours = vmdk_io(&img, &["read 0 512"]);
        assert_eq!((ours.code, ours.stdout.as_str()), (1, ""));
        assert!(
            ours.stderr.starts_with(&format!("vmdk: '{}': ", s(&img)))
                && ours.stderr.contains(ours_says),
            "{}",
            ours.stderr
        );
        let theirs = tool("qemu-io", &["-f", "vmdk", "-c", "read 0 512", &s(&img)]);
        assert_eq!(theirs.code, 1);
        assert!(
            theirs
                .stderr
                .contains(&format!("can't open device {}: {qemu_says}", s(&img))),
            "{}",
            theirs.stderr
        );
    }
}

/// iotest 059, "Testing monolithicFlat creation and opening" and "... with zeroed_grain":
/// a 2G monolithicFlat image; zeroed_grain is refused for flat images, by both, with
/// qemu's message, and nothing is left behind.
#[test]
fn iotest_059_monolithic_flat_and_zeroed_grain() {
    let r = Replay::new();
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "{}/t.vmdk",
        "2G",
    ]);
    // _img_info: image, format and virtual size lines as qemu-img's.
    let head = |out: &str| out.lines().take(3).collect::<Vec<_>>().join("\n");
    let ours = vmdk_ok(&["info", &s(&r.ours("t.vmdk"))]);
    let theirs = qemu_img(&["info", &s(&r.ours("t.vmdk"))]);
    assert_eq!(head(&ours), head(&theirs));
    assert!(
        ours.contains("virtual size: 2 GiB (2147483648 bytes)\n"),
        "{ours}"
    );
    r.check("t.vmdk");
    r.same("t.vmdk");

    for d in [&r.ours, &r.qemu] {
        for f in ["t.vmdk", "t-flat.vmdk"] {
            std::fs::remove_file(d.join(f)).unwrap();
        }
    }
    let (ours, theirs) = r.img_fails(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat,zeroed_grain=on",
        "{}/t.vmdk",
        "2G",
    ]);
    assert_eq!(
        ours,
        "vmdk: 'TEST_DIR/t.vmdk': Flat image can't enable zeroed grain\n"
    );
    assert_eq!(
        theirs,
        "qemu-img: TEST_DIR/t.vmdk: Flat image can't enable zeroed grain\n"
    );
    assert_eq!(std::fs::read_dir(&r.ours).unwrap().count(), 0);
}

/// iotest 059, "Testing big twoGbMaxExtentFlat": a 1000G image of 500 flat extents (a
/// descriptor far bigger than one sector), its extents as qemu-img lists them, and (added
/// in QEMU 8.2 with the fix for vmdk_write_cid on big descriptors) a write at 990G that
/// must update the CID without damaging the descriptor.
#[test]
fn iotest_059_big_two_gb_max_extent_flat() {
    let r = Replay::new();
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentFlat",
        "{}/t.vmdk",
        "1000G",
    ]);
    let img = s(&r.ours("t.vmdk"));
    let extents = |out: &str| -> Vec<(u64, String)> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["format-specific"]["data"]["extents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["virtual-size"].as_u64().unwrap(),
                    e["filename"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let ours = extents(&vmdk_ok(&["info", "--output=json", &img]));
    assert_eq!(ours.len(), 500);
    assert!(ours.iter().all(|(size, _)| *size == 2 * G));
    assert!(ours[499].1.ends_with("/t-f500.vmdk"), "{:?}", ours[499]);
    assert_eq!(ours, extents(&qemu_img(&["info", "--output=json", &img])));

    let out = r.io("t.vmdk", &cmds(&["write 990G 512 -P 89"]));
    assert!(
        out.starts_with("wrote 512/512 bytes at offset 1063004405760\n"),
        "{out}"
    );
    let out = r.io("t.vmdk", &cmds(&["read 990G 512 -P 89"]));
    assert!(
        out.starts_with("read 512/512 bytes at offset 1063004405760\n"),
        "{out}"
    );
    // The descriptor still lists every extent after the CID update.
    assert_eq!(ours, extents(&qemu_img(&["info", "--output=json", &img])));
    r.check("t.vmdk");
}

/// iotest 059, "Testing malformed VMFS extent description line": a VMFS extent with an
/// offset. Both refuse the line itself, with the same message, before looking for the
/// extent file.
#[test]
fn iotest_059_malformed_vmfs_extent_line() {
    let r = Replay::new();
    let text = "# Disk DescriptorFile\nversion=1\nCID=58ab4847\nparentCID=ffffffff\n\
                createType=\"vmfs\"\n\n# Extent description\nRW 12582912 VMFS \"dummy.vmdk\" 1\n";
    for d in [&r.ours, &r.qemu] {
        std::fs::write(d.join("t.vmdk"), text).unwrap();
    }
    let (ours, theirs) = r.img_fails(&["info", "{}/t.vmdk"]);
    let message = "Invalid extent line: RW 12582912 VMFS \"dummy.vmdk\" 1";
    assert!(ours.contains(message), "{ours}");
    assert!(theirs.contains(message), "{theirs}");
}

/// iotest 059, "Testing truncated sparse": a 100G monolithicSparse image cut to 10M.
/// Both refuse it with the same size in the message.
#[test]
fn iotest_059_truncated_sparse() {
    let r = Replay::new();
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        "{}/t.vmdk",
        "100G",
    ]);
    for d in [&r.ours, &r.qemu] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("t.vmdk"))
            .unwrap();
        f.set_len(10 * M).unwrap();
    }
    let (ours, theirs) = r.img_fails(&["info", "{}/t.vmdk"]);
    assert!(
        ours.contains("t.vmdk") && ours.contains("truncated, expecting at least 13172736 bytes"),
        "{ours}"
    );
    assert!(
        theirs.contains("File truncated, expecting at least 13172736 bytes"),
        "{theirs}"
    );
}

/// iotest 059, "Converting to streamOptimized from image with small cluster size": a
/// qcow2 source with 4k clusters (written by qemu-io on both sides: `vmdk io` writes only
/// VMDK), converted to streamOptimized.
#[test]
fn iotest_059_qcow2_with_small_clusters_to_stream_optimized() {
    let r = Replay::new();
    for d in [&r.ours, &r.qemu] {
        let q = s(&d.join("t.vmdk.qcow2"));
        qemu_create_as("qcow2", &q, "1G", "cluster_size=4096");
        for c in ["write -P 0xa 0 512", "write -P 0xb 10240 512"] {
            tool("qemu-io", &["-f", "qcow2", "-c", c, &q]).expect(0, c);
        }
    }
    r.img(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        "{}/t.vmdk.qcow2",
        "{}/t.vmdk",
    ]);
    r.check("t.vmdk");
    r.same("t.vmdk");
    qemu_io(
        &r.ours("t.vmdk"),
        &[
            "read -P 0xa 0 512",
            "read -P 0 512 9728",
            "read -P 0xb 10240 512",
            "read -P 0 10752 1M",
        ],
    );
}

/// iotest 059, "Testing version 3": qemu's sample of a version-3 streamOptimized image
/// (made by ESXi): its size and cluster size as qemu-img reports them, and the iotest's
/// 100 read-only pattern reads, with qemu-io's output.
#[test]
fn iotest_059_version3_sample() {
    let r = Replay::new();
    for d in [&r.ours, &r.qemu] {
        // (A read-only copy, as the sample is: the iotest reads it with `-r`.)
        std::fs::copy(sample("iotest-version3.vmdk"), d.join("t.vmdk")).unwrap();
    }
    let img = s(&r.ours("t.vmdk"));
    let ours = vmdk(&["info", "--output=json", &img]).json();
    let theirs: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", &img])).unwrap();
    for key in ["virtual-size", "cluster-size", "format"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    assert_eq!(ours["virtual-size"], 16 * G);
    assert_eq!(ours["cluster-size"], 65536);
    let reads: Vec<String> = (0..100u64)
        .map(|i| {
            format!(
                "read -P {} {} 512",
                i % 10 + 0x30,
                i * 64 * 1024 * 10 + i * 512
            )
        })
        .collect();
    let out = r.io_with("t.vmdk", &["-r"], &reads);
    assert_eq!(out.matches("read 512/512 bytes at offset ").count(), 100);
    assert!(
        out.contains("read 512/512 bytes at offset 64931328\n"),
        "{out}"
    );
}

/// iotest 059, "Testing 4TB monolithicFlat creation and IO": a write at 900G into a 4T
/// flat extent and qemu-io's hex dump of it (`read -v`), line for line.
#[test]
fn iotest_059_4tb_monolithic_flat_io() {
    let r = Replay::new();
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        "{}/t.vmdk",
        "4T",
    ]);
    let info = vmdk_ok(&["info", &s(&r.ours("t.vmdk"))]);
    assert!(
        info.contains("virtual size: 4 TiB (4398046511104 bytes)\n"),
        "{info}"
    );
    r.io("t.vmdk", &cmds(&["write -P 0xa 900G 512"]));
    let out = r.io("t.vmdk", &cmds(&["read -v 900G 1024"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 64 + 2, "{out}");
    assert_eq!(
        lines[0],
        "e100000000:  0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a 0a  ................"
    );
    assert_eq!(
        lines[32],
        "e100000200:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................"
    );
    assert_eq!(lines[64], "read 1024/1024 bytes at offset 966367641600");
    r.check("t.vmdk");
}

/// iotest 059, "Testing qemu-img map on extents": writes across the 2G extent boundary and
/// at 5G in monolithicSparse and twoGbMaxExtentSparse 31G images; `map` prints qemu-img
/// map's table (host offsets included, so grains land where qemu puts them).
#[test]
fn iotest_059_map_on_extents() {
    for fmt in ["monolithicSparse", "twoGbMaxExtentSparse"] {
        let r = Replay::new();
        let sub = format!("subformat={fmt}");
        r.img(&["create", "-f", "vmdk", "-o", &sub, "{}/t.vmdk", "31G"]);
        for w in ["write 65024 1k", "write 2147483136 1k", "write 5G 1k"] {
            r.io("t.vmdk", &cmds(&[w]));
        }
        let map = r.img(&["map", "{}/t.vmdk"]);
        assert!(map.starts_with("Offset          Length          Mapped to       File\n"));
        assert_eq!(
            map.lines().count(),
            if fmt == "monolithicSparse" { 4 } else { 5 }
        );
        // And qemu-img's map of our image is ours.
        let o = s(&r.ours("t.vmdk"));
        assert_eq!(vmdk_ok(&["map", &o]), qemu_img(&["map", &o]), "{fmt}");
        r.check("t.vmdk");
        r.same("t.vmdk");
    }
}

/// iotest 059, "Testing afl image with a very large capacity": qemu's fuzzer-found sample.
/// Both refuse it (qemu: "L1 size too big"); ours says why, names the file, and neither
/// panics nor allocates for the claimed capacity.
#[test]
fn iotest_059_afl9_sample() {
    let d = tempdir();
    let img = d.path().join("afl9.vmdk");
    std::fs::copy(sample("afl9.vmdk"), &img).unwrap();
    let i = s(&img);
    for args in [
        &["info", &i][..],
        &["io", "-r", "-c", "read 0 512", &i],
        &["map", &i],
        &["convert", "-O", "raw", &i, &s(&d.path().join("x.raw"))],
    ] {
        let r = vmdk(args);
        assert_eq!((r.code, r.stdout.as_str()), (1, ""), "{args:?}");
        assert!(
            r.stderr.starts_with(&format!("vmdk: '{i}': ")),
            "{}",
            r.stderr
        );
    }
    let q = tool("qemu-img", &["info", &i]);
    assert_eq!(q.code, 1);
    assert_contains!(q.stderr, "L1 size too big");
}

/// Extent names with spaces (059's descriptor edge cases; qemu quotes names in the
/// descriptor): a twoGbMaxExtentSparse image whose name has spaces, written across an
/// extent boundary; qemu reads it and lists the same extent names.
#[test]
fn iotest_059_extent_names_with_spaces() {
    let r = Replay::new();
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentSparse",
        "{}/my disk.vmdk",
        "5G",
    ]);
    r.io(
        "my disk.vmdk",
        &cmds(&["write -P 0x42 2047M 2M", "write -P 0x43 4G 64k"]),
    );
    r.check("my disk.vmdk");
    r.same("my disk.vmdk");
    let img = s(&r.ours("my disk.vmdk"));
    let names = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["format-specific"]["data"]["extents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["filename"].as_str().unwrap().to_string())
            .collect()
    };
    let ours = names(&vmdk_ok(&["info", "--output=json", &img]));
    assert_eq!(ours.len(), 3);
    assert!(ours[0].ends_with("/my disk-s001.vmdk"), "{ours:?}");
    assert_eq!(ours, names(&qemu_img(&["info", "--output=json", &img])));
}

/// iotest 063, "convert -n - convert without creation": `-n` without a target fails and
/// creates nothing, into a copy succeeds, both copies convert to the same raw bytes, a raw
/// file converts back into the image, and a smaller target is refused. (The iotest's
/// image is empty; we write data into it first, so the conversions carry something.)
#[test]
fn iotest_063_convert_without_creation() {
    let r = Replay::new();
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "4M"]);
    r.io(
        "t.vmdk",
        &cmds(&[
            "write -P 0x11 0 64k",
            "write -P 0x22 1000k 100k",
            "write -P 0x33 4032k 64k",
        ]),
    );

    // == Testing conversion with -n fails with no target file ==
    r.img_fails(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "vmdk",
        "-n",
        "{}/t.vmdk",
        "{}/t.vmdk.orig",
    ]);
    assert!(!r.ours("t.vmdk.orig").exists());
    // == Testing conversion with -n succeeds with a target file ==
    r.cp("t.vmdk", "t.vmdk.orig");
    r.img(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "vmdk",
        "-n",
        "{}/t.vmdk",
        "{}/t.vmdk.orig",
    ]);
    // == Testing conversion to raw is the same after conversion with -n ==
    r.img(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        "{}/t.vmdk",
        "{}/t.vmdk.raw1",
    ]);
    r.img(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "raw",
        "{}/t.vmdk.orig",
        "{}/t.vmdk.raw2",
    ]);
    let raw1 = std::fs::read(r.ours("t.vmdk.raw1")).unwrap();
    assert!(raw1 == std::fs::read(r.ours("t.vmdk.raw2")).unwrap());
    assert!(raw1 == std::fs::read(r.qemu("t.vmdk.raw1")).unwrap());
    // == Testing conversion back to original format ==
    r.img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-n",
        "{}/t.vmdk.raw2",
        "{}/t.vmdk",
    ]);
    r.check("t.vmdk");
    r.same("t.vmdk");
    r.same("t.vmdk.orig");
    // == Testing conversion to a smaller file fails ==
    r.mv("t.vmdk", "t.vmdk.orig");
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk", "2M"]);
    let (ours, _) = r.img_fails(&[
        "convert",
        "-f",
        "vmdk",
        "-O",
        "vmdk",
        "-n",
        "{}/t.vmdk.orig",
        "{}/t.vmdk",
    ]);
    assert!(ours.contains("smaller"), "{ours}");
    // Refused before anything was written.
    r.check("t.vmdk");
    vmdk_ok(&["io", "-c", "read -P 0 0 2M", &s(&r.ours("t.vmdk"))]);
}

/// Rewrites `parentFileNameHint="FROM"` to `"TO"` inside a sparse file's embedded
/// descriptor, in place (the descriptor's zero padding takes up the difference), as 225's
/// `-blockdev` override points the overlay at another backing node.
fn point_backing_at(image: &Path, from: &str, to: &str) {
    let mut data = std::fs::read(image).unwrap();
    let old = format!("parentFileNameHint=\"{from}\"");
    let new = format!("parentFileNameHint=\"{to}\"");
    let at = data
        .windows(old.len())
        .position(|w| w == old.as_bytes())
        .expect("parentFileNameHint");
    let end = at + data[at..].iter().position(|&b| b == 0).unwrap();
    let room = data[end..].iter().take_while(|&&b| b == 0).count();
    let text = String::from_utf8(data[at..end].to_vec())
        .unwrap()
        .replacen(&old, &new, 1);
    assert!(text.len() <= end - at + room, "no room in the descriptor");
    let old_len = end - at;
    data[at..at + text.len()].copy_from_slice(text.as_bytes());
    if text.len() < old_len {
        data[at + text.len()..end].fill(0);
    }
    std::fs::write(image, data).unwrap();
}

/// iotest 225, "Test vmdk backing file correlation": an overlay over its own base reads;
/// over an unrelated VMDK (its CID is not the overlay's parentCID) and over a non-VMDK
/// backing it must not. qemu opens the unrelated case and fails each read ("read failed:
/// Invalid argument"); we refuse at open, naming both CIDs, unless asked with
/// `--ignore-cid-mismatch`: a clear error before any I/O rather than a failing read.
#[test]
fn iotest_225_vmdk_backing_file_correlation() {
    let r = Replay::new();
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk.base", "1M"]);
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk.not_base", "1M"]);
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.base",
        "-F",
        "vmdk",
        "{}/t.vmdk",
    ]);

    // === Testing fitting VMDK backing image ===
    let out = r.io("t.vmdk", &cmds(&["read 0 512"]));
    assert!(out.starts_with("read 512/512 bytes at offset 0\n"), "{out}");

    // === Testing unrelated VMDK backing image ===
    for (side, d) in [("ours", &r.ours), ("qemu", &r.qemu)] {
        let (from, to) = (s(&d.join("t.vmdk.base")), s(&d.join("t.vmdk.not_base")));
        point_backing_at(&d.join("t.vmdk"), &from, &to);
        assert_eq!(
            tool("qemu-img", &["info", &s(&d.join("t.vmdk"))]).code,
            0,
            "{side}: the edited descriptor still parses"
        );
    }
    let ours = vmdk_io(&r.ours("t.vmdk"), &["read 0 512"]);
    assert_eq!((ours.code, ours.stdout.as_str()), (1, ""));
    assert!(
        ours.stderr.contains("parentCID") && ours.stderr.contains("t.vmdk.not_base"),
        "{}",
        ours.stderr
    );
    let theirs = tool(
        "qemu-io",
        &["-f", "vmdk", "-c", "read 0 512", &s(&r.qemu("t.vmdk"))],
    );
    assert_eq!(theirs.code, 1);
    assert_contains!(theirs.stdout, "read failed: Invalid argument");
    let forced = vmdk(&[
        "io",
        "--ignore-cid-mismatch",
        "-c",
        "read -P 0 0 512",
        &s(&r.ours("t.vmdk")),
    ]);
    assert_eq!(forced.code, 0, "{}", forced.stderr);

    // === Testing non-VMDK backing image === (225 uses a null-co node; a raw file here)
    for d in [&r.ours, &r.qemu] {
        std::fs::write(d.join("t.vmdk.raw"), vec![0u8; M as usize]).unwrap();
        let (from, to) = (s(&d.join("t.vmdk.not_base")), s(&d.join("t.vmdk.raw")));
        point_backing_at(&d.join("t.vmdk"), &from, &to);
    }
    let ours = vmdk_io(&r.ours("t.vmdk"), &["read 0 512"]);
    assert_eq!((ours.code, ours.stdout.as_str()), (1, ""));
    assert!(
        ours.stderr.contains("t.vmdk.raw") && ours.stderr.contains("not a VMDK image"),
        "{}",
        ours.stderr
    );
    // qemu opens VMDK backing files as VMDK only, and refuses too.
    let theirs = tool(
        "qemu-io",
        &["-f", "vmdk", "-c", "read 0 512", &s(&r.qemu("t.vmdk"))],
    );
    assert_eq!(theirs.code, 1);
    assert_contains!(theirs.stderr, "Could not open backing file");
}

/// iotest 279, "qemu-img info --backing-chain": base <- mid <- top; `info --backing-chain`
/// prints qemu-img's lines for every layer (the `--image-opts` half of the iotest is qemu
/// block-layer syntax and has no counterpart).
#[test]
fn iotest_279_info_backing_chain() {
    let r = Replay::new();
    r.img(&["create", "-f", "vmdk", "{}/t.vmdk.base", "64M"]);
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.base",
        "-F",
        "vmdk",
        "{}/t.vmdk.mid",
    ]);
    r.img(&[
        "create",
        "-f",
        "vmdk",
        "-b",
        "{}/t.vmdk.mid",
        "-F",
        "vmdk",
        "{}/t.vmdk",
    ]);
    // _filter_img_info keeps the top-level lines; disk usage is the file system's.
    let filtered = |out: &str, dir: &Path| -> String {
        out.lines()
            .filter(|l| {
                !l.starts_with(' ')
                    && !l.starts_with("Format specific information:")
                    && !l.starts_with("Child node")
                    && !l.starts_with("disk size:")
            })
            .map(|l| format!("{}\n", l.replace(&s(dir), "TEST_DIR")))
            .collect()
    };
    let ours = vmdk_ok(&["info", "--backing-chain", &s(&r.ours("t.vmdk"))]);
    let theirs = qemu_img(&["info", "--backing-chain", &s(&r.qemu("t.vmdk"))]);
    let ours = filtered(&ours, &r.ours);
    assert_eq!(ours, filtered(&theirs, &r.qemu));
    assert_eq!(ours.matches("image: TEST_DIR/t.vmdk").count(), 3, "{ours}");
    assert!(
        ours.contains("backing file: TEST_DIR/t.vmdk.mid\nbacking file format: vmdk\n"),
        "{ours}"
    );
    // The JSON chain too: each layer and its backing file, and qemu-img reads our chain.
    let chain = |v: serde_json::Value| -> Vec<(String, Option<String>)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["filename"].as_str().unwrap().to_string(),
                    l["backing-filename"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    let top = s(&r.ours("t.vmdk"));
    let ours = chain(vmdk(&["info", "--output=json", "--backing-chain", &top]).json());
    let theirs = chain(
        serde_json::from_str(&qemu_img(&[
            "info",
            "--output=json",
            "--backing-chain",
            &top,
        ]))
        .unwrap(),
    );
    assert_eq!(ours, theirs);
    assert_eq!(ours.len(), 3);
    assert_eq!(ours[2].1, None);
}
