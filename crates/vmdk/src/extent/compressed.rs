//! Compressed (streamOptimized) grains: the one encoder of grain records (marker, zlib
//! stream, padding to a sector), the one decoder, and [`CompressedGrain`], the map target
//! for bytes inside a compressed grain.

use std::cell::RefCell;
use std::io::Read;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::extent::map::ExtentFile;
use crate::format::marker::{compress_bound, GrainMarker, GRAIN_MARKER_SIZE};
use crate::format::SECTOR_SIZE;

/// Highest zlib level accepted (libdeflate goes to 12; levels 0-9 mean what they mean to zlib).
pub const MAX_LEVEL: u32 = 12;

thread_local! {
    static DECOMPRESSOR: RefCell<libdeflater::Decompressor> =
        RefCell::new(libdeflater::Decompressor::new());
    /// The last grain this thread decompressed, so reads smaller than a grain do not
    /// decompress the same grain again and again.
    static LAST_GRAIN: RefCell<Option<(u64, u64, Vec<u8>)>> = const { RefCell::new(None) };
    /// The encoder writes to stream files use (zlib's default level, as QEMU).
    static WRITE_ENCODER: RefCell<Option<GrainEncoder>> = const { RefCell::new(None) };
}

/// Compresses grains into finished on-disk records: grain marker (when the file has them),
/// zlib stream, zero padding to a sector boundary. One per thread; cheap to keep, costly to
/// create.
pub struct GrainEncoder {
    comp: libdeflater::Compressor,
}

impl std::fmt::Debug for GrainEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrainEncoder").finish_non_exhaustive()
    }
}

impl GrainEncoder {
    /// An encoder at zlib `level` (0-9 as zlib, up to 12 for libdeflate's slower levels).
    pub fn new(level: u32) -> Result<GrainEncoder> {
        let lvl =
            libdeflater::CompressionLvl::new(level.min(i32::MAX as u32) as i32).map_err(|_| {
                Error::invalid(format!("invalid compression level {level} (0-{MAX_LEVEL})"))
            })?;
        Ok(GrainEncoder {
            comp: libdeflater::Compressor::new(lvl),
        })
    }

    /// Append the record for the grain starting at virtual sector `lba` to `out`. `data` is the
    /// whole grain (the last grain of a disk may be shorter; it is compressed as it is, and
    /// readers zero-fill the rest). Returns the record's length (a multiple of 512).
    pub fn encode(&mut self, lba: u64, data: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        self.encode_record(lba, data, true, out)
    }

    /// [`GrainEncoder::encode`], with a grain marker only if `marker` (QEMU-layout stream
    /// files without markers hold bare zlib streams).
    pub fn encode_record(
        &mut self,
        lba: u64,
        data: &[u8],
        marker: bool,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        let start = out.len();
        let head = if marker { GRAIN_MARKER_SIZE } else { 0 };
        let bound = self.comp.zlib_compress_bound(data.len());
        out.resize(start + head + bound, 0);
        let n = self
            .comp
            .zlib_compress(data, &mut out[start + head..])
            .map_err(|e| Error::new(ErrorKind::Io, format!("compression failed: {e:?}")))?;
        debug_assert!(n as u64 <= compress_bound(data.len() as u64));
        if marker {
            GrainMarker {
                lba,
                size: n as u32,
            }
            .write(&mut out[start..start + GRAIN_MARKER_SIZE]);
        }
        let len = (head + n).next_multiple_of(SECTOR_SIZE as usize);
        out.truncate(start + head + n);
        out.resize(start + len, 0);
        Ok(len)
    }
}

/// The record of one grain as writes into stream files store it: compressed at zlib's
/// default level by this thread's encoder.
pub(crate) fn encode_for_write(lba: u64, data: &[u8], marker: bool) -> Result<Vec<u8>> {
    WRITE_ENCODER.with(|e| {
        let mut e = e.borrow_mut();
        let enc = match &mut *e {
            Some(enc) => enc,
            None => e.insert(GrainEncoder {
                comp: libdeflater::Compressor::new(libdeflater::CompressionLvl::default()),
            }),
        };
        let mut out = Vec::new();
        enc.encode_record(lba, data, marker, &mut out)?;
        Ok(out)
    })
}

/// Bytes inside one compressed grain: what [`crate::MapTarget::Compressed`] holds.
#[derive(Debug, Clone)]
pub struct CompressedGrain {
    file: Arc<ExtentFile>,
    /// Byte offset of the grain's record (its marker, when the extent has markers).
    offset: u64,
    /// Uncompressed grain size in bytes.
    grain_size: u64,
    /// Where the stretch starts inside the uncompressed grain.
    in_grain: u64,
    /// Whether a 12-byte grain marker precedes the compressed stream.
    has_marker: bool,
    /// For a qcow2 compressed cluster: a raw deflate stream (no zlib wrapper) of at most
    /// this many bytes, instead of a VMDK grain record.
    deflate_len: Option<u64>,
    /// Guest offset of the grain's first byte, when known (qcow2 clusters): for messages.
    guest: Option<u64>,
}

impl CompressedGrain {
    pub(crate) fn new(
        file: Arc<ExtentFile>,
        offset: u64,
        grain_size: u64,
        in_grain: u64,
        has_marker: bool,
    ) -> Self {
        CompressedGrain {
            file,
            offset,
            grain_size,
            in_grain,
            has_marker,
            deflate_len: None,
            guest: None,
        }
    }

    /// A qcow2 compressed cluster at guest offset `guest`: a raw deflate stream of at most
    /// `stored_len` bytes at `offset` that inflates to `cluster_size` bytes.
    pub(crate) fn raw_deflate(
        file: Arc<ExtentFile>,
        offset: u64,
        cluster_size: u64,
        in_grain: u64,
        stored_len: u64,
        guest: u64,
    ) -> Self {
        CompressedGrain {
            file,
            offset,
            grain_size: cluster_size,
            in_grain,
            has_marker: false,
            deflate_len: Some(stored_len),
            guest: Some(guest),
        }
    }

    /// The file holding the grain.
    pub fn file(&self) -> &Arc<ExtentFile> {
        &self.file
    }

    /// Byte offset of the grain's record in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Uncompressed grain size in bytes.
    pub fn grain_size(&self) -> u64 {
        self.grain_size
    }

    /// Where the stretch starts inside the uncompressed grain.
    pub fn in_grain(&self) -> u64 {
        self.in_grain
    }

    /// The same grain, `n` bytes further in.
    pub(crate) fn advanced(&self, n: u64) -> Self {
        CompressedGrain {
            in_grain: self.in_grain + n,
            ..self.clone()
        }
    }

    /// The most bytes the grain's record can take in the file, when it is known (grains with
    /// markers): what a batched read must fetch to hold all of it.
    pub(crate) fn record_bound(&self) -> Option<u64> {
        if self.deflate_len.is_some() {
            return self.deflate_len;
        }
        self.has_marker
            .then(|| GRAIN_MARKER_SIZE as u64 + compress_bound(self.grain_size))
    }

    /// Fill `dst` with the grain's bytes from `in_grain` on, decompressing it (or reusing
    /// this thread's last decompressed grain).
    pub fn read_into(&self, dst: &mut [u8]) -> Result<()> {
        read_part(self, dst)
    }

    /// Decompress the whole grain into `out` (`out.len()` = the grain size).
    pub(crate) fn read_whole(&self, out: &mut [u8]) -> Result<()> {
        read_grain(self, out)
    }

    /// Decompress the grain (a whole grain with a marker) from `span`, the file's bytes from
    /// offset `span_start` on, into `out`; `false` when `span` does not hold a valid record
    /// (then [`CompressedGrain::read_into`] gives the precise error, or succeeds).
    pub(crate) fn decode_from(&self, span: &[u8], span_start: u64, out: &mut [u8]) -> bool {
        let Some(rel) = self
            .offset
            .checked_sub(span_start)
            .and_then(|r| usize::try_from(r).ok())
            .filter(|r| r.saturating_add(GRAIN_MARKER_SIZE) <= span.len())
        else {
            return false;
        };
        if let Some(len) = self.deflate_len {
            let end = span.len().min(rel.saturating_add(len as usize));
            return inflate_raw_into(&span[rel..end], out).is_ok();
        }
        let Ok(m) = GrainMarker::parse_checked(&span[rel..], self.grain_size) else {
            return false;
        };
        let data = rel + GRAIN_MARKER_SIZE;
        let data_end = data + m.size as usize;
        data_end <= span.len() && inflate_into(&span[data..data_end], out).is_ok()
    }
}

fn decompress_error(file: &ExtentFile, grain_offset: u64, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Decompress,
        format!("compressed grain at offset {grain_offset} is corrupt: {why}"),
    )
    .with_path(&file.path)
}

/// The error of a qcow2 compressed cluster that does not inflate as QEMU requires.
fn cluster_error(g: &CompressedGrain, why: impl std::fmt::Display) -> Error {
    let guest = g
        .guest
        .map(|o| format!(" (guest offset {o})"))
        .unwrap_or_default();
    Error::new(
        ErrorKind::Decompress,
        format!(
            "compressed cluster at host offset {}{guest} is corrupt: {why}",
            g.offset
        ),
    )
    .with_path(&g.file.path)
}

/// Decompress one zlib stream into `out`, which must be filled exactly or up to its end
/// (a short grain is zero-filled: the last grain of an extent may be partial).
fn inflate_into(data: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
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

/// Decompress one raw deflate stream (a qcow2 compressed cluster, followed by whatever lies
/// after it in its last sector) into `out`, a whole cluster, as QEMU does: the cluster must
/// be filled, and once it is, what follows does not matter.
///
/// QEMU inflates with zlib into a cluster-sized buffer and fails the read (EIO) unless the
/// buffer is full; a stream that goes on past the cluster, or is cut at the sector bound of
/// its L2 entry after filling it, reads fine. libdeflate, much faster, decodes whole streams
/// only: it answers every well-formed cluster, and the rest goes through zlib's streaming
/// inflate to get QEMU's verdict.
fn inflate_raw_into(data: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let fast = DECOMPRESSOR.with(|d| d.borrow_mut().deflate_decompress(data, out));
    let n = match fast {
        Ok(n) => n,
        Err(_) => {
            let mut z = flate2::Decompress::new(false);
            match z.decompress(data, out, flate2::FlushDecompress::Finish) {
                Ok(_) => z.total_out() as usize,
                Err(e) => return Err(format!("invalid deflate data ({e})")),
            }
        }
    };
    if n < out.len() {
        return Err(format!(
            "it inflates to only {n} of the {} bytes of a cluster",
            out.len()
        ));
    }
    Ok(())
}

/// Read and decompress the whole grain `g` into `out` (`out.len()` = the grain size).
fn read_grain(g: &CompressedGrain, out: &mut [u8]) -> Result<()> {
    let (file, grain_offset, has_marker) = (&*g.file, g.offset, g.has_marker);
    let grain_size = out.len() as u64;
    if let Some(len) = g.deflate_len {
        // Past the end of the file the stream reads as zeros, as it does to QEMU.
        let mut data = vec![0u8; len as usize];
        file.storage
            .read_up_to(&mut data, grain_offset)
            .map_err(|e| Error::io(e, "reading compressed cluster").with_path(&file.path))?;
        return inflate_raw_into(&data, out).map_err(|e| cluster_error(g, e));
    }
    if has_marker {
        let mut m = [0u8; GRAIN_MARKER_SIZE];
        file.storage
            .read_exact_at(&mut m, grain_offset)
            .map_err(|e| decompress_error(file, grain_offset, format!("reading marker: {e}")))?;
        let marker = GrainMarker::parse_checked(&m, grain_size)
            .map_err(|why| decompress_error(file, grain_offset, why))?;
        let mut data = vec![0u8; marker.size as usize];
        file.storage
            .read_exact_at(&mut data, grain_offset + GRAIN_MARKER_SIZE as u64)
            .map_err(|e| decompress_error(file, grain_offset, format!("reading data: {e}")))?;
        inflate_into(&data, out).map_err(|e| decompress_error(file, grain_offset, e))
    } else {
        // No marker: the stream length is unknown, so read what it could at most take and
        // let a streaming inflater stop at the stream's end.
        let mut data = vec![0u8; compress_bound(grain_size) as usize];
        let got = file
            .storage
            .read_up_to(&mut data, grain_offset)
            .map_err(|e| Error::io(e, "reading compressed grain").with_path(&file.path))?;
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
fn read_part(g: &CompressedGrain, buf: &mut [u8]) -> Result<()> {
    let (grain_offset, grain_size, in_grain) = (g.offset, g.grain_size, g.in_grain);
    let key = g.file.id();
    let start = in_grain as usize;
    if start == 0 && buf.len() as u64 == grain_size {
        return read_grain(g, buf);
    }
    LAST_GRAIN.with(|slot| {
        let mut slot = slot.borrow_mut();
        let hit = matches!(&*slot, Some((k, o, g)) if *k == key && *o == grain_offset && g.len() as u64 == grain_size);
        if !hit {
            let mut v = match slot.take() {
                Some((_, _, mut v)) => {
                    v.resize(grain_size as usize, 0);
                    v
                }
                None => vec![0u8; grain_size as usize],
            };
            read_grain(g, &mut v)?;
            *slot = Some((key, grain_offset, v));
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
