//! Real VMDK files made by VMware (ESXi, Workstation, Server, vmware-vdiskmanager,
//! ovftool), VirtualBox, vmdktool, a Python stream converter and several qemu-img versions:
//! `shared/samples/realworld/` beside the repository checkout. Its README says where each
//! file comes from and what each must read as; this test takes the expectations from there.
//!
//! * Every file whose content the README lists passes `check` with exit status 0, reports
//!   the listed virtual size, and converts to exactly the listed bytes (size and sha256);
//!   where qemu-img reads the file, `qemu-img compare` finds our raw output identical.
//! * Every file the README lists as refused (extents never published, a stream cut short)
//!   is refused by every command, with a message naming the missing or refused file (or,
//!   for a createType QEMU does not open as a descriptor file, VirtualBox's raw-disk
//!   `fullDevice`, QEMU's own message), and nothing on stdout.
//!
//! The samples are read-only and some are gzip members (`prepare.sh` expands them in
//! place), so each test works on a copy. Without the samples the tests fail: they are the
//! point of this file.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use sha2::{Digest, Sha256};

/// A writable copy of the samples with the gzip members expanded (what `prepare.sh` does).
fn prepared() -> tempfile::TempDir {
    let d = tempdir();
    copy_tree(&samples(), d.path());
    expand_gz(d.path());
    d
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir(&dst).unwrap();
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

fn expand_gz(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            expand_gz(&p);
        } else if p.extension().is_some_and(|e| e == "gz") {
            let out = p.with_extension("");
            if !out.exists() {
                let mut z = flate2::read::GzDecoder::new(std::fs::File::open(&p).unwrap());
                let mut f = std::fs::File::create(&out).unwrap();
                std::io::copy(&mut z, &mut f)
                    .unwrap_or_else(|e| panic!("expanding {}: {e}", p.display()));
            }
        }
    }
}

/// What the README expects of one file.
#[derive(Debug)]
enum Expect {
    /// Reads as `size` bytes with this sha256; `qemu` is false where qemu-img cannot read
    /// the file.
    Content {
        size: u64,
        sha256: String,
        qemu: bool,
    },
    /// Refused with a clear error.
    Refused,
}

/// The rows of the README's "Expected content" table: (path relative to the samples, what
/// it must read as).
fn expectations(root: &Path) -> Vec<(String, Expect)> {
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Expected content")
        .nth(1)
        .expect("README has an Expected content section");
    let section = section.split("\n## ").next().unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, content) = (cols[1].trim_matches('`'), cols[3]);
        let expect = if content.starts_with("refused") {
            Expect::Refused
        } else {
            let size = content
                .split(" bytes")
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("README row {file}: no size in {content:?}"));
            let sha256 = content
                .split("sha256 `")
                .nth(1)
                .and_then(|h| h.split('`').next())
                .filter(|h| h.len() == 64)
                .unwrap_or_else(|| panic!("README row {file}: no sha256 in {content:?}"))
                .to_string();
            Expect::Content {
                size,
                sha256,
                qemu: !content.contains("qemu-img refuses"),
            }
        };
        rows.push((file.to_string(), expect));
    }
    let readable = rows
        .iter()
        .filter(|(_, e)| matches!(e, Expect::Content { .. }))
        .count();
    // The README lists 31 readable and 11 refused files; fewer means it was not understood.
    assert!(
        readable >= 31 && rows.len() - readable >= 11,
        "README table not understood: {rows:?}"
    );
    rows
}

/// Run `qemu-img ARGS` in `dir`.
fn qemu_in(dir: &Path, args: &[&str]) -> Run {
    Run::of(Command::new("qemu-img").args(args).current_dir(dir))
}

/// sha256 of a file, reading only its data: holes (most of the all-zero 8 GiB disks) are
/// hashed as zeros without reading them.
fn sha256_file(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let zeros = vec![0u8; 4 << 20];
    let hash_zeros = |h: &mut Sha256, mut n: u64| {
        while n > 0 {
            let k = n.min(zeros.len() as u64);
            h.update(&zeros[..k as usize]);
            n -= k;
        }
    };
    let seek = |pos: u64, whence: i32| -> Option<u64> {
        // SAFETY: lseek only moves this open descriptor's file offset (which nothing here
        // uses: reads are positional); any offset and whence are valid arguments.
        let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    let mut pos = 0;
    while pos < len {
        // No data after `pos` (ENXIO): the rest is a hole.
        let data = seek(pos, libc::SEEK_DATA).unwrap_or(len).min(len);
        hash_zeros(&mut h, data - pos);
        if data >= len {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE).unwrap_or(len).min(len);
        let mut at = data;
        while at < hole {
            let n = (hole - at).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], at).unwrap();
            h.update(&buf[..n]);
            at += n as u64;
        }
        pos = hole;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Check, info and convert of every readable sample whose virtual size is in `sizes`
/// (two tests split the work so they can run side by side).
fn readable_samples(sizes: std::ops::Range<u64>) {
    let d = prepared();
    let out = d.path().join("out.raw");
    let outs = s(&out);
    let mut done = 0;
    for (file, expect) in expectations(d.path()) {
        let Expect::Content { size, sha256, qemu } = expect else {
            continue;
        };
        if !sizes.contains(&size) {
            continue;
        }
        let path = d.path().join(&file);
        let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
        let name = name.to_str().unwrap();

        let r = vmdk_in(dir, &["check", name]);
        assert_eq!(r.code, 0, "{file}: check\n{}{}", r.stdout, r.stderr);
        assert!(
            r.stdout.starts_with("No errors were found on the image.\n"),
            "{file}: {}",
            r.stdout
        );

        let r = vmdk_in(dir, &["info", "--output=json", name]);
        assert_eq!(r.code, 0, "{file}: info: {}", r.stderr);
        assert_eq!(r.json()["virtual-size"], size, "{file}: info");

        let _ = std::fs::remove_file(&out);
        let r = vmdk_in(dir, &["convert", "-O", "raw", name, &outs]);
        assert_eq!(r.code, 0, "{file}: convert: {}", r.stderr);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size, "{file}: size");
        assert_eq!(sha256_file(&out), sha256, "{file}: content");

        if qemu {
            // qemu-img's reader against our output: block status lets it skip what both
            // leave unallocated, so this is cheap even for the 8 GiB disks.
            let r = qemu_in(dir, &["compare", "-f", "vmdk", "-F", "raw", name, &outs]);
            assert_eq!(
                (r.code, r.stdout.as_str()),
                (0, "Images are identical.\n"),
                "{file}: qemu-img compare: {}",
                r.stderr
            );
        } else {
            // The README says qemu-img cannot read it: make sure that is still so, or the
            // comparison above should be made.
            let r = qemu_in(dir, &["info", "-f", "vmdk", name]);
            assert_ne!(r.code, 0, "{file}: qemu-img now reads it:\n{}", r.stdout);
        }
        done += 1;
    }
    assert!(done > 0, "no sample of {sizes:?} bytes");
}

#[test]
fn readable_samples_up_to_1g() {
    readable_samples(0..(1 << 30) + 1);
}

#[test]
fn readable_samples_over_1g() {
    readable_samples((1 << 30) + 1..u64::MAX);
}

/// The extent file a refused sample fails on: the first one its descriptor names, or the
/// file itself for a binary (stream) file.
fn refused_name(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    if bytes.starts_with(b"KDMV") {
        return path.file_name().unwrap().to_str().unwrap().to_string();
    }
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            let access = w.next()?;
            ["RW", "RDONLY", "NOACCESS"]
                .contains(&access)
                .then_some(())?;
            l.split('"').nth(1).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("{}: no extent line", path.display()))
}

#[test]
fn refused_samples_name_the_missing_file() {
    let d = prepared();
    let out = s(&d.path().join("out.raw"));
    let mut done = 0;
    for (file, expect) in expectations(d.path()) {
        if !matches!(expect, Expect::Refused) {
            continue;
        }
        let path = d.path().join(&file);
        let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
        let name = name.to_str().unwrap();
        // qemu-img refuses them too. A createType QEMU does not open (VirtualBox's raw-disk
        // `fullDevice`) is refused before any extent is looked for, by both, in its words.
        let theirs = qemu_in(dir, &["info", name]);
        assert_ne!(theirs.code, 0, "{file}: qemu-img");
        let missing = match theirs.stderr.split_once("Unsupported image type") {
            Some((_, rest)) => format!("Unsupported image type{}", rest.trim_end()),
            None => refused_name(&path),
        };
        for args in [
            &["info", name][..],
            &["info", "--output=json", name],
            &["check", name],
            &["map", "--output=json", name],
            &["convert", "-O", "raw", name, &out],
            &["compare", name, name],
        ] {
            let r = vmdk_in(dir, args);
            // compare's errors exit with 2, like qemu-img's.
            let want = if args[0] == "compare" { 2 } else { 1 };
            assert_eq!(r.code, want, "{file}: {args:?}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.stdout, "", "{file}: {args:?}");
            assert!(
                r.stderr.starts_with("vmdk: ") && r.stderr.contains(&missing),
                "{file}: {args:?}: the message does not name {missing:?}: {}",
                r.stderr
            );
        }
        assert!(!Path::new(&out).exists(), "{file}: convert left an output");
        done += 1;
    }
    assert!(done >= 11);
}

/// ovftool-style streams carry undocumented type-4 metadata markers before the grain
/// directory marker: metadata, not leaked space (`check` once reported a leak, exit 3).
#[test]
fn ovftool_type4_markers_are_not_leaks() {
    let dir = samples().join("cot");
    let r = vmdk_in(&dir, &["check", "--output=json", "blank-2014-06.vmdk"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = r.json();
    assert!(v.get("leaks").is_none(), "{v}");
    assert!(v.get("corruptions").is_none(), "{v}");
    assert_eq!(v["check-errors"], 0);
    assert_eq!(v["image-end-offset"], 73216);
    assert_eq!(qemu_in(&dir, &["check", "blank-2014-06.vmdk"]).code, 0);
}

/// `map --output=json` failing part way (a grain-table entry of an invalid type in the
/// second extent, met after the first extent's entries were produced) prints nothing on
/// stdout; the human form fails the same way.
#[test]
fn map_json_failing_part_way_prints_nothing() {
    let d = prepared();
    let dir = d.path().join("dissect-hypervisor");
    let se = dir.join("sesparse.vmdk");
    // The first grain table's last entry (seSparse: 64-bit entries, type in the top nibble).
    let gt_area = read_u64(&se, 18 * 8) * 512;
    patch(
        &se,
        gt_area + 4095 * 8,
        &0xf000_0000_0000_0000u64.to_le_bytes(),
    );
    // A 1 GiB flat extent with some data (so entries are printed before the failure),
    // then the seSparse extent.
    let flat = dir.join("big.raw");
    let f = std::fs::File::create(&flat).unwrap();
    f.set_len(1 << 30).unwrap();
    patch(&flat, 0, &[1u8; 4096]);
    std::fs::write(
        dir.join("two.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\nRW 2097152 FLAT \"big.raw\" 0\n\
         RW 1048576 SESPARSE \"sesparse.vmdk\"\n",
    )
    .unwrap();
    let r = vmdk_in(&dir, &["map", "--output=json", "two.vmdk"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr.contains("sesparse.vmdk") && r.stderr.contains("invalid seSparse"),
        "{}",
        r.stderr
    );
    // The human form streams: it may print what it mapped before the failure (qemu-img
    // does; we map in batches of entries, so the flat extent's line can be in the batch
    // that fails), then fails naming the file.
    let r = vmdk_in(&dir, &["map", "two.vmdk"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.starts_with("Offset"), "{}", r.stdout);
    assert_contains!(r.stderr, "sesparse.vmdk");
}
