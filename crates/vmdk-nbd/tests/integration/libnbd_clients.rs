//! End-to-end tests with libnbd's tools (`nbdinfo`, `nbdcopy` from
//! Debian's libnbd-bin). Skipped with a notice when they are missing.

use std::sync::atomic::Ordering;

use crate::common::*;
use vmdk_nbd::ServerConfig;

const MIB: u64 = 1 << 20;

fn cfg() -> ServerConfig {
    ServerConfig {
        export_name: "exp".into(),
        description: Some("libnbd test export".into()),
        persistent: true,
        max_clients: 8,
        ..Default::default()
    }
}

#[test]
fn nbdinfo_json_list_and_map() {
    if skip_without("nbdinfo") {
        return;
    }
    let export = MemExport::new(4 * MIB);
    export.fill(MIB, &pattern(65536, 7));
    let srv = TestServer::tcp(export, cfg());

    let out = run("nbdinfo", &["--json", &srv.url_for("exp")]);
    assert!(out.success, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-size"], 4 * MIB);
    assert_eq!(e["export-name"], "exp");
    assert_eq!(e["description"], "libnbd test export");
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["block_size_minimum"], 512);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    assert!(v["protocol"].as_str().unwrap().contains("newstyle-fixed"));
    assert_eq!(v["TLS"], false);
    let ctxs = e["contexts"].as_array().unwrap();
    assert!(ctxs.iter().any(|c| c == "base:allocation"), "{ctxs:?}");

    let out = run("nbdinfo", &["--list", "--json", &srv.url()]);
    assert!(out.success, "{}", out.all());
    assert!(out.stdout.contains("\"exp\""), "{}", out.stdout);

    // --map: hole / data / hole.
    let out = run("nbdinfo", &["--map", &srv.url_for("exp")]);
    assert!(out.success, "{}", out.all());
    let lines: Vec<Vec<String>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    let parsed: Vec<(u64, u64, u32)> = lines
        .iter()
        .map(|f| {
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parsed,
        vec![
            (0, MIB, 3),
            (MIB, 65536, 0),
            (MIB + 65536, 3 * MIB - 65536, 3)
        ],
        "{}",
        out.stdout
    );
    assert!(lines[0].join(" ").contains("hole,zero"));
    assert!(lines[1].join(" ").contains("data"));
}

#[test]
fn nbdcopy_both_directions() {
    if skip_without("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut content = vec![0u8; size as usize];
    for (i, range) in [(0u64, MIB), (7 * MIB, 3 * MIB), (15 * MIB, MIB)] {
        let d = pattern(range as usize, i as u32);
        content[i as usize..(i + range) as usize].copy_from_slice(&d);
    }

    // File -> export, with several connections (multi-conn is advertised).
    let src = dir.path().join("src.raw");
    write_file(&src, &content);
    let export = MemExport::new(size);
    let srv = TestServer::unix(export.clone(), cfg());
    let out = run(
        "nbdcopy",
        &[
            "--flush",
            "-C",
            "4",
            src.to_str().unwrap(),
            &srv.url_for("exp"),
        ],
    );
    assert!(out.success, "{}", out.all());
    assert!(
        export.snapshot() == content,
        "data copied into the export differs"
    );
    assert!(export.flushes.load(Ordering::SeqCst) >= 1);

    // Export -> file (sparse structured reads).
    let dst = dir.path().join("dst.raw");
    let out = run("nbdcopy", &[&srv.url_for("exp"), dst.to_str().unwrap()]);
    assert!(out.success, "{}", out.all());
    assert!(
        std::fs::read(&dst).unwrap() == content,
        "data copied out differs"
    );
}
