//! streamOptimized markers. Every grain is preceded by a 12-byte grain marker (LBA, compressed
//! size); metadata is preceded by a sector-sized marker whose size field is 0 and whose type
//! says what follows.

use super::le::*;

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
    }
}
