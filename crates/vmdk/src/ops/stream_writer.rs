//! Writing streamOptimized images in VMware's layout, the one vSphere imports.
//!
//! ```text
//! sector 0        header (version 3, flags NL_DETECT|COMPRESSED|MARKERS, gd_offset = GD_AT_END)
//! sector 1..      embedded descriptor (createType="streamOptimized"), NUL padded
//! overhead        grains in ascending LBA order: 12-byte grain marker {lba, size} + zlib
//!                 stream, padded to a sector; all-zero grains are left out. After the last
//!                 grain of each grain table's span: a GT marker (type 1) and the table.
//! then            GD marker (type 2) + grain directory (0 for tables that hold nothing),
//!                 footer marker (type 3) + a copy of the header carrying the real gd_offset,
//!                 end-of-stream marker (an all-zero sector).
//! ```
//!
//! The file is written front to back and never revisited, so it can go to a pipe-like
//! destination, and memory stays at one grain table plus the grain directory whatever the
//! disk size. Compression is separate from writing: a `GrainEncoder` turns grains into
//! finished on-disk records on any thread, and `StreamWriter::write_encoded` lays batches of
//! records down in disk order; [`crate::ops::convert::convert_to_vmdk`] runs encoders on all cores.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::extent::GrainEncoder;
use crate::format::descriptor::{ExtentAccess, ExtentLine, ExtentType};
use crate::format::grain_entry::{GrainCoding, GrainEntry, SparseFlavor};
use crate::format::layout::StreamLayout;
use crate::format::marker::{stream_footer, MetadataMarker, MARKER_GD, MARKER_GT};
use crate::format::sparse_header::SparseHeader;
use crate::format::{is_zero, SECTOR_SIZE};
use crate::ops::create::{CreateOptions, Subformat};
use crate::storage::namespace::StreamSink;

pub use crate::extent::MAX_LEVEL;
/// Grain size of new stream images, in sectors (64 KiB, what VMware and qemu-img use).
pub(crate) const GRAIN_SECTORS: u64 = StreamLayout::GRAIN_SECTORS;
/// Grain-table entries per table.
pub const GT_ENTRIES: u64 = StreamLayout::GT_ENTRIES;
/// Sectors reserved for the embedded descriptor (at least; more if it needs more).
pub use crate::format::layout::EMBEDDED_DESC_SECTORS as DESC_SECTORS;

const SECTOR: usize = SECTOR_SIZE as usize;

/// Writes one streamOptimized file front to back. Feed it grains in ascending order, then
/// call [`StreamWriter::finish`]; a writer dropped unfinished leaves an invalid file.
pub struct StreamWriter {
    out: Box<dyn StreamSink>,
    path: PathBuf,
    /// Next byte offset to write (sector aligned).
    pos: u64,
    header: SparseHeader,
    /// Where everything goes.
    layout: StreamLayout,
    capacity: u64,
    grain_size: u64,
    total_grains: u64,
    /// How the entries below are coded.
    coding: GrainCoding,
    /// Grain directory: raw entry of each grain table (0 = none).
    gd: Vec<u64>,
    /// The table being filled (raw entries), and which one it is.
    gt: Vec<u64>,
    gt_index: u64,
    gt_used: bool,
    /// Grains must arrive in ascending order: the next acceptable grain number.
    next_grain: u64,
    encoder: Option<GrainEncoder>,
    level: u32,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("path", &self.path)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl StreamWriter {
    /// Create (or truncate) `path` in `opts`'s namespace as a streamOptimized image of
    /// `size` bytes (rounded up to 512), with the descriptor
    /// `crate::ops::create::default_descriptor` makes for `opts`. `level` is the zlib level
    /// [`StreamWriter::write_grain`] compresses at.
    pub fn create(
        path: &Path,
        size: u64,
        opts: &CreateOptions,
        level: u32,
    ) -> Result<StreamWriter> {
        Self::check_options(opts, level)?;
        let out = opts.namespace().create_stream(path, true)?;
        Self::new(out, path, size, opts, level)
    }

    fn check_options(opts: &CreateOptions, level: u32) -> Result<()> {
        if opts.backing_file.is_some() {
            return Err(Error::unsupported(
                "streamOptimized images cannot have a backing file",
            ));
        }
        if level > MAX_LEVEL {
            return Err(Error::invalid(format!(
                "invalid compression level {level} (0-{MAX_LEVEL})"
            )));
        }
        Ok(())
    }

    /// Begin a streamOptimized image of `size` bytes (rounded up to 512) in `out`, a
    /// destination written front to back (a file, a tar member, an upload); `path` is its
    /// name, for the embedded descriptor's extent line and for messages.
    pub fn new(
        out: Box<dyn StreamSink>,
        path: &Path,
        size: u64,
        opts: &CreateOptions,
        level: u32,
    ) -> Result<StreamWriter> {
        Self::check_options(opts, level)?;
        let mut layout = StreamLayout::new(size).map_err(|e| Error::invalid(e.to_string()))?;
        let (size, sectors) = (layout.size, layout.size / SECTOR_SIZE);
        let grain_size = layout.grain_size();
        let total_grains = layout.grains();
        let gd_len = layout.tables();
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid("image path has no file name").with_path(path))?
            .to_string_lossy()
            .into_owned();
        let mut dopts = opts.clone();
        dopts.subformat = Subformat::StreamOptimized;
        let desc = crate::ops::create::default_descriptor(
            &dopts,
            size,
            vec![ExtentLine {
                access: ExtentAccess::ReadWrite,
                sectors,
                kind: ExtentType::Sparse,
                file: Some(file_name),
                offset: 0,
                extra: vec![],
            }],
            None,
        )?
        .serialize();
        layout.fit_descriptor(desc.len() as u64);
        let header = layout.header();
        let overhead = header.overhead;
        let mut head = vec![0u8; (overhead * SECTOR_SIZE) as usize];
        head[..SECTOR].copy_from_slice(&header.serialize());
        head[SECTOR..SECTOR + desc.len()].copy_from_slice(desc.as_bytes());
        let mut w = StreamWriter {
            out,
            path: path.to_path_buf(),
            pos: 0,
            header,
            layout,
            capacity: size,
            grain_size,
            total_grains,
            coding: GrainCoding::sectors(SparseFlavor::Vmdk4, false, true, grain_size, GT_ENTRIES),
            gd: vec![0; gd_len as usize],
            gt: vec![0; GT_ENTRIES as usize],
            gt_index: 0,
            gt_used: false,
            next_grain: 0,
            encoder: None,
            level,
            scratch: Vec::new(),
        };
        w.append(&head)?;
        Ok(w)
    }

    /// Grain size in bytes.
    pub fn grain_size(&self) -> u64 {
        self.grain_size
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn append(&mut self, buf: &[u8]) -> Result<()> {
        std::io::Write::write_all(&mut self.out, buf)
            .map_err(|e| Error::io(e, "writing stream image").with_path(&self.path))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Check that the current position fits a 32-bit sector entry.
    fn check_addressable(&self, pos: u64) -> Result<u64> {
        if pos / SECTOR_SIZE > u32::MAX as u64 {
            return Err(Error::unsupported(
                "stream image grows past 2 TiB of compressed data (32-bit offsets)",
            )
            .with_path(&self.path));
        }
        Ok(pos)
    }

    /// The raw table entry for a grain whose record starts at byte `at`.
    fn grain_entry(&self, at: u64) -> Result<u64> {
        self.coding
            .encode(GrainEntry::Compressed(at))
            .map_err(|m| Error::invalid(m.to_string()).with_path(&self.path))
    }

    /// The raw directory entry for a table at byte `at`.
    fn directory_entry(&self, at: u64) -> Result<u64> {
        self.coding
            .encode_directory(Some(at))
            .map_err(|m| Error::invalid(m.to_string()).with_path(&self.path))
    }

    /// Write the table being filled, if it holds anything.
    fn flush_gt(&mut self) -> Result<()> {
        if !self.gt_used {
            return Ok(());
        }
        let table_sectors = self.layout.table_sectors();
        let mut buf = Vec::with_capacity(SECTOR + (table_sectors * SECTOR_SIZE) as usize);
        buf.extend_from_slice(
            &MetadataMarker {
                num_sectors: table_sectors,
                kind: MARKER_GT,
            }
            .serialize(),
        );
        self.coding.put_entries(&self.gt, &mut buf);
        buf.resize(SECTOR + (table_sectors * SECTOR_SIZE) as usize, 0);
        let table = self.check_addressable(self.pos)? + SECTOR_SIZE;
        let raw = self.directory_entry(table)?;
        self.append(&buf)?;
        self.gd[self.gt_index as usize] = raw;
        self.gt.fill(0);
        self.gt_used = false;
        Ok(())
    }

    /// Point grain `grain`'s table entry at the current position, switching tables as needed.
    fn claim(&mut self, grain: u64) -> Result<()> {
        if grain < self.next_grain || grain >= self.total_grains {
            return Err(Error::invalid(format!(
                "grain {grain} out of order or outside the disk (next is {}, {} grains)",
                self.next_grain, self.total_grains
            )));
        }
        let t = grain / GT_ENTRIES;
        if t != self.gt_index {
            self.flush_gt()?;
            self.gt_index = t;
        }
        let at = self.check_addressable(self.pos)?;
        self.gt[(grain % GT_ENTRIES) as usize] = self.grain_entry(at)?;
        self.gt_used = true;
        self.next_grain = grain + 1;
        Ok(())
    }

    /// Lay down a batch of records made by `GrainEncoder::encode`: `records` holds them back
    /// to back, and `grains` lists `(grain number, offset of its record in records)` in
    /// ascending grain order, continuing after everything written before.
    pub(crate) fn write_encoded(&mut self, records: &[u8], grains: &[(u64, usize)]) -> Result<()> {
        let mut done = 0usize;
        for (i, &(grain, off)) in grains.iter().enumerate() {
            let end = grains.get(i + 1).map_or(records.len(), |g| g.1);
            if off != done
                || end < off
                || end > records.len()
                || !(end - off).is_multiple_of(SECTOR)
            {
                return Err(Error::invalid(
                    "grain records are not laid out back to back",
                ));
            }
            if grain / GT_ENTRIES != self.gt_index && self.gt_used {
                // The table's span is complete: its table goes right after its grains.
                self.flush_gt()?;
            }
            self.claim(grain)?;
            self.append(&records[off..end])?;
            done = end;
        }
        if done != records.len() {
            return Err(Error::invalid("grain records left over"));
        }
        Ok(())
    }

    /// Compress and write grain number `grain` (`data` is the whole grain, shorter only for
    /// the disk's last grain). All-zero grains are skipped: they read as zeros anyway.
    pub fn write_grain(&mut self, grain: u64, data: &[u8]) -> Result<()> {
        if is_zero(data) {
            return Ok(());
        }
        let expect = self.grain_size.min(
            self.capacity - (grain.min(self.total_grains) * self.grain_size).min(self.capacity),
        );
        if data.len() as u64 != expect || grain >= self.total_grains {
            return Err(Error::invalid(format!(
                "grain {grain}: got {} bytes, expected {expect}",
                data.len()
            )));
        }
        if self.encoder.is_none() {
            self.encoder = Some(GrainEncoder::new(self.level)?);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.encoder.as_mut().expect("made above").encode(
            grain * GRAIN_SECTORS,
            data,
            &mut scratch,
        )?;
        let r = self.write_encoded(&scratch, &[(grain, 0)]);
        self.scratch = scratch;
        r
    }

    /// Write the last grain table, the grain directory, the footer and the end-of-stream
    /// marker. Like `qemu-img convert`, this does not sync: the data is in the page cache
    /// (call [`StreamWriter::finish_sync`] for durability).
    pub fn finish(self) -> Result<()> {
        self.finish_with(false)
    }

    /// [`StreamWriter::finish`], then make the file durable.
    pub fn finish_sync(self) -> Result<()> {
        self.finish_with(true)
    }

    fn finish_with(mut self, durable: bool) -> Result<()> {
        self.flush_gt()?;
        let gd_sectors = self.layout.directory_sectors();
        let mut buf = Vec::with_capacity((gd_sectors as usize + 4) * SECTOR);
        buf.extend_from_slice(
            &MetadataMarker {
                num_sectors: gd_sectors,
                kind: MARKER_GD,
            }
            .serialize(),
        );
        let gd_sector = self.pos / SECTOR_SIZE + 1;
        self.coding.put_entries(&self.gd, &mut buf);
        buf.resize(SECTOR + (gd_sectors * SECTOR_SIZE) as usize, 0);
        let mut footer = self.header.clone();
        footer.gd_offset = gd_sector;
        buf.extend_from_slice(&stream_footer(&footer));
        self.append(&buf)?;
        self.out.finish(durable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::namespace::{MemNamespace, Namespace};
    use std::sync::Arc;

    fn writer(ns: &MemNamespace, size: u64) -> StreamWriter {
        let sink = ns.create_stream(Path::new("s.vmdk"), false).unwrap();
        StreamWriter::new(
            sink,
            Path::new("s.vmdk"),
            size,
            &CreateOptions::default(),
            1,
        )
        .unwrap()
    }

    fn grain(seed: u8) -> Vec<u8> {
        (0..GRAIN_SECTORS as usize * SECTOR)
            .map(|i| (i as u8) ^ seed)
            .collect()
    }

    #[test]
    fn grains_across_tables_read_back_and_zeros_cost_nothing() {
        let ns = Arc::new(MemNamespace::new());
        let size = 3 * GT_ENTRIES * GRAIN_SECTORS * SECTOR_SIZE + 1000;
        let mut w = writer(&ns, size);
        let last = size.div_ceil(GRAIN_SECTORS * SECTOR_SIZE) - 1;
        let picks = [0, 1, GT_ENTRIES - 1, GT_ENTRIES, 2 * GT_ENTRIES + 7];
        for &g in &picks {
            w.write_grain(g, &grain(g as u8)).unwrap();
        }
        let before = w.position();
        w.write_grain(last - 1, &vec![0; grain(0).len()]).unwrap();
        assert_eq!(w.position(), before, "an all-zero grain is left out");
        let tail = (size - last * GRAIN_SECTORS * SECTOR_SIZE).next_multiple_of(SECTOR_SIZE);
        w.write_grain(last, &vec![9; tail as usize]).unwrap();
        w.finish().unwrap();
        let img = crate::image::OpenOptions::new()
            .in_namespace(ns.clone())
            .open("s.vmdk")
            .unwrap();
        assert_eq!(img.size(), size.next_multiple_of(SECTOR_SIZE));
        let gs = GRAIN_SECTORS * SECTOR_SIZE;
        for &g in &picks {
            let mut b = vec![0; gs as usize];
            img.read_at(&mut b, g * gs).unwrap();
            assert!(b == grain(g as u8), "grain {g}");
        }
        let mut b = vec![0; 1000];
        img.read_at(&mut b, last * gs).unwrap();
        assert!(b.iter().all(|&x| x == 9));
        let report = crate::ops::check::check(&img).unwrap();
        assert_eq!(report.corruption_count(), 0, "{:?}", report.corruptions);
    }

    #[test]
    fn refuses_grains_out_of_order_of_the_wrong_size_or_past_the_end() {
        let ns = MemNamespace::new();
        let mut w = writer(&ns, 10 * GRAIN_SECTORS * SECTOR_SIZE);
        w.write_grain(5, &grain(1)).unwrap();
        assert!(w.write_grain(5, &grain(1)).is_err(), "twice");
        assert!(w.write_grain(3, &grain(1)).is_err(), "backwards");
        assert!(w.write_grain(6, &grain(1)[..4096]).is_err(), "short");
        assert!(w.write_grain(10, &grain(1)).is_err(), "past the end");
        let bad = CreateOptions {
            backing_file: Some("b.vmdk".into()),
            ..Default::default()
        };
        let sink = ns.create_stream(Path::new("t.vmdk"), false).unwrap();
        assert!(StreamWriter::new(sink, Path::new("t.vmdk"), 1 << 20, &bad, 6).is_err());
        let sink = ns.create_stream(Path::new("u.vmdk"), false).unwrap();
        let opts = CreateOptions::default();
        assert!(StreamWriter::new(sink, Path::new("u.vmdk"), 1 << 20, &opts, 13).is_err());
    }
}
