//! What a new qcow2 image looks like before anything is written: the creation options
//! (qemu-img's `cluster_size`, `compat`, `lazy_refcounts`, `preallocation`, backing file),
//! their validation, the first cluster's bytes (header, extensions, backing file name) and
//! the sizes of the tables. Pure functions; [`super::writer`] does the I/O.

use super::header::{
    COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, EXT_END, MAGIC, MAX_BACKING_NAME, MAX_CLUSTER_BITS,
    MAX_L1_BYTES, MAX_REFTABLE_BYTES, MIN_CLUSTER_BITS,
};
use crate::error::{Error, Result};

/// The on-disk version (`compat=0.10` is version 2, `compat=1.1` version 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// Version 2: no zero clusters, no feature bits (QEMU 0.10 and later read it).
    V2,
    /// Version 3 (qemu-img's default): zero clusters, lazy refcounts.
    #[default]
    V3,
}

impl Compat {
    /// Parse qemu-img's `compat` values (`0.10`/`v2`, `1.1`/`v3`).
    pub fn parse(s: &str) -> Result<Compat> {
        match s {
            "0.10" | "v2" => Ok(Compat::V2),
            "1.1" | "v3" => Ok(Compat::V3),
            _ => Err(Error::invalid(format!(
                "Invalid parameter value for 'compat': '{s}' (expected 0.10 or 1.1)"
            ))),
        }
    }
}

/// `preallocation`: what a new image maps before data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Only clusters that hold something are allocated.
    #[default]
    Off,
    /// Every cluster is mapped (L2 tables and host clusters laid out in disk order), the
    /// data region a sparse hole until written: later writes never allocate.
    Metadata,
}

/// How to create a qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2CreateOptions {
    /// Cluster size in bytes: a power of two from 512 to 2 MiB (default 64 KiB).
    pub cluster_size: u64,
    /// On-disk version.
    pub compat: Compat,
    /// Set the lazy-refcounts feature bit (version 3 only).
    pub lazy_refcounts: bool,
    /// What to map up front.
    pub preallocation: Preallocation,
    /// Backing file name, written as given (relative names are relative to the new image's
    /// directory).
    pub backing_file: Option<String>,
    /// The backing file's format, recorded in a header extension (probed when `None`).
    pub backing_format: Option<String>,
    /// Open the backing file's own files wherever they are (see
    /// [`crate::OpenOptions::allow_unsafe_paths`]).
    pub allow_unsafe_paths: bool,
    /// Directories the backing file's own files may lie in.
    pub allow_paths: Vec<std::path::PathBuf>,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Qcow2CreateOptions {
            cluster_size: 64 << 10,
            compat: Compat::V3,
            lazy_refcounts: false,
            preallocation: Preallocation::Off,
            backing_file: None,
            backing_format: None,
            allow_unsafe_paths: false,
            allow_paths: Vec::new(),
        }
    }
}

/// The fixed part of a new image: sizes and where the up-front tables go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual size (a multiple of 512).
    pub size: u64,
    /// L1 entries (one per L2 table the virtual size needs).
    pub l1_entries: u64,
    /// Host offset of the L1 table (the second cluster).
    pub l1_offset: u64,
    /// Clusters the L1 table takes.
    pub l1_clusters: u64,
}

/// Header bytes of version 3 as QEMU writes them (with the compression type byte).
const V3_HEADER_LEN: usize = 112;
const V2_HEADER_LEN: usize = 72;
/// qcow2 refcounts are 16-bit here (`refcount_bits=16`, QEMU's default and version 2's only).
pub const REFCOUNT_ORDER: u32 = 4;

impl Qcow2CreateOptions {
    /// Check the options against each other and against `size`, as qemu-img does, and lay
    /// out the up-front tables.
    pub fn layout(&self, size: u64) -> Result<Layout> {
        let cs = self.cluster_size;
        if !cs.is_power_of_two() || !(1 << MIN_CLUSTER_BITS..=1 << MAX_CLUSTER_BITS).contains(&cs) {
            return Err(Error::invalid(format!(
                "Cluster size must be a power of two between 512 and 2048k (not {cs})"
            )));
        }
        if self.lazy_refcounts && self.compat == Compat::V2 {
            return Err(Error::invalid(
                "Lazy refcounts only supported with compatibility level 1.1 and above \
                 (use compat=1.1 or greater)",
            ));
        }
        if self.backing_file.is_some() && self.preallocation != Preallocation::Off {
            return Err(Error::invalid(
                "Backing file and preallocation can only be used at the same time if \
                 extended_l2 is on (which this writer does not make)",
            ));
        }
        if let Some(b) = &self.backing_file {
            if b.is_empty() || b.contains('\0') {
                return Err(Error::invalid("invalid backing file name"));
            }
            if b.len() > MAX_BACKING_NAME as usize {
                return Err(Error::invalid(format!(
                    "backing file name too long ({} bytes, at most {MAX_BACKING_NAME})",
                    b.len()
                )));
            }
        }
        let size = size
            .checked_next_multiple_of(512)
            .filter(|s| *s <= crate::format::MAX_VIRTUAL_SIZE)
            .ok_or_else(|| Error::invalid("image size too large"))?;
        let cluster_bits = cs.trailing_zeros();
        let l2_span = cs * (cs / 8);
        let l1_entries = size.div_ceil(l2_span);
        if l1_entries * 8 > MAX_L1_BYTES {
            return Err(Error::invalid(format!(
                "image size {size} needs an L1 table larger than QEMU accepts with \
                 cluster_size={cs}; use a larger cluster size"
            )));
        }
        let l1_clusters = (l1_entries * 8).div_ceil(cs).max(1);
        let layout = Layout {
            cluster_bits,
            size,
            l1_entries,
            l1_offset: cs,
            l1_clusters,
        };
        // The first cluster must hold the header, its extensions and the backing name.
        self.first_cluster(&layout, 0, 0)?;
        Ok(layout)
    }

    /// The first cluster's bytes: header, backing-format extension, end marker, backing
    /// file name. `backing_format` is the format to record (the given one, or the probed).
    pub fn first_cluster(
        &self,
        layout: &Layout,
        refcount_table_offset: u64,
        refcount_table_clusters: u32,
    ) -> Result<Vec<u8>> {
        let cs = 1usize << layout.cluster_bits;
        let v3 = self.compat == Compat::V3;
        let header_len = if v3 { V3_HEADER_LEN } else { V2_HEADER_LEN };
        let mut b = vec![0u8; header_len];
        let put32 =
            |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, if v3 { 3 } else { 2 });
        put32(&mut b, 20, layout.cluster_bits);
        put64(&mut b, 24, layout.size);
        put32(&mut b, 36, layout.l1_entries as u32);
        put64(&mut b, 40, layout.l1_offset);
        put64(&mut b, 48, refcount_table_offset);
        put32(&mut b, 56, refcount_table_clusters);
        if v3 {
            let compat = if self.lazy_refcounts {
                COMPAT_LAZY_REFCOUNTS
            } else {
                0
            };
            put64(&mut b, 80, compat);
            put32(&mut b, 96, REFCOUNT_ORDER);
            put32(&mut b, 100, header_len as u32);
            // Byte 104: compression type 0 (zlib); the rest is padding.
        }
        if let Some(fmt) = self
            .backing_format
            .as_deref()
            .filter(|_| self.backing_file.is_some())
        {
            let mut ext = Vec::new();
            ext.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
            ext.extend_from_slice(&(fmt.len() as u32).to_be_bytes());
            ext.extend_from_slice(fmt.as_bytes());
            ext.resize(ext.len().next_multiple_of(8), 0);
            b.extend_from_slice(&ext);
        }
        b.extend_from_slice(&EXT_END.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        if let Some(name) = &self.backing_file {
            let at = b.len();
            b.extend_from_slice(name.as_bytes());
            put64(&mut b, 8, at as u64);
            put32(&mut b, 16, name.len() as u32);
        }
        if b.len() > cs {
            return Err(Error::invalid(format!(
                "the header and backing file name ({} bytes) do not fit in one {cs}-byte \
                 cluster; use a larger cluster size or a shorter name",
                b.len()
            )));
        }
        b.resize(cs, 0);
        Ok(b)
    }
}

/// Refcount entries one refcount block holds (16-bit refcounts).
pub fn refcounts_per_block(cluster_bits: u32) -> u64 {
    (1u64 << cluster_bits) / 2
}

/// The refcount blocks and table clusters needed to count `used` clusters plus themselves,
/// placed right after them: `(blocks, table_clusters)`.
pub fn refcount_structures(cluster_bits: u32, used: u64) -> Result<(u64, u64)> {
    let per_block = refcounts_per_block(cluster_bits);
    let cs = 1u64 << cluster_bits;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let total = used + blocks + table;
        let b = total.div_ceil(per_block);
        let t = (b * 8).div_ceil(cs).max(1);
        if b == blocks && t == table {
            break;
        }
        blocks = b;
        table = t;
    }
    if table * cs > MAX_REFTABLE_BYTES {
        return Err(Error::invalid(
            "the image needs a refcount table larger than QEMU accepts; use a larger cluster size",
        ));
    }
    Ok((blocks, table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::header::Header;

    #[test]
    fn header_round_trips_through_the_reader() {
        for compat in [Compat::V2, Compat::V3] {
            let o = Qcow2CreateOptions {
                compat,
                lazy_refcounts: compat == Compat::V3,
                backing_file: Some("base.vmdk".into()),
                backing_format: Some("vmdk".into()),
                ..Default::default()
            };
            let l = o.layout(10 << 30).unwrap();
            let b = o.first_cluster(&l, 3 << 16, 1).unwrap();
            let h = Header::parse(&b, u64::MAX).unwrap();
            assert_eq!(h.size, 10 << 30);
            assert_eq!(h.cluster_bits, 16);
            assert_eq!(h.l1_size as u64, l.l1_entries);
            assert_eq!(h.refcount_table_offset, 3 << 16);
            assert_eq!(h.lazy_refcounts(), compat == Compat::V3);
            let name = &b[h.backing_file_offset as usize..][..h.backing_file_size as usize];
            assert_eq!(name, b"base.vmdk");
            let ext = super::super::header::parse_extensions(&b, h.extensions_offset()).unwrap();
            assert_eq!(ext.backing_format.as_deref(), Some("vmdk"));
        }
    }

    #[test]
    fn refuses_what_qemu_refuses() {
        let bad = |o: Qcow2CreateOptions| o.layout(1 << 30).unwrap_err().to_string();
        for cs in [0, 256, 3 << 10, 4 << 20] {
            bad(Qcow2CreateOptions {
                cluster_size: cs,
                ..Default::default()
            });
        }
        assert!(bad(Qcow2CreateOptions {
            compat: Compat::V2,
            lazy_refcounts: true,
            ..Default::default()
        })
        .contains("Lazy refcounts"));
        let long = Qcow2CreateOptions {
            cluster_size: 512,
            backing_file: Some("x".repeat(500)),
            ..Default::default()
        };
        assert!(bad(long).contains("do not fit"));
        // 512-byte clusters cannot address a petabyte within QEMU's L1 limit.
        assert!(Qcow2CreateOptions {
            cluster_size: 512,
            ..Default::default()
        }
        .layout(1 << 50)
        .is_err());
    }

    #[test]
    fn refcount_structures_count_themselves() {
        for bits in [9, 16, 21] {
            for used in [1, 2, 255, 256, 257, 1 << 20] {
                let (b, t) = refcount_structures(bits, used).unwrap();
                let per = refcounts_per_block(bits);
                assert!(b * per >= used + b + t, "{bits} {used}");
                assert!(t << bits >= b * 8);
            }
        }
    }
}
