//! Reading compressed (streamOptimized) grains.

use std::cell::RefCell;
use std::io::Read;

use crate::error::{Error, ErrorKind, Result};
use crate::format::marker::{GrainMarker, GRAIN_MARKER_SIZE};
use crate::map::ExtentFile;

/// The most a zlib stream of `n` input bytes can take (zlib's compressBound plus header and
/// trailer slack). A marker claiming more is corrupt; checking it before reading is what
/// keeps a hostile marker from driving a huge allocation (the CVE-2026-2243 class).
pub fn compress_bound(n: u64) -> u64 {
    n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + 6 + 64
}

thread_local! {
    static DECOMPRESSOR: RefCell<libdeflater::Decompressor> =
        RefCell::new(libdeflater::Decompressor::new());
    /// The last grain this thread decompressed, so reads smaller than a grain do not
    /// decompress the same grain again and again.
    static LAST_GRAIN: RefCell<Option<(u64, u64, Vec<u8>)>> = const { RefCell::new(None) };
}

fn decompress_error(file: &ExtentFile, grain_offset: u64, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Decompress,
        format!("compressed grain at offset {grain_offset} is corrupt: {why}"),
    )
    .with_path(&file.path)
}

/// Decompress one zlib stream into `out`, which must be filled exactly or up to its end
/// (a short grain is zero-filled: the last grain of an extent may be partial).
pub fn inflate_into(data: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let n = DECOMPRESSOR.with(|d| {
        d.borrow_mut()
            .zlib_decompress(data, out)
            .map_err(|e| match e {
                libdeflater::DecompressionError::BadData => {
                    "invalid zlib data (bad header, deflate stream or checksum)".to_string()
                }
                libdeflater::DecompressionError::InsufficientSpace => {
                    format!(
                        "data decompresses to more than the {}-byte grain",
                        out.len()
                    )
                }
            })
    })?;
    out[n..].fill(0);
    Ok(())
}

/// Read and decompress the whole grain stored at `grain_offset` into `out`
/// (`out.len()` = the grain size).
pub fn read_grain(
    file: &ExtentFile,
    grain_offset: u64,
    has_marker: bool,
    out: &mut [u8],
) -> Result<()> {
    let grain_size = out.len() as u64;
    let bound = compress_bound(grain_size);
    if has_marker {
        let mut m = [0u8; GRAIN_MARKER_SIZE];
        file.storage
            .read_exact_at(&mut m, grain_offset)
            .map_err(|e| decompress_error(file, grain_offset, format!("reading marker: {e}")))?;
        let marker = GrainMarker::parse(&m).expect("12 bytes");
        if marker.size == 0 || marker.size as u64 > bound {
            return Err(decompress_error(
                file,
                grain_offset,
                format!(
                    "marker claims {} compressed bytes (at most {} possible)",
                    marker.size, bound
                ),
            ));
        }
        let mut data = vec![0u8; marker.size as usize];
        file.storage
            .read_exact_at(&mut data, grain_offset + GRAIN_MARKER_SIZE as u64)
            .map_err(|e| decompress_error(file, grain_offset, format!("reading data: {e}")))?;
        inflate_into(&data, out).map_err(|e| decompress_error(file, grain_offset, e))
    } else {
        // No marker: the stream length is unknown, so read what it could at most take and
        // let a streaming inflater stop at the stream's end.
        let mut data = vec![0u8; bound as usize];
        let mut got = 0;
        while got < data.len() {
            let n = file
                .storage
                .read_at(&mut data[got..], grain_offset + got as u64)
                .map_err(|e| Error::io(e, "reading compressed grain").with_path(&file.path))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        data.truncate(got);
        let mut z = flate2::read::ZlibDecoder::new(&data[..]);
        let mut filled = 0;
        while filled < out.len() {
            match z.read(&mut out[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => return Err(decompress_error(file, grain_offset, e)),
            }
        }
        out[filled..].fill(0);
        Ok(())
    }
}

/// Copy `buf.len()` bytes starting `in_grain` bytes into the compressed grain at
/// `grain_offset`, decompressing it (or reusing this thread's last decompressed grain).
pub fn read_part(
    file: &ExtentFile,
    grain_offset: u64,
    grain_size: u64,
    in_grain: u64,
    has_marker: bool,
    buf: &mut [u8],
) -> Result<()> {
    let key = file.id();
    let start = in_grain as usize;
    if start == 0 && buf.len() as u64 == grain_size {
        return read_grain(file, grain_offset, has_marker, buf);
    }
    LAST_GRAIN.with(|slot| {
        let mut slot = slot.borrow_mut();
        let hit = matches!(&*slot, Some((k, o, g)) if *k == key && *o == grain_offset && g.len() as u64 == grain_size);
        if !hit {
            let mut g = match slot.take() {
                Some((_, _, mut v)) => {
                    v.resize(grain_size as usize, 0);
                    v
                }
                None => vec![0u8; grain_size as usize],
            };
            read_grain(file, grain_offset, has_marker, &mut g)?;
            *slot = Some((key, grain_offset, g));
        }
        let (_, _, g) = slot.as_ref().expect("filled above");
        buf.copy_from_slice(&g[start..start + buf.len()]);
        Ok(())
    })
}

/// Forget this thread's cached grain (after a write changed compressed data).
pub fn forget_cached_grain() {
    LAST_GRAIN.with(|slot| slot.borrow_mut().take());
}
