//! Sparse extents: a grain directory pointing at grain tables pointing at grains. One type
//! serves the three on-disk flavours (VMDK4 `KDMV`, ESX `COWD`, seSparse), which differ only
//! in header, entry width and how an entry is coded.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::extent::budget::ExtentBudget;
use crate::extent::grain_directory::{read_exact, DirectoryPlace, GrainDirectory};
use crate::extent::grain_table::GrainTable;
use crate::extent::map::{ExtentFile, MapTarget};
use crate::extent::metadata::header_regions;
use crate::format::cowd_header::{CowdHeader, COWD_GT_ENTRIES};
use crate::format::grain_entry::GrainCoding;
pub use crate::format::grain_entry::{GrainEntry, SparseFlavor};
use crate::format::marker::{parse_stream_footer, FOOTER_SIZE};
use crate::format::sesparse_header::{self, SeSparseConstHeader};
use crate::format::sparse_header::{SparseHeader, GD_AT_END};
use crate::format::SECTOR_SIZE;

pub use crate::format::sparse_header::MAX_GD_ENTRIES;
/// Largest grain we decompress. VMware only writes 64 KiB compressed grains; the cap keeps a
/// hostile header from making us allocate a gigabyte per read.
pub const MAX_COMPRESSED_GRAIN: u64 = 16 << 20;

/// A sparse extent opened for reading (and writing, see `sparse_write.rs`): its header and
/// its `GrainDirectory`.
#[derive(Debug)]
pub struct SparseExtent {
    pub(super) file: Arc<ExtentFile>,
    pub(super) flavor: SparseFlavor,
    /// The VMDK4 header in force (from the footer for VMware stream files).
    pub(super) header: Option<SparseHeader>,
    /// Extent capacity in bytes, from its header.
    pub(super) capacity: u64,
    /// Grain size in bytes.
    pub(super) grain_size: u64,
    pub(super) compressed: bool,
    pub(super) has_marker: bool,
    /// Whether the header said GD_AT_END (VMware stream layout: footer at the end).
    pub(super) footer_layout: bool,
    /// The grain directory and tables, and the verbs that change them.
    pub(super) dir: GrainDirectory,
}

/// What an open function found out about an extent, for [`SparseExtent::assemble`].
struct Layout {
    coding: GrainCoding,
    place: DirectoryPlace,
    /// Capacity in bytes.
    capacity: u64,
    header: Option<SparseHeader>,
    footer_layout: bool,
}

impl Layout {
    /// The layout of the flavours without a VMDK4 header or a redundant directory (COWD,
    /// seSparse), given the directory's offset and number of entries.
    fn bare(coding: GrainCoding, (offset, entries): (u64, u64), capacity: u64) -> Layout {
        Layout {
            coding,
            place: DirectoryPlace {
                offset,
                redundant: None,
                entries,
            },
            capacity,
            header: None,
            footer_layout: false,
        }
    }
}

fn corrupt(file: &ExtentFile, msg: impl std::fmt::Display) -> Error {
    Error::corrupt(msg.to_string()).with_path(&file.path)
}

fn file_len(file: &ExtentFile) -> Result<u64> {
    file.storage
        .len()
        .map_err(|e| Error::io(e, "getting file size").with_path(&file.path))
}

impl SparseExtent {
    /// Open a VMDK4 (`KDMV`) extent whose first sector is `first`.
    pub fn open_vmdk4(file: Arc<ExtentFile>, first: &[u8], budget: &ExtentBudget) -> Result<Self> {
        let file_len = file_len(&file)?;
        let mut header = SparseHeader::parse(first).map_err(|m| corrupt(&file, m))?;
        let footer_layout = header.gd_offset == GD_AT_END;
        if footer_layout {
            header = Self::read_footer(&file, file_len)?;
        }
        header
            .validate()
            .map_err(|m| corrupt(&file, format!("invalid sparse header: {m}")))?;
        if file_len / SECTOR_SIZE < header.overhead {
            return Err(corrupt(
                &file,
                format!(
                    "file truncated, expecting at least {} bytes",
                    // `overhead` comes from the file: widen so it cannot overflow.
                    header.overhead as u128 * SECTOR_SIZE as u128
                ),
            ));
        }
        let gd_entries = header.gd_entries();
        if gd_entries > MAX_GD_ENTRIES {
            return Err(corrupt(
                &file,
                format!("grain directory too big ({gd_entries} entries)"),
            ));
        }
        let grain_size = header.grain_size * SECTOR_SIZE;
        if header.compressed() && grain_size > MAX_COMPRESSED_GRAIN {
            return Err(Error::unsupported(format!(
                "compressed grains of {grain_size} bytes are too large (at most {MAX_COMPRESSED_GRAIN})"
            ))
            .with_path(&file.path));
        }
        let gd_offset = header
            .gd_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain directory offset overflows"))?;
        let rgd_offset =
            if header.flags & crate::format::sparse_header::FLAG_RGD != 0 && header.rgd_offset != 0
            {
                Some(
                    header.rgd_offset.checked_mul(SECTOR_SIZE).ok_or_else(|| {
                        corrupt(&file, "redundant grain directory offset overflows")
                    })?,
                )
            } else {
                None
            };
        let coding = header.grain_coding();
        let place = DirectoryPlace {
            offset: gd_offset,
            redundant: rgd_offset,
            entries: gd_entries,
        };
        Self::assemble(
            file,
            file_len,
            budget,
            Layout {
                coding,
                place,
                capacity: header.capacity * SECTOR_SIZE,
                header: Some(header),
                footer_layout,
            },
        )
    }

    /// The extent laid out as `layout` says, with its directory loaded.
    fn assemble(
        file: Arc<ExtentFile>,
        file_len: u64,
        budget: &ExtentBudget,
        layout: Layout,
    ) -> Result<Self> {
        let Layout {
            coding,
            place,
            capacity,
            header,
            footer_layout,
        } = layout;
        let budget_what = match coding.flavor {
            SparseFlavor::Vmdk4 => "grain directories",
            _ => "grain directory",
        };
        let regions = header_regions(coding.flavor, header.as_ref());
        // Hosted sparse files say where grains start: stretches the tables leave unused
        // there may be reused (stream files keep markers between grains; COWD and seSparse
        // lay their files out otherwise).
        let data_start = match &header {
            Some(h) if !coding.compressed && !h.has_markers() && !footer_layout => {
                Some(h.overhead.saturating_mul(SECTOR_SIZE))
            }
            _ => None,
        };
        let dir = GrainDirectory::load(
            file.clone(),
            coding,
            place,
            file_len,
            budget,
            budget_what,
            regions,
            data_start,
        )?;
        Ok(SparseExtent {
            capacity,
            grain_size: coding.grain_size,
            compressed: coding.compressed,
            has_marker: header.as_ref().is_some_and(|h| h.has_markers()),
            footer_layout,
            flavor: coding.flavor,
            header,
            file,
            dir,
        })
    }

    /// VMware-layout stream files keep the real header in a footer: footer marker, header,
    /// end-of-stream marker, in the last three sectors.
    fn read_footer(file: &ExtentFile, file_len: u64) -> Result<SparseHeader> {
        if file_len < FOOTER_SIZE as u64 + 512 {
            return Err(corrupt(file, "stream file too short to hold a footer"));
        }
        let mut buf = [0u8; FOOTER_SIZE];
        read_exact(file, &mut buf, file_len - FOOTER_SIZE as u64, "footer")?;
        parse_stream_footer(&buf).map_err(|m| corrupt(file, m))
    }

    /// Open an ESX `COWD` extent whose first 2 KiB (or less) are `first`.
    pub fn open_cowd(file: Arc<ExtentFile>, first: &[u8], budget: &ExtentBudget) -> Result<Self> {
        let file_len = file_len(&file)?;
        let h = CowdHeader::parse(first).map_err(|m| corrupt(&file, m))?;
        h.validate()
            .map_err(|m| corrupt(&file, format!("invalid COWD header: {m}")))?;
        let per_gd = h.grain_size as u64 * COWD_GT_ENTRIES as u64;
        let needed = (h.capacity as u64).div_ceil(per_gd);
        let grain_size = h.grain_size as u64 * SECTOR_SIZE;
        let coding = GrainCoding::sectors(
            SparseFlavor::Cowd,
            false,
            false,
            grain_size,
            COWD_GT_ENTRIES as u64,
        );
        let capacity = h.capacity as u64 * SECTOR_SIZE;
        let gd_offset = h.gd_offset as u64 * SECTOR_SIZE;
        let layout = Layout::bare(coding, (gd_offset, needed), capacity);
        Self::assemble(file, file_len, budget, layout)
    }

    /// Open an seSparse extent whose first sector is `first`.
    pub fn open_sesparse(
        file: Arc<ExtentFile>,
        first: &[u8],
        budget: &ExtentBudget,
    ) -> Result<Self> {
        let file_len = file_len(&file)?;
        let h = SeSparseConstHeader::parse(first).map_err(|m| corrupt(&file, m))?;
        let mut vol = [0u8; 512];
        let vol_off = h
            .volatile_header_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "volatile header offset overflows"))?;
        read_exact(&file, &mut vol, vol_off, "seSparse volatile header")?;
        sesparse_header::check_volatile_header(&vol).map_err(|m| corrupt(&file, m))?;
        let grain_size = h.grain_size * SECTOR_SIZE;
        let gt_entries = h.grain_table_size * SECTOR_SIZE / 8;
        let per_gd = grain_size * gt_entries;
        let capacity = h
            .capacity
            .checked_mul(SECTOR_SIZE)
            .filter(|c| *c <= crate::format::MAX_VIRTUAL_SIZE)
            .ok_or_else(|| {
                corrupt(
                    &file,
                    format!(
                        "capacity of {} sectors is more than the {} bytes (8 EiB - 1 GiB) QEMU \
                         and NBD clients can address",
                        h.capacity,
                        crate::format::MAX_VIRTUAL_SIZE
                    ),
                )
            })?;
        let needed = capacity.div_ceil(per_gd);
        // From the file: saturate rather than overflow (only compared against `needed`).
        let gd_entries = h.grain_dir_size.saturating_mul(SECTOR_SIZE) / 8;
        if gd_entries < needed || needed > MAX_GD_ENTRIES {
            return Err(corrupt(
                &file,
                format!(
                    "seSparse grain directory has {gd_entries} entries, capacity needs {needed}"
                ),
            ));
        }
        let gd_offset = h
            .grain_dir_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain directory offset overflows"))?;
        let table_area = h
            .grain_tables_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain table area offset overflows"))?;
        let grain_area = h
            .grains_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain area offset overflows"))?;
        let coding = GrainCoding {
            flavor: SparseFlavor::SeSparse,
            zero_grain: true,
            compressed: false,
            grain_size,
            gt_entries,
            table_area,
            grain_area,
        };
        let layout = Layout::bare(coding, (gd_offset, needed), capacity);
        Self::assemble(file, file_len, budget, layout)
    }

    /// The file this extent lives in.
    pub fn file(&self) -> &Arc<ExtentFile> {
        &self.file
    }
    /// Grain size in bytes.
    pub fn grain_size(&self) -> u64 {
        self.grain_size
    }
    /// Capacity in bytes, from the extent's own header.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// Whether grains are compressed.
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }
    /// Whether compressed grains and metadata are preceded by stream markers.
    pub fn has_markers(&self) -> bool {
        self.has_marker
    }
    /// Whether this is a VMware-layout stream file (header in a footer at the end).
    pub fn has_footer(&self) -> bool {
        self.footer_layout
    }
    /// Whether entries can say "reads as zeros" (the zeroed-grain flag, or seSparse).
    pub fn has_zero_grains(&self) -> bool {
        self.dir.coding().zero_grain
    }
    /// Which on-disk flavour this is.
    pub fn flavor(&self) -> SparseFlavor {
        self.flavor
    }
    /// Whether this is a hosted sparse extent: VMDK4 with uncompressed grains (not a
    /// stream, COWD or seSparse extent), the only kind whose capacity can change.
    pub fn is_hosted(&self) -> bool {
        self.flavor == SparseFlavor::Vmdk4 && !self.compressed
    }
    /// The VMDK4 header when this is a hosted sparse extent, the only sparse kind whose
    /// capacity can change (see `grow.rs` and `shrink.rs`): stream files keep a second copy
    /// of the header (the footer) that readers prefer, and COWD/seSparse headers are not
    /// VMDK4 headers. The error says which `verb` was refused.
    pub(super) fn hosted_header(&self, verb: &str) -> Result<SparseHeader> {
        self.header
            .clone()
            .filter(|_| self.is_hosted())
            .ok_or_else(|| {
                Error::unsupported(format!(
                    "only hosted sparse extents (not stream, COWD or seSparse) can {verb}"
                ))
                .with_path(&self.file.path)
            })
    }
    /// The VMDK4 header, for VMDK4 extents.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }
    /// The grain directory and tables.
    pub fn directory(&self) -> &GrainDirectory {
        &self.dir
    }
    /// Bytes of memory the in-memory grain directories take.
    pub fn directory_memory(&self) -> u64 {
        self.dir.memory()
    }

    /// The grain table for directory entry `gd_index` (from cache or disk), or `None`.
    pub fn table(&self, gd_index: usize) -> Result<Option<Arc<GrainTable>>> {
        self.dir.table(gd_index)
    }

    /// The raw entries of the grain table (primary or redundant copy) at byte `offset` of
    /// the file, as stored: `check` compares a redundant copy with its primary table.
    pub(crate) fn raw_table_at(&self, offset: u64) -> std::io::Result<Vec<u64>> {
        let coding = self.dir.coding();
        let mut buf = vec![0u8; coding.table_bytes() as usize];
        self.file.storage.read_exact_at(&mut buf, offset)?;
        Ok(crate::format::grain_entry::entries(coding.width(), &buf).collect())
    }

    /// What the tables say about grain number `grain`.
    pub fn lookup(&self, grain: u64) -> Result<GrainEntry> {
        self.dir.lookup(grain)
    }

    /// The map target of `in_grain` bytes into a grain `entry` points at.
    fn target(&self, entry: GrainEntry, in_grain: u64) -> MapTarget {
        match entry {
            GrainEntry::Unallocated => MapTarget::Unallocated,
            GrainEntry::Zero => MapTarget::Zero,
            GrainEntry::Compressed(g) => {
                MapTarget::Compressed(crate::extent::compressed::CompressedGrain::new(
                    self.file.clone(),
                    g,
                    self.grain_size,
                    in_grain,
                    self.has_marker,
                ))
            }
            GrainEntry::Data(g) => MapTarget::Data {
                file: self.file.clone(),
                offset: g + in_grain,
            },
        }
    }

    /// Map `[off, off+len)` of this extent (offsets relative to the extent), calling `emit`
    /// with consecutive `(length, target)` pieces until it returns `false`.
    ///
    /// The cost is one step per grain-directory entry and per run of equal unallocated or
    /// zeroed grain-table entries, so empty tables and empty directories cost little.
    pub fn map(
        &self,
        mut off: u64,
        len: u64,
        emit: &mut dyn FnMut(u64, MapTarget) -> bool,
    ) -> Result<()> {
        let end = off + len;
        let gt_entries = self.dir.coding().gt_entries;
        let gt_cover = self.grain_size * gt_entries;
        while off < end {
            if off >= self.capacity {
                // The descriptor claims more than the header holds: nothing is stored there.
                emit(end - off, MapTarget::Unallocated);
                return Ok(());
            }
            let limit = end.min(self.capacity);
            let gd_index = (off / gt_cover) as usize;
            let table = if gd_index < self.dir.len() {
                self.dir.table(gd_index)?
            } else {
                None
            };
            let table_end = ((gd_index as u64 + 1) * gt_cover).min(limit);
            let Some(table) = table else {
                if !emit(table_end - off, MapTarget::Unallocated) {
                    return Ok(());
                }
                off = table_end;
                continue;
            };
            while off < table_end {
                let grain = off / self.grain_size;
                let in_grain = off % self.grain_size;
                let mut n = (self.grain_size - in_grain).min(table_end - off);
                let slot = (grain % gt_entries) as usize;
                let raw = table.get(slot);
                let entry = self.dir.decode(raw)?;
                if !entry.is_allocated() {
                    // A run of equal entries is one stretch.
                    let last_slot = ((table_end - 1) / self.grain_size % gt_entries) as usize;
                    let mut next = slot + 1;
                    while next <= last_slot && table.get(next) == raw {
                        next += 1;
                    }
                    let run_end = (grain + (next - slot) as u64) * self.grain_size;
                    n = run_end.min(table_end) - off;
                }
                if !emit(n, self.target(entry, in_grain)) {
                    return Ok(());
                }
                off += n;
            }
        }
        Ok(())
    }
}
