//! How a new image is laid out, as qemu-img and VMware lay it out: the CHS geometry its
//! descriptor records, fresh CIDs and UUIDs, the descriptor of a new image, and where the
//! header, embedded descriptor, grain directories and grain tables of a new sparse extent
//! (hosted or streamOptimized) go. `create` writes these layouts, `measure` counts them and
//! the stream writer follows them, so the three cannot disagree. Pure functions, like the
//! rest of `format/` (the random ones draw from the thread's generator, no I/O).

use super::descriptor::{Descriptor, ExtentLine, CID_NONE};
use super::error::{FormatError, FormatResult};
use super::marker::{compress_bound, GRAIN_MARKER_SIZE};
use super::sparse_header::{
    SparseHeader, COMPRESSION_DEFLATE, DEFAULT_GRAIN_SECTORS, DEFAULT_GT_ENTRIES, FLAG_COMPRESSED,
    FLAG_MARKERS, FLAG_NL_DETECT, FLAG_RGD, FLAG_ZERO_GRAIN, GD_AT_END, MAX_GD_ENTRIES,
    NEWLINE_CHECK,
};
use super::SECTOR_SIZE;

/// qemu-img's extent size for the twoGbMaxExtent* subformats.
pub const SPLIT_SIZE: u64 = 0x8000_0000;
/// Sectors reserved for the embedded descriptor, as qemu-img reserves them (a stream
/// writer reserves at least this many, more when its descriptor needs more).
pub const EMBEDDED_DESC_SECTORS: u64 = 20;

/// The virtual disk controller recorded in `ddb.adapterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterType {
    /// IDE (qemu-img's default).
    #[default]
    Ide,
    /// BusLogic SCSI.
    Buslogic,
    /// LSI Logic SCSI.
    Lsilogic,
    /// Legacy ESX.
    LegacyEsx,
}

impl AdapterType {
    /// Parse a qemu-img `adapter_type=` value.
    pub fn parse(s: &str) -> FormatResult<Self> {
        Ok(match s {
            "ide" => AdapterType::Ide,
            "buslogic" => AdapterType::Buslogic,
            "lsilogic" => AdapterType::Lsilogic,
            "legacyESX" => AdapterType::LegacyEsx,
            _ => return Err(FormatError::Invalid(format!("unknown adapter type: '{s}'"))),
        })
    }
    /// The value written to `ddb.adapterType`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterType::Ide => "ide",
            AdapterType::Buslogic => "buslogic",
            AdapterType::Lsilogic => "lsilogic",
            AdapterType::LegacyEsx => "legacyESX",
        }
    }
}

/// Geometry recorded in the DDB for a disk of `size` bytes: (cylinders, heads, sectors).
/// VMware uses 255 heads for every adapter but IDE, and qemu-img follows it.
pub fn geometry(size: u64, adapter: AdapterType) -> (u64, u32, u32) {
    let heads = if adapter == AdapterType::Ide { 16 } else { 255 };
    (size / (63 * heads as u64 * SECTOR_SIZE), heads, 63)
}

/// A fresh random CID (never the "no parent" value [`CID_NONE`]): a new image's first, and
/// the one an image takes on its first write.
pub fn random_cid() -> u32 {
    loop {
        let c: u32 = rand::random();
        if c != CID_NONE {
            return c;
        }
    }
}

/// A fresh random `ddb.uuid.image` value: 16 bytes in hex, separated by spaces.
pub fn random_uuid() -> String {
    let uuid: [u8; 16] = rand::random();
    let mut s = String::with_capacity(47);
    for (i, b) in uuid.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The `ddb.virtualHWVersion` of a new image: the one given, else "6" with `compat6` and
/// qemu's "4" without; both at once is qemu-img's error.
pub fn hw_version(given: Option<&str>, compat6: bool) -> FormatResult<String> {
    match (given, compat6) {
        (Some(_), true) => Err(FormatError::Invalid(
            "compat6 cannot be enabled with hwversion set".into(),
        )),
        (Some(h), false) => Ok(h.to_string()),
        (None, true) => Ok("6".to_string()),
        (None, false) => Ok("4".to_string()),
    }
}

/// What the descriptor of a new image says besides its extents.
#[derive(Debug, Clone)]
pub struct NewDescriptor<'a> {
    /// `createType`.
    pub create_type: &'a str,
    /// Virtual size in bytes (for the geometry).
    pub size: u64,
    /// `ddb.adapterType`.
    pub adapter: AdapterType,
    /// `ddb.virtualHWVersion` (see [`hw_version`]).
    pub hw_version: &'a str,
    /// `ddb.toolsVersion`; qemu's "2147483647" when `None`.
    pub tools_version: Option<&'a str>,
    /// `parentFileNameHint` and `parentCID`, for an overlay.
    pub parent: Option<(String, u32)>,
}

impl NewDescriptor<'_> {
    /// The descriptor qemu-img would write (plus a `ddb.uuid.image`), with a fresh CID and
    /// the given extent lines.
    pub fn build(&self, extents: Vec<ExtentLine>) -> Descriptor {
        let (cyl, heads, secs) = geometry(self.size, self.adapter);
        let (hint, parent_cid) = match &self.parent {
            Some((h, c)) => (Some(h.clone()), *c),
            None => (None, CID_NONE),
        };
        Descriptor {
            version: 1,
            encoding: None,
            cid: random_cid(),
            parent_cid,
            create_type: self.create_type.to_string(),
            parent_file_name_hint: hint,
            extents,
            ddb: vec![
                ("ddb.virtualHWVersion".into(), self.hw_version.to_string()),
                ("ddb.geometry.cylinders".into(), cyl.to_string()),
                ("ddb.geometry.heads".into(), heads.to_string()),
                ("ddb.geometry.sectors".into(), secs.to_string()),
                ("ddb.adapterType".into(), self.adapter.as_str().into()),
                (
                    "ddb.toolsVersion".into(),
                    self.tools_version.unwrap_or("2147483647").to_string(),
                ),
                ("ddb.uuid.image".into(), random_uuid()),
            ],
            other: vec![],
        }
    }
}

/// Sectors a grain table (or directory) of `entries` 4-byte entries takes.
pub fn table_sectors(entries: u64) -> u64 {
    (entries * 4).div_ceil(SECTOR_SIZE)
}

/// The header of a new hosted sparse extent of `capacity` bytes, as qemu-img lays it out:
/// header, embedded descriptor (if any), redundant directory and its tables, directory and
/// its tables (every table preallocated), data from the next grain boundary.
pub fn sparse_layout(
    capacity: u64,
    zeroed_grain: bool,
    compress: bool,
    embed_desc: bool,
) -> FormatResult<SparseHeader> {
    let sectors = capacity / SECTOR_SIZE;
    let grains = sectors.div_ceil(DEFAULT_GRAIN_SECTORS);
    let gt_count = grains.div_ceil(DEFAULT_GT_ENTRIES as u64);
    if gt_count > MAX_GD_ENTRIES {
        return Err(FormatError::Invalid(format!(
            "image size {capacity} is too large for a sparse VMDK extent"
        )));
    }
    let gt_sectors = table_sectors(DEFAULT_GT_ENTRIES as u64);
    let gd_sectors = table_sectors(gt_count);
    let (desc_offset, desc_size) = if embed_desc {
        (1, EMBEDDED_DESC_SECTORS)
    } else {
        (0, 0)
    };
    let rgd_offset = 1 + desc_size;
    let gd_offset = rgd_offset + gd_sectors + gt_sectors * gt_count;
    let overhead =
        (gd_offset + gd_sectors + gt_sectors * gt_count).next_multiple_of(DEFAULT_GRAIN_SECTORS);
    let mut flags = FLAG_RGD | FLAG_NL_DETECT;
    if compress {
        flags |= FLAG_COMPRESSED | FLAG_MARKERS;
    }
    if zeroed_grain {
        flags |= FLAG_ZERO_GRAIN;
    }
    Ok(SparseHeader {
        version: if compress {
            3
        } else if zeroed_grain {
            2
        } else {
            1
        },
        flags,
        capacity: sectors,
        grain_size: DEFAULT_GRAIN_SECTORS,
        desc_offset,
        desc_size,
        num_gtes_per_gt: DEFAULT_GT_ENTRIES,
        rgd_offset,
        gd_offset,
        overhead,
        unclean_shutdown: false,
        check_bytes: NEWLINE_CHECK,
        compress_algorithm: if compress { COMPRESSION_DEFLATE } else { 0 },
    })
}

/// The layout of a streamOptimized file in VMware's layout (what vSphere imports), written
/// front to back: header and embedded descriptor, grains as marker and zlib stream padded
/// to a sector, after each table's span a marked table, then a marked directory and the
/// footer. Sizes in bytes unless named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLayout {
    /// Virtual size (a whole number of sectors).
    pub size: u64,
    /// Sectors the embedded descriptor takes.
    pub desc_sectors: u64,
}

impl StreamLayout {
    /// Grain size, in sectors (64 KiB, what VMware and qemu-img use).
    pub const GRAIN_SECTORS: u64 = DEFAULT_GRAIN_SECTORS;
    /// Entries per grain table.
    pub const GT_ENTRIES: u64 = DEFAULT_GT_ENTRIES as u64;

    /// The layout of a stream of `size` bytes (rounded up to a sector), with the
    /// descriptor's usual room; refused when the directory would be larger than QEMU reads.
    pub fn new(size: u64) -> FormatResult<StreamLayout> {
        let size = size
            .checked_next_multiple_of(SECTOR_SIZE)
            .ok_or_else(|| FormatError::Invalid("image size too large".into()))?;
        let l = StreamLayout {
            size,
            desc_sectors: EMBEDDED_DESC_SECTORS,
        };
        if l.tables() > MAX_GD_ENTRIES {
            return Err(FormatError::Invalid(format!(
                "image size {size} is too large for a streamOptimized VMDK"
            )));
        }
        Ok(l)
    }

    /// Make room for a descriptor of `desc_len` bytes (more than the usual room when it
    /// needs more).
    pub fn fit_descriptor(&mut self, desc_len: u64) {
        self.desc_sectors = desc_len.div_ceil(SECTOR_SIZE).max(EMBEDDED_DESC_SECTORS);
    }

    /// Grain size in bytes.
    pub fn grain_size(&self) -> u64 {
        Self::GRAIN_SECTORS * SECTOR_SIZE
    }

    /// Grains of the disk (the last may be partial).
    pub fn grains(&self) -> u64 {
        self.size.div_ceil(self.grain_size())
    }

    /// Grain tables (and directory entries) of the disk.
    pub fn tables(&self) -> u64 {
        self.grains().div_ceil(Self::GT_ENTRIES)
    }

    /// The header: at its start with the directory at the end ([`GD_AT_END`]), and (with the
    /// real directory offset) in the footer.
    pub fn header(&self) -> SparseHeader {
        SparseHeader {
            version: 3,
            flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity: self.size / SECTOR_SIZE,
            grain_size: Self::GRAIN_SECTORS,
            desc_offset: 1,
            desc_size: self.desc_sectors,
            num_gtes_per_gt: Self::GT_ENTRIES as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: (1 + self.desc_sectors).next_multiple_of(Self::GRAIN_SECTORS),
            unclean_shutdown: false,
            check_bytes: NEWLINE_CHECK,
            compress_algorithm: COMPRESSION_DEFLATE,
        }
    }

    /// Bytes before the first grain: header and descriptor, padded to a grain.
    pub fn head_bytes(&self) -> u64 {
        self.header().overhead * SECTOR_SIZE
    }

    /// Sectors of one grain table's entries (after its marker).
    pub fn table_sectors(&self) -> u64 {
        table_sectors(Self::GT_ENTRIES)
    }

    /// Bytes of one marked grain table.
    pub fn table_bytes(&self) -> u64 {
        SECTOR_SIZE + self.table_sectors() * SECTOR_SIZE
    }

    /// Sectors of the directory's entries (after its marker): at least one.
    pub fn directory_sectors(&self) -> u64 {
        table_sectors(self.tables()).max(1)
    }

    /// Bytes after the last table: the marked directory, the footer and the end-of-stream
    /// marker.
    pub fn tail_bytes(&self) -> u64 {
        SECTOR_SIZE + self.directory_sectors() * SECTOR_SIZE + super::marker::FOOTER_SIZE as u64
    }

    /// The most one grain's record (marker and zlib stream, padded to a sector) can take.
    pub fn max_grain_record(&self) -> u64 {
        (GRAIN_MARKER_SIZE as u64 + compress_bound(self.grain_size())).next_multiple_of(SECTOR_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_adapter() {
        assert_eq!(geometry(1 << 30, AdapterType::Ide), (2080, 16, 63));
        assert_eq!(geometry(1 << 30, AdapterType::Lsilogic), (130, 255, 63));
    }

    #[test]
    fn hosted_layout_is_qemus() {
        // qemu-img create -f vmdk x.vmdk 1G: 32 tables of 4 sectors behind each directory.
        let h = sparse_layout(1 << 30, false, false, true).unwrap();
        assert_eq!((h.desc_offset, h.desc_size, h.rgd_offset), (1, 20, 21));
        assert_eq!(h.gd_offset, 21 + 1 + 4 * 32);
        assert_eq!(h.overhead, 384);
        assert!(sparse_layout(u64::MAX / 2, false, false, true).is_err());
    }

    #[test]
    fn stream_layout_sizes() {
        let mut l = StreamLayout::new(1 << 30).unwrap();
        l.fit_descriptor(700);
        assert_eq!(l.desc_sectors, EMBEDDED_DESC_SECTORS);
        assert_eq!(l.header().overhead, 128);
        assert_eq!(l.tables(), 32);
        assert_eq!(l.directory_sectors(), 1);
        assert_eq!(l.table_bytes(), 512 + 4 * 512);
        assert_eq!(l.tail_bytes(), 512 + 512 + 1536);
        l.fit_descriptor(20 * 512 + 1);
        assert_eq!(l.desc_sectors, 21);
        assert_eq!(l.header().overhead, 128);
        assert!(StreamLayout::new(u64::MAX).is_err());
        assert!(StreamLayout::new(MAX_GD_ENTRIES * 512 * 65536 + 1).is_err());
    }

    #[test]
    fn uuids_look_like_vmwares() {
        let u = random_uuid();
        assert_eq!(u.len(), 47);
        assert_eq!(u.split(' ').count(), 16);
        assert_ne!(random_cid(), CID_NONE);
    }
}
