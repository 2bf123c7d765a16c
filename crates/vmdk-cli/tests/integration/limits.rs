//! Resource limits: images whose descriptor, directories or virtual size would drive memory
//! or time out of bounds. Each command runs in a child process under a 1 GiB address-space
//! limit (so an unbounded allocation aborts it instead of swapping the machine), and its
//! peak resident memory and wall time are measured and bounded.

use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmdk_test_support::qemu::qemu_create_as;

use crate::common::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Address space allowed to each command.
const LIMIT_AS: u64 = GIB;
/// Every command here must finish well within this.
const TIME_LIMIT: Duration = Duration::from_secs(60);

/// How a limited run went.
struct Limited {
    run: Run,
    /// Peak resident memory in bytes.
    max_rss: u64,
    took: Duration,
    what: String,
}

impl Limited {
    /// The stdout, after asserting success and that memory stayed under `rss`.
    fn ok_under(self, rss: u64) -> String {
        assert!(
            self.max_rss < rss,
            "{}: peak RSS {} MiB (bound {} MiB)",
            self.what,
            self.max_rss / MIB,
            rss / MIB
        );
        eprintln!(
            "{}: {:?}, peak RSS {} MiB",
            self.what,
            self.took,
            self.max_rss / MIB
        );
        self.run.expect(0, &self.what)
    }
}

/// Run `vmdk ARGS` in a child limited to [`LIMIT_AS`] of address space and `nofile` open
/// files (`None`: as many as the hard limit allows); killed after [`TIME_LIMIT`].
fn vmdk_limited(args: &[&str], nofile: Option<u64>) -> Limited {
    let what = format!("vmdk {}", args.join(" "));
    let mut out = tempfile::tempfile().unwrap();
    let mut err = tempfile::tempfile().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmdk"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap());
    // SAFETY: the closure runs in the forked child before exec. It only calls getrlimit and
    // setrlimit (async-signal-safe) on stack values, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let set = |res, cur: u64, max: u64| {
                let lim = libc::rlimit {
                    rlim_cur: cur as libc::rlim_t,
                    rlim_max: max as libc::rlim_t,
                };
                if libc::setrlimit(res, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            set(libc::RLIMIT_AS, LIMIT_AS, LIMIT_AS)?;
            let mut files = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let max = files.rlim_max;
            set(libc::RLIMIT_NOFILE, nofile.unwrap_or(max).min(max), max)
        });
    }
    let child = cmd.spawn().expect("spawning vmdk");
    let pid = child.id() as libc::pid_t;
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child with pointers to live locals. `child` is never
        // waited on through std afterwards (dropping a `Child` does not wait).
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if t0.elapsed() > TIME_LIMIT {
            // SAFETY: signalling our own, not yet reaped, child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("{what}: still running after {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    };
    Limited {
        run: Run {
            code,
            stdout: read(&mut out),
            stderr: read(&mut err),
        },
        max_rss: usage.ru_maxrss as u64 * 1024,
        took,
        what,
    }
}

fn descriptor(dir: &Path, name: &str, create_type: &str, parent: Option<&str>, lines: &[String]) {
    let parent = parent.map_or(String::new(), |p| format!("parentFileNameHint=\"{p}\"\n"));
    let text = format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"{create_type}\"\n{parent}\n# Extent description\n{}\n",
        lines.join("\n")
    );
    std::fs::write(dir.join(name), text).unwrap();
}

/// A hand-made VMDK4 sparse extent whose directory is all unallocated: `capacity` and
/// `grain` in sectors, 512-entry tables, the directory (and its redundant copy when `rgd`)
/// right after the header. The file is as long as its metadata but all holes: it takes a
/// few KiB of disk whatever its directory's size.
fn empty_sparse_extent(path: &Path, capacity: u64, grain: u64, rgd: bool) {
    let gd_entries = capacity.div_ceil(grain * 512);
    let gd_sectors = (gd_entries * 4).div_ceil(512);
    let (rgd_at, gd_at): (u64, u64) = if rgd { (1, 1 + gd_sectors) } else { (0, 1) };
    let end = gd_at + gd_sectors;
    let mut h = vec![0u8; 512];
    h[0..4].copy_from_slice(&0x564d_444bu32.to_le_bytes());
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    let flags: u32 = if rgd { 3 } else { 1 }; // newline detection, redundant directory
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity.to_le_bytes());
    h[20..28].copy_from_slice(&grain.to_le_bytes());
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[48..56].copy_from_slice(&rgd_at.to_le_bytes());
    h[56..64].copy_from_slice(&gd_at.to_le_bytes());
    h[64..72].copy_from_slice(&end.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    let f = std::fs::File::create(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &h, 0).unwrap();
    f.set_len(end * 512).unwrap();
}

fn one_entry(json: &str, what: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 1, "{what}: {json}");
    a[0].clone()
}

/// A 513 KB descriptor naming one small sparse file 19000 times (40 TB of disk): the lines
/// share one opened extent, so neither memory nor file descriptors grow with them (it runs
/// with 64 descriptors allowed), and map and info stay small.
#[test]
fn descriptor_naming_one_sparse_file_19000_times() {
    let d = tempdir();
    // qemu-img writes all 32 grain tables of a 2 GiB extent, so every line has tables to
    // load and cache.
    qemu_create(d.path(), "one.vmdk", "2G", &[]);
    let sectors = 2 * GIB / 512;
    let lines: Vec<String> = (0..19000)
        .map(|_| format!("RW {sectors} SPARSE \"one.vmdk\""))
        .collect();
    descriptor(d.path(), "many.vmdk", "twoGbMaxExtentSparse", None, &lines);
    let many = s(&d.path().join("many.vmdk"));
    let out = vmdk_limited(&["map", "--output=json", &many], Some(64)).ok_under(64 * MIB);
    let e = one_entry(&out, "map");
    assert_eq!(e["length"], 19000 * 2 * GIB);
    assert_eq!(e["present"], false);
    vmdk_limited(&["info", &many], Some(64)).ok_under(64 * MIB);
    vmdk_limited(&["compare", &many, &many], Some(64)).ok_under(64 * MIB);
}

/// A twoGbMaxExtentSparse disk of 10000 extents (20 TB): map, info, compare and convert
/// stay within a few tens of MiB, as for a one-extent disk (they took 600 MB when each
/// extent had a table cache of its own). The extent files are hard links to one file qemu
/// made: 10000 distinct files to open, cheap to make.
#[test]
fn ten_thousand_extent_two_gb_max_extent_sparse() {
    let d = tempdir();
    qemu_create_sub(d.path(), "base.vmdk", "2G", "twoGbMaxExtentSparse");
    let base = d.path().join("base-s001.vmdk");
    assert!(base.exists(), "qemu-img did not make base-s001.vmdk");
    // One descriptor per extent must fit the hard limit on open files.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let n = 10000.min(lim.rlim_max.saturating_sub(64));
    if n < 10000 {
        eprintln!("note: the open-file hard limit allows only {n} extents");
    }
    assert!(
        n >= 1000,
        "the open-file hard limit ({}) is too low",
        lim.rlim_max
    );
    let sectors = 2 * GIB / 512;
    let mut lines = Vec::new();
    for i in 1..=n {
        let name = format!("t-s{i:05}.vmdk");
        std::fs::hard_link(&base, d.path().join(&name)).unwrap();
        lines.push(format!("RW {sectors} SPARSE \"{name}\""));
    }
    descriptor(d.path(), "t.vmdk", "twoGbMaxExtentSparse", None, &lines);
    let t = s(&d.path().join("t.vmdk"));

    let out = vmdk_limited(&["map", "--output=json", &t], None).ok_under(64 * MIB);
    let e = one_entry(&out, "map");
    assert_eq!(e["length"], n * 2 * GIB);
    assert_eq!(e["present"], false);
    let info = vmdk_limited(&["info", "--output=json", &t], None).ok_under(64 * MIB);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], n * 2 * GIB);
    // Against an all-zero disk of the same size (comparing the image with itself would
    // need twice the file descriptors).
    descriptor(
        d.path(),
        "z.vmdk",
        "monolithicFlat",
        None,
        &[format!("RW {} ZERO", n * sectors)],
    );
    let z = s(&d.path().join("z.vmdk"));
    let out = vmdk_limited(&["compare", &t, &z], None).ok_under(64 * MIB);
    assert!(out.contains("Images are identical."), "{out}");
    let dst = s(&d.path().join("out.vmdk"));
    vmdk_limited(
        &[
            "convert",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            &t,
            &dst,
        ],
        None,
    )
    .ok_under(64 * MIB);
    let v: serde_json::Value =
        serde_json::from_str(&qemu_img(&["info", "--output=json", &dst])).unwrap();
    assert_eq!(v["virtual-size"], n * 2 * GIB);
}

/// Directories are counted as they are really held (4 bytes an entry, the redundant copy
/// included, no whole-directory read buffers) and the bound is checked before anything is
/// allocated. A hand-made extent with the largest directory QEMU accepts (32M entries, and
/// a redundant copy) is a 256 MiB file of holes taking 4 KiB of disk; opening it used to
/// peak at 921 MB, a chain of two at 1.45 GB.
#[test]
fn huge_grain_directories_cost_what_they_are_counted() {
    let d = tempdir();
    // 2^41 sectors (1 PiB) at 64 KiB grains: 32M directory entries.
    let capacity = 1u64 << 41;
    for i in 0..3 {
        empty_sparse_extent(&d.path().join(format!("e{i}.vmdk")), capacity, 128, true);
        let parent = (i > 0).then(|| format!("d{}.vmdk", i - 1));
        let line = format!("RW {capacity} SPARSE \"e{i}.vmdk\"");
        descriptor(
            d.path(),
            &format!("d{i}.vmdk"),
            "twoGbMaxExtentSparse",
            parent.as_deref(),
            &[line],
        );
    }
    let layer = |i: usize| s(&d.path().join(format!("d{i}.vmdk")));
    // 256 MiB of directories.
    vmdk_limited(&["info", &layer(0)], None).ok_under(256 * MIB + 64 * MIB);
    // Two layers: 512 MiB, the bound.
    let out =
        vmdk_limited(&["map", "--output=json", &layer(1)], None).ok_under(512 * MIB + 64 * MIB);
    assert_eq!(one_entry(&out, "map")["length"], capacity * 512);
    // Three: refused before the third directory is allocated.
    let r = vmdk_limited(&["map", "--output=json", &layer(2)], None);
    assert!(
        r.max_rss < 512 * MIB + 64 * MIB,
        "peak RSS {} MiB",
        r.max_rss / MIB
    );
    assert_eq!(r.run.code, 1, "{}", r.run.stderr);
    assert!(
        r.run.stderr.contains("grain directories") && r.run.stderr.contains("e0.vmdk"),
        "{}",
        r.run.stderr
    );
}

/// Sizes past what QEMU and NBD clients can address (2^63 - 2^30) are refused at open, with
/// a message saying so; a 224-byte descriptor used to make `map` run for 18 minutes.
#[test]
fn absurd_virtual_size_is_refused() {
    let d = tempdir();
    for sectors in [(1u64 << 55) - 1, ((1u64 << 63) - (1 << 30)) / 512 + 1] {
        descriptor(
            d.path(),
            "huge.vmdk",
            "monolithicFlat",
            None,
            &[format!("RW {sectors} ZERO")],
        );
        let huge = s(&d.path().join("huge.vmdk"));
        for args in [
            vec!["info", &huge],
            vec!["map", &huge],
            vec!["compare", &huge, &huge],
        ] {
            let r = vmdk_limited(&args, None);
            assert!(r.took < Duration::from_secs(5), "{}: {:?}", r.what, r.took);
            assert_ne!(r.run.code, 0, "{}: {}", r.what, r.run.stdout);
            assert!(
                r.run.stderr.contains("huge.vmdk") && r.run.stderr.contains("QEMU"),
                "{}: {}",
                r.what,
                r.run.stderr
            );
        }
    }
    // The largest size QEMU takes is accepted.
    let sectors = ((1u64 << 63) - (1 << 30)) / 512;
    descriptor(
        d.path(),
        "max.vmdk",
        "monolithicFlat",
        None,
        &[format!("RW {sectors} ZERO")],
    );
    let info = vmdk_limited(
        &["info", "--output=json", &s(&d.path().join("max.vmdk"))],
        None,
    )
    .ok_under(64 * MIB);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], sectors * 512);
}

/// Mapping and comparing cost what the metadata holds, not the virtual size: a 4 EiB ZERO
/// extent, and a 4 EiB sparse extent whose (8M-entry) directory is empty, are mapped and
/// compared in moments (fixed windows made that 2^32 steps).
#[test]
fn huge_empty_disks_map_and_compare_in_moments() {
    let d = tempdir();
    let size = 1u64 << 62;
    for name in ["z1.vmdk", "z2.vmdk"] {
        descriptor(
            d.path(),
            name,
            "monolithicFlat",
            None,
            &[format!("RW {} ZERO", size / 512)],
        );
    }
    // 1 GiB grains (the largest), 512-entry tables: 8M directory entries (32 MiB).
    empty_sparse_extent(&d.path().join("sp.vmdk"), size / 512, 1 << 21, false);
    let (z1, z2, sp) = (
        s(&d.path().join("z1.vmdk")),
        s(&d.path().join("z2.vmdk")),
        s(&d.path().join("sp.vmdk")),
    );
    let quick = |args: &[&str], rss: u64| {
        let r = vmdk_limited(args, None);
        assert!(r.took < Duration::from_secs(20), "{}: {:?}", r.what, r.took);
        r.ok_under(rss)
    };
    let e = one_entry(&quick(&["map", "--output=json", &z1], 64 * MIB), "zero map");
    assert_eq!(
        (e["length"].as_u64(), &e["zero"]),
        (Some(size), &true.into())
    );
    let e = one_entry(
        &quick(&["map", "--output=json", &sp], 96 * MIB),
        "sparse map",
    );
    assert_eq!(
        (e["length"].as_u64(), &e["present"]),
        (Some(size), &false.into())
    );
    for (a, b) in [(&z1, &z2), (&z1, &sp), (&sp, &sp)] {
        let out = quick(&["compare", a, b], 96 * MIB);
        assert!(out.contains("Images are identical."), "{out}");
    }
    for (a, b) in [(&z1, &z2), (&sp, &sp)] {
        let out = quick(&["compare", "-s", a, b], 96 * MIB);
        assert!(out.contains("Images are identical."), "{out}");
    }
    // Strict mode tells zeros from unallocated, at once.
    let r = vmdk_limited(&["compare", "-s", &z1, &sp], None);
    assert!(r.took < Duration::from_secs(20), "{}: {:?}", r.what, r.took);
    assert_eq!(r.run.code, 1, "{}", r.run.stderr);
    assert_contains!(r.run.stdout, "Offset 0 block status mismatch");
    // The end of the disk, through the qemu-io style map and a read.
    let end = (size - 4096).to_string();
    let read = format!("read -P 0 {end} 4096");
    let out = quick(&["io", "-r", "-c", "map", "-c", &read, &sp], 96 * MIB);
    assert!(out.contains("not allocated"), "{out}");
}

/// `qemu-img create -f qcow2 -o cluster_size=512 [-b BACKING -F qcow2] DIR/NAME SIZE`, then
/// the `qemu-io` commands `cmds`, then every L1 entry pointed at the L2 table the first one
/// names (or, when it names none, at an all-zero cluster appended to the file): a file of a
/// few MiB whose map has an entry per cluster of a huge disk. qemu reads such files (nothing
/// checks that tables are not shared; only `qemu-img check` counts references).
fn qcow2_sharing_one_table(
    dir: &Path,
    name: &str,
    size: &str,
    backing: Option<&str>,
    cmds: &[String],
) -> std::path::PathBuf {
    let p = dir.join(name);
    let ps = s(&p);
    let mut args = vec!["create", "-q", "-f", "qcow2", "-o", "cluster_size=512"];
    if let Some(b) = backing {
        args.extend(["-b", b, "-F", "qcow2"]);
    }
    args.extend([ps.as_str(), size]);
    qemu_img(&args);
    if !cmds.is_empty() {
        let mut args = vec!["-f", "qcow2"];
        for c in cmds {
            args.extend(["-c", c.as_str()]);
        }
        args.push(&ps);
        tool("qemu-io", &args).expect(0, "qemu-io");
    }
    let (l1_size, l1_offset) = l1_of(&p);
    let mut entry = be64(&p, l1_offset);
    if entry == 0 {
        let len = std::fs::metadata(&p).unwrap().len().next_multiple_of(512);
        truncate(&p, len + 512);
        entry = len;
    }
    let l1: Vec<u8> = (0..l1_size).flat_map(|_| entry.to_be_bytes()).collect();
    patch(&p, l1_offset, &l1);
    p
}

/// A qcow2 image's L1 table: (entries, host offset).
fn l1_of(p: &Path) -> (u64, u64) {
    (u64::from(read_u32(p, 36).swap_bytes()), be64(p, 40))
}

/// A big-endian u64 of a file (qcow2's byte order).
fn be64(p: &Path, offset: u64) -> u64 {
    read_u64(p, offset).swap_bytes()
}

/// `vmdk ARGS` under the limits, expected to succeed within `secs` seconds and `rss` of
/// memory; its stdout.
fn bounded(args: &[&str], secs: u64, rss: u64) -> String {
    let r = vmdk_limited(args, None);
    assert!(
        r.took < Duration::from_secs(secs),
        "{}: {:?} (bound {secs} s)",
        r.what,
        r.took
    );
    r.ok_under(rss)
}

/// The issue's file: a 16 GiB qcow2 image of 512-byte clusters, 4 MiB long, whose L1 entries
/// all name one L2 table alternating data and holes: 32 million map entries. `measure`
/// collected them in one vector (1.3 GB, then SIGABRT under a 2 GB address-space limit,
/// where qemu-img measure takes 12 MB); it now walks in batches and steps a grain at a time
/// once a grain holds data, as qemu-img measure steps a cluster.
#[test]
fn qcow2_of_32_million_entries_measures_in_moments() {
    let d = tempdir();
    let cmds: Vec<String> = (0..64)
        .step_by(2)
        .map(|i| format!("write -P 0x5a {} 512", i * 512))
        .collect();
    let h = qcow2_sharing_one_table(d.path(), "h.qcow2", "16G", None, &cmds);
    assert!(std::fs::metadata(&h).unwrap().len() < 5 * MIB);
    // qemu reads it.
    qemu_img(&["measure", "-O", "qcow2", &s(&h)]);
    let json = |text: &str| -> serde_json::Value { serde_json::from_str(text).unwrap() };
    for sub in ["monolithicSparse", "streamOptimized"] {
        let o = format!("subformat={sub}");
        let m = json(&bounded(
            &["measure", "-O", "vmdk", "-o", &o, "--output=json", &s(&h)],
            10,
            64 * MIB,
        ));
        // Every 64 KiB grain holds data: as much as a full disk.
        let full = json(&vmdk_ok(&[
            "measure",
            "-O",
            "vmdk",
            "-o",
            &o,
            "--output=json",
            "--size",
            "16G",
        ]));
        assert_eq!(m["required"], full["fully-allocated"], "{sub}");
        assert_eq!(m["fully-allocated"], full["fully-allocated"], "{sub}");
    }
}

/// `vmdk map` of an image over the million-entry qcow2 image (one line a 32 KiB piece), then
/// its `measure -O vmdk` JSON, each within 20 s and `rss`.
fn map_and_measure_million_entries(image: &str, rss: u64) -> serde_json::Value {
    let out = bounded(&["map", image], 20, rss);
    assert_eq!(out.lines().count(), 1 + 512 * MIB as usize / 32768, "map");
    serde_json::from_str(&bounded(
        &["measure", "-O", "vmdk", "--output=json", image],
        20,
        rss,
    ))
    .unwrap()
}

/// The million-entry qcow2 image of 512-byte clusters below: one of data, then zero clusters
/// and holes alternating, in every 32 KiB of 512 MiB (all L2 tables are one).
fn million_entry_qcow2(dir: &Path) -> PathBuf {
    let mut cmds = vec!["write -P 0x5a 0 512".to_string()];
    cmds.extend(
        (1..64)
            .step_by(2)
            .map(|i| format!("write -z {} 512", i * 512)),
    );
    qcow2_sharing_one_table(dir, "w.qcow2", "512M", None, &cmds)
}

/// Every whole-disk walk over a qcow2 image of a million map entries (512 MiB of 512-byte
/// clusters: one of data, then zero clusters and holes alternating, in every 32 KiB) runs in
/// a few MiB: map, measure, convert, compare and dd (whose window over the source mapped a
/// GiB to keep 1024 entries of it, per batch).
#[test]
fn qcow2_of_a_million_entries_walks_in_bounded_memory() {
    let d = tempdir();
    let w = million_entry_qcow2(d.path());
    let ws = s(&w);
    // The pattern: 0x5a in the first 512 bytes of every 32 KiB, zeros elsewhere (`skip` is a
    // multiple of 32 KiB).
    let check = |p: &Path, skip: u64| {
        use std::io::Read;
        let mut f = std::fs::File::open(p).unwrap();
        let mut buf = vec![0u8; MIB as usize];
        let mut len = skip;
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            // Whole 32 KiB blocks: reads of a regular file come back full until its end.
            for block in buf[..n].chunks(32768) {
                let ok =
                    block[..512].iter().all(|&b| b == 0x5a) && block[512..].iter().all(|&b| b == 0);
                assert!(ok, "{}: the 32 KiB at {len} differ", p.display());
                len += block.len() as u64;
            }
        }
        assert_eq!(len, 512 * MIB, "{}", p.display());
    };
    let rss = 48 * MIB;
    let m = map_and_measure_million_entries(&ws, rss);
    assert_eq!(m["required"], m["fully-allocated"]);
    let raw = d.path().join("w.raw");
    bounded(&["convert", "-O", "raw", &ws, &s(&raw)], 20, rss);
    check(&raw, 0);
    let out = bounded(&["compare", &ws, &s(&raw)], 20, rss);
    assert!(out.contains("Images are identical."), "{out}");
    let dd = d.path().join("dd.raw");
    bounded(
        &[
            "dd",
            &format!("if={ws}"),
            &format!("of={}", s(&dd)),
            "bs=1M",
            "skip=1",
        ],
        20,
        rss,
    );
    check(&dd, MIB);
}

/// A 16 GiB qcow2 image of 512-byte clusters whose 524,288 L1 entries each name an L2 table of
/// their own (holes of the file, so all empty) goes through 16 times more tables than the
/// L2 cache holds. The cache scanned its list per lookup and shifted it per eviction: 16 s
/// a walk, twice that to compare (qemu-img map takes 90 s on it).
#[test]
fn qcow2_of_half_a_million_tables_maps_in_moments() {
    let d = tempdir();
    let p = d.path().join("d.qcow2");
    qemu_create_as("qcow2", &p, "16G", "cluster_size=512");
    let (l1_size, l1_offset) = l1_of(&p);
    let first = std::fs::metadata(&p).unwrap().len().next_multiple_of(512);
    let l1: Vec<u8> = (0..l1_size)
        .flat_map(|i| (first + i * 512).to_be_bytes())
        .collect();
    patch(&p, l1_offset, &l1);
    truncate(&p, first + l1_size * 512);
    let ps = s(&p);
    let out = bounded(&["map", "--output=json", &ps], 10, 64 * MIB);
    let e = one_entry(&out, "map");
    assert_eq!(
        (e["length"].as_u64(), &e["present"]),
        (Some(16 * GIB), &false.into())
    );
    let out = bounded(&["compare", &ps, &ps], 10, 96 * MIB);
    assert!(out.contains("Images are identical."), "{out}");
}

/// A 16 GiB overlay of 512-byte clusters whose L1 entries all name one empty L2 table, over
/// the million-entry image: each batch of a walk stopped where the backing file filled it,
/// but only after gathering the rest of the overlay's empty run (33 million clusters), so
/// walks cost batches × overlay clusters: hours. The overlay's walk now hands on its pieces
/// as it goes and stops with the batch.
#[test]
fn qcow2_overlay_over_a_million_entries_maps_in_moments() {
    let d = tempdir();
    let w = million_entry_qcow2(d.path());
    let t = qcow2_sharing_one_table(d.path(), "t.qcow2", "16G", Some("w.qcow2"), &[]);
    let (ws, ts) = (s(&w), s(&t));
    let rss = 48 * MIB;
    let m = map_and_measure_million_entries(&ts, rss);
    let grains = 512 * MIB / 65536;
    let empty: serde_json::Value = serde_json::from_str(&vmdk_ok(&[
        "measure",
        "-O",
        "vmdk",
        "--output=json",
        "--size",
        "16G",
    ]))
    .unwrap();
    assert_eq!(
        m["required"].as_u64(),
        Some(empty["required"].as_u64().unwrap() + grains * 65536)
    );
    let out = bounded(&["compare", &ts, &ws], 20, rss);
    assert!(out.contains("Images are identical."), "{out}");
}
