//! The NBD server as a client sees it: arbitrary bytes from a client, through the real
//! handshake and transmission code (`vmdk_nbd::Server::serve_stream`, the state machine a
//! TCP or Unix connection runs, one worker so runs are repeatable), against an in-memory
//! VMDK image (`vmdk::export::ImageExport`, what `vmdk serve` exports). Errors and dropped
//! connections are fine; panics, hangs and huge allocations are the bugs, and so is a
//! session that leaves a sound image corrupt (every write the server passes on must be
//! one the image takes cleanly).
//!
//! Input layout: byte 0 picks the server's configuration, the rest is what the client
//! sends (its flags, options, then requests), up to its end:
//! - bit 0: `read_only` (the image is opened read-only too);
//! - bit 1: offer `qemu:allocation-depth` (`vmdk serve -A`);
//! - bit 2: the export is named `disk` (else the empty name);
//! - bit 3: a description (`NBD_OPT_LIST`, `NBD_INFO_DESCRIPTION`);
//! - bit 4: serve the backing file alone instead of the overlay over it;
//! - bit 5: two clients allowed (multi-conn advertised).
//!
//! The images (a 2 MiB overlay with zeroed grains over a 2.5 MiB base, both with data) are
//! made once; every input gets its own copy in a fresh in-memory namespace.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmdk::export::ImageExport;
use vmdk::{CreateOptions, MemNamespace, OpenOptions};
use vmdk_nbd::{Server, ServerConfig};

const BASE: &str = "/fuzz/base.vmdk";
const TOP: &str = "/fuzz/top.vmdk";

/// The template files: (name, bytes).
fn template() -> &'static Vec<(PathBuf, Vec<u8>)> {
    static FILES: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(|| {
        let ns = Arc::new(MemNamespace::new());
        let create = |path: &str, size: u64, backing: Option<&str>| {
            let opts = CreateOptions {
                zeroed_grain: backing.is_some(),
                backing_file: backing.map(|b| b.trim_start_matches("/fuzz/").to_string()),
                namespace: Some(ns.clone()),
                ..Default::default()
            };
            vmdk::create(path.as_ref(), size, &opts).expect("creating the template");
        };
        let open = |path: &str| {
            OpenOptions::new()
                .writable(true)
                .in_namespace(ns.clone())
                .open(path)
                .expect("opening the template")
        };
        // Data in the base (one run across a grain boundary, one past the overlay's end),
        // data and zeros in the overlay, holes everywhere else. The base is written before
        // the overlay is made over it (writing changes its CID).
        create(BASE, 5 << 19, None);
        let base = open(BASE);
        base.write_at(&[0x11; 12288], 61440).unwrap();
        base.write_at(&[0x22; 4096], 2 << 20).unwrap();
        base.flush().unwrap();
        drop(base);
        create(TOP, 2 << 20, Some(BASE));
        let top = open(TOP);
        top.write_at(&[0x33; 8192], 1 << 20).unwrap();
        top.write_zeroes(64 << 10, 64 << 10, true).unwrap();
        top.flush().unwrap();
        drop(top);
        ns.names()
            .into_iter()
            .map(|n| {
                let data = ns.get(&n).unwrap();
                (n, data)
            })
            .collect()
    })
}

/// Whether `check` finds `img` sound.
fn sound(img: &vmdk::Image) -> bool {
    vmdk::check(img).is_ok_and(|r| r.corruption_count() == 0 && r.check_errors == 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, client)) = data.split_first() else {
        return;
    };
    let read_only = cfg & 1 != 0;
    let ns = Arc::new(MemNamespace::new());
    for (name, bytes) in template() {
        ns.insert(name, bytes.clone());
    }
    let path = if cfg & 16 != 0 { BASE } else { TOP };
    let image = OpenOptions::new()
        .writable(!read_only)
        .in_namespace(ns)
        .open(path)
        .expect("opening the fuzz image");
    let image = Arc::new(image);
    let config = ServerConfig {
        export_name: if cfg & 4 != 0 {
            "disk".into()
        } else {
            String::new()
        },
        description: (cfg & 8 != 0).then(|| "fuzz disk".to_string()),
        read_only,
        max_clients: if cfg & 32 != 0 { 2 } else { 1 },
        workers_per_client: 1,
        allocation_depth: cfg & 2 != 0,
        ..ServerConfig::default()
    };
    let server = Server::new(Arc::new(ImageExport::new(image.clone())), config);
    // Protocol errors end the session; that is the server doing its job.
    let _ = server.serve_stream(client, std::io::sink());
    if !read_only {
        assert!(
            sound(&image),
            "an NBD session left the image corrupt: {:?}",
            vmdk::check(&image).map(|r| (r.corruptions, r.errors))
        );
    }
});
