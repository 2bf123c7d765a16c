//! Refusing writes that a corrupt table would send onto metadata or past the end of the file.
//!
//! A grain-table entry pointing at the descriptor, the grain directory or a grain table, a
//! directory whose entries share one table or point at the directory itself, an entry past
//! the end of the file: `check` reports all of these, and a write through any of them would
//! destroy metadata or earlier data. Before a write touches an allocated grain, a grain
//! table or the grain directory, the target is checked against the extent's metadata as it
//! was when the first write came (see `metadata.rs`), and the write fails with a
//! [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) error instead.
//!
//! The cost is a binary search per allocated grain written: the tables' offsets are kept
//! sorted once, at the first write (4 bytes per table). Everything this session allocates
//! lies past the file's length at open and is tracked in `ours`, one bit per grain of the
//! tables written to, so an entry past that length is trusted only if this session put it
//! there. Tables this session allocates need no entry in the sorted set: they too lie past
//! that length, where only our own grains are trusted, and our grains never overlap our
//! tables. A grain the end of the file cuts may be written up to its tail: the directory's one
//! scan of the tables (`space_scan.rs`) finds where that is, and new space starts past it.
//!
//! Not covered: two entries sharing one data grain (or a table overlapping a data grain).
//! Finding those needs every entry of every table, which `check` reads and a write should
//! not have to.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::error::{Error, Result};
use crate::extent::grain_directory::GrainDirectory;
use crate::extent::metadata::Region;
use crate::format::SECTOR_SIZE;

/// The metadata of one sparse extent, as writers need it.
#[derive(Debug)]
pub struct WriteGuard {
    /// File length when the guard was made: everything past it was allocated since.
    file_len: u64,
    /// Header, descriptor and directories (sector-widened), each with whether it overlaps
    /// other metadata.
    fixed: Vec<(Region, u64, u64, bool)>,
    /// Start sectors of every grain table and redundant grain table, sorted.
    tables: Vec<u32>,
    /// Bytes of one table, widened to whole sectors.
    table_span: u64,
    /// One bit per directory entry whose table (or redundant table) overlaps other metadata
    /// or lies (partly) past the end of the file.
    bad_tables: Vec<u64>,
    /// Grains whose entries this session set, one bitset per grain table.
    ours: RwLock<HashMap<usize, Box<[u64]>>>,
}

fn sector_floor(b: u64) -> u64 {
    b / SECTOR_SIZE * SECTOR_SIZE
}

fn sector_ceil(b: u64) -> u64 {
    b.checked_next_multiple_of(SECTOR_SIZE).unwrap_or(u64::MAX)
}

/// What [`WriteGuard::overlapping`] should not report as overlapping itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Except {
    Nothing,
    Fixed(Region),
    /// One grain table starting at this byte offset.
    TableAt(u64),
}

/// Who owns an interval during the overlap sweep.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Fixed(usize),
    Table(usize),
}

impl WriteGuard {
    /// Collect the metadata of `s`, whose file is `file_len` bytes long. Must run before the
    /// first modification of the extent.
    pub(crate) fn build(d: &GrainDirectory, file_len: u64) -> WriteGuard {
        let table_span = sector_ceil(d.coding().table_bytes());
        let mut fixed: Vec<(Region, u64, u64, bool)> = d
            .fixed_regions()
            .into_iter()
            .map(|(r, a, b)| (r, sector_floor(a), sector_ceil(b), false))
            .collect();
        fixed.sort_by_key(|f| f.1);
        let mut bad_tables = vec![0u64; d.len().div_ceil(64)];
        let mark = |bad: &mut Vec<u64>, i: usize| bad[i / 64] |= 1 << (i % 64);
        // (start sector, directory index): both copies of a table carry the same index.
        let mut starts: Vec<(u32, u32)> = Vec::new();
        for i in 0..d.len() {
            let copies = [
                d.table_offset(i).ok().flatten(),
                d.redundant_table_offset(i).filter(|&o| o != 0),
            ];
            for off in copies.into_iter().flatten() {
                let in_file = off.checked_add(table_span).is_some_and(|e| e <= file_len);
                match u32::try_from(off / SECTOR_SIZE) {
                    Ok(sector) if in_file && off % SECTOR_SIZE == 0 => {
                        starts.push((sector, i as u32))
                    }
                    _ => mark(&mut bad_tables, i),
                }
            }
        }
        starts.sort_unstable();

        // Sweep the intervals in start order, grouping those that overlap; every member of
        // a group of two or more is bad.
        let mut group: Vec<Owner> = Vec::new();
        let mut group_end = 0u64;
        let mut flush = |group: &mut Vec<Owner>, fixed: &mut Vec<(Region, u64, u64, bool)>| {
            if group.len() > 1 {
                for o in group.iter() {
                    match *o {
                        Owner::Fixed(k) => fixed[k].3 = true,
                        Owner::Table(i) => mark(&mut bad_tables, i),
                    }
                }
            }
            group.clear();
        };
        let (mut fi, mut ti) = (0, 0);
        while fi < fixed.len() || ti < starts.len() {
            let take_fixed = ti >= starts.len()
                || (fi < fixed.len() && fixed[fi].1 <= starts[ti].0 as u64 * SECTOR_SIZE);
            let (start, end, owner) = if take_fixed {
                fi += 1;
                (fixed[fi - 1].1, fixed[fi - 1].2, Owner::Fixed(fi - 1))
            } else {
                ti += 1;
                let a = starts[ti - 1].0 as u64 * SECTOR_SIZE;
                (a, a + table_span, Owner::Table(starts[ti - 1].1 as usize))
            };
            if start >= end {
                continue;
            }
            if start >= group_end {
                flush(&mut group, &mut fixed);
            }
            group.push(owner);
            group_end = group_end.max(end);
        }
        flush(&mut group, &mut fixed);

        WriteGuard {
            file_len,
            fixed,
            tables: starts.into_iter().map(|(s, _)| s).collect(),
            table_span,
            bad_tables,
            ours: RwLock::new(HashMap::new()),
        }
    }

    /// The metadata overlapping `[start, end)`, other than `except` itself, described for a
    /// message.
    fn overlapping(&self, start: u64, end: u64, except: Except) -> Option<String> {
        for &(r, a, b, _) in &self.fixed {
            if a < end && start < b && except != Except::Fixed(r) {
                return Some(format!("the {r} (offset {a})"));
            }
        }
        // Tables all have the same length, so their ends are sorted like their starts.
        let first = self
            .tables
            .partition_point(|&t| t as u64 * SECTOR_SIZE + self.table_span <= start);
        let mut skipped_self = false;
        for &t in &self.tables[first..] {
            let a = t as u64 * SECTOR_SIZE;
            if a >= end {
                break;
            }
            if except == Except::TableAt(a) && !skipped_self {
                skipped_self = true;
                continue;
            }
            return Some(format!("a grain table (offset {a})"));
        }
        None
    }

    fn refuse(d: &GrainDirectory, problem: String) -> Error {
        Error::corrupt(format!(
            "refusing to write: {problem}; the image is damaged (see 'check')"
        ))
        .with_path(&d.file().path)
    }

    /// Fail if a fixed region `which` picks overlaps other metadata.
    fn check_fixed(&self, d: &GrainDirectory, which: impl Fn(Region) -> bool) -> Result<()> {
        for &(r, a, b, bad) in &self.fixed {
            if bad && which(r) {
                let what = self
                    .overlapping(a, b, Except::Fixed(r))
                    .unwrap_or_else(|| "other metadata".into());
                return Err(Self::refuse(
                    d,
                    format!("the {r} at offset {a} overlaps {what}"),
                ));
            }
        }
        Ok(())
    }

    /// Fail unless the grain directories may be written (to add a grain table).
    pub(crate) fn check_directory(&self, d: &GrainDirectory) -> Result<()> {
        self.check_fixed(d, |r| {
            matches!(r, Region::Directory | Region::RedundantDirectory)
        })
    }

    /// Fail unless the embedded descriptor may be rewritten (for the CID update).
    pub(crate) fn check_descriptor(&self, d: &GrainDirectory) -> Result<()> {
        self.check_fixed(d, |r| r == Region::Descriptor)
    }

    /// Fail unless entries may be written into the grain table of directory entry `i`
    /// (and its redundant copy).
    pub(crate) fn check_table(&self, d: &GrainDirectory, i: usize) -> Result<()> {
        if !self.is_bad_table(i) {
            return Ok(());
        }
        let copies = [
            (Region::Table(i), d.table_offset(i).ok().flatten()),
            (
                Region::RedundantTable(i),
                d.redundant_table_offset(i).filter(|&o| o != 0),
            ),
        ];
        for (r, off) in copies {
            let Some(off) = off else { continue };
            let end = off.saturating_add(self.table_span);
            let problem = if end > self.file_len || off % SECTOR_SIZE != 0 {
                format!(
                    "{r} at offset {off} lies past the end of the file ({} bytes)",
                    self.file_len
                )
            } else if let Some(what) = self.overlapping(off, end, Except::TableAt(off)) {
                format!("{r} at offset {off} overlaps {what}")
            } else {
                continue;
            };
            return Err(Self::refuse(d, problem));
        }
        Err(Self::refuse(
            d,
            format!("grain table {i} overlaps other metadata"),
        ))
    }

    /// The file's length when the guard was made (before this session wrote anything).
    pub(crate) fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Whether the grain table of directory entry `i` (or its redundant copy) overlaps
    /// other metadata or lies (partly) past the end of the file.
    pub(crate) fn is_bad_table(&self, i: usize) -> bool {
        self.bad_tables
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Fail unless grain number `grain`, stored at byte `off` (uncompressed), may be written
    /// in place.
    pub(crate) fn check_grain(&self, d: &GrainDirectory, grain: u64, off: u64) -> Result<()> {
        let gs = d.coding().grain_size;
        let end = off.saturating_add(gs);
        let sector = grain * gs / SECTOR_SIZE;
        if end <= self.file_len || (off < self.file_len && end <= d.tail_end()) {
            // Inside the file, or a grain the end of the file cuts (allocations start past
            // its tail, see `GrainDirectory::tail_end`).
            return match self.overlapping(off, end.min(self.file_len), Except::Nothing) {
                None => Ok(()),
                Some(what) => Err(Self::refuse(
                    d,
                    format!("the grain for sector {sector} (offset {off}) overlaps {what}"),
                )),
            };
        }
        if off >= self.file_len && self.is_ours(d, grain) {
            return Ok(());
        }
        Err(Self::refuse(
            d,
            format!(
                "the grain for sector {sector} (offset {off}) lies past the end of the file \
                 ({} bytes)",
                self.file_len
            ),
        ))
    }

    fn is_ours(&self, d: &GrainDirectory, grain: u64) -> bool {
        let n = d.coding().gt_entries;
        let (t, j) = ((grain / n) as usize, grain % n);
        let ours = self.ours.read().unwrap_or_else(|e| e.into_inner());
        ours.get(&t)
            .is_some_and(|bits| bits[(j / 64) as usize] & (1 << (j % 64)) != 0)
    }

    /// Record that this session points grains `first..first+n` (one table) at space it
    /// allocated. Call before the entries are published in memory.
    pub(crate) fn mark_ours(&self, d: &GrainDirectory, first: u64, n: u64) {
        let per_table = d.coding().gt_entries;
        let t = (first / per_table) as usize;
        let mut ours = self.ours.write().unwrap_or_else(|e| e.into_inner());
        let bits = ours
            .entry(t)
            .or_insert_with(|| vec![0u64; per_table.div_ceil(64) as usize].into());
        for g in first..first + n {
            let j = g % per_table;
            bits[(j / 64) as usize] |= 1 << (j % 64);
        }
    }
}
