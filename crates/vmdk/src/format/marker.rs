//! streamOptimized markers. Every grain is preceded by a 12-byte grain marker (LBA, compressed
//! size); metadata is preceded by a sector-sized marker whose size field is 0 and whose type
//! says what follows. VMware-layout stream files end in a footer: footer marker, a copy of
//! the header giving the real directory offset, end-of-stream marker.

use super::error::{FormatError, FormatResult};
use super::le::*;
use super::sparse_header::{SparseHeader, GD_AT_END, SPARSE_MAGIC};

/// End-of-stream marker type.
pub const MARKER_EOS: u32 = 0;
/// Grain-table marker type.
pub const MARKER_GT: u32 = 1;
/// Grain-directory marker type.
pub const MARKER_GD: u32 = 2;
/// Footer marker type.
pub const MARKER_FOOTER: u32 = 3;

/// Size of the grain marker that precedes compressed data.
pub const GRAIN_MARKER_SIZE: usize = 12;

/// Bytes of a stream footer: footer marker, header, end-of-stream marker, a sector each.
pub const FOOTER_SIZE: usize = 1536;

/// The most a zlib stream of `n` input bytes can take (zlib's compressBound plus header and
/// trailer slack). A marker claiming more is corrupt; checking it before reading is what
/// keeps a hostile marker from driving a huge allocation (the CVE-2026-2243 class).
pub fn compress_bound(n: u64) -> u64 {
    n + (n >> 12) + (n >> 14) + (n >> 25) + 13 + 6 + 64
}

/// A parsed grain marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrainMarker {
    /// Virtual sector of the grain's start.
    pub lba: u64,
    /// Bytes of compressed data that follow.
    pub size: u32,
}

impl GrainMarker {
    /// Parse the first 12 bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Option<GrainMarker> {
        if buf.len() < GRAIN_MARKER_SIZE {
            return None;
        }
        Some(GrainMarker {
            lba: u64_at(buf, 0),
            size: u32_at(buf, 8),
        })
    }
    /// Parse the marker of a grain of `grain_size` bytes and check its size is one a zlib
    /// stream of the grain can have: not 0, at most [`compress_bound`]. The message says
    /// what is wrong.
    pub fn parse_checked(buf: &[u8], grain_size: u64) -> FormatResult<GrainMarker> {
        let m = GrainMarker::parse(buf).ok_or(FormatError::Truncated("grain marker"))?;
        let bound = compress_bound(grain_size);
        if m.size == 0 || m.size as u64 > bound {
            return Err(FormatError::Invalid(format!(
                "marker claims {} compressed bytes (at most {bound} possible)",
                m.size
            )));
        }
        Ok(m)
    }

    /// Encode into the first 12 bytes of `buf`.
    pub fn write(&self, buf: &mut [u8]) {
        put_u64(buf, 0, self.lba);
        put_u32(buf, 8, self.size);
    }
}

/// A parsed metadata marker (a 512-byte sector: num_sectors, size = 0, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataMarker {
    /// Sectors of metadata that follow the marker.
    pub num_sectors: u64,
    /// Marker type (`MARKER_*`; unknown types exist in the wild).
    pub kind: u32,
}

impl MetadataMarker {
    /// Parse a marker sector. Returns `None` if it is a grain marker (size != 0).
    pub fn parse(buf: &[u8]) -> Option<MetadataMarker> {
        if buf.len() < 16 || u32_at(buf, 8) != 0 {
            return None;
        }
        Some(MetadataMarker {
            num_sectors: u64_at(buf, 0),
            kind: u32_at(buf, 12),
        })
    }
    /// Encode as a full sector.
    pub fn serialize(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u64(&mut b, 0, self.num_sectors);
        put_u32(&mut b, 12, self.kind);
        b
    }
}

/// Whether the sector `buf` is an end-of-stream marker (an all-zero marker sector).
pub fn is_end_of_stream(buf: &[u8]) -> bool {
    matches!(MetadataMarker::parse(buf), Some(m) if m.kind == MARKER_EOS && m.num_sectors == 0)
}

/// The footer closing a VMware-layout stream file whose header (with the real grain
/// directory offset) is `header`.
pub fn stream_footer(header: &SparseHeader) -> [u8; FOOTER_SIZE] {
    let mut b = [0u8; FOOTER_SIZE];
    b[..512].copy_from_slice(
        &MetadataMarker {
            num_sectors: 1,
            kind: MARKER_FOOTER,
        }
        .serialize(),
    );
    b[512..1024].copy_from_slice(&header.serialize());
    b[1024..].copy_from_slice(
        &MetadataMarker {
            num_sectors: 0,
            kind: MARKER_EOS,
        }
        .serialize(),
    );
    b
}

/// The header in the footer `buf` (the last [`FOOTER_SIZE`] bytes of a stream file whose
/// header says the directory is at the end).
pub fn parse_stream_footer(buf: &[u8]) -> FormatResult<SparseHeader> {
    let ok = buf.len() >= FOOTER_SIZE
        && matches!(MetadataMarker::parse(&buf[0..512]), Some(m) if m.kind == MARKER_FOOTER)
        && is_end_of_stream(&buf[1024..1536])
        && u32_at(&buf[512..], 0) == SPARSE_MAGIC;
    if !ok {
        return Err(FormatError::Invalid(
            "invalid footer (grain directory is at end of file but no footer/end-of-stream \
             marker found)"
                .into(),
        ));
    }
    let h = SparseHeader::parse(&buf[512..1024])?;
    if h.gd_offset == GD_AT_END {
        return Err(FormatError::Invalid(
            "footer does not give the grain directory offset".into(),
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        let m = GrainMarker {
            lba: 128,
            size: 300,
        };
        let mut b = [0u8; 12];
        m.write(&mut b);
        assert_eq!(GrainMarker::parse(&b), Some(m));
        let mm = MetadataMarker {
            num_sectors: 4,
            kind: MARKER_GT,
        };
        assert_eq!(MetadataMarker::parse(&mm.serialize()), Some(mm));
        assert_eq!(MetadataMarker::parse(&b), None);
        assert!(is_end_of_stream(&[0u8; 512]));
        assert_eq!(GrainMarker::parse_checked(&b, 65536), Ok(m));
        GrainMarker { lba: 0, size: 0 }.write(&mut b);
        assert!(GrainMarker::parse_checked(&b, 65536).is_err());
        GrainMarker {
            lba: 0,
            size: compress_bound(65536) as u32 + 1,
        }
        .write(&mut b);
        assert!(GrainMarker::parse_checked(&b, 65536).is_err());
    }

    #[test]
    fn footer_round_trip() {
        let mut h = SparseHeader {
            version: 3,
            flags: crate::format::sparse_header::FLAG_COMPRESSED,
            capacity: 2048,
            grain_size: 128,
            desc_offset: 1,
            desc_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 128,
            unclean_shutdown: false,
            check_bytes: crate::format::sparse_header::NEWLINE_CHECK,
            compress_algorithm: 1,
        };
        h.gd_offset = 77;
        let f = stream_footer(&h);
        assert_eq!(parse_stream_footer(&f), Ok(h.clone()));
        h.gd_offset = GD_AT_END;
        assert!(parse_stream_footer(&stream_footer(&h)).is_err());
        assert!(parse_stream_footer(&[0u8; FOOTER_SIZE]).is_err());
    }
}
