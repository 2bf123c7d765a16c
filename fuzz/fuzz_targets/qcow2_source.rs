//! Open arbitrary bytes as a qcow2 image, then read and map it (bounded) the way convert
//! does. The first byte picks how much of the rest is the image (`image.qcow2`); the
//! remainder becomes `base.qcow2` beside it, so a header naming that backing file reaches
//! the chain code. Errors are fine; panics, hangs and huge allocations are the bugs. Both
//! files live in an in-memory namespace.
#![no_main]

#[path = "split.rs"]
mod split;

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::Disk;
use vmdk::qcow2::Qcow2Image;
use vmdk::{MemNamespace, OpenOptions};

/// At most this much of the disk is read per input.
const READ_LIMIT: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((image, base)) = split::two_files(data) else {
        return;
    };
    let ns = MemNamespace::new();
    ns.insert("/fuzz/image.qcow2", image.to_vec());
    ns.insert("/fuzz/base.qcow2", base.to_vec());
    let opts = OpenOptions::new().in_namespace(Arc::new(ns));
    let Ok(img) = Qcow2Image::open_with(Path::new("/fuzz/image.qcow2"), &opts) else {
        return;
    };
    let n = img.size().min(READ_LIMIT);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < n {
        let len = (n - off).min(buf.len() as u64) as usize;
        if Disk::read_at(&img, &mut buf[..len], off).is_err() {
            break;
        }
        off += len as u64;
    }
    let _ = img.map_prefix(0, img.size(), 4096);
    if img.size() > 1000 {
        let at = img.size() / 2 + 123;
        let len = 1000.min(img.size() - at) as usize;
        let _ = Disk::read_at(&img, &mut buf[..len], at);
    }
});
