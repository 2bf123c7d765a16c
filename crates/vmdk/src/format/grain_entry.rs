//! Grain-directory and grain-table entries of the three sparse flavours, as pure functions:
//! what a raw entry value means, and the raw value that says a given thing.
//!
//! - **VMDK4** (`KDMV`) and **COWD**: 32-bit sector numbers. A directory entry is the sector
//!   of a grain table (0: none); a table entry is the sector of a grain (0: unallocated).
//!   In VMDK4 extents with the zeroed-grain flag, table entry 1 means "reads as zeros"
//!   (without the flag QEMU takes 1 as a sector number, and so do we).
//! - **seSparse**: 64-bit coded indexes. A directory entry is `0x1000_0000 << 32 | index` of
//!   a table in the grain-table area; a table entry's top nibble is its type (0 unallocated,
//!   1 and 2 zero, 3 allocated, with the grain index split over the other 60 bits).
//!
//! Whether a stored grain is compressed is the extent's property (its header's flag), not
//! the entry's: the same sector number means compressed data in a stream file.

use super::error::{FormatError, FormatResult};

/// How entries of an extent are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFlavor {
    /// VMware hosted sparse (`KDMV`): 32-bit sector offsets; GTE 1 may mean "zeroed grain".
    Vmdk4,
    /// ESX `COWD` (vmfsSparse): 32-bit sector offsets, 4096-entry tables.
    Cowd,
    /// ESXi seSparse: 64-bit coded indexes into preallocated table and grain areas.
    SeSparse,
}

/// What one grain-table entry says about its grain. Offsets are bytes in the extent file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainEntry {
    /// Not allocated in this extent (the backing file shows through).
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored as plain bytes at this offset.
    Data(u64),
    /// Stored compressed; the grain's record (marker, when the extent has them, and zlib
    /// stream) starts at this offset.
    Compressed(u64),
}

impl GrainEntry {
    /// Where the grain is stored, for entries that store one.
    pub fn offset(self) -> Option<u64> {
        match self {
            GrainEntry::Data(o) | GrainEntry::Compressed(o) => Some(o),
            GrainEntry::Unallocated | GrainEntry::Zero => None,
        }
    }

    /// Whether the entry points at stored bytes.
    pub fn is_allocated(self) -> bool {
        self.offset().is_some()
    }
}

const SECTOR: u64 = super::SECTOR_SIZE;

/// The seSparse grain-directory entry tag (top 32 bits of a valid entry).
const SESPARSE_GD_TAG: u64 = 0x1000_0000_0000_0000;
/// The seSparse grain-table entry QEMU and ESXi write for a zero grain.
pub const SESPARSE_GT_ZERO: u64 = 0x2000_0000_0000_0000;
/// The VMDK4 grain-table entry for a zeroed grain (with [`super::sparse_header::FLAG_ZERO_GRAIN`]).
pub const VMDK4_GT_ZERO: u64 = 1;

/// The entry coding of one extent: flavour, flags and the geometry that turns entries into
/// file offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrainCoding {
    /// Which flavour's entries.
    pub flavor: SparseFlavor,
    /// VMDK4: whether table entry 1 means a zeroed grain.
    pub zero_grain: bool,
    /// Whether stored grains are compressed (VMDK4 stream files).
    pub compressed: bool,
    /// Grain size in bytes (not 0).
    pub grain_size: u64,
    /// Entries per grain table (not 0).
    pub gt_entries: u64,
    /// seSparse: byte offset of the grain-table area (0 for the other flavours).
    pub table_area: u64,
    /// seSparse: byte offset of the grain area (0 for the other flavours).
    pub grain_area: u64,
}

impl GrainCoding {
    /// The coding of a VMDK4 or COWD extent: 32-bit sector numbers, no areas.
    pub fn sectors(
        flavor: SparseFlavor,
        zero_grain: bool,
        compressed: bool,
        grain_size: u64,
        gt_entries: u64,
    ) -> GrainCoding {
        GrainCoding {
            flavor,
            zero_grain,
            compressed,
            grain_size,
            gt_entries,
            table_area: 0,
            grain_area: 0,
        }
    }

    /// Bytes of one entry on disk: 4, or 8 for seSparse.
    pub fn width(&self) -> usize {
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => 4,
            SparseFlavor::SeSparse => 8,
        }
    }

    /// Bytes one grain table takes on disk.
    pub fn table_bytes(&self) -> u64 {
        self.gt_entries * self.width() as u64
    }

    /// Bytes of the virtual disk one grain table covers.
    pub fn table_span(&self) -> u64 {
        self.grain_size * self.gt_entries
    }

    /// Decode a grain-table entry.
    #[inline]
    pub fn decode(&self, raw: u64) -> FormatResult<GrainEntry> {
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => Ok(match raw {
                0 => GrainEntry::Unallocated,
                VMDK4_GT_ZERO if self.zero_grain => GrainEntry::Zero,
                // A 32-bit sector number: the byte offset cannot overflow.
                s if self.compressed => GrainEntry::Compressed(s * SECTOR),
                s => GrainEntry::Data(s * SECTOR),
            }),
            SparseFlavor::SeSparse => match raw >> 60 {
                0 if raw == 0 => Ok(GrainEntry::Unallocated),
                1 | 2 => Ok(GrainEntry::Zero),
                3 => {
                    let index = ((raw & 0x0fff_0000_0000_0000) >> 48)
                        | ((raw & 0x0000_ffff_ffff_ffff) << 12);
                    index
                        .checked_mul(self.grain_size)
                        .and_then(|o| o.checked_add(self.grain_area))
                        // Reads add offsets inside the grain.
                        .filter(|o| o.checked_add(self.grain_size).is_some())
                        .map(GrainEntry::Data)
                        .ok_or_else(|| FormatError::Invalid("grain index overflows".into()))
                }
                _ => Err(FormatError::Invalid(format!(
                    "invalid seSparse grain table entry {raw:#018x}"
                ))),
            },
        }
    }

    /// The raw grain-table entry saying `entry`; an error for what this coding cannot say
    /// (a zeroed grain without the flag, an offset that is not a whole sector or grain of
    /// the grain area, or does not fit the entry).
    pub fn encode(&self, entry: GrainEntry) -> FormatResult<u64> {
        match (self.flavor, entry) {
            (_, GrainEntry::Unallocated) => Ok(0),
            (SparseFlavor::SeSparse, GrainEntry::Zero) => Ok(SESPARSE_GT_ZERO),
            (_, GrainEntry::Zero) if self.zero_grain => Ok(VMDK4_GT_ZERO),
            (_, GrainEntry::Zero) => Err(FormatError::Invalid(
                "this extent has no zeroed-grain entries".into(),
            )),
            (_, GrainEntry::Data(_)) if self.compressed => Err(FormatError::Invalid(
                "grains of a compressed extent are compressed".into(),
            )),
            (_, GrainEntry::Compressed(_)) if !self.compressed => Err(FormatError::Invalid(
                "grains of this extent are not compressed".into(),
            )),
            (SparseFlavor::Vmdk4 | SparseFlavor::Cowd, e) => {
                let off = e.offset().expect("stored entries only");
                let sector = sector_of(off)?;
                // Sector 0 is the header; 1 would read as a zeroed grain.
                if sector == 0 || (sector == VMDK4_GT_ZERO && self.zero_grain) {
                    return Err(FormatError::Invalid(format!(
                        "a grain cannot be stored at offset {off}"
                    )));
                }
                Ok(sector)
            }
            (SparseFlavor::SeSparse, e) => {
                let off = e.offset().expect("stored entries only");
                let rel = off
                    .checked_sub(self.grain_area)
                    .filter(|r| r.is_multiple_of(self.grain_size))
                    .ok_or_else(|| {
                        FormatError::Invalid(format!(
                            "offset {off} is not a grain of the grain area"
                        ))
                    })?;
                let index = rel / self.grain_size;
                if index >= 1 << 60 {
                    return Err(FormatError::Invalid(format!(
                        "grain index {index} does not fit an entry"
                    )));
                }
                Ok(0x3000_0000_0000_0000
                    | ((index & 0xfff) << 48)
                    | ((index >> 12) & 0x0000_ffff_ffff_ffff))
            }
        }
    }

    /// Decode a grain-directory entry: the byte offset of its grain table, or `None` when
    /// the directory says there is none.
    #[inline]
    pub fn decode_directory(&self, raw: u64) -> FormatResult<Option<u64>> {
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => Ok((raw != 0).then_some(raw * SECTOR)),
            SparseFlavor::SeSparse => {
                if raw == 0 {
                    return Ok(None);
                }
                if raw & 0xffff_ffff_0000_0000 != SESPARSE_GD_TAG {
                    return Err(FormatError::Invalid(format!(
                        "invalid seSparse grain directory entry {raw:#018x}"
                    )));
                }
                let table_bytes = self.table_bytes();
                self.table_area
                    .checked_add((raw as u32) as u64 * table_bytes)
                    .filter(|o| o.checked_add(table_bytes).is_some())
                    .map(Some)
                    .ok_or_else(|| FormatError::Invalid("grain table offset overflows".into()))
            }
        }
    }

    /// The raw grain-directory entry pointing at a table at byte offset `table` (`None`:
    /// no table).
    pub fn encode_directory(&self, table: Option<u64>) -> FormatResult<u64> {
        let Some(off) = table else { return Ok(0) };
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => match sector_of(off)? {
                0 => Err(FormatError::Invalid(
                    "a grain table cannot be stored at offset 0".into(),
                )),
                s => Ok(s),
            },
            SparseFlavor::SeSparse => {
                let index = off
                    .checked_sub(self.table_area)
                    .filter(|r| r.is_multiple_of(self.table_bytes()))
                    .map(|r| r / self.table_bytes())
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        FormatError::Invalid(format!(
                            "offset {off} is not a table of the table area"
                        ))
                    })?;
                Ok(SESPARSE_GD_TAG | index as u64)
            }
        }
    }

    /// Append raw entries to `out` in their on-disk form.
    pub fn put_entries(&self, raw: &[u64], out: &mut Vec<u8>) {
        put_entries(self.width(), raw, out)
    }
}

/// The sector number of byte offset `off` as a 32-bit entry.
fn sector_of(off: u64) -> FormatResult<u64> {
    if !off.is_multiple_of(SECTOR) {
        return Err(FormatError::Invalid(format!(
            "offset {off} is not a whole sector"
        )));
    }
    let s = off / SECTOR;
    if s > u32::MAX as u64 {
        return Err(FormatError::Invalid(format!(
            "offset {off} is past what 32-bit sector entries address (2 TiB)"
        )));
    }
    Ok(s)
}

/// Append `raw` entries of `width` bytes (4 or 8) to `out`, little-endian. A 4-byte entry
/// keeps the low 32 bits, which is all its on-disk form holds.
pub fn put_entries(width: usize, raw: &[u64], out: &mut Vec<u8>) {
    out.reserve(raw.len() * width);
    for &v in raw {
        if width == 4 {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The raw entries in `bytes`, `width` bytes (4 or 8) each, little-endian; a partial entry at
/// the end is ignored.
pub fn entries(width: usize, bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(width).map(move |c| {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(c);
        u64::from_le_bytes(b)
    })
}

/// The on-disk bytes of a VMDK4 grain directory whose `n` tables lie back to back from
/// sector `first_table`, each `table_sectors` long (how qemu-img and `create` preallocate
/// them). An error when a table lies past what 32-bit entries address.
pub fn preallocated_directory(
    n: u64,
    first_table: u64,
    table_sectors: u64,
) -> FormatResult<Vec<u8>> {
    let mut raw = Vec::with_capacity(n as usize);
    for i in 0..n {
        let sector = i
            .checked_mul(table_sectors)
            .and_then(|s| s.checked_add(first_table))
            .filter(|s| *s <= u32::MAX as u64)
            .ok_or_else(|| {
                FormatError::Unsupported("image too large for 32-bit grain directory".into())
            })?;
        raw.push(sector);
    }
    let mut out = Vec::new();
    put_entries(4, &raw, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn coding(flavor: SparseFlavor, zero_grain: bool, compressed: bool) -> GrainCoding {
        GrainCoding {
            flavor,
            zero_grain,
            compressed,
            grain_size: 65536,
            gt_entries: if flavor == SparseFlavor::SeSparse {
                4096
            } else {
                512
            },
            table_area: if flavor == SparseFlavor::SeSparse {
                1 << 20
            } else {
                0
            },
            grain_area: if flavor == SparseFlavor::SeSparse {
                1 << 30
            } else {
                0
            },
        }
    }

    #[test]
    fn vmdk4_entries() {
        let c = coding(SparseFlavor::Vmdk4, true, false);
        assert_eq!(c.decode(0), Ok(GrainEntry::Unallocated));
        assert_eq!(c.decode(1), Ok(GrainEntry::Zero));
        assert_eq!(c.decode(128), Ok(GrainEntry::Data(65536)));
        assert_eq!(c.encode(GrainEntry::Zero), Ok(1));
        assert_eq!(c.encode(GrainEntry::Data(512)).ok(), None, "1 means zero");
        assert!(c.encode(GrainEntry::Data(513)).is_err());
        assert!(c.encode(GrainEntry::Data(512 << 32)).is_err());
        assert!(c.encode(GrainEntry::Compressed(65536)).is_err());
        // Without the flag, 1 is a sector number (as QEMU reads it).
        let plain = coding(SparseFlavor::Vmdk4, false, false);
        assert_eq!(plain.decode(1), Ok(GrainEntry::Data(512)));
        assert!(plain.encode(GrainEntry::Zero).is_err());
        let stream = coding(SparseFlavor::Vmdk4, false, true);
        assert_eq!(stream.decode(7), Ok(GrainEntry::Compressed(7 * 512)));
        assert_eq!(stream.encode(GrainEntry::Compressed(7 * 512)), Ok(7));
        assert_eq!(c.decode_directory(0), Ok(None));
        assert_eq!(c.decode_directory(3), Ok(Some(1536)));
        assert_eq!(c.encode_directory(Some(1536)), Ok(3));
        assert_eq!(c.encode_directory(None), Ok(0));
    }

    #[test]
    fn sesparse_entries() {
        let c = coding(SparseFlavor::SeSparse, true, false);
        assert_eq!(c.decode(0), Ok(GrainEntry::Unallocated));
        assert_eq!(c.decode(SESPARSE_GT_ZERO), Ok(GrainEntry::Zero));
        assert_eq!(c.decode(0x1000_0000_0000_0005), Ok(GrainEntry::Zero));
        assert!(c.decode(0x4000_0000_0000_0000).is_err());
        assert!(c.decode(1).is_err());
        assert!(c.decode(0x3fff_ffff_ffff_ffff).is_err(), "index overflows");
        for idx in [0u64, 1, 0xfff, 0x1000, 0x123456789] {
            let off = (1 << 30) + idx * 65536;
            assert_eq!(
                c.decode(c.encode(GrainEntry::Data(off)).unwrap()),
                Ok(GrainEntry::Data(off))
            );
        }
        assert_eq!(
            c.decode_directory(0x1000_0000_0000_0007),
            Ok(Some((1 << 20) + 7 * 4096 * 8))
        );
        assert!(c.decode_directory(0x2000_0000_0000_0001).is_err());
        assert_eq!(
            c.encode_directory(Some((1 << 20) + 7 * 4096 * 8)),
            Ok(0x1000_0000_0000_0007)
        );
    }

    #[test]
    fn entry_bytes() {
        let mut out = Vec::new();
        put_entries(4, &[1, 0x0102_0304], &mut out);
        assert_eq!(out, [1, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(entries(4, &out).collect::<Vec<_>>(), [1, 0x0102_0304]);
        assert_eq!(
            entries(8, &out).collect::<Vec<_>>(),
            [0x0102_0304_0000_0001]
        );
        let gd = preallocated_directory(3, 10, 4).unwrap();
        assert_eq!(entries(4, &gd).collect::<Vec<_>>(), [10, 14, 18]);
        assert!(preallocated_directory(2, u32::MAX as u64, 4).is_err());
    }

    fn any_coding() -> impl Strategy<Value = GrainCoding> {
        (0..3u8, any::<bool>(), any::<bool>()).prop_map(|(f, z, comp)| match f {
            0 => coding(SparseFlavor::Vmdk4, z, comp),
            1 => coding(SparseFlavor::Cowd, false, false),
            _ => coding(SparseFlavor::SeSparse, true, false),
        })
    }

    proptest! {
        /// Whatever a coding can say, it reads back the same.
        #[test]
        fn encode_then_decode(c in any_coding(), kind in 0..4u8, n in any::<u64>()) {
            let entry = match kind {
                0 => GrainEntry::Unallocated,
                1 => GrainEntry::Zero,
                2 => GrainEntry::Data(n),
                _ => GrainEntry::Compressed(n),
            };
            if let Ok(raw) = c.encode(entry) {
                prop_assert_eq!(c.decode(raw), Ok(entry));
                if c.width() == 4 {
                    prop_assert!(raw <= u32::MAX as u64);
                }
            }
        }

        /// Every raw value that decodes encodes back to itself, except the seSparse zero
        /// types, which all encode as the one QEMU writes.
        #[test]
        fn decode_then_encode(c in any_coding(), raw in any::<u64>()) {
            let raw = if c.width() == 4 { raw & 0xffff_ffff } else { raw };
            if let Ok(e) = c.decode(raw) {
                let back = c.encode(e);
                match (c.flavor, e) {
                    (SparseFlavor::SeSparse, GrainEntry::Zero) => {
                        prop_assert_eq!(back, Ok(SESPARSE_GT_ZERO))
                    }
                    _ => prop_assert_eq!(back, Ok(raw)),
                }
            }
            if let Ok(t) = c.decode_directory(raw) {
                prop_assert_eq!(c.encode_directory(t), Ok(raw));
            }
        }
    }
}
