//! `map`'s report: library map entries turned into `qemu-img map` entries (qemu's file
//! names, holes of flat extents' host files, qemu's merging).

use std::collections::HashMap;
use std::sync::Arc;

use super::names::{chain, display, extent_name};
use crate::error::Result;
use crate::extent::map::{ExtentFile, MapEntry, MapTarget};
use crate::extent::ExtentKind;
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
pub fn mergeable(curr: &QEntry, next: &QEntry) -> bool {
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

/// The merged qemu-img map entries of `[start, end)` of `src` (converted by `reporter`), as
/// `qemu-img map --output=json` lists them. Like qemu-img, an empty range still yields one
/// zero-length entry.
pub fn merged_entries(
    src: &dyn Disk,
    reporter: &mut MapReporter,
    start: u64,
    end: u64,
) -> Result<Vec<QEntry>> {
    let mut out: Vec<QEntry> = Vec::new();
    let mut curr = QEntry::empty(start);
    let mut walker = MapWalker::new(src, start, end);
    let mut entries = Vec::new();
    while let Some(e) = walker.next()? {
        reporter.convert(&e, &mut entries)?;
        for next in entries.drain(..) {
            if mergeable(&curr, &next) {
                curr.length += next.length;
            } else if curr.length > 0 {
                out.push(std::mem::replace(&mut curr, next));
            } else {
                curr = next;
            }
        }
    }
    out.push(curr);
    Ok(out)
}
