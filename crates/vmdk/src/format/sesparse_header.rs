//! seSparse (ESXi 6.5+ snapshot) headers (their entries are coded in `grain_entry.rs`). VMware never published
//! this format; the layout follows QEMU's black-box reading of it, which is strict about
//! the constants so that an unexpected variant is refused rather than misread.

use super::error::{FormatError, FormatResult};
use super::le::*;

/// Constant header magic.
pub const SESPARSE_CONST_MAGIC: u64 = 0x0000_0000_cafe_babe;
/// Volatile header magic.
pub const SESPARSE_VOLATILE_MAGIC: u64 = 0x0000_0000_cafe_cafe;
/// The only version seen in the wild (2.1).
pub const SESPARSE_VERSION: u64 = 0x0000_0002_0000_0001;

/// The constant header at offset 0. Offsets and sizes are in sectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeSparseConstHeader {
    /// Format version: [`SESPARSE_VERSION`] is the only one accepted.
    pub version: u64,
    /// Virtual disk size, in sectors.
    pub capacity: u64,
    /// Sectors per grain (8: 4 KiB grains, the only size accepted).
    pub grain_size: u64,
    /// Size of one grain table, in sectors (64: 4096 entries, the only size accepted).
    pub grain_table_size: u64,
    /// Feature flags (none known; must be 0).
    pub flags: u64,
    /// Where the volatile header is.
    pub volatile_header_offset: u64,
    /// Size of the volatile header.
    pub volatile_header_size: u64,
    /// Where the journal header is.
    pub journal_header_offset: u64,
    /// Size of the journal header.
    pub journal_header_size: u64,
    /// Where the journal is (not read here, nor by QEMU).
    pub journal_offset: u64,
    /// Size of the journal.
    pub journal_size: u64,
    /// Where the grain directory is.
    pub grain_dir_offset: u64,
    /// Size of the grain directory.
    pub grain_dir_size: u64,
    /// Where the grain tables start.
    pub grain_tables_offset: u64,
    /// Size of the grain tables area.
    pub grain_tables_size: u64,
    /// Where the free-space bitmap is.
    pub free_bitmap_offset: u64,
    /// Size of the free-space bitmap.
    pub free_bitmap_size: u64,
    /// Where the back map is (not read here).
    pub backmap_offset: u64,
    /// Size of the back map.
    pub backmap_size: u64,
    /// Where the grains area starts.
    pub grains_offset: u64,
    /// Size of the grains area.
    pub grains_size: u64,
}

/// Whether `buf` starts with the seSparse constant-header magic.
pub fn is_sesparse(buf: &[u8]) -> bool {
    buf.len() >= 8 && u64_at(buf, 0) == SESPARSE_CONST_MAGIC
}

impl SeSparseConstHeader {
    /// Parse and check the 512-byte constant header the way QEMU does.
    pub fn parse(buf: &[u8]) -> FormatResult<Self> {
        if buf.len() < 512 {
            return Err(FormatError::Truncated("seSparse constant header"));
        }
        if u64_at(buf, 0) != SESPARSE_CONST_MAGIC {
            return Err(FormatError::BadMagic("seSparse constant header"));
        }
        let f = |i: usize| u64_at(buf, i * 8);
        let h = SeSparseConstHeader {
            version: f(1),
            capacity: f(2),
            grain_size: f(3),
            grain_table_size: f(4),
            flags: f(5),
            volatile_header_offset: f(10),
            volatile_header_size: f(11),
            journal_header_offset: f(12),
            journal_header_size: f(13),
            journal_offset: f(14),
            journal_size: f(15),
            grain_dir_offset: f(16),
            grain_dir_size: f(17),
            grain_tables_offset: f(18),
            grain_tables_size: f(19),
            free_bitmap_offset: f(20),
            free_bitmap_size: f(21),
            backmap_offset: f(22),
            backmap_size: f(23),
            grains_offset: f(24),
            grains_size: f(25),
        };
        if h.version != SESPARSE_VERSION {
            return Err(FormatError::Unsupported(format!(
                "unsupported seSparse version {:#018x}",
                h.version
            )));
        }
        for (what, got, want) in [
            ("grain size", h.grain_size, 8),
            ("grain table size", h.grain_table_size, 64),
        ] {
            if got != want {
                return Err(FormatError::Unsupported(format!(
                    "unsupported seSparse {what} {got}"
                )));
            }
        }
        if h.flags != 0 {
            return Err(FormatError::Unsupported(format!(
                "unsupported seSparse flags {:#x}",
                h.flags
            )));
        }
        if (6..10).any(|i| f(i) != 0) {
            return Err(FormatError::Unsupported(
                "unsupported non-zero seSparse reserved fields".into(),
            ));
        }
        if buf[208..512].iter().any(|&b| b != 0) {
            return Err(FormatError::Unsupported(
                "unsupported non-zero seSparse header padding".into(),
            ));
        }
        Ok(h)
    }

    /// Encode into 512 bytes (used to build test images).
    pub fn serialize(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        let vals = [
            SESPARSE_CONST_MAGIC,
            self.version,
            self.capacity,
            self.grain_size,
            self.grain_table_size,
            self.flags,
            0,
            0,
            0,
            0,
            self.volatile_header_offset,
            self.volatile_header_size,
            self.journal_header_offset,
            self.journal_header_size,
            self.journal_offset,
            self.journal_size,
            self.grain_dir_offset,
            self.grain_dir_size,
            self.grain_tables_offset,
            self.grain_tables_size,
            self.free_bitmap_offset,
            self.free_bitmap_size,
            self.backmap_offset,
            self.backmap_size,
            self.grains_offset,
            self.grains_size,
        ];
        for (i, v) in vals.iter().enumerate() {
            put_u64(&mut b, i * 8, *v);
        }
        b
    }
}

/// Check the volatile header: magic, and no pending journal (we cannot replay it).
pub fn check_volatile_header(buf: &[u8]) -> FormatResult<()> {
    if buf.len() < 512 {
        return Err(FormatError::Truncated("seSparse volatile header"));
    }
    if u64_at(buf, 0) != SESPARSE_VOLATILE_MAGIC {
        return Err(FormatError::BadMagic("seSparse volatile header"));
    }
    if u64_at(buf, 24) != 0 {
        return Err(FormatError::Unsupported(
            "seSparse image is dirty (journal replay needed, not supported)".into(),
        ));
    }
    if buf[32..512].iter().any(|&b| b != 0) {
        return Err(FormatError::Unsupported(
            "unsupported non-zero seSparse volatile header padding".into(),
        ));
    }
    Ok(())
}

/// Encode a clean volatile header (used to build test images).
pub fn serialize_volatile_header() -> [u8; 512] {
    let mut b = [0u8; 512];
    put_u64(&mut b, 0, SESPARSE_VOLATILE_MAGIC);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = SeSparseConstHeader {
            version: SESPARSE_VERSION,
            capacity: 204800,
            grain_size: 8,
            grain_table_size: 64,
            volatile_header_offset: 1,
            volatile_header_size: 1,
            grain_dir_offset: 4096,
            grain_dir_size: 2048,
            grain_tables_offset: 6144,
            grain_tables_size: 2048,
            grains_offset: 12288,
            grains_size: 204800,
            ..Default::default()
        };
        let b = h.serialize();
        assert!(is_sesparse(&b));
        assert_eq!(SeSparseConstHeader::parse(&b).unwrap(), h);
        check_volatile_header(&serialize_volatile_header()).unwrap();
    }
}
