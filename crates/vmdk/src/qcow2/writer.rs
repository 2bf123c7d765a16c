//! Writes a new qcow2 image whose clusters arrive in disk order, as a conversion produces
//! them: not a general qcow2 driver, but a one-pass layout that needs no metadata reads.
//!
//! Layout: the header cluster, the L1 table, then (sequential allocation) data clusters,
//! compressed streams and L2 tables in the order they are finished, then the refcount
//! blocks and table, sized once everything before them is known. With
//! `preallocation=metadata` every L2 table follows the L1 table and every cluster has its
//! fixed place in a data region after them (a sparse hole until written).
//!
//! Every cluster below the end is used (compressed streams are packed byte by byte, as
//! QEMU packs them, so a cluster may hold several), so refcounts are 1 except where
//! several compressed streams share a cluster; only those are remembered.
//!
//! Crash ordering: the header is written last. Until then the file's first cluster is
//! zeros (a hole of the new, empty file), so an interrupted conversion leaves no file that
//! opens as a qcow2 image.
//!
//! Writes run front to back except for the header cluster and the L1 table, which are
//! skipped and filled in by [`Qcow2Writer::finish`], and padding is written as zeros rather
//! than skipped: so the output can be an [`AppendOutput`](crate::namespace::AppendOutput)
//! upload, which holds back only the part with the header and L1 table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::l2::{FLAG_COMPRESSED, FLAG_COPIED, FLAG_ZERO};
use super::layout::{
    refcount_structures, refcounts_per_block, Compat, Layout, Preallocation, Qcow2CreateOptions,
};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// A qcow2 image being written front to back (see the module docs).
pub struct Qcow2Writer {
    out: Arc<dyn Storage>,
    path: PathBuf,
    opts: Qcow2CreateOptions,
    layout: Layout,
    cs: u64,
    /// L1 entries, written at [`Qcow2Writer::finish`].
    l1: Vec<u64>,
    /// The L2 table being filled: its index and entries.
    l2_index: Option<u64>,
    l2: Vec<u64>,
    /// Next free byte of the file (sequential allocation).
    end: u64,
    /// Clusters that several compressed streams share, with their counts, in file order.
    shared: Vec<(u64, u16)>,
    /// With `preallocation=metadata`: host offset of virtual cluster 0.
    data_start: Option<u64>,
    /// Virtual clusters already written (each may be written once, in increasing order).
    next_cluster: u64,
}

impl std::fmt::Debug for Qcow2Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("path", &self.path)
            .field("layout", &self.layout)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Qcow2Writer {
    /// Start an image of `layout` (from [`Qcow2CreateOptions::layout`]) in `out`, a new,
    /// empty, writable file named `path` (for messages).
    pub fn new(
        out: Arc<dyn Storage>,
        path: &Path,
        opts: &Qcow2CreateOptions,
        layout: Layout,
    ) -> Result<Qcow2Writer> {
        let cs = 1u64 << layout.cluster_bits;
        let l2_entries = cs / 8;
        let meta_end = layout.l1_offset + layout.l1_clusters * cs;
        let data_start = (opts.preallocation == Preallocation::Metadata)
            .then(|| meta_end + layout.l1_entries * cs);
        Ok(Qcow2Writer {
            out,
            path: path.to_path_buf(),
            opts: opts.clone(),
            cs,
            l1: vec![0; layout.l1_entries as usize],
            l2_index: None,
            l2: vec![0; l2_entries as usize],
            end: match data_start {
                Some(d) => d + layout.size.div_ceil(cs) * cs,
                None => meta_end,
            },
            layout,
            shared: Vec::new(),
            data_start,
            next_cluster: 0,
        })
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.cs
    }

    /// Whether the image can mark clusters as reading zeros (version 3).
    pub fn has_zero_clusters(&self) -> bool {
        self.opts.compat == Compat::V3
    }

    fn write(&self, buf: &[u8], at: u64) -> Result<()> {
        self.out
            .write_at(buf, at)
            .map_err(|e| Error::io(e, format!("writing at offset {at}")).with_path(&self.path))
    }

    fn claim(&mut self, first: u64, n: u64) -> Result<()> {
        let clusters = self.layout.size.div_ceil(self.cs);
        if first < self.next_cluster || first + n > clusters {
            return Err(Error::invalid(format!(
                "qcow2 writer: clusters {first}..{} written out of order or past the end",
                first + n
            )));
        }
        self.next_cluster = first + n;
        Ok(())
    }

    /// Set the L2 entry of virtual cluster `vc`, writing out the previous L2 table when `vc`
    /// is in a later one.
    fn set_entry(&mut self, vc: u64, entry: u64) -> Result<()> {
        let per = self.cs / 8;
        let (t, i) = (vc / per, (vc % per) as usize);
        if self.l2_index != Some(t) {
            self.flush_l2()?;
            self.l2_index = Some(t);
        }
        self.l2[i] = entry;
        Ok(())
    }

    fn flush_l2(&mut self) -> Result<()> {
        let Some(t) = self.l2_index.take() else {
            return Ok(());
        };
        if self.data_start.is_some() {
            return Ok(()); // preallocated tables are written whole at `finish`
        }
        let at = self.align_end()?;
        let mut b = vec![0u8; self.cs as usize];
        for (k, e) in self.l2.iter().enumerate() {
            b[k * 8..k * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.write(&b, at)?;
        self.end = at + self.cs;
        self.l1[t as usize] = at | FLAG_COPIED;
        self.l2.fill(0);
        Ok(())
    }

    /// Move the end to the next cluster boundary, writing the padding (after compressed
    /// streams) as zeros so that nothing before the end is left unwritten.
    fn align_end(&mut self) -> Result<u64> {
        let aligned = self.end.next_multiple_of(self.cs);
        if aligned > self.end && self.data_start.is_none() {
            self.write(&vec![0u8; (aligned - self.end) as usize], self.end)?;
        }
        self.end = aligned;
        Ok(aligned)
    }

    /// Write `data` as the plain clusters starting at virtual cluster `vc`: a whole number
    /// of clusters, except that the disk's last cluster may be short.
    pub fn write_data(&mut self, vc: u64, data: &[u8]) -> Result<()> {
        let n = (data.len() as u64).div_ceil(self.cs);
        self.claim(vc, n)?;
        let at = match self.data_start {
            Some(d) => d + vc * self.cs,
            None => {
                // Reserve the whole run first, so an L2 table written while the entries are
                // set goes after it and the data lands with one write.
                let at = self.align_end()?;
                self.end = at + n * self.cs;
                at
            }
        };
        for k in 0..n {
            self.set_entry(vc + k, (at + k * self.cs) | FLAG_COPIED)?;
        }
        self.write(data, at)
    }

    /// Mark virtual cluster `vc` as reading zeros (version 3 only; in version 2 images,
    /// write zeros with [`Qcow2Writer::write_data`]). With `preallocation=metadata` every
    /// cluster is a hole already, so this does nothing.
    pub fn write_zero(&mut self, vc: u64) -> Result<()> {
        self.claim(vc, 1)?;
        if self.data_start.is_some() {
            return Ok(());
        }
        if !self.has_zero_clusters() {
            return Err(Error::invalid(
                "qcow2 version 2 (compat=0.10) has no zero clusters",
            ));
        }
        self.set_entry(vc, FLAG_ZERO)
    }

    /// Store virtual cluster `vc` as the raw deflate stream `stream` (shorter than a cluster;
    /// it must inflate to a whole cluster), packed right after what was written last.
    pub fn write_compressed(&mut self, vc: u64, stream: &[u8]) -> Result<()> {
        let len = stream.len() as u64;
        if len == 0 || len >= self.cs || self.data_start.is_some() {
            return Err(Error::invalid(
                "qcow2 writer: compressed stream empty, not smaller than a cluster, or in a \
                 preallocated image",
            ));
        }
        self.claim(vc, 1)?;
        let at = self.end;
        self.write(stream, at)?;
        self.end = at + len;
        let (first, last) = (at / self.cs, (at + len - 1) / self.cs);
        for c in first..=last {
            match self.shared.last_mut() {
                Some((lc, n)) if *lc == c => {
                    *n = n.checked_add(1).ok_or_else(|| {
                        Error::invalid("qcow2 writer: too many compressed streams in one cluster")
                    })?
                }
                _ => {
                    // A cluster touched by one stream only has refcount 1 like every other.
                    if self.shared.last().is_some_and(|&(_, n)| n == 1) {
                        self.shared.pop();
                    }
                    self.shared.push((c, 1));
                }
            }
        }
        // qcow2's descriptor: offset, then the count of 512-byte sectors after the first
        // that the stream reaches into.
        let csize_shift = 62 - (self.layout.cluster_bits - 8);
        let sectors = ((at + len - 1) >> 9) - (at >> 9);
        self.set_entry(vc, FLAG_COMPRESSED | (sectors << csize_shift) | at)
    }

    /// Write the L2 tables left, the refcounts, the L1 table and, last, the header.
    pub fn finish(mut self) -> Result<()> {
        let cs = self.cs;
        self.flush_l2()?;
        if let Some(d) = self.data_start {
            // Every cluster maps to its place in the data region.
            let per = cs / 8;
            let clusters = self.layout.size.div_ceil(cs);
            let tables_at = self.layout.l1_offset + self.layout.l1_clusters * cs;
            let mut b = vec![0u8; cs as usize];
            for t in 0..self.layout.l1_entries {
                b.fill(0);
                for i in 0..per.min(clusters - t * per) {
                    let host = (d + (t * per + i) * cs) | FLAG_COPIED;
                    b[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&host.to_be_bytes());
                }
                let at = tables_at + t * cs;
                self.write(&b, at)?;
                self.l1[t as usize] = at | FLAG_COPIED;
            }
        }
        let used = self.align_end()? / cs;
        let (blocks, table_clusters) = refcount_structures(self.layout.cluster_bits, used)?;
        let total = used + blocks + table_clusters;
        let per_block = refcounts_per_block(self.layout.cluster_bits);
        let mut shared = self.shared.iter().peekable();
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        let mut b = vec![0u8; cs as usize];
        for k in 0..blocks {
            b.fill(0);
            let first = k * per_block;
            for c in first..(first + per_block).min(total) {
                let mut rc = 1u16;
                if let Some(&&(sc, n)) = shared.peek() {
                    if sc == c {
                        rc = n;
                        shared.next();
                    }
                }
                let i = ((c - first) * 2) as usize;
                b[i..i + 2].copy_from_slice(&rc.to_be_bytes());
            }
            let at = (used + k) * cs;
            self.write(&b, at)?;
            table[(k * 8) as usize..(k * 8 + 8) as usize].copy_from_slice(&at.to_be_bytes());
        }
        let table_at = (used + blocks) * cs;
        self.write(&table, table_at)?;
        let mut l1 = vec![0u8; (self.layout.l1_clusters * cs) as usize];
        for (i, e) in self.l1.iter().enumerate() {
            l1[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.write(&l1, self.layout.l1_offset)?;
        let header = self
            .opts
            .first_cluster(&self.layout, table_at, table_clusters as u32)?;
        self.write(&header, 0)?;
        Ok(())
    }
}
