//! Comparing large sparse files by what they hold.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{seek, SeekFrom};

/// Where data starts at or after `off` in `f` (`len` when only a hole follows).
fn next_data(f: &File, off: u64, len: u64) -> u64 {
    match seek(f, SeekFrom::Data(off)) {
        Ok(at) => at.min(len),
        // ENXIO: nothing but a hole from `off` to the end.
        Err(_) => len,
    }
}

/// Whether the files `a` and `b` hold the same bytes, reading only from where either holds
/// data (holes read as zeros). Reading a multi-GiB sparse raw image whole costs seconds of
/// the kernel zero-filling holes per GiB; the images the tests convert are mostly holes.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (fa, fb) = (open(a), open(b));
    let len = fa.metadata().unwrap().len();
    if fb.metadata().unwrap().len() != len {
        return false;
    }
    const CHUNK: u64 = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut off = 0;
    loop {
        let at = next_data(&fa, off, len).min(next_data(&fb, off, len));
        if at >= len {
            return true;
        }
        let n = (len - at).min(CHUNK) as usize;
        fa.read_exact_at(&mut ba[..n], at).unwrap();
        fb.read_exact_at(&mut bb[..n], at).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
        off = at + n as u64;
    }
}
