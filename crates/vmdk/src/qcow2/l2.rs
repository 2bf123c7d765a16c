//! The one decoder of qcow2 L1 and L2 entries: raw value to unallocated / zero / data at a
//! host offset / compressed at a host offset, per cluster or (extended L2) per subcluster,
//! with QEMU's rules (`qcow2_get_cluster_type`, `qcow2_get_subcluster_type`).

use crate::format::error::{FormatError, FormatResult};

/// Offset bits of L1 and standard L2 entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Standard L2 entry: the cluster is compressed.
pub const FLAG_COMPRESSED: u64 = 1 << 62;
/// Standard L2 entry (version 3, no extended L2): the cluster reads as zeros. Reserved in
/// version 2, where QEMU reports it as corruption.
pub const FLAG_ZERO: u64 = 1;
/// L1/L2 entry: refcount is exactly one (informational for readers).
pub const FLAG_COPIED: u64 = 1 << 63;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// What one (sub)cluster holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Nothing here: the backing file shows through.
    Unallocated,
    /// Reads as zeros (hides the backing file).
    Zero,
    /// Plain data at this host offset (of the cluster, not the subcluster).
    Data(u64),
    /// A raw deflate stream at `offset` of at most `len` bytes.
    Compressed {
        /// Host byte offset of the stream.
        offset: u64,
        /// Most bytes the stream takes (to the end of its last 512-byte sector).
        len: u64,
    },
}

/// A decoded L2 entry: one kind for the whole cluster, or (extended L2) one per subcluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The whole cluster.
    Whole(Cluster),
    /// Extended L2: the subclusters whose `alloc` bit is set hold data at `host` (plus the
    /// subcluster's offset), those whose `zero` bit is set read as zeros, the rest are
    /// unallocated (`host` is 0 when the cluster has no host cluster).
    Sub {
        /// Host offset of the cluster (0 if none).
        host: u64,
        /// Allocation bitmap (bit i = subcluster i).
        alloc: u32,
        /// Reads-as-zero bitmap.
        zero: u32,
    },
}

impl Entry {
    /// What subcluster `i` of `SUBCLUSTERS` holds (for [`Entry::Whole`], the cluster).
    pub fn subcluster(&self, i: u32) -> Cluster {
        match *self {
            Entry::Whole(c) => c,
            Entry::Sub { host, alloc, zero } => {
                if zero >> i & 1 == 1 {
                    Cluster::Zero
                } else if alloc >> i & 1 == 1 {
                    Cluster::Data(host)
                } else {
                    Cluster::Unallocated
                }
            }
        }
    }
}

/// Decode the L2 entry `e` (and `bitmap`, the second half of an extended entry) of a
/// `version` 2 or 3 image with `cluster_bits`. Errors say what is wrong with the entry.
pub fn decode(e: u64, bitmap: Option<u64>, cluster_bits: u32, version: u32) -> FormatResult<Entry> {
    let cs = 1u64 << cluster_bits;
    if e & FLAG_COMPRESSED != 0 {
        // Bits 0..x-1 hold the offset, x..61 the count of additional 512-byte sectors.
        let x = 62 - (cluster_bits - 8);
        let offset = e & ((1u64 << x) - 1);
        let sectors = ((e >> x) & ((1u64 << (cluster_bits - 8)) - 1)) + 1;
        let len = (sectors * 512).saturating_sub(offset & 511);
        if offset == 0 {
            return Err(FormatError::Invalid(
                "compressed cluster at host offset 0".into(),
            ));
        }
        return Ok(Entry::Whole(Cluster::Compressed { offset, len }));
    }
    let host = e & OFFSET_MASK;
    if bitmap.is_none() && e & FLAG_ZERO != 0 && version < 3 {
        // Bit 0 is reserved in version 2: QEMU refuses the cluster as corrupt ("Zero
        // cluster entry found in pre-v3 image") rather than guess what the writer meant,
        // before it looks at the offset.
        return Err(FormatError::Invalid(format!(
            "zero flag set in a version 2 image (entry {e:#018x})"
        )));
    }
    if !host.is_multiple_of(cs) {
        return Err(FormatError::Invalid(format!(
            "cluster offset {host:#x} is not cluster-aligned"
        )));
    }
    if let Some(bm) = bitmap {
        let (alloc, zero) = (bm as u32, (bm >> 32) as u32);
        if alloc & zero != 0 {
            return Err(FormatError::Invalid(format!(
                "subclusters both allocated and zero (bitmap {bm:#018x})"
            )));
        }
        if host == 0 && alloc != 0 {
            return Err(FormatError::Invalid(
                "subclusters allocated in a cluster without a host cluster".into(),
            ));
        }
        return Ok(Entry::Sub { host, alloc, zero });
    }
    if e & FLAG_ZERO != 0 {
        return Ok(Entry::Whole(Cluster::Zero));
    }
    if host == 0 {
        return Ok(Entry::Whole(Cluster::Unallocated));
    }
    Ok(Entry::Whole(Cluster::Data(host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_kinds() {
        assert_eq!(
            decode(0, None, 16, 3).unwrap(),
            Entry::Whole(Cluster::Unallocated)
        );
        assert_eq!(
            decode(FLAG_COPIED | 0x50000, None, 16, 3).unwrap(),
            Entry::Whole(Cluster::Data(0x50000))
        );
        assert_eq!(
            decode(FLAG_ZERO | 0x50000, None, 16, 3).unwrap(),
            Entry::Whole(Cluster::Zero)
        );
        assert!(decode(0x50200, None, 16, 3).is_err());
        // 64 KiB clusters: x = 54; 3 extra sectors, offset 0x1234.
        let e = FLAG_COMPRESSED | (3u64 << 54) | 0x1234;
        assert_eq!(
            decode(e, None, 16, 3).unwrap(),
            Entry::Whole(Cluster::Compressed {
                offset: 0x1234,
                len: 4 * 512 - 0x34
            })
        );
        let s = decode(0x50000, Some((1u64 << 33) | 1), 16, 3).unwrap();
        assert_eq!(s.subcluster(0), Cluster::Data(0x50000));
        assert_eq!(s.subcluster(1), Cluster::Zero);
        assert_eq!(s.subcluster(2), Cluster::Unallocated);
        assert!(decode(0x50000, Some((1u64 << 32) | 1), 16, 3).is_err());
        assert!(decode(0, Some(1), 16, 3).is_err());
    }

    #[test]
    fn the_zero_flag_is_corruption_in_version_2() {
        for e in [
            FLAG_ZERO,
            FLAG_ZERO | 0x50000,
            FLAG_ZERO | FLAG_COPIED | 0x50200,
        ] {
            let err = decode(e, None, 16, 2).unwrap_err().to_string();
            assert!(err.contains("zero flag set in a version 2 image"), "{err}");
        }
        // Compressed entries keep their meaning (their low bits are offset bits).
        let c = FLAG_COMPRESSED | 0x1201;
        assert!(matches!(
            decode(c, None, 16, 2).unwrap(),
            Entry::Whole(Cluster::Compressed { offset: 0x1201, .. })
        ));
        assert_eq!(
            decode(0x50000, None, 16, 2).unwrap(),
            Entry::Whole(Cluster::Data(0x50000))
        );
    }
}
