//! Images whose files all live in an in-memory namespace: creating, opening, writing,
//! backing chains, converting and the path gate work the same without a file system, which
//! is what lets archives and object stores hold images.

use crate::common::IN_PLACE_SUBFORMATS;
use std::path::Path;
use std::sync::Arc;

use vmdk::ops::convert::{convert_to_raw, convert_to_vmdk, ConvertOptions};
use vmdk::ops::create::{create, CreateOptions, Subformat};
use vmdk::{ErrorKind, Image, MemNamespace, Namespace, OpenOptions};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn mem() -> Arc<MemNamespace> {
    Arc::new(MemNamespace::new())
}

fn in_ns(ns: &Arc<MemNamespace>) -> OpenOptions {
    OpenOptions::new().in_namespace(ns.clone() as Arc<dyn Namespace>)
}

fn create_in(ns: &Arc<MemNamespace>, name: &str, size: u64, sub: Subformat, backing: Option<&str>) {
    let opts = CreateOptions {
        subformat: sub,
        backing_file: backing.map(str::to_string),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    create(Path::new(name), size, &opts).unwrap();
}

#[test]
fn every_subformat_is_created_written_and_read_back_in_memory() {
    for sub in IN_PLACE_SUBFORMATS {
        let ns = mem();
        let size = 5 << 20;
        create_in(&ns, "/vm/disk.vmdk", size, sub, None);
        let data = pattern(300_000, 7);
        {
            let img = in_ns(&ns).writable(true).open("/vm/disk.vmdk").unwrap();
            img.write_at(&data, 1_000_000).unwrap();
            img.flush().unwrap();
        }
        let img = in_ns(&ns).open("/vm/disk.vmdk").unwrap();
        assert_eq!(img.size(), size, "{sub:?}");
        let mut back = vec![0u8; data.len()];
        img.read_at(&mut back, 1_000_000).unwrap();
        assert_eq!(back, data, "{sub:?}");
        let mut zeros = vec![1u8; 4096];
        img.read_at(&mut zeros, 0).unwrap();
        assert!(zeros.iter().all(|&b| b == 0), "{sub:?}");
        let report = vmdk::check(&img).unwrap();
        assert_eq!(
            report.corruption_count(),
            0,
            "{sub:?}: {:?}",
            report.corruptions
        );
        // Every file the image uses is in the namespace, none on the host.
        for f in ns.names() {
            assert!(f.starts_with("/vm"), "{f:?}");
        }
        assert!(!Path::new("/vm").exists());
    }
}

#[test]
fn backing_chains_resolve_inside_the_namespace() {
    let ns = mem();
    create_in(
        &ns,
        "/vm/base.vmdk",
        4 << 20,
        Subformat::MonolithicSparse,
        None,
    );
    let base = pattern(1 << 20, 1);
    in_ns(&ns)
        .writable(true)
        .open("/vm/base.vmdk")
        .unwrap()
        .write_at(&base, 0)
        .unwrap();
    create_in(
        &ns,
        "/vm/top.vmdk",
        4 << 20,
        Subformat::MonolithicSparse,
        Some("base.vmdk"),
    );
    let top = pattern(4096, 9);
    in_ns(&ns)
        .writable(true)
        .open("/vm/top.vmdk")
        .unwrap()
        .write_at(&top, 8192)
        .unwrap();
    let img = in_ns(&ns).open("/vm/top.vmdk").unwrap();
    assert!(img.backing().is_some());
    let mut got = vec![0u8; 1 << 20];
    img.read_at(&mut got, 0).unwrap();
    let mut want = base.clone();
    want[8192..8192 + 4096].copy_from_slice(&top);
    assert_eq!(got, want);
}

#[test]
fn the_path_gate_holds_in_memory_too() {
    let ns = mem();
    ns.insert("/secret/passwd", vec![0x41; 4096]);
    let desc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                createType=\"monolithicFlat\"\nRW 8 FLAT \"../secret/passwd\" 0\n";
    ns.insert("/vm/evil.vmdk", desc.as_bytes().to_vec());
    let e = in_ns(&ns).open("/vm/evil.vmdk").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnsafePath, "{e}");
    assert!(e.to_string().contains("../secret/passwd"), "{e}");
    // A backing file cycle is found by identity, however it is spelled.
    let cyc = "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
               createType=\"monolithicFlat\"\nparentFileNameHint=\"./sub/../loop.vmdk\"\n\
               RW 8 FLAT \"data\" 0\n";
    ns.insert("/vm/loop.vmdk", cyc.as_bytes().to_vec());
    ns.insert("/vm/data", vec![0; 4096]);
    let e = in_ns(&ns).open("/vm/loop.vmdk").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BackingChain, "{e}");
}

#[test]
fn converting_between_namespaces_never_touches_the_host() {
    let src_ns = mem();
    let size = 3 << 20;
    let mut raw = vec![0u8; size];
    raw[70_000..170_000].copy_from_slice(&pattern(100_000, 3));
    raw[2_500_000..2_500_512].copy_from_slice(&pattern(512, 4));
    src_ns.insert("/in/disk.raw", raw.clone());
    let src = vmdk::open_disk(Path::new("/in/disk.raw"), None, &in_ns(&src_ns)).unwrap();

    let out = mem();
    let convert_opts = ConvertOptions {
        target_namespace: Some(out.clone()),
        ..Default::default()
    };
    for sub in [Subformat::StreamOptimized, Subformat::TwoGbMaxExtentSparse] {
        let create = CreateOptions {
            subformat: sub,
            ..Default::default()
        };
        convert_to_vmdk(
            &*src,
            Path::new("/out/disk.vmdk"),
            &create,
            &convert_opts,
            &|_, _| {},
        )
        .unwrap();
        let img = in_ns(&out).open("/out/disk.vmdk").unwrap();
        let mut back = vec![0u8; size];
        img.read_at(&mut back, 0).unwrap();
        assert!(back == raw, "{sub:?}");
        // And back to raw, in a third namespace.
        let third = mem();
        let to_raw = ConvertOptions {
            target_namespace: Some(third.clone()),
            ..Default::default()
        };
        convert_to_raw(&img, Path::new("/r/disk.raw"), &to_raw, &|_, _| {}).unwrap();
        assert!(third.get("/r/disk.raw").unwrap() == raw, "{sub:?}");
    }
    // The source is never chosen as the target, in a namespace as on the host.
    let same = ConvertOptions {
        target_namespace: Some(src_ns.clone()),
        ..Default::default()
    };
    let e = convert_to_raw(&*src, Path::new("/in/./disk.raw"), &same, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    assert!(src_ns.get("/in/disk.raw").unwrap() == raw);
}

#[test]
fn a_sequential_sink_is_enough_for_stream_output() {
    // The stream writer only appends: the output can be any front-to-back destination.
    let ns = mem();
    let opts = CreateOptions::default();
    let sink = ns.create_stream(Path::new("/s/out.vmdk"), true).unwrap();
    let mut w = vmdk::ops::stream_writer::StreamWriter::new(
        sink,
        Path::new("/s/out.vmdk"),
        1 << 20,
        &opts,
        6,
    )
    .unwrap();
    let g = pattern(65536, 5);
    w.write_grain(3, &g).unwrap();
    w.finish().unwrap();
    let img = Image::open_with("/s/out.vmdk", &in_ns(&ns)).unwrap();
    assert_eq!(img.create_type(), "streamOptimized");
    let mut back = vec![0u8; 65536];
    img.read_at(&mut back, 3 * 65536).unwrap();
    assert_eq!(back, g);
}
