//! `vmdk info` and `vmdk map` against qemu-img on images qemu made.

use std::path::Path;
use vmdk_test_support::qemu::qemu_to_vmdk;

use crate::common::*;
use serde_json::Value;

/// The fields of `qemu-img info --output=json` we promise to reproduce.
fn info_fields(v: &Value) -> Value {
    let data = &v["format-specific"]["data"];
    let extents: Vec<Value> = data["extents"]
        .as_array()
        .expect("extents")
        .iter()
        .map(|e| {
            serde_json::json!({
                "virtual-size": e["virtual-size"],
                "filename": e["filename"],
                "cluster-size": e["cluster-size"],
                "format": e["format"],
                "compressed": e["compressed"],
            })
        })
        .collect();
    serde_json::json!({
        "virtual-size": v["virtual-size"],
        "filename": v["filename"],
        "format": v["format"],
        "cluster-size": v["cluster-size"],
        "actual-size": v["actual-size"],
        "backing-filename": v["backing-filename"],
        "full-backing-filename": v["full-backing-filename"],
        "backing-filename-format": v["backing-filename-format"],
        "dirty-flag": v["dirty-flag"],
        "type": v["format-specific"]["type"],
        "cid": data["cid"],
        "parent-cid": data["parent-cid"],
        "create-type": data["create-type"],
        "extents": extents,
    })
}

fn assert_info_matches(image: &Path, chain: bool) {
    let img = s(image);
    let mut args = vec!["info", "--output=json"];
    if chain {
        args.push("--backing-chain");
    }
    args.push(&img);
    let ours = vmdk(&args);
    assert_eq!(ours.code, 0, "vmdk info: {}", ours.stderr);
    let ours = ours.json();
    let theirs: Value = serde_json::from_str(&qemu_img(&args)).unwrap();
    if chain {
        let (o, t) = (ours.as_array().unwrap(), theirs.as_array().unwrap());
        assert_eq!(o.len(), t.len(), "chain length");
        for (o, t) in o.iter().zip(t) {
            assert_eq!(info_fields(o), info_fields(t), "{}", image.display());
        }
    } else {
        assert_eq!(
            info_fields(&ours),
            info_fields(&theirs),
            "{}",
            image.display()
        );
    }
}

fn assert_map_matches(image: &Path, extra: &[&str]) {
    let img = s(image);
    let mut args = vec!["map", "--output=json"];
    args.extend_from_slice(extra);
    args.push(&img);
    let ours = vmdk(&args);
    assert_eq!(ours.code, 0, "vmdk map: {}", ours.stderr);
    let theirs = qemu_img(&args);
    let (o, t): (Value, Value) = (ours.json(), serde_json::from_str(&theirs).unwrap());
    assert_eq!(o, t, "map of {} {extra:?}", image.display());
    // Not just the same values: the same text.
    assert_eq!(ours.stdout, theirs, "map text of {}", image.display());
}

fn assert_human_map_matches(image: &Path) {
    let img = s(image);
    let ours = vmdk(&["map", &img]).expect(0, "vmdk map");
    assert_eq!(
        ours,
        qemu_img(&["map", &img]),
        "human map of {}",
        image.display()
    );
}

#[test]
fn info_monolithic_sparse() {
    let d = tempdir();
    let img = qemu_written(d.path(), "a.vmdk", "10M", &["write -P 0xab 60k 10k"]);
    assert_info_matches(&img, false);
    let human = vmdk_ok(&["info", &s(&img)]);
    assert!(
        human.contains("virtual size: 10 MiB (10485760 bytes)\n"),
        "{human}"
    );
    assert!(human.contains("cluster_size: 65536\n"), "{human}");
    assert!(
        human.contains("    create type: monolithicSparse\n"),
        "{human}"
    );
    // qemu's own human lines come first, in its order.
    let theirs = qemu_img(&["info", &s(&img)]);
    let head: Vec<&str> = theirs.lines().take(5).collect();
    let ours_head: Vec<&str> = human.lines().take(5).collect();
    assert_eq!(ours_head, head);
}

#[test]
fn info_stream_optimized() {
    let d = tempdir();
    let src = qemu_create(d.path(), "src.vmdk", "4M", &[]);
    qemu_io(&src, &["write -P 1 0 100k", "write -P 2 3M 64k"]);
    let img = d.path().join("s.vmdk");
    qemu_to_vmdk(&src, &img, "", "subformat=streamOptimized");
    assert_info_matches(&img, false);
}

#[test]
fn info_two_gb_max_extent_flat() {
    let d = tempdir();
    let img = qemu_create_sub(d.path(), "f.vmdk", "5G", "twoGbMaxExtentFlat");
    assert_info_matches(&img, false);
    let v = vmdk(&["info", "--output=json", &s(&img)]).json();
    assert!(v.get("cluster-size").is_none());
    let ext = &v["format-specific"]["data"]["extents"];
    assert_eq!(ext.as_array().unwrap().len(), 3);
    assert_eq!(ext[0]["access"], "RW");
    assert_eq!(ext[0]["type"], "FLAT");
}

#[test]
fn info_two_gb_max_extent_sparse_and_extras() {
    let d = tempdir();
    let img = qemu_create(
        d.path(),
        "t.vmdk",
        "3G",
        &["subformat=twoGbMaxExtentSparse", "adapter_type=lsilogic"],
    );
    assert_info_matches(&img, false);
    let v = vmdk(&["info", "--output=json", &s(&img)]).json();
    let data = &v["format-specific"]["data"];
    assert_eq!(data["adapter-type"], "lsilogic");
    assert_eq!(data["hwversion"], "4");
    assert_eq!(data["geometry"]["heads"], 255);
    assert_eq!(data["extents"][1]["type"], "SPARSE");
}

#[test]
fn info_backing_chain() {
    let d = tempdir();
    let base = qemu_written(d.path(), "base.vmdk", "8M", &["write -P 1 0 64k"]);
    let top = qemu_child(d.path(), "top.vmdk", &base, None);
    assert_info_matches(&top, false);
    assert_info_matches(&top, true);
    let human = vmdk_ok(&["info", "--backing-chain", &s(&top)]);
    assert!(
        human.contains(&format!(
            "backing file: base.vmdk (actual path: {})\n",
            s(&base)
        )),
        "{human}"
    );
    assert!(human.contains("backing file format: vmdk\n"), "{human}");
    assert!(
        human.contains(&format!("\n\nimage: {}\n", s(&base))),
        "{human}"
    );
    // A missing backing file does not stop plain info (qemu opens without backing too).
    std::fs::remove_file(&base).unwrap();
    let v = vmdk(&["info", "--output=json", &s(&top)]).json();
    assert_eq!(v["backing-filename"], "base.vmdk");
}

#[test]
fn info_unknown_keys_and_unsafe_paths() {
    let d = tempdir();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(d.path().join("data.raw"), vec![0u8; 1 << 20]).unwrap();
    let desc = sub.join("evil.vmdk");
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\nisNativeSnapshot=\"no\"\n\n\
         RW 2048 FLAT \"../data.raw\" 0\n\nddb.adapterType = \"ide\"\nddb.custom.thing = \"x\"\n",
    )
    .unwrap();
    let r = vmdk(&["info", &s(&desc)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.starts_with("vmdk: "), "{}", r.stderr);
    assert_contains!(r.stderr, "--allow-unsafe-paths");
    for cmd in ["map", "check"] {
        let r = vmdk(&[cmd, &s(&desc)]);
        assert_eq!(r.code, 1, "{cmd}");
        assert_contains!(r.stderr, "--allow-unsafe-paths", "{cmd}");
    }
    let r = vmdk(&["io", "-c", "read 0 512", &s(&desc)]);
    assert_eq!(r.code, 1);
    assert_contains!(r.stderr, "--allow-unsafe-paths");

    let v = vmdk(&["info", "--output=json", "--allow-unsafe-paths", &s(&desc)]).json();
    let data = &v["format-specific"]["data"];
    assert_eq!(data["cid"], 0x12345678);
    assert_eq!(data["unknown-keys"]["isNativeSnapshot"], "no");
    assert_eq!(data["unknown-keys"]["ddb.custom.thing"], "x");
    assert_eq!(data["extents"][0]["filename"], s(&sub.join("../data.raw")));
}

#[test]
fn map_sparse_unaligned_writes() {
    let d = tempdir();
    let img = qemu_create(d.path(), "a.vmdk", "16M", &[]);
    qemu_io(
        &img,
        &[
            "write -P 1 60k 10k",
            "write -P 2 130k 200k",
            "write -P 3 1M 64k",
            "write -P 4 16383k 1k",
            "write -P 5 8M 512",
        ],
    );
    assert_map_matches(&img, &[]);
    assert_map_matches(&img, &["--start-offset", "70000", "--max-length", "300k"]);
    assert_map_matches(&img, &["--start-offset", "1M"]);
    assert_map_matches(&img, &["--start-offset", "32M"]);
    assert_human_map_matches(&img);
}

#[test]
fn map_zeroed_grains() {
    let d = tempdir();
    let img = qemu_create(d.path(), "z.vmdk", "4M", &["zeroed_grain=on"]);
    qemu_io(
        &img,
        &[
            "write -P 1 0 256k",
            "write -z 64k 128k",
            "write -z 1M 64k",
            "write -z 2M 1000",
            "write -z 3M 100k",
        ],
    );
    assert_map_matches(&img, &[]);
    assert_human_map_matches(&img);
}

#[test]
fn map_two_and_three_level_chains() {
    let d = tempdir();
    let base = qemu_create(d.path(), "base.vmdk", "4M", &["zeroed_grain=on"]);
    qemu_io(&base, &["write -P 1 0 1M", "write -z 2M 128k"]);
    let mid = qemu_child(d.path(), "mid.vmdk", &base, None);
    qemu_io(&mid, &["write -P 2 60k 70k", "write -P 3 3M 64k"]);
    assert_map_matches(&mid, &[]);
    assert_human_map_matches(&mid);
    let top = qemu_child(d.path(), "top.vmdk", &mid, None);
    qemu_io(&top, &["write -P 4 512k 4k", "write -P 5 3M 1k"]);
    assert_map_matches(&top, &[]);
    assert_map_matches(&top, &["--start-offset", "100k", "--max-length", "1M"]);
    assert_human_map_matches(&top);
}

#[test]
fn map_child_larger_than_backing() {
    let d = tempdir();
    let base = qemu_written(d.path(), "small.vmdk", "1M", &["write -P 5 0 64k"]);
    let top = qemu_child(d.path(), "big.vmdk", &base, Some("4M"));
    qemu_io(&top, &["write -P 6 2M 64k"]);
    assert_map_matches(&top, &[]);
}

#[test]
fn map_stream_optimized() {
    let d = tempdir();
    let src = qemu_create(d.path(), "src.vmdk", "8M", &[]);
    qemu_io(
        &src,
        &["write -P 1 0 200k", "write -P 2 1M 64k", "write -P 3 7M 1M"],
    );
    let img = d.path().join("s.vmdk");
    qemu_to_vmdk(&src, &img, "", "subformat=streamOptimized");
    assert_map_matches(&img, &[]);
    // Human output refuses compressed clusters, as qemu-img does.
    let r = vmdk(&["map", &s(&img)]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("File contains external, encrypted or compressed clusters."),
        "{}",
        r.stderr
    );
}

#[test]
fn map_multi_extent_sparse_and_flat() {
    let d = tempdir();
    let t = qemu_create_sub(d.path(), "t.vmdk", "3G", "twoGbMaxExtentSparse");
    qemu_io(&t, &["write -P 1 2047M 2M", "write -P 2 0 4k"]);
    assert_map_matches(&t, &[]);
    assert_human_map_matches(&t);
    let f = qemu_create_sub(d.path(), "f.vmdk", "4M", "monolithicFlat");
    qemu_io(&f, &["write -P 1 1M 64k", "write -P 2 3M 4k"]);
    assert_map_matches(&f, &[]);
    assert_human_map_matches(&f);
}

#[test]
fn map_raw() {
    let d = tempdir();
    let raw = d.path().join("r.raw");
    qemu_img(&["create", "-q", "-f", "raw", &s(&raw), "4M"]);
    tool(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 1 1M 64k", &s(&raw)],
    )
    .expect(0, "qemu-io");
    let ours = vmdk(&["map", "--output=json", "-f", "raw", &s(&raw)]);
    let theirs = qemu_img(&["map", "--output=json", "-f", "raw", &s(&raw)]);
    assert_eq!(ours.json(), serde_json::from_str::<Value>(&theirs).unwrap());
}

/// Extent access comes from the descriptor line, in a descriptor file and in the descriptor
/// embedded in a stream file alike; qemu-img shows no access (and drops non-RW lines from
/// descriptor files, shrinking the disk). A descriptor VirtualBox has opened carries both
/// its `ddb.uuid.image` and VMware's `ddb.uuid`: `uuid` is VMware's.
#[test]
fn info_extent_access_and_uuid() {
    let d = tempdir();
    std::fs::write(d.path().join("a-flat.vmdk"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(d.path().join("b-flat.vmdk"), vec![2u8; 1 << 20]).unwrap();
    let desc = d.path().join("d.vmdk");
    std::fs::write(
        &desc,
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
         createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"a-flat.vmdk\" 0\n\
         RDONLY 2048 FLAT \"b-flat.vmdk\" 0\n\n#DDB\n\
         ddb.uuid = \"60 00 c2 9a 01 02 03 04-05 06 07 08 09 0a 0b 0c\"\n\
         ddb.uuid.image=\"fd9d3b48-5f27-4c8f-92aa-ed3f683ce09d\"\n",
    )
    .unwrap();
    let v = vmdk(&["info", "--output=json", &s(&desc)]).json();
    assert_eq!(v["virtual-size"], 2 << 20);
    let data = &v["format-specific"]["data"];
    assert_eq!(data["extents"][0]["access"], "RW");
    assert_eq!(data["extents"][1]["access"], "RDONLY");
    assert_eq!(
        data["uuid"],
        "60 00 c2 9a 01 02 03 04-05 06 07 08 09 0a 0b 0c"
    );
    let human = vmdk_ok(&["info", &s(&desc)]);
    assert!(human.contains("            access: RDONLY\n"), "{human}");
    assert!(
        human.contains("    uuid: 60 00 c2 9a 01 02 03 04-05 06 07 08 09 0a 0b 0c\n"),
        "{human}"
    );
    // qemu-img knows only RW lines: its disk is the first extent alone.
    let q: Value = serde_json::from_str(&qemu_img(&["info", "--output=json", &s(&desc)])).unwrap();
    assert_eq!(q["virtual-size"], 1 << 20);

    // A stream file whose embedded descriptor says RDONLY (as VirtualBox, ovftool and
    // vmdktool write them): shown, and writes are refused.
    let img = qemu_create_sub(d.path(), "s.vmdk", "4M", "streamOptimized");
    qemu_io(&img, &["write -P 7 0 64k"]);
    let desc_at = read_u64(&img, 28) * 512;
    let desc_len = read_u64(&img, 36) as usize * 512;
    let text = std::fs::read(&img).unwrap()[desc_at as usize..][..desc_len].to_vec();
    let text = String::from_utf8_lossy(&text)
        .trim_end_matches('\0')
        .replace("\nRW ", "\nRDONLY ");
    assert!(text.contains("\nRDONLY 8192 SPARSE"), "{text}");
    assert!(text.len() < desc_len);
    patch(&img, desc_at, text.as_bytes());
    let v = vmdk(&["info", "--output=json", &s(&img)]).json();
    assert_eq!(
        v["format-specific"]["data"]["extents"][0]["access"],
        "RDONLY"
    );
    assert!(vmdk_ok(&["info", &s(&img)]).contains("            access: RDONLY\n"));
    let r = vmdk(&["io", "-c", "write -P 9 65536 512", &s(&img)]);
    assert!(
        r.code != 0 && r.stdout.contains("write failed") && r.stdout.contains("RDONLY"),
        "{} {} {}",
        r.code,
        r.stdout,
        r.stderr
    );
    let r = vmdk(&["io", "-c", "read -P 7 0 64k", &s(&img)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("fail"), "{}", r.stdout);
}

/// A failing `map --output=json` prints nothing on stdout (not a lone `[`): the image cannot
/// be opened, or is not there at all. (A failure part way through is tested on a real
/// seSparse file in `realworld.rs`.)
#[test]
fn map_json_prints_nothing_on_failure() {
    let d = tempdir();
    let img = qemu_written(d.path(), "a.vmdk", "64M", &["write -P 1 0 1M"]);
    // The grain directory points past the end of the file.
    patch(&img, 56, &(1u64 << 30).to_le_bytes());
    for (what, path) in [
        ("corrupt", s(&img)),
        ("missing", s(&d.path().join("missing.vmdk"))),
    ] {
        for output in ["--output=json", "--output=human"] {
            let r = vmdk(&["map", output, &path]);
            assert_eq!(r.code, 1, "{what} {output}: {}", r.stdout);
            assert_eq!(r.stdout, "", "{what} {output}");
            assert!(
                r.stderr.starts_with("vmdk: ") && r.stderr.contains(&path),
                "{what} {output}: {}",
                r.stderr
            );
        }
    }
}

/// Descriptor files QEMU refuses are refused by us too, with QEMU's message: a createType
/// its driver does not open as a descriptor file, an `RW` extent line with a field too
/// many or too few. The lines it reads (and a 4-field VMFS line, which it opens) open on
/// both sides.
#[test]
fn descriptor_files_qemu_refuses_are_refused_with_its_message() {
    let d = tempdir();
    std::fs::write(d.path().join("flat.img"), vec![0u8; 1 << 20]).unwrap();
    let desc = |create_type: &str, line: &str| {
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
             createType=\"{create_type}\"\n\n# Extent description\n{line}\n\n\
             # The Disk Data Base\n#DDB\n\nddb.adapterType = \"ide\"\n"
        )
    };
    let refused = [
        ("custom", "RW 2048 FLAT \"flat.img\" 0"),
        // VirtualBox's raw-disk descriptors (samples/realworld/descriptor-only).
        ("fullDevice", "RW 2048 FLAT \"flat.img\" 0"),
        ("partitionedDevice", "RW 2048 FLAT \"flat.img\" 0"),
        // A descriptor file with a hosted sparse type: QEMU opens those only embedded.
        ("monolithicSparse", "RW 2048 FLAT \"flat.img\" 0"),
        ("streamOptimized", "RW 2048 FLAT \"flat.img\" 0"),
        ("monolithicFlat", "RW 2048 FLAT \"flat.img\""),
        ("monolithicFlat", "RW 2048 FLAT \"flat.img\" -1"),
        ("vmfs", "RW 2048 VMFS \"flat.img\" 0"),
        ("twoGbMaxExtentSparse", "RW 2048 SPARSE \"flat.img\" 0"),
        ("vmfsSparse", "RW 2048 VMFSSPARSE \"flat.img\" 5"),
        ("seSparse", "RW 2048 SESPARSE \"flat.img\" 0"),
    ];
    for (i, (create_type, line)) in refused.iter().enumerate() {
        let p = d.path().join(format!("r{i}.vmdk"));
        std::fs::write(&p, desc(create_type, line)).unwrap();
        let theirs = tool("qemu-img", &["info", &s(&p)]);
        assert_eq!(theirs.code, 1, "qemu-img opens {create_type} / {line}");
        let prefix = format!("qemu-img: Could not open '{}': ", s(&p));
        let message = theirs
            .stderr
            .trim_end()
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("qemu-img said: {}", theirs.stderr));
        assert!(
            message.starts_with("Unsupported image type") || message.starts_with("Invalid extent"),
            "{message}"
        );
        for cmd in [
            &["info"][..],
            &["check"],
            &["map", "--output=json"],
            &["io", "-c", "read 0 512"],
        ] {
            let path = s(&p);
            let args: Vec<&str> = cmd.iter().copied().chain([path.as_str()]).collect();
            let ours = vmdk(&args);
            assert_eq!(ours.code, 1, "{args:?}: {}", ours.stdout);
            assert_eq!(ours.stdout, "", "{args:?}");
            assert_eq!(
                ours.stderr.trim_end(),
                format!("vmdk: '{}': {message}", s(&p)),
                "{args:?}"
            );
        }
    }
    // What QEMU opens opens here too.
    let opened = [
        ("vmfs", "RW 2048 VMFS \"flat.img\""),
        ("monolithicFlat", "RW 2048 FLAT \"flat.img\" 0"),
        // A word after the file name that is not a number is no fifth field to sscanf.
        ("monolithicFlat", "RW 2048 FLAT \"flat.img\" 0 extra"),
    ];
    for (i, (create_type, line)) in opened.iter().enumerate() {
        let p = d.path().join(format!("o{i}.vmdk"));
        std::fs::write(&p, desc(create_type, line)).unwrap();
        qemu_img(&["info", &s(&p)]);
        let v = vmdk(&["info", "--output=json", &s(&p)]).json();
        assert_eq!(v["virtual-size"], 1 << 20, "{create_type} / {line}");
    }
}

/// The one leniency: a capacity-0 sparse file's embedded descriptor is a descriptor file to
/// QEMU (whose check refuses its `monolithicSparse`), but qemu-img writes such files itself
/// (`create ... 0`, and the realworld `dualfuse` sample): they open here as 0-byte disks.
#[test]
fn capacity_zero_images_qemu_img_writes_open_as_empty_disks() {
    let d = tempdir();
    let p = qemu_create(d.path(), "zero.vmdk", "0", &[]);
    let theirs = tool("qemu-img", &["info", &s(&p)]);
    assert_eq!(theirs.code, 1);
    assert!(
        theirs
            .stderr
            .contains("Unsupported image type 'monolithicSparse'"),
        "{}",
        theirs.stderr
    );
    let v = vmdk(&["info", "--output=json", &s(&p)]).json();
    assert_eq!(v["virtual-size"], 0);
    assert_eq!(vmdk(&["check", &s(&p)]).code, 0);
}
