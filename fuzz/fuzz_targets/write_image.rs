//! Open arbitrary bytes as an image *for writing* and write into it. Errors are fine;
//! panics, hangs and huge allocations are the bugs, and so is a write that succeeds on an
//! image `check` finds sound but does not read back, or that leaves such an image corrupt.
//!
//! Input layout: byte 0 is the number of operations `n` (at most 32), then `n` operations
//! of 8 bytes each, then the split byte and the files exactly as for `open_image` (the
//! first `len * s / 255` bytes of the rest, all of it when `s == 0xff`, become
//! `image.vmdk`, the remainder `extent.vmdk`). An operation is: kind (write, write zeros,
//! write zeros without unmapping, discard, flush), a little-endian u32 offset (taken
//! modulo the disk size), a u16 length in 4-byte units (clamped to the disk's end) and a
//! seed for the data. The files live in an in-memory namespace, so nothing touches the
//! disk.
#![no_main]

#[path = "split.rs"]
mod split;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::extent::ExtentKind;
use vmdk::{Image, MemNamespace, OpenOptions};

/// Bytes per operation in the input.
const OP_BYTES: usize = 8;
/// Largest grain written to: writes stage whole grains, and hostile grain sizes (up to
/// 1 GiB) are exercised by `open_image` already.
const MAX_GRAIN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
enum Op {
    Write,
    Zero,
    ZeroNoUnmap,
    Discard,
    Flush,
}

/// What the fuzzer knows a stretch of the disk holds after an operation.
#[derive(Debug, Clone)]
struct Known {
    offset: u64,
    data: Vec<u8>,
}

fn fill(seed: u8, len: usize) -> Vec<u8> {
    let mut x = seed as u32 | 0x100;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

/// Whether `img`, as `check` sees it, has no corruption (and the check itself worked).
fn sound(img: &Image) -> bool {
    vmdk::check(img).is_ok_and(|r| r.corruption_count() == 0 && r.check_errors == 0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(32);
    if rest.len() < n * OP_BYTES {
        return;
    }
    let (ops, files) = rest.split_at(n * OP_BYTES);
    let Some((image, extent)) = split::two_files(files) else {
        return;
    };
    let ns = MemNamespace::new();
    ns.insert("/fuzz/image.vmdk", image.to_vec());
    ns.insert("/fuzz/extent.vmdk", extent.to_vec());
    let opts = OpenOptions::new().writable(true).in_namespace(Arc::new(ns));
    let Ok(img) = opts.open("/fuzz/image.vmdk") else {
        return;
    };
    let size = img.size();
    if size == 0 {
        return;
    }
    let big_grain = img.extents().iter().any(|e| match &e.kind {
        ExtentKind::Sparse(s) => s.grain_size() > MAX_GRAIN,
        _ => false,
    });
    if big_grain {
        return;
    }
    // Read-back is only promised where `check` finds nothing wrong: a corrupt image may
    // alias grains in ways no single write can see.
    let verify = sound(&img);
    let mut known: Vec<Known> = Vec::new();
    for op in ops.chunks_exact(OP_BYTES) {
        let kind = match op[0] % 5 {
            0 => Op::Write,
            1 => Op::Zero,
            2 => Op::ZeroNoUnmap,
            3 => Op::Discard,
            _ => Op::Flush,
        };
        let offset = u32::from_le_bytes([op[1], op[2], op[3], op[4]]) as u64 % size;
        let len = (u16::from_le_bytes([op[5], op[6]]) as u64 * 4).min(size - offset);
        let seed = op[7];
        let result = match kind {
            Op::Write => {
                let buf = fill(seed, len as usize);
                let r = img.write_at(&buf, offset);
                (r.is_ok(), Some(buf))
            }
            Op::Zero | Op::ZeroNoUnmap => {
                let r = img.write_zeroes(offset, len, matches!(kind, Op::Zero));
                (r.is_ok(), Some(vec![0u8; len as usize]))
            }
            Op::Discard => (img.discard(offset, len).is_ok(), None),
            Op::Flush => {
                let _ = img.flush();
                continue;
            }
        };
        // Whatever this range held is no longer known (a failed write may leave part).
        let (lo, hi) = (offset, offset + len);
        known = known
            .into_iter()
            .flat_map(|k| {
                let (a, b) = (k.offset, k.offset + k.data.len() as u64);
                let mut keep = Vec::new();
                if a < lo {
                    let e = b.min(lo);
                    keep.push(Known {
                        offset: a,
                        data: k.data[..(e - a) as usize].to_vec(),
                    });
                }
                if b > hi {
                    let s = a.max(hi);
                    keep.push(Known {
                        offset: s,
                        data: k.data[(s - a) as usize..].to_vec(),
                    });
                }
                keep
            })
            .collect();
        if let (true, Some(expect)) = result {
            if len > 0 {
                known.push(Known {
                    offset,
                    data: expect,
                });
            }
        }
        if verify {
            for k in &known {
                let mut back = vec![0u8; k.data.len()];
                img.read_at(&mut back, k.offset)
                    .unwrap_or_else(|e| panic!("reading back {}+{}: {e}", k.offset, back.len()));
                assert!(
                    back == k.data,
                    "{}+{} does not read back what was written",
                    k.offset,
                    back.len()
                );
            }
        }
    }
    if verify {
        let after = vmdk::check(&img).expect("check");
        assert!(
            after.corruption_count() == 0 && after.check_errors == 0,
            "writes made a sound image corrupt: {:?} {:?}",
            after.corruptions,
            after.errors
        );
    }
});
