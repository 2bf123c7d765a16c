//! How much host space a new image needs (`qemu-img measure`, which QEMU's VMDK driver does
//! not implement): the space a fresh image of a given size takes with the data a source
//! holds (*required*), and with every grain allocated (*fully allocated*).
//!
//! The figures follow the layouts [`crate::ops::create`] and [`crate::ops::stream_writer`] really
//! write, so `required` is what `vmdk convert` produces (for streamOptimized an upper bound:
//! compressed sizes are known only after compressing).

use crate::error::{Error, Result};
use crate::format::marker::compress_bound;
use crate::format::marker::GRAIN_MARKER_SIZE;
use crate::format::SECTOR_SIZE;
use crate::image::Disk;
use crate::ops::create::{sparse_layout, Subformat, DEFAULT_GRAIN_SECTORS, SPLIT_SIZE};
use crate::ops::stream_writer::{DESC_SECTORS, GT_ENTRIES};

/// Host bytes a new image takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// With the data the source holds (or none, for a size alone).
    pub required: u64,
    /// With every grain allocated.
    pub fully_allocated: u64,
}

/// What is known about the data to measure for.
#[derive(Clone, Copy)]
pub enum MeasureInput<'a> {
    /// An empty disk of this many bytes.
    Size(u64),
    /// The contents of this source (its size, and which grains hold data).
    Source(&'a dyn Disk),
}

const GRAIN: u64 = DEFAULT_GRAIN_SECTORS * SECTOR_SIZE;
/// What qemu-img and we reserve for a separate descriptor file (it is a few hundred bytes,
/// but takes a host block; qemu counts such files at their size, which varies by name).
const DESCRIPTOR_FILE: u64 = 512;

/// Bytes a VMDK of `subformat` takes for `input` (`None` subformat: a raw file).
pub fn measure(
    subformat: Option<Subformat>,
    zeroed_grain: bool,
    input: MeasureInput,
) -> Result<Measure> {
    let size = match input {
        MeasureInput::Size(s) => s,
        MeasureInput::Source(s) => s.size(),
    }
    .checked_next_multiple_of(SECTOR_SIZE)
    .ok_or_else(|| Error::invalid("image size too large"))?;
    let Some(sub) = subformat else {
        // A raw file is as large as the disk, holes or not (qemu-img says the same).
        return Ok(Measure {
            required: size,
            fully_allocated: size,
        });
    };
    let all_grains = |len: u64| len.div_ceil(GRAIN);
    match sub {
        Subformat::MonolithicFlat | Subformat::TwoGbMaxExtentFlat | Subformat::Vmfs => {
            let total = size + DESCRIPTOR_FILE;
            Ok(Measure {
                required: total,
                fully_allocated: total,
            })
        }
        Subformat::MonolithicSparse | Subformat::TwoGbMaxExtentSparse => {
            let split = sub == Subformat::TwoGbMaxExtentSparse;
            let extent_len = if split { SPLIT_SIZE } else { size.max(1) };
            let grains = data_grains(input, GRAIN, extent_len)?;
            let mut m = Measure {
                required: if split { DESCRIPTOR_FILE } else { 0 },
                fully_allocated: if split { DESCRIPTOR_FILE } else { 0 },
            };
            let mut start = 0;
            let mut index = 0usize;
            loop {
                let len = (size - start).min(extent_len);
                let overhead =
                    sparse_layout(len, zeroed_grain, false, !split)?.overhead * SECTOR_SIZE;
                let used = grains.get(index).copied().unwrap_or(0);
                m.required += overhead + used * GRAIN;
                m.fully_allocated += overhead + all_grains(len) * GRAIN;
                start += len;
                index += 1;
                if start >= size {
                    break;
                }
            }
            Ok(m)
        }
        Subformat::StreamOptimized => {
            // Our writer's layout: header and descriptor, then per grain a marker and its
            // compressed stream padded to a sector, a marked table per 512 grains, and the
            // directory, footer and end-of-stream markers.
            let desc_sectors = DESC_SECTORS;
            let overhead = (1 + desc_sectors).next_multiple_of(DEFAULT_GRAIN_SECTORS) * SECTOR_SIZE;
            let per_grain =
                (GRAIN_MARKER_SIZE as u64 + compress_bound(GRAIN)).next_multiple_of(SECTOR_SIZE);
            let table = SECTOR_SIZE + (GT_ENTRIES * 4).next_multiple_of(SECTOR_SIZE);
            let tables = all_grains(size).div_ceil(GT_ENTRIES);
            let gd = SECTOR_SIZE + (tables * 4).next_multiple_of(SECTOR_SIZE).max(SECTOR_SIZE);
            let tail = gd + 2 * SECTOR_SIZE + SECTOR_SIZE;
            let used = data_grains(input, GRAIN, u64::MAX)?
                .first()
                .copied()
                .unwrap_or(0);
            let used_tables = data_tables(input)?;
            Ok(Measure {
                required: overhead + used * per_grain + used_tables * table + tail,
                fully_allocated: overhead + all_grains(size) * per_grain + tables * table + tail,
            })
        }
    }
}

/// Per extent of `extent_len` bytes, how many grains hold data in the source.
fn data_grains(input: MeasureInput, grain: u64, extent_len: u64) -> Result<Vec<u64>> {
    let MeasureInput::Source(src) = input else {
        return Ok(Vec::new());
    };
    let mut counts: Vec<u64> = Vec::new();
    for_each_data_unit(src, grain, |first, last| {
        for g in first..=last {
            let ext = ((g * grain) / extent_len) as usize;
            if counts.len() <= ext {
                counts.resize(ext + 1, 0);
            }
            counts[ext] += 1;
        }
    })?;
    Ok(counts)
}

/// How many 512-grain tables of a stream image hold at least one data grain.
fn data_tables(input: MeasureInput) -> Result<u64> {
    let MeasureInput::Source(src) = input else {
        return Ok(0);
    };
    let mut n = 0;
    for_each_data_unit(src, GRAIN * GT_ENTRIES, |first, last| n += last - first + 1)?;
    Ok(n)
}

/// Most map entries asked for at a time.
const MAX_BATCH: usize = 1024;

/// Call `f(first, last)` for each run of `unit`-byte units of the source (grains, tables)
/// that hold data, front to back, every unit once.
///
/// Batches of map entries, never a window's map at once: a 16 GiB qcow2 image of 512-byte
/// clusters alternating data and holes maps to 32 million entries, which collected in one
/// vector took 1.3 GB. And once a unit is known to hold data, the walk goes on from the next
/// unit instead of mapping the rest of this one (qemu-img measure steps the same way), so
/// that image costs a step per 64 KiB grain rather than per cluster. Batches start at two
/// entries after data and double while none is found: small where data is dense, few calls
/// where it is not.
fn for_each_data_unit(src: &dyn Disk, unit: u64, mut f: impl FnMut(u64, u64)) -> Result<()> {
    let size = src.size();
    let mut pos = 0;
    let mut batch = 2;
    while pos < size {
        let entries = src.map_prefix(pos, size - pos, batch)?;
        let covered = entries.last().map_or(pos, |e| e.start + e.length);
        if covered <= pos {
            return Err(Error::invalid(format!(
                "mapping made no progress at offset {pos}"
            )));
        }
        match entries.iter().find(|e| e.target.is_data()) {
            Some(e) => {
                let last = (e.start + e.length - 1) / unit;
                f(e.start / unit, last);
                pos = ((last + 1) * unit).min(size);
                batch = 2;
            }
            None => {
                pos = covered;
                batch = (batch * 2).min(MAX_BATCH);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sparse_is_its_metadata() {
        let m = measure(
            Some(Subformat::MonolithicSparse),
            false,
            MeasureInput::Size(1 << 30),
        )
        .unwrap();
        let overhead = sparse_layout(1 << 30, false, false, true).unwrap().overhead * 512;
        assert_eq!(m.required, overhead);
        assert_eq!(m.fully_allocated, overhead + (1 << 30));
        let raw = measure(None, false, MeasureInput::Size(1000)).unwrap();
        assert_eq!((raw.required, raw.fully_allocated), (1024, 1024));
        let split = measure(
            Some(Subformat::TwoGbMaxExtentSparse),
            false,
            MeasureInput::Size(5 << 30),
        )
        .unwrap();
        assert!(split.fully_allocated > 5 << 30);
    }
}
