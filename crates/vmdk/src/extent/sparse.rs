//! Sparse extents: a grain directory pointing at grain tables pointing at grains. One type
//! serves the three on-disk flavours (VMDK4 `KDMV`, ESX `COWD`, seSparse), which differ only
//! in header, entry width and how an entry is coded.

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::extent::budget::ExtentBudget;
use crate::extent::entries::AtomicEntries;
use crate::extent::free_space::FreeSpace;
use crate::extent::grain_table::{GrainTable, GrainTableCache};
use crate::format::cowd_header::{CowdHeader, COWD_GT_ENTRIES};
use crate::format::marker::{MetadataMarker, MARKER_EOS, MARKER_FOOTER};
use crate::format::sesparse_header::{self, SeSparseConstHeader, SeSparseGdEntry, SeSparseGtEntry};
use crate::format::sparse_header::{SparseHeader, GD_AT_END, SPARSE_MAGIC};
use crate::format::SECTOR_SIZE;
use crate::map::{ExtentFile, MapTarget};

/// QEMU's cap on grain-directory entries; a directory larger than this is corrupt.
pub const MAX_GD_ENTRIES: u64 = 32 * 1024 * 1024;
/// Largest grain we decompress. VMware only writes 64 KiB compressed grains; the cap keeps a
/// hostile header from making us allocate a gigabyte per read.
pub const MAX_COMPRESSED_GRAIN: u64 = 16 << 20;
/// Directory bytes read from the file at once while loading a directory.
const DIRECTORY_READ_CHUNK: u64 = 64 << 10;

/// How entries of this extent are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseFlavor {
    /// VMware hosted sparse (`KDMV`): 32-bit sector offsets; GTE 1 may mean "zeroed grain".
    Vmdk4,
    /// ESX `COWD` (vmfsSparse): 32-bit sector offsets, 4096-entry tables.
    Cowd,
    /// ESXi seSparse: 64-bit coded indexes into preallocated table and grain areas.
    SeSparse,
}

/// What one grain-table entry says about its grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrainState {
    /// Not allocated in this extent.
    Unallocated,
    /// Reads as zeros.
    Zero,
    /// Stored at this byte offset in the file (compressed if the extent is).
    Allocated(u64),
}

/// A sparse extent opened for reading (and writing, see `write.rs`).
#[derive(Debug)]
pub struct SparseExtent {
    pub(crate) file: Arc<ExtentFile>,
    pub(crate) flavor: SparseFlavor,
    /// The VMDK4 header in force (from the footer for VMware stream files).
    pub(crate) header: Option<SparseHeader>,
    /// Extent capacity in bytes, from its header.
    pub(crate) capacity: u64,
    /// Grain size in bytes.
    pub(crate) grain_size: u64,
    /// Entries per grain table.
    pub(crate) gt_entries: u64,
    /// Bytes per table entry (4 or 8).
    pub(crate) entry_width: usize,
    /// Grain directory, raw entries.
    pub(crate) gd: AtomicEntries,
    /// Byte offset of the grain directory.
    pub(crate) gd_offset: u64,
    /// Byte offset of the redundant grain directory, if kept.
    pub(crate) rgd_offset: Option<u64>,
    /// Redundant grain directory, raw entries (same length as `gd`), if kept.
    pub(crate) rgd: Option<AtomicEntries>,
    /// seSparse: byte offsets of the grain-table area and the grain area.
    pub(crate) se_areas: (u64, u64),
    /// Whether GTE 1 means a zeroed grain.
    pub(crate) zero_grain: bool,
    pub(crate) compressed: bool,
    pub(crate) has_marker: bool,
    /// The grain-table cache shared with every extent of the image and its chain.
    pub(crate) cache: Arc<GrainTableCache>,
    /// This extent's part of the cache keys.
    pub(crate) cache_id: u64,
    /// Where appended grains/tables go, and space given back by failed writes (writes only).
    pub(crate) next_free: Mutex<crate::extent::free_space::FreeSpace>,
    /// File length at open.
    pub(crate) open_len: u64,
    /// Metadata regions for refusing writes through corrupt tables, made on first write.
    pub(crate) guard: std::sync::OnceLock<crate::extent::write_guard::WriteGuard>,
    /// Whether the header said GD_AT_END (VMware stream layout: footer at the end).
    pub(crate) footer_layout: bool,
    /// Coordination between concurrent writers (see `sparse_write.rs`).
    pub(crate) write_locks: crate::extent::sparse_write::WriteLocks,
}

fn corrupt(file: &ExtentFile, msg: impl Into<String>) -> Error {
    Error::corrupt(msg).with_path(&file.path)
}

fn read_exact(file: &ExtentFile, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
    file.storage.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(
                file,
                format!("file is truncated: {what} at offset {offset} lies past its end"),
            )
        } else {
            Error::io(e, format!("reading {what}")).with_path(&file.path)
        }
    })
}

/// Bytes of a directory of `n` entries of `width` bytes at `offset`, checking it lies
/// inside the file.
fn directory_bytes(
    file: &ExtentFile,
    offset: u64,
    n: u64,
    width: usize,
    file_len: u64,
    what: &str,
) -> Result<u64> {
    n.checked_mul(width as u64)
        .filter(|b| offset.checked_add(*b).is_some_and(|end| end <= file_len))
        .ok_or_else(|| {
            corrupt(
                file,
                format!("{what} ({n} entries at offset {offset}) lies past the end of the file"),
            )
        })
}

/// Read a directory of `n` entries of `width` bytes at `offset` (already checked with
/// [`directory_bytes`] and reserved in the budget) in small pieces, so the entries are the
/// only big allocation.
fn read_directory(
    file: &ExtentFile,
    offset: u64,
    n: u64,
    width: usize,
    file_len: u64,
    what: &str,
) -> Result<AtomicEntries> {
    let bytes = directory_bytes(file, offset, n, width, file_len, what)?;
    let entries = AtomicEntries::zeroed(n as usize, width).ok_or_else(|| {
        Error::io(
            std::io::ErrorKind::OutOfMemory.into(),
            format!("allocating the {what} ({bytes} bytes)"),
        )
        .with_path(&file.path)
    })?;
    let mut buf = vec![0u8; bytes.min(DIRECTORY_READ_CHUNK) as usize];
    let mut done = 0;
    while done < bytes {
        let len = (bytes - done).min(DIRECTORY_READ_CHUNK) as usize;
        read_exact(file, &mut buf[..len], offset + done, what)?;
        entries.fill_from_bytes((done / width as u64) as usize, &buf[..len]);
        done += len as u64;
    }
    Ok(entries)
}

/// Check, reserve and read a single directory (COWD and seSparse have no redundant copy).
fn load_directory(
    file: &ExtentFile,
    offset: u64,
    n: u64,
    width: usize,
    file_len: u64,
    budget: &ExtentBudget,
) -> Result<AtomicEntries> {
    let what = "grain directory";
    let bytes = directory_bytes(file, offset, n, width, file_len, what)?;
    budget.reserve_directory(bytes, &file.path, what)?;
    read_directory(file, offset, n, width, file_len, what)
}

impl SparseExtent {
    /// Open a VMDK4 (`KDMV`) extent whose first sector is `first`.
    pub fn open_vmdk4(file: Arc<ExtentFile>, first: &[u8], budget: &ExtentBudget) -> Result<Self> {
        let file_len = file
            .storage
            .len()
            .map_err(|e| Error::io(e, "getting file size").with_path(&file.path))?;
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
        // Both copies are checked against the file and the budget before either is
        // allocated.
        let (gd_what, rgd_what) = ("grain directory", "redundant grain directory");
        let mut bytes = directory_bytes(&file, gd_offset, gd_entries, 4, file_len, gd_what)?;
        if let Some(off) = rgd_offset {
            bytes += directory_bytes(&file, off, gd_entries, 4, file_len, rgd_what)?;
        }
        budget.reserve_directory(bytes, &file.path, "grain directories")?;
        let gd = read_directory(&file, gd_offset, gd_entries, 4, file_len, gd_what)?;
        let rgd = match rgd_offset {
            Some(off) => Some(read_directory(
                &file, off, gd_entries, 4, file_len, rgd_what,
            )?),
            None => None,
        };
        Ok(SparseExtent {
            capacity: header.capacity * SECTOR_SIZE,
            grain_size,
            gt_entries: header.num_gtes_per_gt as u64,
            entry_width: 4,
            gd,
            gd_offset,
            rgd_offset,
            rgd,
            se_areas: (0, 0),
            zero_grain: header.zero_grain(),
            compressed: header.compressed(),
            has_marker: header.has_markers(),
            cache: budget.cache().clone(),
            cache_id: GrainTableCache::new_extent_id(),
            next_free: Mutex::new(FreeSpace::new(file_len.next_multiple_of(SECTOR_SIZE))),
            open_len: file_len,
            guard: Default::default(),
            footer_layout,
            write_locks: Default::default(),
            flavor: SparseFlavor::Vmdk4,
            header: Some(header),
            file,
        })
    }

    /// VMware-layout stream files keep the real header in a footer: footer marker, header,
    /// end-of-stream marker, in the last three sectors.
    fn read_footer(file: &ExtentFile, file_len: u64) -> Result<SparseHeader> {
        if file_len < 1536 + 512 {
            return Err(corrupt(file, "stream file too short to hold a footer"));
        }
        let mut buf = [0u8; 1536];
        read_exact(file, &mut buf, file_len - 1536, "footer")?;
        let fm = MetadataMarker::parse(&buf[0..512]);
        let eos = MetadataMarker::parse(&buf[1024..1536]);
        let ok = matches!(fm, Some(m) if m.kind == MARKER_FOOTER)
            && matches!(eos, Some(m) if m.kind == MARKER_EOS && m.num_sectors == 0)
            && crate::format::le::u32_at(&buf[512..], 0) == SPARSE_MAGIC;
        if !ok {
            return Err(corrupt(file, "invalid footer (grain directory is at end of file but no footer/end-of-stream marker found)"));
        }
        let h = SparseHeader::parse(&buf[512..1024]).map_err(|m| corrupt(file, m))?;
        if h.gd_offset == GD_AT_END {
            return Err(corrupt(
                file,
                "footer does not give the grain directory offset",
            ));
        }
        Ok(h)
    }

    /// Open an ESX `COWD` extent whose first 2 KiB (or less) are `first`.
    pub fn open_cowd(file: Arc<ExtentFile>, first: &[u8], budget: &ExtentBudget) -> Result<Self> {
        let file_len = file
            .storage
            .len()
            .map_err(|e| Error::io(e, "getting file size").with_path(&file.path))?;
        let h = CowdHeader::parse(first).map_err(|m| corrupt(&file, m))?;
        h.validate()
            .map_err(|m| corrupt(&file, format!("invalid COWD header: {m}")))?;
        let per_gd = h.grain_size as u64 * COWD_GT_ENTRIES as u64;
        let needed = (h.capacity as u64).div_ceil(per_gd);
        let gd_offset = h.gd_offset as u64 * SECTOR_SIZE;
        let gd = load_directory(&file, gd_offset, needed, 4, file_len, budget)?;
        Ok(SparseExtent {
            capacity: h.capacity as u64 * SECTOR_SIZE,
            grain_size: h.grain_size as u64 * SECTOR_SIZE,
            gt_entries: COWD_GT_ENTRIES as u64,
            entry_width: 4,
            gd,
            gd_offset,
            rgd_offset: None,
            rgd: None,
            se_areas: (0, 0),
            zero_grain: false,
            compressed: false,
            has_marker: false,
            cache: budget.cache().clone(),
            cache_id: GrainTableCache::new_extent_id(),
            next_free: Mutex::new(FreeSpace::new(file_len.next_multiple_of(SECTOR_SIZE))),
            open_len: file_len,
            guard: Default::default(),
            footer_layout: false,
            write_locks: Default::default(),
            flavor: SparseFlavor::Cowd,
            header: None,
            file,
        })
    }

    /// Open an seSparse extent whose first sector is `first`.
    pub fn open_sesparse(
        file: Arc<ExtentFile>,
        first: &[u8],
        budget: &ExtentBudget,
    ) -> Result<Self> {
        let file_len = file
            .storage
            .len()
            .map_err(|e| Error::io(e, "getting file size").with_path(&file.path))?;
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
        let gd = load_directory(&file, gd_offset, needed, 8, file_len, budget)?;
        let gt_area = h
            .grain_tables_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain table area offset overflows"))?;
        let grain_area = h
            .grains_offset
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| corrupt(&file, "grain area offset overflows"))?;
        Ok(SparseExtent {
            capacity,
            grain_size,
            gt_entries,
            entry_width: 8,
            gd,
            gd_offset,
            rgd_offset: None,
            rgd: None,
            se_areas: (gt_area, grain_area),
            zero_grain: true,
            compressed: false,
            has_marker: false,
            cache: budget.cache().clone(),
            cache_id: GrainTableCache::new_extent_id(),
            next_free: Mutex::new(FreeSpace::new(file_len)),
            open_len: file_len,
            guard: Default::default(),
            footer_layout: false,
            write_locks: Default::default(),
            flavor: SparseFlavor::SeSparse,
            header: None,
            file,
        })
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
    /// Which on-disk flavour this is.
    pub fn flavor(&self) -> SparseFlavor {
        self.flavor
    }
    /// The VMDK4 header, for VMDK4 extents.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }
    /// Bytes of memory the in-memory grain directories take.
    pub fn directory_memory(&self) -> u64 {
        (self.gd.memory() + self.rgd.as_ref().map_or(0, |r| r.memory())) as u64
    }

    /// Number of grain-directory entries.
    pub fn gd_len(&self) -> usize {
        self.gd.len()
    }
    /// Entries per grain table.
    pub fn gt_entries(&self) -> u64 {
        self.gt_entries
    }

    /// Byte offset of the grain table for directory entry `gd_index`, or `None` if the
    /// directory says there is none.
    pub fn gt_offset(&self, gd_index: usize) -> Result<Option<u64>> {
        let raw = self.gd.get(gd_index);
        match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => Ok((raw != 0).then_some(raw * SECTOR_SIZE)),
            SparseFlavor::SeSparse => {
                match sesparse_header::decode_gd_entry(raw).map_err(|m| corrupt(&self.file, m))? {
                    SeSparseGdEntry::Unallocated => Ok(None),
                    SeSparseGdEntry::Table(i) => {
                        let table_bytes = self.gt_entries * 8;
                        self.se_areas
                            .0
                            .checked_add(i as u64 * table_bytes)
                            .filter(|o| o.checked_add(table_bytes).is_some())
                            .map(Some)
                            .ok_or_else(|| corrupt(&self.file, "grain table offset overflows"))
                    }
                }
            }
        }
    }

    /// The grain table for directory entry `gd_index` (from cache or disk), or `None`.
    pub fn table(&self, gd_index: usize) -> Result<Option<Arc<GrainTable>>> {
        let Some(off) = self.gt_offset(gd_index)? else {
            return Ok(None);
        };
        let t = self.cache.get_or_load(self.cache_id, gd_index as u64, || {
            let bytes = (self.gt_entries as usize) * self.entry_width;
            let mut buf = vec![0u8; bytes];
            read_exact(&self.file, &mut buf, off, "grain table")?;
            Ok::<_, Error>(GrainTable::from_bytes(&buf, self.entry_width))
        })?;
        Ok(Some(t))
    }

    /// Decode a raw grain-table entry.
    pub fn decode(&self, raw: u64) -> Result<GrainState> {
        Ok(match self.flavor {
            SparseFlavor::Vmdk4 | SparseFlavor::Cowd => match raw {
                0 => GrainState::Unallocated,
                // Without the zeroed-grain flag QEMU takes 1 as a sector number; we do too.
                1 if self.zero_grain => GrainState::Zero,
                s => GrainState::Allocated(s * SECTOR_SIZE),
            },
            SparseFlavor::SeSparse => {
                match sesparse_header::decode_gt_entry(raw).map_err(|m| corrupt(&self.file, m))? {
                    SeSparseGtEntry::Unallocated => GrainState::Unallocated,
                    SeSparseGtEntry::Zero => GrainState::Zero,
                    SeSparseGtEntry::Allocated(i) => {
                        let off = i
                            .checked_mul(self.grain_size)
                            .and_then(|o| o.checked_add(self.se_areas.1))
                            // Reads add offsets inside the grain.
                            .filter(|o| o.checked_add(self.grain_size).is_some())
                            .ok_or_else(|| corrupt(&self.file, "grain index overflows"))?;
                        GrainState::Allocated(off)
                    }
                }
            }
        })
    }

    /// The state of grain number `grain`.
    pub fn grain_state(&self, grain: u64) -> Result<GrainState> {
        let gd_index = (grain / self.gt_entries) as usize;
        if gd_index >= self.gd.len() {
            return Ok(GrainState::Unallocated);
        }
        match self.table(gd_index)? {
            None => Ok(GrainState::Unallocated),
            Some(t) => self.decode(t.get((grain % self.gt_entries) as usize)),
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
        let gt_cover = self.grain_size * self.gt_entries;
        while off < end {
            if off >= self.capacity {
                // The descriptor claims more than the header holds: nothing is stored there.
                emit(end - off, MapTarget::Unallocated);
                return Ok(());
            }
            let limit = end.min(self.capacity);
            let gd_index = (off / gt_cover) as usize;
            let table = if gd_index < self.gd.len() {
                self.table(gd_index)?
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
                let slot = (grain % self.gt_entries) as usize;
                let raw = table.get(slot);
                let state = self.decode(raw)?;
                if matches!(state, GrainState::Unallocated | GrainState::Zero) {
                    // A run of equal entries is one stretch.
                    let last_slot = ((table_end - 1) / self.grain_size % self.gt_entries) as usize;
                    let mut next = slot + 1;
                    while next <= last_slot && table.get(next) == raw {
                        next += 1;
                    }
                    let run_end = (grain + (next - slot) as u64) * self.grain_size;
                    n = run_end.min(table_end) - off;
                }
                let target = match state {
                    GrainState::Unallocated => MapTarget::Unallocated,
                    GrainState::Zero => MapTarget::Zero,
                    GrainState::Allocated(g) if self.compressed => MapTarget::Compressed {
                        file: self.file.clone(),
                        grain_offset: g,
                        grain_size: self.grain_size,
                        in_grain,
                        has_marker: self.has_marker,
                    },
                    GrainState::Allocated(g) => MapTarget::Data {
                        file: self.file.clone(),
                        offset: g + in_grain,
                    },
                };
                if !emit(n, target) {
                    return Ok(());
                }
                off += n;
            }
        }
        Ok(())
    }
}
