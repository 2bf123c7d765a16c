//! The VMDK4 (`KDMV`) sparse extent header: 512 bytes at the start of every hosted sparse
//! extent, and repeated in the footer of VMware-layout streamOptimized files.

use super::error::{FormatError, FormatResult};
use super::grain_entry::{GrainCoding, SparseFlavor};
use super::le::*;
use super::SECTOR_SIZE;

/// `KDMV` read as a little-endian u32.
pub const SPARSE_MAGIC: u32 = 0x564d_444b;
/// `gd_offset` value meaning "the grain directory location is in the footer".
pub const GD_AT_END: u64 = 0xffff_ffff_ffff_ffff;

/// Header flag: the newline-detection bytes are valid.
pub const FLAG_NL_DETECT: u32 = 1 << 0;
/// Header flag: a redundant grain directory is kept at `rgd_offset`.
pub const FLAG_RGD: u32 = 1 << 1;
/// Header flag: GTE value 1 means "zeroed grain" rather than an offset.
pub const FLAG_ZERO_GRAIN: u32 = 1 << 2;
/// Header flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Header flag: grains and metadata are preceded by markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;

/// `compressAlgorithm` value for deflate (zlib streams).
pub const COMPRESSION_DEFLATE: u16 = 1;

/// The bytes VMware puts at offset 73 to detect text-mode (newline-mangling) transfers.
pub const NEWLINE_CHECK: [u8; 4] = [b'\n', b' ', b'\r', b'\n'];

/// Grain size qemu-img and VMware use for new sparse extents, in sectors (64 KiB).
pub const DEFAULT_GRAIN_SECTORS: u64 = 128;
/// Grain-table entries qemu-img and VMware use for new sparse extents.
pub const DEFAULT_GT_ENTRIES: u32 = 512;

/// Largest grain QEMU accepts (1 GiB, in sectors); anything bigger is treated as corrupt.
pub const MAX_GRAIN_SECTORS: u64 = 0x20_0000;
/// Largest grain table QEMU accepts, in entries.
pub const MAX_GT_ENTRIES: u32 = 512;
/// QEMU's cap on grain-directory entries; a directory larger than this is corrupt, and no
/// new extent gets one.
pub const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;

/// A parsed VMDK4 sparse header. Offsets and sizes are in sectors, as on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Extent capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor offset in sectors (0 if none).
    pub desc_offset: u64,
    /// Embedded descriptor size in sectors.
    pub desc_size: u64,
    /// Entries per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant grain directory offset in sectors.
    pub rgd_offset: u64,
    /// Grain directory offset in sectors, or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Offset in sectors where grain data (or the metadata overhead) ends.
    pub overhead: u64,
    /// Whether the file was cleanly closed (byte 72 is 0 when clean).
    pub unclean_shutdown: bool,
    /// The four newline-detection bytes.
    pub check_bytes: [u8; 4],
    /// Compression algorithm (0 none, 1 deflate).
    pub compress_algorithm: u16,
}

impl SparseHeader {
    /// Size of the encoded header.
    pub const SIZE: usize = SECTOR_SIZE as usize;

    /// Parse the 512 bytes at the start of a sparse extent. Only the magic is checked here;
    /// [`SparseHeader::validate`] checks the geometry.
    pub fn parse(buf: &[u8]) -> FormatResult<SparseHeader> {
        if buf.len() < 79 {
            return Err(FormatError::Truncated("sparse header"));
        }
        if u32_at(buf, 0) != SPARSE_MAGIC {
            return Err(FormatError::BadMagic("sparse header"));
        }
        let mut check_bytes = [0u8; 4];
        check_bytes.copy_from_slice(&buf[73..77]);
        Ok(SparseHeader {
            version: u32_at(buf, 4),
            flags: u32_at(buf, 8),
            capacity: u64_at(buf, 12),
            grain_size: u64_at(buf, 20),
            desc_offset: u64_at(buf, 28),
            desc_size: u64_at(buf, 36),
            num_gtes_per_gt: u32_at(buf, 44),
            rgd_offset: u64_at(buf, 48),
            gd_offset: u64_at(buf, 56),
            overhead: u64_at(buf, 64),
            unclean_shutdown: buf[72] != 0,
            check_bytes,
            compress_algorithm: u16_at(buf, 77),
        })
    }

    /// Encode into 512 bytes.
    pub fn serialize(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put_u32(&mut b, 0, SPARSE_MAGIC);
        put_u32(&mut b, 4, self.version);
        put_u32(&mut b, 8, self.flags);
        put_u64(&mut b, 12, self.capacity);
        put_u64(&mut b, 20, self.grain_size);
        put_u64(&mut b, 28, self.desc_offset);
        put_u64(&mut b, 36, self.desc_size);
        put_u32(&mut b, 44, self.num_gtes_per_gt);
        put_u64(&mut b, 48, self.rgd_offset);
        put_u64(&mut b, 56, self.gd_offset);
        put_u64(&mut b, 64, self.overhead);
        b[72] = self.unclean_shutdown as u8;
        b[73..77].copy_from_slice(&self.check_bytes);
        put_u16(&mut b, 77, self.compress_algorithm);
        b
    }

    /// Whether grains are compressed. Like QEMU we go by `compressAlgorithm`, not by the
    /// flag bit: VMware writes both, and the algorithm field is the one that must be right.
    pub fn compressed(&self) -> bool {
        self.compress_algorithm == COMPRESSION_DEFLATE
    }

    /// Whether the newline-detection bytes are intact (only meaningful with
    /// [`FLAG_NL_DETECT`]). Damaged bytes mean a text-mode transfer rewrote line endings;
    /// QEMU does not check them, so this is reported by `check`, not refused at open.
    pub fn newline_bytes_ok(&self) -> bool {
        self.flags & FLAG_NL_DETECT == 0 || self.check_bytes == NEWLINE_CHECK
    }
    /// Whether grains and metadata carry stream markers.
    pub fn has_markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
    /// Whether GTE 1 means a zeroed grain.
    pub fn zero_grain(&self) -> bool {
        self.flags & FLAG_ZERO_GRAIN != 0
    }

    /// Check what the rest of the code relies on: supported version, a power-of-two grain
    /// size no larger than 1 GiB, a sane grain table size, and newline bytes intact.
    pub fn validate(&self) -> FormatResult<()> {
        if self.version == 0 || self.version > 3 {
            return Err(FormatError::Unsupported(format!(
                "unsupported VMDK version {}",
                self.version
            )));
        }
        // Any size QEMU accepts is legal here: VMware only ever writes powers of two, but
        // nothing in the lookup arithmetic needs one.
        if self.grain_size == 0 || self.grain_size > MAX_GRAIN_SECTORS {
            return Err(FormatError::Invalid(format!(
                "invalid grain size {} sectors (must be 1 sector to 1 GiB)",
                self.grain_size
            )));
        }
        if self.num_gtes_per_gt == 0 || self.num_gtes_per_gt > MAX_GT_ENTRIES {
            return Err(FormatError::Invalid(format!(
                "invalid grain table size {} entries (at most {})",
                self.num_gtes_per_gt, MAX_GT_ENTRIES
            )));
        }
        if self.compress_algorithm > COMPRESSION_DEFLATE {
            return Err(FormatError::Unsupported(format!(
                "unsupported compression algorithm {}",
                self.compress_algorithm
            )));
        }
        if self.capacity > super::MAX_VIRTUAL_SIZE / SECTOR_SIZE {
            return Err(FormatError::Unsupported(format!(
                "capacity of {} sectors is more than the {} bytes (8 EiB - 1 GiB) QEMU and NBD \
                 clients can address",
                self.capacity,
                super::MAX_VIRTUAL_SIZE
            )));
        }
        Ok(())
    }

    /// Grain-directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        let per_gd = self.grain_size * self.num_gtes_per_gt as u64;
        self.capacity.div_ceil(per_gd)
    }

    /// How the extent's directory and table entries are coded (grain size in bytes,
    /// saturating for a header [`SparseHeader::validate`] would refuse).
    pub fn grain_coding(&self) -> GrainCoding {
        GrainCoding::sectors(
            SparseFlavor::Vmdk4,
            self.zero_grain(),
            self.compressed(),
            self.grain_size.saturating_mul(SECTOR_SIZE),
            self.num_gtes_per_gt as u64,
        )
    }

    /// Where the header puts the embedded descriptor, as a byte range of the file: `None`
    /// when it names none (offset or size 0). The range is the header's word, saturating
    /// rather than overflowing and checked against nothing: readers use
    /// [`SparseHeader::checked_embedded_descriptor_range`], inspectors judge it themselves.
    pub fn embedded_descriptor_range(&self) -> Option<std::ops::Range<u64>> {
        if self.desc_offset == 0 || self.desc_size == 0 {
            return None;
        }
        let start = self.desc_offset.saturating_mul(SECTOR_SIZE);
        Some(start..start.saturating_add(self.desc_size.saturating_mul(SECTOR_SIZE)))
    }

    /// [`SparseHeader::embedded_descriptor_range`] for reading the descriptor: refused when
    /// it is larger than [`MAX_DESCRIPTOR_SIZE`](super::descriptor::MAX_DESCRIPTOR_SIZE) or
    /// lies past what 64-bit offsets address.
    pub fn checked_embedded_descriptor_range(&self) -> FormatResult<Option<std::ops::Range<u64>>> {
        let Some(range) = self.embedded_descriptor_range() else {
            return Ok(None);
        };
        let max_sectors = super::descriptor::MAX_DESCRIPTOR_SIZE as u64 / SECTOR_SIZE;
        if self.desc_size > max_sectors {
            return Err(FormatError::Invalid(format!(
                "embedded descriptor is {} sectors (at most {max_sectors})",
                self.desc_size
            )));
        }
        let end = self
            .desc_offset
            .checked_mul(SECTOR_SIZE)
            .and_then(|s| s.checked_add(self.desc_size * SECTOR_SIZE));
        if end.is_none() {
            return Err(FormatError::Invalid(format!(
                "embedded descriptor at sector {} lies past what 64-bit offsets address",
                self.desc_offset
            )));
        }
        Ok(Some(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT | FLAG_RGD,
            capacity: 2048,
            grain_size: 128,
            desc_offset: 1,
            desc_size: 20,
            num_gtes_per_gt: 512,
            rgd_offset: 21,
            gd_offset: 26,
            overhead: 128,
            unclean_shutdown: false,
            check_bytes: NEWLINE_CHECK,
            compress_algorithm: 0,
        }
    }

    #[test]
    fn embedded_descriptor_range() {
        let mut h = sample();
        assert_eq!(h.embedded_descriptor_range(), Some(512..512 + 20 * 512));
        assert_eq!(h.checked_embedded_descriptor_range(), Ok(Some(512..10752)));
        h.desc_size = 0;
        assert_eq!(h.embedded_descriptor_range(), None);
        assert_eq!(h.checked_embedded_descriptor_range(), Ok(None));
        h.desc_size = 1 << 20;
        assert!(h.embedded_descriptor_range().is_some());
        assert!(h.checked_embedded_descriptor_range().is_err());
        h.desc_size = 1;
        h.desc_offset = u64::MAX / 256;
        assert_eq!(h.embedded_descriptor_range().unwrap().end, u64::MAX);
        assert!(h.checked_embedded_descriptor_range().is_err());
    }

    #[test]
    fn round_trip() {
        let h = sample();
        let b = h.serialize();
        assert_eq!(&b[0..4], b"KDMV");
        assert_eq!(SparseHeader::parse(&b).unwrap(), h);
        h.validate().unwrap();
        assert_eq!(h.gd_entries(), 1);
    }

    #[test]
    fn rejects_bad_geometry() {
        let mut h = sample();
        h.grain_size = 0;
        assert!(h.validate().is_err());
        h.grain_size = MAX_GRAIN_SECTORS * 2;
        assert!(h.validate().is_err());
        let mut h = sample();
        h.num_gtes_per_gt = 513;
        assert!(h.validate().is_err());
        let mut h = sample();
        h.check_bytes = [b'\n', b' ', b'\n', b'\n'];
        assert!(!h.newline_bytes_ok());
        let mut h = sample();
        h.version = 4;
        assert!(h.validate().is_err());
        assert!(SparseHeader::parse(&[0u8; 10]).is_err());
        assert!(SparseHeader::parse(&[0u8; 512]).is_err());
    }
}
