//! `vmdk inspect` end to end: images qemu-img makes, the same images made hostile by
//! patching bytes, other formats carrying a `.vmdk` name, and the real-world samples. Each
//! gets the verdict, exit status and reason codes it deserves.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1024 * 1024;

/// `vmdk inspect --output=json [EXTRA] FILE`: (exit status, JSON).
fn inspect(file: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let f = s(file);
    let mut args = vec!["inspect", "--output=json"];
    args.extend_from_slice(extra);
    args.push(&f);
    let r = vmdk(&args);
    assert!(
        r.code == 0 || r.code == 1,
        "vmdk inspect {file:?}: exit {}: {}",
        r.code,
        r.stderr
    );
    let j = r.json();
    (r.code, j)
}

fn codes(j: &serde_json::Value) -> Vec<String> {
    j["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_string())
        .collect()
}

fn assert_safe(file: &Path, extra: &[&str]) -> serde_json::Value {
    let (code, j) = inspect(file, extra);
    assert_eq!(code, 0, "{file:?} should be safe: {j:#}");
    assert_eq!(j["verdict"], "safe");
    assert!(j["reasons"].as_array().unwrap().is_empty());
    j
}

fn assert_unsafe(file: &Path, extra: &[&str], code: &str) -> serde_json::Value {
    let (status, j) = inspect(file, extra);
    assert_eq!(status, 1, "{file:?} should be unsafe: {j:#}");
    assert_eq!(j["verdict"], "unsafe");
    assert!(
        codes(&j).iter().any(|c| c == code),
        "{file:?}: no '{code}' among the reasons: {j:#}"
    );
    for r in j["reasons"].as_array().unwrap() {
        assert!(!r["message"].as_str().unwrap().is_empty());
    }
    j
}

/// A monolithicSparse image with data, converted by qemu-img into subformat `sub`.
fn qemu_image(d: &Path, sub: &str, size: u64) -> PathBuf {
    let src = d.join(format!("src-{sub}.vmdk"));
    if !src.exists() {
        qemu_img(&["create", "-q", "-f", "vmdk", &s(&src), &size.to_string()]);
        qemu_io(
            &src,
            &[
                "write -P 0x61 0 64k",
                "write -P 0x62 1M 300k",
                "write -P 0x63 5M 64k",
            ],
        );
    }
    let out = d.join(format!("{sub}.vmdk"));
    qemu_img(&[
        "convert",
        "-O",
        "vmdk",
        "-o",
        &format!("subformat={sub}"),
        &s(&src),
        &s(&out),
    ]);
    out
}

/// The real-world samples (`shared/samples/realworld` beside the checkout); read-only.
fn samples() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = repo.join("../shared/samples/realworld");
    assert!(
        dir.join("README.md").is_file(),
        "the real-world samples are missing from {}",
        dir.display()
    );
    dir
}

fn copy(from: &Path, d: &Path, name: &str) -> PathBuf {
    let to = d.join(name);
    std::fs::copy(from, &to).unwrap();
    // The samples are read-only, and so would their copies be.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    to
}

#[test]
fn qemu_single_file_images_are_safe() {
    let t = tempdir();
    let d = t.path();
    for sub in ["monolithicSparse", "streamOptimized"] {
        let img = qemu_image(d, sub, 64 * MIB);
        let j = assert_safe(&img, &[]);
        assert_eq!(j["format"], "vmdk");
        assert_eq!(j["subformat"], sub);
        assert_eq!(j["virtual-size"], 64 * MIB);
        assert_eq!(j["filename"], s(&img));
        assert!(j["grains-allocated"].as_u64().unwrap() >= 3, "{j:#}");
        assert_safe(&img, &["--policy=strict"]);
        // Human output says the same.
        let h = vmdk(&["inspect", &s(&img)]);
        assert_eq!(h.code, 0);
        assert!(h.stdout.contains("verdict: safe"), "{}", h.stdout);
    }
    // qemu-img create's empty images and zeroed-grain images too.
    let empty = qemu_create(d, "empty.vmdk", "1G", &[]);
    assert_safe(&empty, &[]);
    let zg = qemu_create(d, "zg.vmdk", "1G", &["zeroed_grain=on"]);
    qemu_io(&zg, &["write -z 0 1M", "write -P 1 2M 64k"]);
    assert_safe(&zg, &[]);
}

#[test]
fn multi_file_layouts_and_children_are_unsafe() {
    let t = tempdir();
    let d = t.path();
    for sub in [
        "monolithicFlat",
        "twoGbMaxExtentSparse",
        "twoGbMaxExtentFlat",
    ] {
        let img = qemu_image(d, sub, 64 * MIB);
        let j = assert_unsafe(&img, &[], "external-extent");
        assert!(codes(&j).contains(&"create-type".to_string()), "{j:#}");
        assert_eq!(j["subformat"], sub);
        assert_eq!(j["virtual-size"], 64 * MIB);
    }
    let base = qemu_create(d, "base.vmdk", "64M", &[]);
    let child = qemu_child(d, "child.vmdk", &base, None);
    let j = assert_unsafe(&child, &[], "backing-file");
    assert!(
        j["reasons"].to_string().contains("base.vmdk"),
        "the reason names the backing file: {j:#}"
    );
}

#[test]
fn other_formats_named_vmdk_are_named() {
    let t = tempdir();
    let d = t.path();
    for (fmt, want) in [
        ("qcow2", "qcow2"),
        ("vpc", "vpc"),
        ("vhdx", "vhdx"),
        ("vdi", "vdi"),
    ] {
        let p = d.join(format!("{fmt}.vmdk"));
        qemu_img(&["create", "-q", "-f", fmt, &s(&p), "64M"]);
        let j = assert_unsafe(&p, &[], "foreign-format");
        assert_eq!(j["format"], want, "{j:#}");
    }
    // A fixed VHD marks only its last sector.
    let fixed = d.join("fixed.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vpc",
        "-o",
        "subformat=fixed",
        &s(&fixed),
        "4M",
    ]);
    let j = assert_unsafe(&fixed, &[], "foreign-format");
    assert_eq!(j["format"], "vpc");
    let raw = d.join("raw.vmdk");
    std::fs::write(&raw, vec![0u8; MIB as usize]).unwrap();
    let j = assert_unsafe(&raw, &[], "not-vmdk");
    assert_eq!(j["format"], "raw");
}

/// The embedded descriptor of a qemu monolithicSparse file, edited and written back into
/// its 20-sector area.
fn edit_descriptor(img: &Path, edit: impl Fn(&str) -> String) {
    let bytes = std::fs::read(img).unwrap();
    let area = &bytes[512..512 + 20 * 512];
    let end = area.iter().position(|&b| b == 0).unwrap();
    let text = edit(std::str::from_utf8(&area[..end]).unwrap());
    let mut new = text.into_bytes();
    assert!(new.len() < area.len());
    new.resize(area.len(), 0);
    patch(img, 512, &new);
}

#[test]
fn hostile_files_get_the_reason_they_deserve() {
    let t = tempdir();
    let d = t.path();
    let good = qemu_image(d, "monolithicSparse", 64 * MIB);
    let len = std::fs::metadata(&good).unwrap().len();

    // A header cut short.
    let h = d.join("short-header.vmdk");
    std::fs::write(&h, &std::fs::read(&good).unwrap()[..60]).unwrap();
    assert_unsafe(&h, &[], "bad-header");

    // The file cut after its metadata: grains past the end.
    let cut = copy(&good, d, "cut.vmdk");
    let f = std::fs::OpenOptions::new().write(true).open(&cut).unwrap();
    f.set_len(len - 64 * 1024).unwrap();
    drop(f);
    assert_unsafe(&cut, &[], "past-eof");

    // A grain-directory entry pointing far past the end.
    let gd = copy(&good, d, "gd-past-eof.vmdk");
    let gd_sector = read_u64(&gd, 56);
    patch(&gd, gd_sector * 512, &0x0fff_ffffu32.to_le_bytes());
    assert_unsafe(&gd, &[], "past-eof");

    // A grain-table entry pointing into the embedded descriptor (sector 1), and one
    // pointing at the grain directory itself.
    let into_desc = copy(&good, d, "grain-in-descriptor.vmdk");
    patch(&into_desc, gte_offset(&into_desc, 0), &1u32.to_le_bytes());
    assert_unsafe(&into_desc, &[], "grain-overlap");
    let into_gd = copy(&good, d, "grain-on-gd.vmdk");
    let gd_sector = read_u64(&into_gd, 56) as u32;
    patch(&into_gd, gte_offset(&into_gd, 0), &gd_sector.to_le_bytes());
    assert_unsafe(&into_gd, &[], "grain-overlap");

    // Two table entries sharing one grain.
    let shared = copy(&good, d, "shared.vmdk");
    let g0 = read_u32(&shared, gte_offset(&shared, 0));
    assert_ne!(g0, 0);
    patch(&shared, gte_offset(&shared, 100), &g0.to_le_bytes());
    assert_unsafe(&shared, &[], "grain-shared");

    // Capacity 0: QEMU would read the embedded descriptor as a descriptor file.
    let zero = copy(&good, d, "capacity-zero.vmdk");
    patch(&zero, 12, &0u64.to_le_bytes());
    assert_unsafe(&zero, &[], "capacity-zero-descriptor");

    // A header that says the disk is bigger than its descriptor does.
    let bigger = copy(&good, d, "size-mismatch.vmdk");
    patch(&bigger, 12, &(64 * MIB / 512 + 128).to_le_bytes());
    assert_unsafe(&bigger, &[], "size-mismatch");

    // An embedded descriptor naming a second extent, and one naming a backing file.
    let extra = copy(&good, d, "extra-extent.vmdk");
    edit_descriptor(&extra, |t| {
        t.replace(
            "# The Disk Data Base",
            "RW 2048 FLAT \"neighbour.img\" 0\n\n# The Disk Data Base",
        )
    });
    assert_unsafe(&extra, &[], "external-extent");
    let hint = copy(&good, d, "hint.vmdk");
    edit_descriptor(&hint, |t| {
        t.replace(
            "createType=",
            "parentFileNameHint=\"/etc/passwd\"\ncreateType=",
        )
    });
    let j = assert_unsafe(&hint, &[], "backing-file");
    assert!(j["reasons"].to_string().contains("/etc/passwd"));
    // An extent path in the embedded descriptor.
    let path = copy(&good, d, "path.vmdk");
    edit_descriptor(&path, |t| {
        let name = good.file_name().unwrap().to_str().unwrap();
        t.replace(&format!("\"{name}\""), "\"../../etc/shadow\"")
    });
    assert_unsafe(&path, &[], "external-extent");

    // A stream whose footer disagrees with its header, and one with no footer. qemu-img
    // writes its streams with the grain directory in the header; VMware's (like this
    // sample's) put it in the footer.
    let stream = samples().join("xo-vmdk-to-vhd/test.vmdk");
    assert_safe(&stream, &[]);
    let slen = std::fs::metadata(&stream).unwrap().len();
    let lying = copy(&stream, d, "footer-lies.vmdk");
    patch(&lying, slen - 1024 + 12, &(MIB / 512).to_le_bytes());
    assert_unsafe(&lying, &[], "footer-mismatch");
    let nofooter = copy(&stream, d, "no-footer.vmdk");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&nofooter)
        .unwrap();
    f.set_len(slen - 1536).unwrap();
    drop(f);
    assert_unsafe(&nofooter, &[], "footer-missing");

    // Every reason at once: the verdict lists them all, not just the first.
    let many = copy(&good, d, "many.vmdk");
    edit_descriptor(&many, |t| {
        t.replace("createType=", "parentFileNameHint=\"x.vmdk\"\ncreateType=")
            .replace(
                "# The Disk Data Base",
                "RW 2048 FLAT \"n.img\" 0\n\n# The Disk Data Base",
            )
    });
    patch(&many, gte_offset(&many, 0), &1u32.to_le_bytes());
    let j = assert_unsafe(&many, &["--max-size", "1M"], "backing-file");
    for c in [
        "external-extent",
        "grain-overlap",
        "virtual-size-limit",
        "size-mismatch",
    ] {
        assert!(codes(&j).contains(&c.to_string()), "no {c}: {j:#}");
    }
}

#[test]
fn size_limit_takes_qemu_sizes() {
    let t = tempdir();
    let d = t.path();
    let img = qemu_create(d, "big.vmdk", "3T", &[]);
    assert_safe(&img, &["--max-size", "3T"]);
    let j = assert_unsafe(&img, &["--max-size", "2T"], "virtual-size-limit");
    assert_eq!(j["virtual-size"], 3u64 << 40);
    let bad = vmdk(&["inspect", "--max-size", "lots", &s(&img)]);
    assert_ne!(bad.code, 0);
}

#[test]
fn unreadable_files_exit_2() {
    let t = tempdir();
    let d = t.path();
    let r = vmdk(&["inspect", &s(&d.join("missing.vmdk"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("missing.vmdk"), "{}", r.stderr);
    let r = vmdk(&["inspect", &s(d)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // A FIFO is refused at once (reading it would wait for a writer forever).
    let fifo = d.join("fifo.vmdk");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path, which lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let t0 = Instant::now();
    let r = vmdk(&["inspect", &s(&fifo)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// A 4 TiB image's verdict costs a bounded read, not one proportional to the disk.
#[test]
fn huge_image_reads_little() {
    let t = tempdir();
    let d = t.path();
    let img = qemu_create(d, "huge.vmdk", "4T", &[]);
    qemu_io(&img, &["write -P 7 0 64k", "write -P 8 3T 64k"]);
    let t0 = Instant::now();
    let j = assert_safe(&img, &[]);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let read = j["bytes-read"].as_u64().unwrap();
    let size = j["file-size"].as_u64().unwrap();
    assert!(read < 4 * MIB, "read {read} of {size} bytes");
    assert!(size > 64 * MIB, "qemu preallocates the tables: {size}");
    // Every table's place is checked; the entries of an even spread of them (always the
    // first and the last).
    assert_eq!(j["grain-tables"].as_u64().unwrap(), 131072, "{j:#}");
    assert_eq!(j["grain-tables-checked"].as_u64().unwrap(), 256, "{j:#}");
    assert!(j["grains-allocated"].as_u64().unwrap() >= 1, "{j:#}");
}

/// The real-world samples: single-file sparse images are safe, descriptors are unsafe
/// for their extents, the capacity-0 file and the truncated stream are caught.
#[test]
fn realworld_samples() {
    let dir = samples();
    let safe = [
        "vmdk-rs/monolithicSparse.vmdk",
        "vmdk-rs/streamOptimized.vmdk",
        "vmdk-rs/streamOptimizedWithMarkers.vmdk",
        "dfvfs/ext2.vmdk",
        "dfvfs/image.vmdk",
        "xo-vmdk-to-vhd/test.vmdk",
        "cot/blank-2014-06.vmdk",
        "cot/blank.vmdk",
        "cot/input.vmdk",
        "cot/ubuntu.2.0-disk1.vmdk",
        "jnode/JNode.vmdk",
        "jnode/JNode-0.vmdk",
        "abanobmedhat-test/back to normal.vmdk",
        "vlsmc/v1-qemu/data.vmdk",
        "vlsmc/v1-qemu/disk.vmdk",
        "vlsmc/v2-vmware/data.vmdk",
        "vlsmc/v3-vmware/data.vmdk",
        "baremetal-boot/image.vmdk",
        "nearlands/image.vmdk",
        "mochaos/disk.vmdk",
        "oslab/disk.vmdk",
        "randomos/RandomOS.vmdk",
        "myvaros/test.vmdk",
    ];
    for f in safe {
        assert_safe(&dir.join(f), &[]);
    }
    let unsafe_ = [
        ("vmdk-rs/monolithicFlat.vmdk", "external-extent"),
        ("vmdk-rs/twoGbMaxExtentFlat.vmdk", "external-extent"),
        ("vmdk-rs/twoGbMaxExtentSparse.vmdk", "external-extent"),
        ("vmdk-rs/vmfs_thick.vmdk", "external-extent"),
        ("jnode/JNode-1.vmdk", "external-extent"),
        (
            "dissect-hypervisor/sesparse-wrapper.vmdk",
            "external-extent",
        ),
        (
            "descriptor-only/vmdk-rs/vmfs_thick-000001.vmdk",
            "backing-file",
        ),
        ("descriptor-only/ms3-win/ms3-win.vmdk", "external-extent"),
        ("descriptor-only/frogos2/disk.vmdk", "external-extent"),
        ("descriptor-only/nos/disk.vmdk", "external-extent"),
        ("descriptor-only/arch8/image.vmdk", "external-extent"),
        ("descriptor-only/sq8vps-system/disk.vmdk", "external-extent"),
        ("descriptor-only/ms-dos/MS-DOS.vmdk", "external-extent"),
        (
            "descriptor-only/win10vm/Windows 10 x64.vmdk",
            "external-extent",
        ),
        ("dualfuse/disk.vmdk", "capacity-zero-descriptor"),
        ("govmomi/ttylinux-pc_i486-16.1-disk1.vmdk", "footer-missing"),
        ("vmdk-rs/vmfs_thick-flat.vmdk", "not-vmdk"),
    ];
    for (f, code) in unsafe_ {
        assert_unsafe(&dir.join(f), &[], code);
    }
}
