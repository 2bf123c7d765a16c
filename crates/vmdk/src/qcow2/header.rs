//! The qcow2 header (versions 2 and 3) and its extensions, as pure functions over bytes.
//!
//! Layout from QEMU's `docs/interop/qcow2.txt`: big-endian fields, a 72-byte version 2
//! header, a version 3 header of `header_length` bytes (at least 104) with feature bits,
//! then header extensions (type, length, data padded to 8 bytes) up to an end marker, all in
//! the first cluster. Every bound QEMU's driver enforces is checked here, so a hostile
//! header is an error before anything is allocated from it.

use crate::format::error::{FormatError, FormatResult};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Smallest and largest cluster sizes QEMU accepts (512 B and 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// See [`MIN_CLUSTER_BITS`].
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's limit on the L1 table (32 MiB): bounds the memory an L1 takes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU's limit on the refcount table (8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// QEMU's limit on a backing file name.
pub const MAX_BACKING_NAME: u32 = 1023;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// The image was marked corrupt by QEMU.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// The header names a compression type (byte 104).
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// 128-bit L2 entries with 32 subclusters per cluster.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = 0x1f;
/// Compatible feature bit: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1;

/// Header extension types.
pub const EXT_END: u32 = 0;
/// The backing file's format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Full disk encryption parameters.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Persistent dirty bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;

/// A parsed, bounds-checked qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is, and its length (0 = no backing file).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 = none; 1 = AES, 2 = LUKS (refused).
    pub crypt_method: u32,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Host offset of the L1 table.
    pub l1_table_offset: u64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table takes.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for version 2).
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for version 2).
    pub refcount_order: u32,
    /// Bytes of the fixed header (72 for version 2).
    pub header_length: u32,
    /// 0 = zlib (deflate), 1 = zstd.
    pub compression_type: u8,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Header {
    /// Parse and check the header in `b` (the file's first bytes, at least 72 and for
    /// version 3 at least `header_length`). `file_len` bounds offsets that must lie in the
    /// file.
    pub fn parse(b: &[u8], file_len: u64) -> FormatResult<Header> {
        if b.len() < 72 {
            return Err(FormatError::Invalid(format!(
                "file is too short for a qcow2 header ({} bytes)",
                b.len()
            )));
        }
        if be32(b, 0) != MAGIC {
            return Err(FormatError::Invalid("not a qcow2 image (bad magic)".into()));
        }
        let version = be32(b, 4);
        if version != 2 && version != 3 {
            return Err(FormatError::Unsupported(format!(
                "unsupported qcow2 version {version}"
            )));
        }
        let mut h = Header {
            version,
            backing_file_offset: be64(b, 8),
            backing_file_size: be32(b, 16),
            cluster_bits: be32(b, 20),
            size: be64(b, 24),
            crypt_method: be32(b, 32),
            l1_size: be32(b, 36),
            l1_table_offset: be64(b, 40),
            refcount_table_offset: be64(b, 48),
            refcount_table_clusters: be32(b, 56),
            nb_snapshots: be32(b, 60),
            snapshots_offset: be64(b, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 72,
            compression_type: 0,
        };
        if version == 3 {
            if b.len() < 104 {
                return Err(FormatError::Invalid(
                    "file is too short for a qcow2 version 3 header".into(),
                ));
            }
            h.incompatible_features = be64(b, 72);
            h.compatible_features = be64(b, 80);
            h.autoclear_features = be64(b, 88);
            h.refcount_order = be32(b, 96);
            h.header_length = be32(b, 100);
            if h.header_length < 104 {
                return Err(FormatError::Invalid(format!(
                    "invalid header length {}",
                    h.header_length
                )));
            }
            if h.header_length > 104 && b.len() > 104 {
                h.compression_type = b[104];
            }
        }
        h.check(file_len)?;
        Ok(h)
    }

    fn check(&self, file_len: u64) -> FormatResult<()> {
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&self.cluster_bits) {
            return Err(FormatError::Invalid(format!(
                "cluster size 2^{} is outside the 512 B to 2 MiB qcow2 allows",
                self.cluster_bits
            )));
        }
        let cs = self.cluster_size();
        if u64::from(self.header_length) > cs {
            return Err(FormatError::Invalid(
                "header is larger than a cluster".into(),
            ));
        }
        if self.size > crate::format::MAX_VIRTUAL_SIZE {
            return Err(FormatError::Invalid(format!(
                "virtual size {} is too large",
                self.size
            )));
        }
        if self.refcount_order > 6 {
            return Err(FormatError::Invalid(format!(
                "refcount width 2^{} bits is more than 64",
                self.refcount_order
            )));
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::Invalid(format!(
                "unsupported incompatible feature bits {unknown:#x}"
            )));
        }
        if self.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(FormatError::Unsupported(
                "images with an external data file are not supported".into(),
            ));
        }
        if self.crypt_method != 0 {
            return Err(FormatError::Unsupported(
                "encrypted qcow2 images are not supported".into(),
            ));
        }
        match self.compression_type {
            0 => {}
            1 => {
                return Err(FormatError::Unsupported(
                    "zstd-compressed qcow2 images are not supported".into(),
                ))
            }
            t => {
                return Err(FormatError::Unsupported(format!(
                    "unknown compression type {t}"
                )))
            }
        }
        if self.compression_type != 0 && self.incompatible_features & INCOMPAT_COMPRESSION == 0 {
            return Err(FormatError::Invalid(
                "compression type set without its feature bit".into(),
            ));
        }
        if self.extended_l2() && self.cluster_bits < 14 {
            return Err(FormatError::Invalid(
                "extended L2 entries need clusters of at least 16 KiB".into(),
            ));
        }
        // The L1 table: bounded in memory, aligned, inside the file, and large enough to
        // cover the disk (a short L1 would leave the end of the disk unmapped).
        let l1_bytes = u64::from(self.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(FormatError::Invalid(format!(
                "L1 table of {} entries is larger than the 32 MiB qcow2 allows",
                self.l1_size
            )));
        }
        if u64::from(self.l1_size) < self.l1_entries_needed() {
            return Err(FormatError::Invalid(format!(
                "L1 table of {} entries is too small for a {}-byte disk",
                self.l1_size, self.size
            )));
        }
        if self.l1_size > 0 {
            if !self.l1_table_offset.is_multiple_of(cs) {
                return Err(FormatError::Invalid(format!(
                    "L1 table offset {:#x} is not cluster-aligned",
                    self.l1_table_offset
                )));
            }
            if self
                .l1_table_offset
                .checked_add(l1_bytes)
                .is_none_or(|end| end > file_len)
            {
                return Err(FormatError::Invalid(format!(
                    "L1 table at {:#x} ({} bytes) lies past the end of the {}-byte file",
                    self.l1_table_offset, l1_bytes, file_len
                )));
            }
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFTABLE_BYTES {
            return Err(FormatError::Invalid(format!(
                "refcount table of {} clusters is larger than the 8 MiB qcow2 allows",
                self.refcount_table_clusters
            )));
        }
        if !self.refcount_table_offset.is_multiple_of(cs) {
            return Err(FormatError::Invalid(format!(
                "refcount table offset {:#x} is not cluster-aligned",
                self.refcount_table_offset
            )));
        }
        if self.backing_file_offset != 0 {
            if self.backing_file_size > MAX_BACKING_NAME {
                return Err(FormatError::Invalid(format!(
                    "backing file name of {} bytes is longer than 1023",
                    self.backing_file_size
                )));
            }
            if self
                .backing_file_offset
                .checked_add(u64::from(self.backing_file_size))
                .is_none_or(|end| end > cs)
            {
                return Err(FormatError::Invalid(
                    "backing file name lies outside the header cluster".into(),
                ));
            }
        }
        Ok(())
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128 bits with subcluster bitmaps.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// Entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// L1 entries a disk of this size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        let per_l1 = self.l2_entries() * self.cluster_size();
        self.size.div_ceil(per_l1)
    }

    /// Whether lazy refcounts are on.
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }

    /// Where header extensions start.
    pub fn extensions_offset(&self) -> u64 {
        u64::from(self.header_length)
    }
}

/// What the header extensions say (the ones a reader needs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// The backing file's format, if named.
    pub backing_format: Option<String>,
    /// Whether a full-disk-encryption extension is present.
    pub crypto: bool,
    /// Whether persistent bitmaps are present.
    pub bitmaps: bool,
}

/// Parse the header extensions in `b`, the bytes of the header cluster from `start` on.
pub fn parse_extensions(b: &[u8], start: u64) -> FormatResult<Extensions> {
    let mut ext = Extensions::default();
    let mut at =
        usize::try_from(start).map_err(|_| FormatError::Invalid("bad extension offset".into()))?;
    loop {
        if at + 8 > b.len() {
            // QEMU accepts a header cluster that simply ends: no end marker needed then.
            return Ok(ext);
        }
        let ty = be32(b, at);
        let len = be32(b, at + 4) as usize;
        at += 8;
        if ty == EXT_END {
            return Ok(ext);
        }
        if len > b.len() - at {
            return Err(FormatError::Invalid(format!(
                "header extension {ty:#x} of {len} bytes runs past the header cluster"
            )));
        }
        let data = &b[at..at + len];
        match ty {
            EXT_BACKING_FORMAT => {
                ext.backing_format = Some(
                    String::from_utf8_lossy(data)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            EXT_CRYPTO => ext.crypto = true,
            EXT_BITMAPS => ext.bitmaps = true,
            _ => {}
        }
        at += len.next_multiple_of(8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(cluster_bits: u32, size: u64, l1_size: u32) -> Vec<u8> {
        let mut b = vec![0u8; 1 << cluster_bits];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&size.to_be_bytes());
        b[36..40].copy_from_slice(&l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << cluster_bits).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << cluster_bits).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        b
    }

    #[test]
    fn parses_a_minimal_v3_header() {
        let b = v3(16, 1 << 30, 2);
        let h = Header::parse(&b, 1 << 20).unwrap();
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.l1_entries_needed(), 2);
        assert_eq!(parse_extensions(&b, 104).unwrap(), Extensions::default());
    }

    #[test]
    fn refuses_hostile_fields() {
        let ok = v3(16, 1 << 30, 2);
        let mut b = ok.clone();
        b[20..24].copy_from_slice(&30u32.to_be_bytes());
        assert!(Header::parse(&b, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("cluster size"));
        let mut b = ok.clone();
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        assert!(Header::parse(&b, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("too small"));
        assert!(Header::parse(&ok, 1 << 16)
            .unwrap_err()
            .to_string()
            .contains("past the end"));
        let mut b = ok.clone();
        b[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Header::parse(&b, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("32 MiB"));
        let mut b = ok;
        b[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        assert!(Header::parse(&b, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("external data file"));
    }
}
