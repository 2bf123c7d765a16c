//! `map`'s report: library map entries turned into `qemu-img map` entries (qemu's file
//! names, holes of flat extents' host files, qemu's merging).

use std::collections::HashMap;
use std::sync::Arc;

use super::names::{chain, display, extent_name};
use crate::error::Result;
use crate::extent::ExtentKind;
use crate::extent::{ExtentFile, MapEntry, MapTarget};
use crate::image::walk::MapWalker;
use crate::image::Disk;
use crate::image::Image;

/// One `qemu-img map` entry (qemu's field names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QEntry {
    /// Virtual offset.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
    /// Layer of the backing chain that answered (0 = the image).
    pub depth: u32,
    /// Whether some layer holds this stretch.
    pub present: bool,
    /// Whether it reads as zeros.
    pub zero: bool,
    /// Whether it is stored as data.
    pub data: bool,
    /// Whether it is in a compressed grain.
    pub compressed: bool,
    /// Host offset of plain data.
    pub offset: Option<u64>,
    /// Host file of plain data, as qemu names it.
    pub file: Option<Arc<str>>,
}

impl QEntry {
    /// A zero-length entry at `start`: where merging begins.
    pub fn empty(start: u64) -> QEntry {
        QEntry {
            start,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        }
    }
}

/// qemu-img's `entry_mergeable`.
pub(crate) fn mergeable(curr: &QEntry, next: &QEntry) -> bool {
    curr.length != 0
        && curr.zero == next.zero
        && curr.data == next.data
        && curr.compressed == next.compressed
        && curr.depth == next.depth
        && curr.present == next.present
        && curr.file == next.file
        && curr.offset.is_some() == next.offset.is_some()
        && match (curr.offset, next.offset) {
            (Some(a), Some(b)) => a + curr.length == b,
            _ => true,
        }
}

/// Turns library map entries into qemu-img map entries: names files as qemu does, and finds
/// the host file's holes inside flat extents (qemu reports them as `zero: true, data: true`;
/// NBD block status says the same).
#[derive(Debug)]
pub struct MapReporter {
    names: HashMap<u64, Arc<str>>,
    /// Flat extent files, whose holes qemu reports.
    flat: HashMap<u64, ()>,
    /// For a raw image, its name: qemu gives every stretch of a raw file an offset.
    raw: Option<Arc<str>>,
}

impl MapReporter {
    /// For `img`, shown as `name` (extent and backing files named as qemu names them).
    pub fn for_image(img: &Image, name: &str) -> MapReporter {
        let mut names = HashMap::new();
        let mut flat = HashMap::new();
        for (layer, lname) in chain(img, name) {
            for (i, e) in layer.extents().iter().enumerate() {
                if let Some(f) = e.file() {
                    let n = extent_name(layer, &lname, i).unwrap_or_else(|| display(f.path()));
                    names.entry(f.id()).or_insert_with(|| Arc::from(n));
                    if matches!(e.kind, ExtentKind::Flat { .. }) {
                        flat.insert(f.id(), ());
                    }
                }
            }
        }
        MapReporter {
            names,
            flat,
            raw: None,
        }
    }

    /// For a qcow2 image shown as `name`. qemu reports holes of the image file under data
    /// clusters only when it guesses the image was preallocated (from refcounts against the
    /// file's allocation); we report such clusters as data.
    pub fn for_qcow2(img: &crate::qcow2::Qcow2Image, name: &str) -> MapReporter {
        let mut names = HashMap::new();
        names.insert(img.image_file().id(), Arc::from(name));
        let flat = HashMap::new();
        MapReporter {
            names,
            flat,
            raw: None,
        }
    }

    /// For a raw image shown as `name`.
    pub fn for_raw(name: &str) -> MapReporter {
        MapReporter {
            names: HashMap::new(),
            flat: HashMap::new(),
            raw: Some(Arc::from(name)),
        }
    }

    fn name(&mut self, file: &ExtentFile) -> Arc<str> {
        self.names
            .entry(file.id())
            .or_insert_with(|| Arc::from(display(file.path())))
            .clone()
    }

    /// `(length, is_hole)` pieces of `[off, off+len)` in a flat extent's file; past the end
    /// of the file counts as a hole. The same answer NBD block status gives.
    fn holes(&self, file: &ExtentFile, off: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        let size = file
            .storage
            .len()
            .map_err(|e| crate::error::Error::io(e, "getting file size").with_path(&file.path))?;
        let mut out = Vec::new();
        if off < size {
            let end = off + len.min(size - off);
            crate::storage::scan_holes(&*file.storage, off, end, |_, n, is_data| {
                out.push((n, !is_data));
                true
            });
        }
        if off + len > size {
            out.push((off + len - off.max(size), true));
        }
        Ok(out)
    }

    /// Append the qemu-img entries that library entry `e` stands for to `out` (unmerged).
    pub fn convert(&mut self, e: &MapEntry, out: &mut Vec<QEntry>) -> Result<()> {
        let base = QEntry {
            start: e.start,
            length: e.length,
            depth: e.depth,
            present: true,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
            file: None,
        };
        match &e.target {
            MapTarget::Data { file, offset } if self.flat.contains_key(&file.id()) => {
                let name = self.name(file);
                let mut at = 0;
                for (len, hole) in self.holes(file, *offset, e.length)? {
                    out.push(QEntry {
                        start: e.start + at,
                        length: len,
                        data: true,
                        zero: hole,
                        offset: Some(offset + at),
                        file: Some(name.clone()),
                        ..base.clone()
                    });
                    at += len;
                }
            }
            MapTarget::Data { file, offset } => out.push(QEntry {
                data: true,
                offset: Some(*offset),
                file: Some(self.name(file)),
                ..base
            }),
            MapTarget::Compressed { .. } => out.push(QEntry {
                data: true,
                compressed: true,
                ..base
            }),
            MapTarget::Zero if self.raw.is_some() => out.push(QEntry {
                zero: true,
                offset: Some(e.start),
                file: self.raw.clone(),
                ..base
            }),
            MapTarget::Zero => out.push(QEntry { zero: true, ..base }),
            MapTarget::Unallocated => out.push(QEntry {
                present: false,
                zero: true,
                ..base
            }),
        }
        Ok(())
    }
}

/// qemu-img's merging of map entries: each entry pushed joins the current one when
/// `mergeable`, else the current one is done. One merge for the JSON list, the printed
/// report and the Python module's list.
#[derive(Debug)]
pub struct MapMerger {
    curr: QEntry,
}

impl MapMerger {
    /// Start merging at `start`.
    pub fn new(start: u64) -> MapMerger {
        MapMerger {
            curr: QEntry::empty(start),
        }
    }

    /// Take `next`; returns the entry it completes, if any.
    pub fn push(&mut self, next: QEntry) -> Option<QEntry> {
        if mergeable(&self.curr, &next) {
            self.curr.length += next.length;
            None
        } else if self.curr.length > 0 {
            Some(std::mem::replace(&mut self.curr, next))
        } else {
            self.curr = next;
            None
        }
    }

    /// The last entry (zero-length when nothing was pushed, as qemu-img prints it).
    pub fn finish(self) -> QEntry {
        self.curr
    }
}

/// The merged qemu-img map entries of `[start, end)` of `src` (converted by `reporter`), as
/// `qemu-img map --output=json` lists them. Like qemu-img, an empty range still yields one
/// zero-length entry.
pub fn merged_entries(
    src: &dyn Disk,
    reporter: &mut MapReporter,
    start: u64,
    end: u64,
) -> Result<Vec<QEntry>> {
    let mut out = Vec::new();
    let mut merger = MapMerger::new(start);
    for_each_entry(src, reporter, start, end, |e| {
        out.extend(merger.push(e));
        Ok(())
    })?;
    out.push(merger.finish());
    Ok(out)
}

/// Call `f` with each qemu-img map entry of `[start, end)` of `src` (unmerged), in order.
/// Batches of library entries, not fixed windows: a huge zero or unallocated stretch is one
/// step (an 8 EiB disk of zeros would be 2^33 one-GiB windows), and a whole-disk map is
/// never held in memory.
fn for_each_entry(
    src: &dyn Disk,
    reporter: &mut MapReporter,
    start: u64,
    end: u64,
    mut f: impl FnMut(QEntry) -> Result<()>,
) -> Result<()> {
    let mut walker = MapWalker::new(src, start, end);
    let mut entries = Vec::new();
    while let Some(e) = walker.next()? {
        reporter.convert(&e, &mut entries)?;
        for q in entries.drain(..) {
            f(q)?;
        }
    }
    Ok(())
}

/// `%#-16x`: C prints 0 without the 0x prefix.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    }
}

/// Prints map entries exactly as `qemu-img map` does: its merging, its JSON text, or its
/// human columns, where "this format ignores the distinction between 0, ZERO and
/// ZERO|DATA" (qemu's words). Names from the image's files are escaped.
#[derive(Debug)]
pub struct MapPrinter<W: std::io::Write> {
    out: W,
    json: bool,
    merger: MapMerger,
    first: bool,
}

fn write_error(e: std::io::Error) -> crate::error::Error {
    crate::error::Error::io(e, "writing the map")
}

impl<W: std::io::Write> MapPrinter<W> {
    /// Start printing a map from `start` (JSON when `json`) to `out`: the header now.
    pub fn new(mut out: W, json: bool, start: u64) -> Result<Self> {
        if json {
            write!(out, "[").map_err(write_error)?;
        } else {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}File",
                "Offset", "Length", "Mapped to"
            )
            .map_err(write_error)?;
        }
        Ok(MapPrinter {
            out,
            json,
            merger: MapMerger::new(start),
            first: true,
        })
    }

    /// Take the next entry (unmerged, in order).
    pub fn push(&mut self, next: QEntry) -> Result<()> {
        // qemu folds every entry after the first that is not plain data into "zero" before
        // merging it: in human form, merge on the folded flags. Only plain data prints
        // either way, and a folded entry is no longer data.
        let next = if !self.json && !self.first_pending() && (!next.data || next.zero) {
            QEntry {
                data: false,
                zero: true,
                ..next
            }
        } else {
            next
        };
        match self.merger.push(next) {
            Some(done) => self.dump(done, true),
            None => Ok(()),
        }
    }

    /// Whether no entry has been taken yet (the first is never folded).
    fn first_pending(&self) -> bool {
        self.first && self.merger.curr.length == 0
    }

    /// Print the last entry and the closing text.
    pub fn finish(mut self) -> Result<()> {
        let last = std::mem::replace(&mut self.merger, MapMerger::new(0)).finish();
        self.dump(last, false)?;
        if self.json {
            writeln!(self.out, "]").map_err(write_error)?;
        }
        self.out.flush().map_err(write_error)
    }

    fn dump(&mut self, e: QEntry, more: bool) -> Result<()> {
        self.first = false;
        let out = &mut self.out;
        if self.json {
            write!(
                out,
                "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \
                 \"data\": {}, \"compressed\": {}",
                e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
            )
            .map_err(write_error)?;
            if let Some(o) = e.offset {
                write!(out, ", \"offset\": {o}").map_err(write_error)?;
            }
            write!(out, "}}").map_err(write_error)?;
            if more {
                writeln!(out, ",").map_err(write_error)?;
            }
            return Ok(());
        }
        if e.data && e.offset.is_none() {
            out.flush().map_err(write_error)?;
            return Err(crate::error::Error::unsupported(
                "File contains external, encrypted or compressed clusters.",
            ));
        }
        if e.data && !e.zero {
            writeln!(
                out,
                "{:<16}{:<16}{:<16}{}",
                hex(e.start),
                hex(e.length),
                hex(e.offset.unwrap_or(0)),
                crate::text::Printable(e.file.as_deref().unwrap_or(""))
            )
            .map_err(write_error)?;
        }
        Ok(())
    }
}

/// Print the map of `[start, end)` of `src` (converted by `reporter`) to `out` as
/// `qemu-img map` does ([`MapPrinter`]), walking it in batches: a whole-disk map is never
/// held in memory.
pub fn print_map(
    out: impl std::io::Write,
    json: bool,
    src: &dyn Disk,
    reporter: &mut MapReporter,
    start: u64,
    end: u64,
) -> Result<()> {
    let mut printer = MapPrinter::new(out, json, start)?;
    for_each_entry(src, reporter, start, end, |q| printer.push(q))?;
    printer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn e(start: u64, length: u64, data: bool, offset: Option<u64>) -> QEntry {
        QEntry {
            start,
            length,
            depth: 0,
            present: true,
            zero: !data,
            data,
            compressed: false,
            offset,
            file: offset.map(|_| Arc::from("a.vmdk")),
        }
    }

    #[test]
    fn prints_like_qemu_img_map() {
        let mut out = Vec::new();
        let mut p = MapPrinter::new(&mut out, true, 0).unwrap();
        p.push(e(0, 512, true, Some(65536))).unwrap();
        p.push(e(512, 512, true, Some(66048))).unwrap();
        p.push(e(1024, 512, true, Some(0))).unwrap();
        p.push(e(1536, 512, false, None)).unwrap();
        p.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{ \"start\": 0, \"length\": 1024, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 65536},\n\
             { \"start\": 1024, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"compressed\": false, \"offset\": 0},\n\
             { \"start\": 1536, \"length\": 512, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false, \"compressed\": false}]\n"
        );
        let mut out = Vec::new();
        let mut p = MapPrinter::new(&mut out, false, 0).unwrap();
        p.push(e(0, 65536, true, Some(0))).unwrap();
        p.push(e(65536, 512, false, None)).unwrap();
        p.finish().unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Offset          Length          Mapped to       File\n\
             0               0x10000         0               a.vmdk\n"
        );
        // An empty range still prints one zero-length entry, as qemu-img does.
        let mut out = Vec::new();
        MapPrinter::new(&mut out, true, 4096)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{ \"start\": 4096, \"length\": 0, \"depth\": 0, \"present\": false, \"zero\": false, \"data\": false, \"compressed\": false}]\n"
        );
    }
}
