//! Repairing a hosted sparse extent, as `check -r leaks|all` (`ops/repair.rs`) does, from
//! what the check found ([`ExtentFindings`]):
//!
//! * **Leaks** (both modes): space no table references. A leak at the end of the file is
//!   cut off; one inside the file is given back to the host by punching a hole
//!   (`Storage::punch_hole`), which check does not count as leaked. Where the storage
//!   cannot punch holes the space stays, and the second check still reports it. Leaks are
//!   left alone when the check could not account for all used space (a table it could not
//!   walk, overlapping claims, errors), and space a redundant grain table still points at is
//!   never given back, so no grain anyone can read is lost.
//! * **Corruptions** (`all` only), per grain-directory entry: grain-table entries pointing
//!   past the end of the file or into metadata become unallocated (their data cannot be
//!   read anyway) unless the redundant copy's entry differs and points inside the file, in
//!   which case it is taken; a grain table and its redundant copy that disagree otherwise are
//!   made equal to the primary (the copy every reader uses); a
//!   directory entry whose table lies past the end of the file gets a new table (the
//!   redundant copy when that is sound, zeros otherwise) at the end of the file, as does a
//!   missing or out-of-file redundant table. Tables overlapping other metadata are not
//!   touched (nothing says which of the two is right).
//!
//! Crash ordering: new tables are written and flushed before a directory entry points at
//! them; redundant tables and directory entries are written (and flushed) before the
//! primary ones, so every cut leaves each entry with its old or its new value in each copy
//! and the image readable; space is given back only after the metadata no longer refers to
//! it (it never did: only unreferenced space is leaked) and after the table fixes are
//! flushed.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::extent::sparse::SparseExtent;
use crate::format::grain_entry;
use crate::format::SECTOR_SIZE;

/// What a repair needs to know about one sparse extent beyond the check's report: where
/// the problems are, by place rather than by message. The check (`ops/check.rs`) finds
/// them; [`SparseExtent::fix_tables`] and [`SparseExtent::fix_leaks`] act on them.
#[derive(Debug, Default)]
pub(crate) struct ExtentFindings {
    /// Index of the extent in the image's extents (`Image::extents`), for the caller.
    pub extent: usize,
    /// Length of the extent file when it was checked.
    pub file_len: u64,
    /// Leaked byte ranges, in file order (what the report counts as leaked clusters).
    pub leaks: Vec<(u64, u64)>,
    /// Why the leaked ranges cannot be trusted to be unused, if they cannot: a table that
    /// was not walked, a claim that overlapped another (its tail stayed unclaimed), an
    /// entry that could not be decoded, or an error.
    pub leaks_unreliable: Option<String>,
    /// Directory entries whose primary table lies inside the file and overlaps nothing.
    pub table_ok: Vec<bool>,
    /// Directory entries whose redundant table lies inside the file and overlaps nothing.
    pub redundant_ok: Vec<bool>,
    /// Directory entries whose primary table lies (partly) past the end of the file.
    pub table_past_eof: Vec<usize>,
    /// Grain-table entries `(table, entry)` of the primary tables pointing past the end of
    /// the file or into metadata.
    pub bad_grains: Vec<(usize, usize)>,
}

impl SparseExtent {
    /// One round of table fixes on this extent (`check -r all`, see the module
    /// documentation), from what the check found; returns whether anything was written.
    pub(crate) fn fix_tables(&self, f: &ExtentFindings) -> Result<bool> {
        let dir = self.directory();
        let coding = dir.coding();
        let file_len = f.file_len;
        let table_space = coding.table_bytes().next_multiple_of(SECTOR_SIZE);
        let mut end = file_len.next_multiple_of(SECTOR_SIZE);
        let mut bad: HashMap<usize, Vec<usize>> = HashMap::new();
        for &(i, j) in &f.bad_grains {
            bad.entry(i).or_default().push(j);
        }
        let has_rgd = dir.redundant_offset().is_some();
        let mut w = TableFixes::default();
        for i in 0..dir.len() {
            let Ok(p_off) = dir.table_offset(i) else {
                continue; // undecodable: nothing says what it meant
            };
            let r_off = dir.redundant_table_offset(i).filter(|&o| o != 0);
            let p = p_off
                .filter(|_| f.table_ok[i])
                .and_then(|o| read_table(self, o, file_len));
            let r = r_off
                .filter(|_| f.redundant_ok[i])
                .and_then(|o| read_table(self, o, file_len));
            let target = match (&p, p_off) {
                (Some(p), _) => {
                    // Each bad entry takes the redundant copy's value when that one differs and
                    // points inside the file (a next round checks it like any other), else
                    // becomes unallocated.
                    let mut t = p.clone();
                    for &j in bad.get(&i).map_or(&[][..], |v| &v[..]) {
                        t[j] = match r.as_ref().map(|r| r[j]) {
                            Some(rj) if rj != p[j] && !points_outside(self, rj, file_len) => rj,
                            _ => 0,
                        };
                    }
                    t
                }
                (None, Some(_)) if f.table_past_eof.contains(&i) => match &r {
                    Some(r) => r
                        .iter()
                        .map(|&raw| {
                            if points_outside(self, raw, file_len) {
                                0
                            } else {
                                raw
                            }
                        })
                        .collect(),
                    None => vec![0; coding.gt_entries as usize],
                },
                (None, Some(_)) => continue, // overlaps other metadata: left alone
                (None, None) => {
                    // No primary table: the primary wins, the redundant entry goes.
                    if r_off.is_some() {
                        w.rgd.push((i, None));
                    }
                    continue;
                }
            };
            match (&p, p_off) {
                (Some(p), Some(o)) if *p != target => w.primary.push((o, target.clone())),
                (Some(_), _) => {}
                (None, _) => {
                    w.new_tables.push((end, target.clone()));
                    w.gd.push((i, end));
                    end += table_space;
                }
            }
            if has_rgd {
                match (&r, r_off) {
                    (Some(r), Some(o)) if *r != target => w.redundant.push((o, target)),
                    (Some(_), _) => {}
                    (None, Some(_))
                        if !f.redundant_ok[i] && r_off.is_some_and(|o| o < file_len) =>
                    {
                        // Inside the file but overlapping other metadata: left alone.
                    }
                    (None, _) => {
                        w.new_tables.push((end, target));
                        w.rgd.push((i, Some(end)));
                        end += table_space;
                    }
                }
            }
        }
        let changed = !(w.new_tables.is_empty()
            && w.redundant.is_empty()
            && w.primary.is_empty()
            && w.rgd.is_empty()
            && w.gd.is_empty());
        if changed {
            write_fixes(self, &w)?;
        }
        Ok(changed)
    }

    /// Give leaked space back (`check -r`): cut a leak at the end of the file, punch holes for the others.
    pub(crate) fn fix_leaks(&self, f: &ExtentFindings, notes: &mut Vec<String>) -> Result<()> {
        if f.leaks.is_empty() {
            return Ok(());
        }
        let name = self.file().path.display();
        if let Some(why) = &f.leaks_unreliable {
            notes.push(format!(
                "{name}: leaked space left as it is: the check could not account for all used \
             space ({why})"
            ));
            return Ok(());
        }
        let leaks = without_redundant_grains(self, f);
        let storage = &*self.file().storage;
        let mut cannot_punch = 0u64;
        for &(start, end) in leaks.iter().rev() {
            if end >= f.file_len {
                storage
                    .set_len(start)
                    .map_err(io_err(self, "cutting leaked space off the file"))?;
            } else if !storage
                .punch_hole(start, end - start)
                .map_err(io_err(self, "punching a hole"))?
            {
                cannot_punch += end - start;
            }
        }
        storage.flush().map_err(io_err(self, "flushing"))?;
        if cannot_punch > 0 {
            notes.push(format!(
                "{name}: {cannot_punch} bytes of leaked space stay: the file cannot have holes \
             punched"
            ));
        }
        Ok(())
    }
}

fn io_err<'a>(s: &'a SparseExtent, what: &'static str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(e, what).with_path(&s.file().path)
}

/// The raw entries of the table at `off`, if it lies inside the file and can be read.
fn read_table(s: &SparseExtent, off: u64, file_len: u64) -> Option<Vec<u64>> {
    let coding = s.directory().coding();
    let bytes = coding.table_bytes();
    if off == 0 || off.checked_add(bytes).is_none_or(|e| e > file_len) {
        return None;
    }
    let mut buf = vec![0u8; bytes as usize];
    s.file().storage.read_exact_at(&mut buf, off).ok()?;
    Some(grain_entry::entries(coding.width(), &buf).collect())
}

/// Whether a raw entry of a table copy points where no grain can be: past the end of the
/// file, or it cannot be decoded.
fn points_outside(s: &SparseExtent, raw: u64, file_len: u64) -> bool {
    match s.directory().coding().decode(raw) {
        Ok(e) => e.offset().is_some_and(|o| o >= file_len),
        Err(_) => true,
    }
}

/// Writes one round of table fixes makes, in crash-safe order.
#[derive(Default)]
struct TableFixes {
    /// New tables at the end of the file.
    new_tables: Vec<(u64, Vec<u64>)>,
    /// Existing redundant tables rewritten.
    redundant: Vec<(u64, Vec<u64>)>,
    /// Existing primary tables rewritten.
    primary: Vec<(u64, Vec<u64>)>,
    /// Redundant directory entries changed: index and table (`None`: empty).
    rgd: Vec<(usize, Option<u64>)>,
    /// Primary directory entries changed.
    gd: Vec<(usize, u64)>,
}

/// Write one round's fixes: new tables, redundant tables, primary tables, redundant
/// directory entries, primary directory entries, flushing between the steps.
fn write_fixes(s: &SparseExtent, w: &TableFixes) -> Result<()> {
    let dir = s.directory();
    let coding = dir.coding();
    let storage = &*s.file().storage;
    let write_table = |(off, entries): &(u64, Vec<u64>)| -> Result<()> {
        let mut bytes = Vec::with_capacity(entries.len() * coding.width());
        coding.put_entries(entries, &mut bytes);
        storage
            .write_at(&bytes, *off)
            .map_err(io_err(s, "writing a grain table"))
    };
    let flush = || storage.flush().map_err(io_err(s, "flushing"));
    let write_dir_entry = |base: u64, i: usize, table: Option<u64>| -> Result<()> {
        let raw = coding
            .encode_directory(table)
            .map_err(|m| Error::invalid(m.to_string()).with_path(&s.file().path))?;
        let mut bytes = Vec::new();
        coding.put_entries(&[raw], &mut bytes);
        storage
            .write_at(&bytes, base + (i * coding.width()) as u64)
            .map_err(io_err(s, "writing a grain directory"))
    };
    for step in [&w.new_tables, &w.redundant, &w.primary] {
        if !step.is_empty() {
            step.iter().try_for_each(write_table)?;
            flush()?;
        }
    }
    if let Some(rgd) = dir.redundant_offset() {
        for &(i, t) in &w.rgd {
            write_dir_entry(rgd, i, t)?;
        }
        flush()?;
    }
    for &(i, t) in &w.gd {
        write_dir_entry(dir.offset(), i, Some(t))?;
    }
    flush()
}

/// The leaked ranges less the grains the redundant tables point at: a repair never gives
/// back space one copy of the metadata still uses.
fn without_redundant_grains(s: &SparseExtent, f: &ExtentFindings) -> Vec<(u64, u64)> {
    let dir = s.directory();
    let gs = s.grain_size();
    let mut used = Vec::new();
    for i in 0..dir.len() {
        let Some(off) = dir.redundant_table_offset(i).filter(|&o| o != 0) else {
            continue;
        };
        for raw in read_table(s, off, f.file_len).unwrap_or_default() {
            if let Ok(Some(o)) = dir.coding().decode(raw).map(|e| e.offset()) {
                used.push((o, o.saturating_add(gs)));
            }
        }
    }
    used.sort_unstable();
    let mut out = Vec::new();
    for &(mut start, end) in &f.leaks {
        for &(us, ue) in &used {
            if us >= end || ue <= start {
                continue;
            }
            if us > start {
                out.push((start, us));
            }
            start = start.max(ue);
        }
        if start < end {
            out.push((start, end));
        }
    }
    out
}
