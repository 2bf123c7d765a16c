//! OVA archives against inputs built to multiply work: each is small, and reading it must
//! cost time and memory in proportion to its size, not to the product of its parts.
//!
//! * a manifest naming one member on every one of thousands of lines (each member is hashed
//!   once per algorithm, not once per line);
//! * a descriptor inside an OVA with 20,000 extent lines, in an archive of 500 members with
//!   a 200 KB OVF, named as a member and as the bare archive (the archive is indexed, and its
//!   OVF parsed, once per open, not once per line);
//! * and nothing stays allocated once the image is closed (opened archives are shared only
//!   while a member of theirs is open).
//!
//! A counting global allocator measures live bytes; the cases run one at a time.

use crate::common::alloc;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmdk::ova::tar::gnu_header;
use vmdk::Image;

// The allocator counting live bytes is the binary's, in common::alloc; each case runs in
// a process of its own (common::alloc::alone), so the bytes counted are the case's.

/// One case at a time, so live bytes are this case's.
static SERIAL: Mutex<()> = Mutex::new(());

/// In the process of its own that [`alloc::alone`] runs `test` in, the lock that keeps the
/// cases of this file from running at once; `None` in the calling process (which returns).
fn alone_and_serial(test: &str) -> Option<MutexGuard<'static, ()>> {
    if !alloc::alone(test) {
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Run `f`, returning what it returned, its wall time and the most memory it held at once.
fn measured<T>(f: impl FnOnce() -> T) -> (T, Duration, usize) {
    let base = alloc::live();
    alloc::peak_from(base);
    let t = Instant::now();
    let r = f();
    let took = t.elapsed();
    (r, took, alloc::peak().saturating_sub(base))
}

/// The time a reader may take for `bytes` of input: half a second per MB, at least two
/// seconds (debug builds on a loaded machine). The inputs here took from 20 s to 10 min
/// before each part was read once per open.
fn budget(bytes: usize) -> Duration {
    Duration::from_secs_f64((bytes as f64 / 1e6 * 0.5).max(2.0))
}

/// A GNU tar archive of `members`.
fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        out.extend_from_slice(&gnu_header(name, data.len() as u64, 0).unwrap());
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_member_named_on_every_manifest_line_is_hashed_once() {
    let Some(_one) = alone_and_serial("ova::a_member_named_on_every_manifest_line_is_hashed_once")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let line = format!("SHA256(disk.vmdk)= {}\n", hex_sha256(&disk));
    let lines = 5_000;
    let mf = line.repeat(lines);
    let ova = dir.path().join("amp.ova");
    let bytes = tar(&[("a.mf", mf.as_bytes()), ("disk.vmdk", &disk)]);
    std::fs::write(&ova, &bytes).unwrap();
    // Before: 5,000 x 4 MiB = 20 GiB hashed.
    let (info, took, peak) = measured(|| vmdk::ova::inspect(&ova, None, 2).unwrap());
    eprintln!(
        "manifest: {} bytes in {took:?}, {peak} bytes held",
        bytes.len()
    );
    assert_eq!(info.digests.len(), lines);
    assert!(info
        .digests
        .iter()
        .all(|c| c.status == vmdk::ova::manifest::Status::Match));
    assert!(
        took < budget(bytes.len()),
        "{took:?} for {} bytes",
        bytes.len()
    );
    assert!(peak < 64 << 20, "held {peak} bytes");
}

/// A monolithicFlat descriptor of `lines` one-sector extent lines, all naming `flat.bin`.
fn many_line_descriptor(lines: usize) -> String {
    let mut d = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\n",
    );
    for _ in 0..lines {
        d.push_str("RW 1 FLAT \"flat.bin\" 0\n");
    }
    d.push_str("\n# The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n");
    d
}

#[test]
fn descriptor_lines_inside_an_ova_index_the_archive_once() {
    let Some(_one) = alone_and_serial("ova::descriptor_lines_inside_an_ova_index_the_archive_once")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let lines = 20_000;
    let desc = many_line_descriptor(lines);
    // A 200 KB OVF (parsed again per line when the archive is named bare) and 500 more
    // members (the index read again per line).
    let mut ovf = String::from(
        "<?xml version=\"1.0\"?><Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\" \
         xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"><References>\
         <File ovf:href=\"desc.vmdk\" ovf:id=\"f1\"/>",
    );
    for i in 0..5000 {
        ovf.push_str(&format!("<File ovf:href=\"x{i}\" ovf:id=\"g{i}\"/>"));
    }
    ovf.push_str("</References></Envelope>");
    let names: Vec<String> = (0..500).map(|i| format!("pad/m{i}")).collect();
    let mut members: Vec<(&str, &[u8])> = vec![
        ("a.ovf", ovf.as_bytes()),
        ("desc.vmdk", desc.as_bytes()),
        ("flat.bin", &[0u8; 512]),
    ];
    members.extend(names.iter().map(|n| (n.as_str(), &b""[..])));
    let bytes = tar(&members);
    let ova = dir.path().join("amp.ova");
    std::fs::write(&ova, &bytes).unwrap();
    std::fs::write(dir.path().join("desc.vmdk"), &desc).unwrap();
    std::fs::write(dir.path().join("flat.bin"), [0u8; 512]).unwrap();

    let open = |p: &Path| {
        let img = Image::open(p).unwrap();
        assert_eq!(img.extents().len(), lines);
        assert_eq!(img.size(), lines as u64 * 512);
    };
    let (_, extracted, _) = measured(|| open(&dir.path().join("desc.vmdk")));
    let base = vmdk_live();
    for name in [ova.join("desc.vmdk"), ova.clone()] {
        // Before: 20 s as a member, 2 min 20 s as the bare archive.
        let (_, took, peak) = measured(|| open(&name));
        eprintln!(
            "{}: {} bytes in {took:?} (extracted: {extracted:?}), {peak} bytes held",
            name.display(),
            bytes.len()
        );
        assert!(
            took < budget(bytes.len()) + extracted * 3,
            "{}: {took:?} for {} bytes (extracted: {extracted:?})",
            name.display(),
            bytes.len()
        );
        assert!(peak < 64 << 20, "{}: held {peak} bytes", name.display());
    }
    // Nothing of the archives stays once the images are closed: the next open starts
    // from scratch, and a few opens hold no more than one did.
    let after = vmdk_live();
    assert!(
        after < base + (256 << 10),
        "{} bytes still held after the images were closed",
        after - base.min(after)
    );
}

fn vmdk_live() -> usize {
    alloc::live()
}

/// `header` with type `kind` (its checksum made again).
fn retyped(mut header: [u8; 512], kind: u8) -> [u8; 512] {
    header[156] = kind;
    header[148..156].fill(b' ');
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header
}

#[test]
fn vet_lists_what_an_importer_would_trip_over() {
    use std::sync::Arc;
    use vmdk::ova::{Archive, FindingCode};
    use vmdk::storage::MemStorage;

    let ovf = r#"<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"><References><File ovf:href="disk.vmdk" ovf:id="f1"/><File ovf:href="gone.vmdk" ovf:id="f2"/><File ovf:href="https://example.invalid/x.iso" ovf:id="f3"/></References></Envelope>"#;
    let disk1 = vec![1u8; 1000];
    let disk2 = vec![2u8; 1000];
    let mf = format!(
        "SHA256(a.ovf)= {}\nSHA256(./disk.vmdk)= {}\nSHA256(missing.vmdk)= 00\nMD5(a.ovf)= 00\n\
         SHA256(link)= 00\n",
        hex_sha256(ovf.as_bytes()),
        hex_sha256(&disk1)
    );
    let mut bytes = tar(&[
        ("a.ovf", ovf.as_bytes()),
        ("a.mf", mf.as_bytes()),
        ("disk.vmdk", &disk1),
        ("notes.txt", b"x"),
        // The certificate is not listed (it signs the manifest); a second one is payload.
        ("a.cert", b"c"),
        ("b.cert", b"c"),
        ("b.mf", b""),
        ("./disk.vmdk", &disk2),
    ]);
    bytes.truncate(bytes.len() - 1024);
    bytes.extend_from_slice(&retyped(gnu_header("link", 0, 0).unwrap(), b'2'));
    bytes.resize(bytes.len() + 1024, 0);
    let arch = Archive::from_storage(Path::new("v.ova"), Arc::new(MemStorage::new(bytes))).unwrap();
    let findings = vmdk::ova::vet(&arch, 2).unwrap();
    let got: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f.code.as_str(), f.name.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        got,
        [
            ("duplicate-member", "disk.vmdk"),
            ("special-member", "link"),
            ("several-manifests", "b.mf"),
            ("missing-reference", "gone.vmdk"),
            ("unlisted-reference", "gone.vmdk"),
            ("external-reference", "https://example.invalid/x.iso"),
            ("unlisted-member", "notes.txt"),
            ("unlisted-member", "b.cert"),
            ("unlisted-member", "b.mf"),
            // The last disk.vmdk is the one tar extracts: its digest is checked.
            ("digest-mismatch", "./disk.vmdk"),
            ("missing-member", "missing.vmdk"),
            ("unknown-algorithm", "a.ovf"),
            ("missing-member", "link"),
        ],
        "{findings:#?}"
    );
    assert_eq!(findings[0].code, FindingCode::DuplicateMember);
    assert!(
        findings[0].message.contains("headers at offsets"),
        "{}",
        findings[0].message
    );
    // Reading a disk out of it is refused.
    let e = arch.file("disk.vmdk").unwrap_err();
    assert!(
        e.to_string().contains("2 members named \"disk.vmdk\""),
        "{e}"
    );
}
