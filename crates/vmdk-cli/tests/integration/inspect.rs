//! `vmdk inspect` end to end: images qemu-img makes, the same images made hostile by
//! patching bytes, other formats carrying a `.vmdk` name, and the real-world samples. Each
//! gets the verdict, exit status and reason codes it deserves.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmdk_test_support::qemu::{qemu_create_as, qemu_to_vmdk};

use crate::common::*;

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
    qemu_to_vmdk(&src, &out, "", &format!("subformat={sub}"));
    out
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
        assert_contains!(h.stdout, "verdict: safe");
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
    qemu_create_as("vpc", &fixed, "4M", "subformat=fixed");
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
    assert_contains!(r.stderr, "missing.vmdk");
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

// ---------------------------------------------------------------------------------------
// Against QEMU's own reading. QEMU does not parse descriptors into lines: it searches the
// text at sector 1 for parentFileNameHint and the CIDs, and probes formats by the first
// 2 KiB. Every case here is checked with qemu-img itself first (it really opens or names
// the other file), then with inspect.

/// What `qemu-img info` makes of a file: Ok(backing file name, if any) or its error.
fn qemu_info(file: &Path) -> Result<Option<String>, String> {
    let r = tool("qemu-img", &["info", "--output=json", &s(file)]);
    if r.code != 0 {
        return Err(r.stderr);
    }
    let j = r.json();
    Ok(j["backing-filename"].as_str().map(str::to_string))
}

/// A qemu-made monolithicSparse image with data, and its descriptor text.
fn sparse_with_text(d: &Path) -> (Vec<u8>, String) {
    let img = qemu_written(d, "good.vmdk", "16M", &["write -P 0x61 0 64k"]);
    let bytes = std::fs::read(&img).unwrap();
    let area = &bytes[512..512 + 20 * 512];
    let end = area.iter().position(|&b| b == 0).unwrap();
    let text = String::from_utf8(area[..end].to_vec()).unwrap();
    (bytes, text)
}

/// `bytes` with `text` written over the 20-sector descriptor area (NUL-padded).
fn with_area(bytes: &[u8], text: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let mut t = text.to_vec();
    assert!(t.len() <= 20 * 512);
    t.resize(20 * 512, 0);
    b[512..512 + 20 * 512].copy_from_slice(&t);
    b
}

#[test]
fn qemu_finds_the_backing_file_wherever_it_searches() {
    let t = tempdir();
    let d = t.path();
    let (good, text) = sparse_with_text(d);
    let hint = "parentFileNameHint=\"/etc/passwd\"";
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "in a comment",
            with_area(
                &good,
                text.replace(
                    "# Disk DescriptorFile",
                    &format!("# Disk DescriptorFile {hint}"),
                )
                .as_bytes(),
            ),
        ),
        (
            "inside another key",
            with_area(
                &good,
                text.replace("ddb.adapterType", &format!("ddb.x{hint}\nddb.adapterType"))
                    .as_bytes(),
            ),
        ),
        (
            "with a matching parentCID in a comment",
            with_area(
                &good,
                text.replace(
                    "# Extent description",
                    &format!("# Extent description {hint} parentCID=12345678"),
                )
                .as_bytes(),
            ),
        ),
    ];
    // A one-sector descriptor that no NUL ends: QEMU reads on into sector 2.
    let mut nonul = good.clone();
    let mut sector = text.clone().into_bytes();
    sector.resize(512, b'#');
    nonul[512..1024].copy_from_slice(&sector);
    nonul[1024..1024 + hint.len()].copy_from_slice(hint.as_bytes());
    nonul[1024 + hint.len()..1024 + 512].fill(b' ');
    nonul[36..44].copy_from_slice(&1u64.to_le_bytes());
    cases.push(("past a one-sector descriptor without a NUL", nonul));
    // A header that says there is no descriptor, or that it is elsewhere: QEMU still
    // reads sector 1.
    let commented = cases[0].1.clone();
    let mut nodesc = commented.clone();
    nodesc[28..44].fill(0);
    cases.push(("a header without a descriptor", nodesc));
    let mut elsewhere = commented;
    elsewhere[28..36].copy_from_slice(&2u64.to_le_bytes());
    elsewhere[36..44].copy_from_slice(&19u64.to_le_bytes());
    cases.push(("a header pointing elsewhere", elsewhere));

    for (what, bytes) in cases {
        let f = d.join("case.vmdk");
        std::fs::write(&f, &bytes).unwrap();
        assert_eq!(
            qemu_info(&f),
            Ok(Some("/etc/passwd".to_string())),
            "{what}: qemu-img takes /etc/passwd as the backing file"
        );
        for policy in ["--policy=default", "--policy=strict"] {
            let j = assert_unsafe(&f, &[policy], "backing-file");
            assert!(
                j["reasons"].to_string().contains("/etc/passwd"),
                "{what}: {j:#}"
            );
        }
    }

    // The leak itself: with the victim's CID as parentCID, qemu-img convert copies the
    // victim's data (from outside the upload's directory) into the output.
    let victim_dir = tempdir();
    let victim = qemu_create(victim_dir.path(), "victim.vmdk", "16M", &[]);
    qemu_io(&victim, &["write -P 0x5a 1M 64k"]);
    let vtext = std::fs::read(&victim).unwrap();
    let vcid = std::str::from_utf8(&vtext[512..1024])
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CID="))
        .unwrap()
        .to_string();
    let mut evil = text.replace(
        "# Disk DescriptorFile",
        &format!("# parentFileNameHint=\"{}\"", s(&victim)),
    );
    evil = evil.replace("parentCID=ffffffff", &format!("parentCID={vcid}"));
    let f = d.join("leak.vmdk");
    std::fs::write(&f, with_area(&good, evil.as_bytes())).unwrap();
    let out = d.join("leak.raw");
    qemu_img(&["convert", "-O", "raw", &s(&f), &s(&out)]);
    let leaked = std::fs::read(&out).unwrap();
    assert!(
        leaked[1 << 20..(1 << 20) + 65536]
            .iter()
            .all(|&b| b == 0x5a),
        "qemu-img convert copied the victim's data"
    );
    assert_unsafe(&f, &[], "backing-file");
}

#[test]
fn what_qemu_refuses_or_reads_elsewhere_is_named() {
    let t = tempdir();
    let d = t.path();
    let (good, text) = sparse_with_text(d);
    // No CID where QEMU reads it (the real descriptor moved to sector 2): qemu-img refuses.
    let mut moved = good.clone();
    let mut area = vec![0u8; 512];
    area.extend_from_slice(text.as_bytes());
    area.resize(20 * 512, 0);
    moved[512..512 + 20 * 512].copy_from_slice(&area);
    moved[28..36].copy_from_slice(&2u64.to_le_bytes());
    moved[36..44].copy_from_slice(&19u64.to_le_bytes());
    let f = d.join("moved.vmdk");
    std::fs::write(&f, &moved).unwrap();
    assert!(
        qemu_info(&f).is_err(),
        "qemu-img refuses a descriptor at sector 2"
    );
    let j = assert_unsafe(&f, &[], "qemu-cannot-open");
    assert!(
        codes(&j).contains(&"descriptor-location".to_string()),
        "{j:#}"
    );

    // Capacity 0 in the first header of a stream: QEMU opens the descriptor's extents
    // before it ever looks at the footer.
    let mut zero = with_area(
        &good,
        text.replace("createType=\"monolithicSparse\"", "createType=\"vmfs\"")
            .replace(
                "RW 32768 SPARSE \"good.vmdk\"",
                "RW 1 VMFS \"/etc/hostname\"",
            )
            .as_bytes(),
    );
    zero[12..20].fill(0);
    let f = d.join("capacity-zero.vmdk");
    std::fs::write(&f, &zero).unwrap();
    let info = tool("qemu-img", &["info", "--output=json", &s(&f)]);
    assert_eq!(info.code, 0, "{}", info.stderr);
    assert_contains!(info.stdout, "/etc/hostname");
    let j = assert_unsafe(&f, &[], "capacity-zero-descriptor");
    assert!(j["reasons"].to_string().contains("/etc/hostname"), "{j:#}");
}

/// A tiny deterministic generator for the differential run (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Mutants of a good image's descriptor region, judged by qemu-img and by inspect: every
/// mutant qemu-img gives a backing file is unsafe, and every mutant inspect calls safe
/// opens in qemu-img without one.
#[test]
fn differential_against_qemu_img() {
    let t = tempdir();
    let d = t.path();
    let (good, text) = sparse_with_text(d);
    let tokens: [&[u8]; 12] = [
        b"parentFileNameHint=\"victim.vmdk\"",
        b"parentFileNameHint = \"victim.vmdk\"",
        b"parentFileNameHint",
        b"\"",
        b"\0",
        b"\n",
        b"#",
        b" ",
        b"CID=",
        b"parentCID=1",
        b"\r\n",
        b"PARENTFILENAMEHINT=\"victim.vmdk\"",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut qemu_backing, mut agreed_safe, mut stricter) = (0, 0, 0);
    for i in 0..160 {
        let mut b = good.clone();
        if rng.below(6) == 0 {
            // No NUL after the text: QEMU's scan runs on to the end of its window.
            b[512 + text.len()..512 + 20 * 512].fill(b' ');
        }
        for _ in 0..1 + rng.below(3) {
            let tok = tokens[rng.below(tokens.len() as u64) as usize];
            // Mostly inside the descriptor text, sometimes anywhere in QEMU's 10 KiB
            // window at sector 1 or just past it.
            let span = if rng.below(3) == 0 {
                20 * 512 + 1024
            } else {
                text.len() as u64 + 16
            };
            let at = 512 + rng.below(span) as usize;
            let end = (at + tok.len()).min(b.len());
            b[at..end].copy_from_slice(&tok[..end - at]);
        }
        if rng.below(8) == 0 {
            // The header's descriptor pointer: gone, one sector, or elsewhere.
            let (off, size) = [(0u64, 0u64), (1, 1), (3, 18)][rng.below(3) as usize];
            b[28..36].copy_from_slice(&off.to_le_bytes());
            b[36..44].copy_from_slice(&size.to_le_bytes());
        }
        let f = d.join(format!("m{i}.vmdk"));
        std::fs::write(&f, &b).unwrap();
        let (status, j) = inspect(&f, &[]);
        let q = qemu_info(&f);
        match (&q, status) {
            (Ok(Some(name)), _) if !name.is_empty() => {
                qemu_backing += 1;
                assert_eq!(
                    status, 1,
                    "mutant {i}: qemu-img takes backing file {name:?}: {j:#}"
                );
                assert!(
                    codes(&j).contains(&"backing-file".to_string()),
                    "mutant {i}: {j:#}"
                );
            }
            (_, 0) => {
                assert_eq!(q, Ok(None), "mutant {i} inspected safe: {j:#}");
                agreed_safe += 1;
            }
            _ => stricter += 1,
        }
        std::fs::remove_file(&f).unwrap();
    }
    eprintln!(
        "differential: {qemu_backing} with a qemu backing file, {agreed_safe} safe to both, \
         {stricter} unsafe to inspect only"
    );
    // The run must exercise both sides.
    assert!(
        qemu_backing >= 20,
        "only {qemu_backing} mutants gave qemu a backing file"
    );
    assert!(
        agreed_safe >= 10,
        "only {agreed_safe} mutants stayed safe ({stricter} stricter)"
    );
}

/// A ustar header block for a hostile archive (the library's writer makes only honest ones).
fn tar_header(name: &[u8], size: u64, typeflag: u8, linkname: &[u8]) -> Vec<u8> {
    tar_block(name, size, typeflag, linkname, b"ustar\x0000")
}

/// One member of a hand-made archive: header name, data, typeflag, link name.
type TarMember<'a> = (&'a [u8], &'a [u8], u8, &'a [u8]);

/// A tar archive of these members.
fn tar_of(members: &[TarMember]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data, typeflag, link) in members {
        out.extend(tar_header(name, data.len() as u64, *typeflag, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn ovf_for(hrefs: &[&str]) -> Vec<u8> {
    let mut refs = String::new();
    let mut disks = String::new();
    for (i, h) in hrefs.iter().enumerate() {
        refs += &format!("<File ovf:id=\"f{i}\" ovf:href=\"{h}\"/>");
        disks +=
            &format!("<Disk ovf:diskId=\"d{i}\" ovf:fileRef=\"f{i}\" ovf:capacity=\"16777216\"/>");
    }
    format!(
        "<?xml version=\"1.0\"?><Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"><References>{refs}</References>\
         <DiskSection><Info>disks</Info>{disks}</DiskSection></Envelope>"
    )
    .into_bytes()
}

#[test]
fn ovas_are_judged_member_by_member_and_as_a_whole() {
    let t = tempdir();
    let d = t.path();
    let (good, text) = sparse_with_text(d);
    let ovf = ovf_for(&["disk.vmdk"]);
    let honest = d.join("honest.ova");
    std::fs::write(
        &honest,
        tar_of(&[
            (b"x.ovf", &ovf, b'0', b""),
            (b"disk.vmdk", &good, b'0', b""),
        ]),
    )
    .unwrap();
    let j = assert_safe(&honest, &[]);
    assert_eq!(j["format"], "ova");
    assert_eq!(j["members"].as_array().unwrap().len(), 1, "{j:#}");
    assert_eq!(j["members"][0]["verdict"], "safe");

    // A second disk naming /etc/passwd as its backing file.
    let evil = with_area(
        &good,
        text.replace(
            "createType=",
            "parentFileNameHint=\"/etc/passwd\"\ncreateType=",
        )
        .as_bytes(),
    );
    let two = d.join("second-disk.ova");
    let ovf2 = ovf_for(&["disk.vmdk", "disk2.vmdk"]);
    std::fs::write(
        &two,
        tar_of(&[
            (b"x.ovf", &ovf2, b'0', b""),
            (b"disk.vmdk", &good, b'0', b""),
            (b"disk2.vmdk", &evil, b'0', b""),
        ]),
    )
    .unwrap();
    let j = assert_unsafe(&two, &[], "backing-file");
    assert!(j["reasons"].to_string().contains("disk2.vmdk"), "{j:#}");

    // The archive itself a VMDK to qemu-img's probe: descriptor text in the first tar
    // header's name field (a valid tar all the same).
    let name = b"version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 1 VMFS \"/etc/passwd\"\n#.ovf";
    let poly = d.join("polyglot.ova");
    std::fs::write(
        &poly,
        tar_of(&[(name, &ovf, b'0', b""), (b"disk.vmdk", &good, b'0', b"")]),
    )
    .unwrap();
    let info = tool("qemu-img", &["info", "--output=json", &s(&poly)]);
    assert!(
        info.stdout.contains("\"vmdk\"") && info.stdout.contains("/etc/passwd"),
        "qemu-img probes the archive as a VMDK naming /etc/passwd: {} {}",
        info.stdout,
        info.stderr
    );
    let j = assert_unsafe(&poly, &[], "ambiguous-format");
    assert_eq!(j["qemu-format"], "vmdk");
    assert!(j["reasons"].to_string().contains("/etc/passwd"), "{j:#}");

    // A link named like a disk, and an OVF reference that is a URL or a path.
    let link = d.join("link.ova");
    std::fs::write(
        &link,
        tar_of(&[
            (b"x.ovf", &ovf, b'0', b""),
            (b"disk.vmdk", &good, b'0', b""),
            (b"extra.vmdk", b"", b'2', b"/etc/shadow"),
        ]),
    )
    .unwrap();
    assert_unsafe(&link, &[], "special-member");
    for href in [
        "http://attacker.example/disk.vmdk",
        "../disk.vmdk",
        "/etc/passwd",
    ] {
        let o = d.join("href.ova");
        std::fs::write(
            &o,
            tar_of(&[
                (b"x.ovf", &ovf_for(&[href]), b'0', b""),
                (b"disk.vmdk", &good, b'0', b""),
            ]),
        )
        .unwrap();
        assert_unsafe(&o, &[], "external-reference");
    }
    // Two members of one name (tar extracts the last: here the hostile one), and a
    // manifest that leaves a member out.
    let dup = d.join("duplicate.ova");
    std::fs::write(
        &dup,
        tar_of(&[
            (b"x.ovf", &ovf, b'0', b""),
            (b"disk.vmdk", &good, b'0', b""),
            (b"disk.vmdk", &evil, b'0', b""),
        ]),
    )
    .unwrap();
    let j = assert_unsafe(&dup, &[], "duplicate-member");
    assert!(codes(&j).contains(&"backing-file".to_string()), "{j:#}");
    let mf = b"SHA256(x.ovf)= 00\nSHA256(disk.vmdk)= 00\n";
    let unlisted = d.join("unlisted.ova");
    std::fs::write(
        &unlisted,
        tar_of(&[
            (b"x.ovf", &ovf, b'0', b""),
            (b"x.mf", mf, b'0', b""),
            (b"disk.vmdk", &good, b'0', b""),
            (b"notes.vmdk", &good, b'0', b""),
        ]),
    )
    .unwrap();
    assert_unsafe(&unlisted, &[], "unlisted-member");
    // A tar inside the archive is not looked into.
    let nested = d.join("nested.ova");
    let inner = std::fs::read(&honest).unwrap();
    std::fs::write(
        &nested,
        tar_of(&[
            (b"x.ovf", &ovf, b'0', b""),
            (b"disk.vmdk", &inner, b'0', b""),
        ]),
    )
    .unwrap();
    assert_unsafe(&nested, &[], "archive-member");
}

#[test]
fn polyglot_sparse_files_are_ambiguous() {
    let t = tempdir();
    let d = t.path();
    let (good, _) = sparse_with_text(d);
    assert!(
        good.len() > 0x8006 + 512,
        "room for an ISO volume descriptor"
    );
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // A valid tar header in the sparse header's padding (checksum and all).
    let mut tarred = good.clone();
    tarred[148..156].fill(b' ');
    let sum: u64 = tarred[..512].iter().map(|&b| b as u64).sum();
    tarred[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    cases.push(("tar", tarred));
    let mut mbr = good.clone();
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    cases.push(("MBR", mbr));
    let mut vdi = good.clone();
    vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    cases.push(("VDI", vdi));
    let mut iso = good.clone();
    iso[0x8000..0x8007].copy_from_slice(b"\x01CD001\x01");
    cases.push(("ISO", iso));
    let mut vhd = good.clone();
    let n = vhd.len();
    vhd[n - 512..n - 504].copy_from_slice(b"conectix");
    cases.push(("VHD", vhd));
    for (what, bytes) in cases {
        let f = d.join(format!("poly-{what}.vmdk"));
        std::fs::write(&f, &bytes).unwrap();
        let j = assert_unsafe(&f, &[], "ambiguous-format");
        assert!(
            codes(&j).iter().all(|c| c == "ambiguous-format"),
            "{what}: only the ambiguity: {j:#}"
        );
    }
}

/// OpenStack's `format_inspector` (PyPI oslo.utils), run on the same files: the Python that
/// has it is `VMDK_TEST_OSLO_PYTHON` (`.ci/run` makes a venv), else `python3`.
fn format_inspector(files: &[PathBuf]) -> Vec<(String, String)> {
    let python = std::env::var("VMDK_TEST_OSLO_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys, json, logging
logging.disable(logging.CRITICAL)
from oslo_utils.imageutils import format_inspector as fi
for path in sys.argv[1:]:
    try:
        insp = fi.detect_file_format(path)
        name = str(insp)
        try:
            insp.safety_check()
            verdict = "safe"
        except Exception:
            verdict = "unsafe"
    except Exception:
        name, verdict = "error", "unsafe"
    print(json.dumps([name, verdict]))
"#;
    let mut args = vec!["-c".to_string(), script.to_string()];
    args.extend(files.iter().map(|f| s(f)));
    let out = std::process::Command::new(&python)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        out.status.success(),
        "OpenStack's format_inspector is missing: `pip install oslo.utils cryptography` into a \
         venv and point VMDK_TEST_OSLO_PYTHON at its python ({python}: {})",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<(String, String)>(l).unwrap())
        .collect()
}

/// inspect beside format_inspector (oslo.utils 10.2.0) on one corpus. Each row says what
/// each one answers and, where they differ, why; the README's comparison is this table.
#[test]
fn format_inspector_comparison() {
    let t = tempdir();
    let d = t.path();
    let (good, text) = sparse_with_text(d);
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let edited = |from: &str, to: &str| with_area(&good, text.replace(from, to).as_bytes());
    let hint = "parentFileNameHint=\"/etc/passwd\"";
    let mut nonul = good.clone();
    let mut sector = text.clone().into_bytes();
    sector.resize(512, b'#');
    nonul[512..1024].copy_from_slice(&sector);
    nonul[1024..1024 + hint.len()].copy_from_slice(hint.as_bytes());
    nonul[1024 + hint.len()..1536].fill(b' ');
    nonul[36..44].copy_from_slice(&1u64.to_le_bytes());
    let mut nodesc = edited("# Disk DescriptorFile", &format!("# {hint}"));
    nodesc[28..44].fill(0);
    let mut zero = good.clone();
    zero[12..20].fill(0);
    let mut gte = good.clone();
    let gd = u64::from_le_bytes(good[56..64].try_into().unwrap());
    let gt = u32::from_le_bytes(good[gd as usize * 512..][..4].try_into().unwrap()) as usize;
    gte[gt * 512..gt * 512 + 4].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
    let mut mbr = good.clone();
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
    let mut vdi = good.clone();
    vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    let ovf = ovf_for(&["disk.vmdk"]);
    let poly_name =
        b"version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"vmfs\"\nRW 1 VMFS \"/etc/passwd\"\n#.ovf";
    let stream = qemu_image(d, "streamOptimized", 16 * MIB);
    let flat = qemu_image(d, "monolithicFlat", 16 * MIB);
    let base = qemu_create(d, "base.vmdk", "16M", &[]);
    let child = qemu_child(d, "child.vmdk", &base, None);
    let qcow2 = d.join("qcow2.vmdk");
    qemu_img(&["create", "-q", "-f", "qcow2", &s(&qcow2), "16M"]);

    // (file, inspect's verdict, format_inspector's (format, verdict), why they differ)
    let rows: Vec<(PathBuf, &str, (&str, &str), &str)> = vec![
        (write("sparse.vmdk", &good), "safe", ("vmdk", "safe"), ""),
        (stream, "safe", ("vmdk", "safe"), ""),
        (
            samples().join("xo-vmdk-to-vhd/test.vmdk"),
            "safe",
            ("vmdk", "safe"),
            "",
        ),
        (
            flat,
            "unsafe",
            ("raw", "safe"),
            "a descriptor file under 512 bytes: fi's VMDK test waits for a whole first \
             sector and never decides; qemu-img opens the extent it names",
        ),
        (
            samples().join("vmdk-rs/monolithicFlat.vmdk"),
            "unsafe",
            ("vmdk", "unsafe"),
            "both: a descriptor file (fi: not an allowed createType)",
        ),
        (child, "unsafe", ("vmdk", "safe"), "fi allows any key=value line, parentFileNameHint included"),
        (
            write("hint-comment.vmdk", &edited("# Disk DescriptorFile", &format!("# Disk DescriptorFile {hint}"))),
            "unsafe",
            ("vmdk", "safe"),
            "fi skips comment lines; QEMU's strstr does not",
        ),
        (
            write("hint-in-key.vmdk", &edited("ddb.adapterType", &format!("ddb.x{hint}\nddb.adapterType"))),
            "unsafe",
            ("vmdk", "safe"),
            "fi takes ddb lines as they are; QEMU finds the key inside them",
        ),
        (
            write("hint-past-nul-less.vmdk", &nonul),
            "unsafe",
            ("vmdk", "safe"),
            "fi reads the header's descriptor size; QEMU reads on to a NUL",
        ),
        (
            write("hint-no-descriptor.vmdk", &nodesc),
            "unsafe",
            ("vmdk", "unsafe"),
            "both (fi: no descriptor found)",
        ),
        (
            write("second-extent.vmdk", &edited("# The Disk Data Base", "RW 2048 FLAT \"neighbour.img\" 0\n\n# The Disk Data Base")),
            "unsafe",
            ("vmdk", "safe"),
            "fi only refuses '/' in extent lines; VMware opens the second extent",
        ),
        (
            write("capacity-zero.vmdk", &zero),
            "unsafe",
            ("vmdk", "safe"),
            "fi never reads the capacity; QEMU opens the descriptor's extents",
        ),
        (
            write("gte-past-eof.vmdk", &gte),
            "unsafe",
            ("vmdk", "safe"),
            "fi does not read grain tables",
        ),
        (
            write("mbr.vmdk", &mbr),
            "unsafe",
            ("error", "unsafe"),
            "both: fi sees vmdk and gpt",
        ),
        (
            write("vdi.vmdk", &vdi),
            "unsafe",
            ("error", "unsafe"),
            "both: fi sees vmdk and vdi",
        ),
        (
            write("polyglot.ova", &tar_of(&[(poly_name, &ovf, b'0', b""), (b"disk.vmdk", &good, b'0', b"")])),
            "unsafe",
            ("raw", "safe"),
            "fi's vmdk test wants KDMV or ASCII in its whole first sector; qemu-img probes 2 KiB of text",
        ),
        (
            write("link.ova", &tar_of(&[(b"x.ovf", &ovf, b'0', b""), (b"disk.vmdk", &good, b'0', b""), (b"l.vmdk", b"", b'2', b"/etc/shadow")])),
            "unsafe",
            ("raw", "safe"),
            "fi does not read archives",
        ),
        (
            qcow2,
            "unsafe",
            ("qcow2", "safe"),
            "fi names the format and leaves the comparison to its caller; inspect vets VMDK uploads",
        ),
        (
            write("raw.vmdk", &vec![0u8; 1 << 20]),
            "unsafe",
            ("raw", "safe"),
            "the same: a raw disk is not a VMDK",
        ),
    ];
    let files: Vec<PathBuf> = rows.iter().map(|r| r.0.clone()).collect();
    let theirs = format_inspector(&files);
    let mut table = String::new();
    let mut wrong = Vec::new();
    for ((file, ours, want_theirs, why), got_theirs) in rows.iter().zip(&theirs) {
        let (st, j) = inspect(file, &[]);
        let got_ours = if st == 0 { "safe" } else { "unsafe" };
        let name = file.file_name().unwrap().to_string_lossy();
        table += &format!(
            "{name:28} inspect {got_ours:6} {:?}  format_inspector {got_theirs:?}  {why}\n",
            codes(&j)
        );
        if got_ours != *ours || (got_theirs.0.as_str(), got_theirs.1.as_str()) != *want_theirs {
            wrong.push(name.to_string());
        }
    }
    eprintln!("{table}");
    assert!(
        wrong.is_empty(),
        "rows that differ from the table: {wrong:?}\n{table}"
    );
}

/// Inputs that make QEMU's own scans quadratic (a megabyte of blank lines, every one a
/// fresh sscanf that skips to the end) or name an extent a million times: inspect stays
/// well under a second per megabyte and lists a bounded number of names.
#[test]
fn amplifying_descriptors_stay_linear() {
    let t = tempdir();
    let d = t.path();
    let mut text =
        b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"vmfs\"\n"
            .to_vec();
    text.resize((1 << 20) - 64, b'\n');
    text.extend_from_slice(b"RW 1 VMFS \"x.img\"\n");
    let desc = d.join("blank-lines.vmdk");
    std::fs::write(&desc, &text).unwrap();
    // The same text as a capacity-0 sparse file's descriptor.
    let (good, _) = sparse_with_text(d);
    let mut zero = good[..512].to_vec();
    zero[12..20].fill(0);
    zero.resize(1024, 0);
    zero.extend_from_slice(&text);
    zero[28..36].copy_from_slice(&2u64.to_le_bytes());
    let sparse = d.join("capacity-zero-lines.vmdk");
    std::fs::write(&sparse, &zero).unwrap();
    for (f, code) in [
        (&desc, "external-extent"),
        (&sparse, "capacity-zero-descriptor"),
    ] {
        let start = Instant::now();
        let j = assert_unsafe(f, &[], code);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "{f:?}: {took:?}");
        let msg = j["reasons"].to_string();
        assert!(msg.contains("x.img") && msg.len() < 20_000, "{f:?}: {msg}");
    }
}
