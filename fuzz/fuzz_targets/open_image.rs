//! Open arbitrary bytes as an image file, then read and map (bounded). The input is split:
//! the first byte picks how much of the rest is the image file (`image.vmdk`); the remainder
//! becomes `extent.vmdk` beside it, so descriptors naming that file reach the extent parsers.
//! Errors are fine; panics, hangs and huge allocations are the bugs. Both files live in an
//! in-memory namespace: nothing touches the disk.
#![no_main]

#[path = "split.rs"]
mod split;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::{MemNamespace, OpenOptions};

/// At most this much of the disk is read per input.
const READ_LIMIT: u64 = 8 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((image, extent)) = split::two_files(data) else {
        return;
    };
    let ns = MemNamespace::new();
    ns.insert("/fuzz/image.vmdk", image.to_vec());
    ns.insert("/fuzz/extent.vmdk", extent.to_vec());
    let opts = OpenOptions::new().in_namespace(Arc::new(ns));
    let Ok(img) = opts.open("/fuzz/image.vmdk") else {
        return;
    };
    let size = img.size();
    let n = size.min(READ_LIMIT);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < n {
        let len = (n - off).min(buf.len() as u64) as usize;
        if img.read_at(&mut buf[..len], off).is_err() {
            break;
        }
        off += len as u64;
    }
    let _ = img.map(0, n);
    // Unaligned reads in the middle and at the end of every extent.
    for e in img.extents() {
        for at in [
            e.start + e.length / 2 + 123,
            e.start + e.length.saturating_sub(700),
        ] {
            if at < size {
                let len = 1000.min(size - at) as usize;
                let _ = img.read_at(&mut buf[..len], at);
                let _ = img.map(at, len as u64);
            }
        }
    }
});
