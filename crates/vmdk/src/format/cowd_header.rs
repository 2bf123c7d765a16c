//! The VMDK3 / ESX `COWD` sparse header (vmfsSparse extents, ESX 2.x-6.x snapshots).
//! Grain tables have a fixed 4096 entries; all offsets are 32-bit sector numbers.

use super::error::{FormatError, FormatResult};
use super::le::*;

/// `COWD` read as a little-endian u32.
pub const COWD_MAGIC: u32 = 0x4457_4f43;
/// Grain table entries per table; fixed by the format.
pub const COWD_GT_ENTRIES: u32 = 4096;
/// Size of the header on disk (the grain directory follows at `gd_offset`).
pub const COWD_HEADER_SIZE: usize = 2048;

/// Byte offset of the header's free-sector field, where ESX allocates next. Writers move it
/// past new space before anything points there.
pub const FREE_SECTOR_OFFSET: usize = 28;

/// The on-disk free-sector field saying that allocation continues at sector `sector`.
pub fn encode_free_sector(sector: u32) -> [u8; 4] {
    sector.to_le_bytes()
}

/// The sector the on-disk free-sector field `field` says allocation continues at.
pub fn decode_free_sector(field: [u8; 4]) -> u32 {
    u32::from_le_bytes(field)
}

/// A parsed COWD header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CowdHeader {
    /// Format version (1).
    pub version: u32,
    /// Header flags (VMware sets 3).
    pub flags: u32,
    /// Extent capacity in sectors.
    pub capacity: u32,
    /// Grain size in sectors.
    pub grain_size: u32,
    /// Grain directory offset in sectors.
    pub gd_offset: u32,
    /// Number of grain directory entries.
    pub gd_entries: u32,
    /// First free sector (where the next grain goes).
    pub free_sector: u32,
    /// For a child disk, the parent's file name stored in the header (NUL-terminated).
    pub parent_file_name: Option<String>,
}

impl CowdHeader {
    /// Parse from the first bytes of the file (at least 1056 are needed for the parent name).
    pub fn parse(buf: &[u8]) -> FormatResult<CowdHeader> {
        if buf.len() < 32 {
            return Err(FormatError::Truncated("COWD header"));
        }
        if u32_at(buf, 0) != COWD_MAGIC {
            return Err(FormatError::BadMagic("COWD"));
        }
        // The header is a union: for child disks bytes 32..1056 hold the parent file name,
        // for root disks they hold the geometry. Only a printable NUL-terminated string is
        // taken as a name, which rules out the three small geometry integers.
        let parent_file_name = buf.get(32..1056).and_then(|raw| {
            let end = raw.iter().position(|&b| b == 0)?;
            let name = &raw[..end];
            if name.len() > 4 && name.iter().all(|&b| (0x20..0x7f).contains(&b)) {
                Some(String::from_utf8_lossy(name).into_owned())
            } else {
                None
            }
        });
        Ok(CowdHeader {
            version: u32_at(buf, 4),
            flags: u32_at(buf, 8),
            capacity: u32_at(buf, 12),
            grain_size: u32_at(buf, 16),
            gd_offset: u32_at(buf, 20),
            gd_entries: u32_at(buf, 24),
            free_sector: u32_at(buf, FREE_SECTOR_OFFSET),
            parent_file_name,
        })
    }

    /// Encode a root-disk header (geometry zero) into 2048 bytes.
    pub fn serialize(&self) -> Vec<u8> {
        let mut b = vec![0u8; COWD_HEADER_SIZE];
        put_u32(&mut b, 0, COWD_MAGIC);
        put_u32(&mut b, 4, self.version);
        put_u32(&mut b, 8, self.flags);
        put_u32(&mut b, 12, self.capacity);
        put_u32(&mut b, 16, self.grain_size);
        put_u32(&mut b, 20, self.gd_offset);
        put_u32(&mut b, 24, self.gd_entries);
        put_u32(&mut b, FREE_SECTOR_OFFSET, self.free_sector);
        if let Some(name) = &self.parent_file_name {
            let n = name.len().min(1023);
            b[32..32 + n].copy_from_slice(&name.as_bytes()[..n]);
        }
        b
    }

    /// Check the geometry the lookup code relies on.
    pub fn validate(&self) -> FormatResult<()> {
        if self.grain_size == 0 || self.grain_size as u64 > super::sparse_header::MAX_GRAIN_SECTORS
        {
            return Err(FormatError::Invalid(format!(
                "invalid COWD grain size {} sectors",
                self.grain_size
            )));
        }
        let per_gd = self.grain_size as u64 * COWD_GT_ENTRIES as u64;
        let needed = (self.capacity as u64).div_ceil(per_gd);
        if (self.gd_entries as u64) < needed {
            return Err(FormatError::Invalid(format!(
                "COWD grain directory has {} entries but the capacity needs {}",
                self.gd_entries, needed
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validate() {
        let h = CowdHeader {
            version: 1,
            flags: 3,
            capacity: 8192,
            grain_size: 1,
            gd_offset: 4,
            gd_entries: 2,
            free_sector: 100,
            parent_file_name: None,
        };
        let b = h.serialize();
        assert_eq!(&b[0..4], b"COWD");
        assert_eq!(CowdHeader::parse(&b).unwrap(), h);
        h.validate().unwrap();
        let mut bad = h.clone();
        bad.gd_entries = 1;
        assert!(bad.validate().is_err());
        let mut child = h.clone();
        child.parent_file_name = Some("parent-disk.vmdk".into());
        assert_eq!(CowdHeader::parse(&child.serialize()).unwrap(), child);
    }
}
