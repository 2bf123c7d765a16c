//! `Image.map()`: the entries `qemu-img map --output=json` (and `vmdk map --output=json`)
//! print, as plain values. The merging and the flat-extent hole detection follow the CLI's
//! `cmd/map.rs` step by step, over the same library walk ([`vmdk::walk::MapWalker`]); the
//! tests compare the two outputs.

use std::collections::HashMap;
use std::sync::Arc;

use vmdk::extent::ExtentKind;
use vmdk::raw::RawFile;
use vmdk::walk::MapWalker;
use vmdk::{ExtentFile, Image, MapEntry, MapTarget, Result};

use crate::names::{chain, display, extent_name};

/// One `qemu-img map` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QEntry {
    pub start: u64,
    pub length: u64,
    pub depth: u32,
    pub present: bool,
    pub zero: bool,
    pub data: bool,
    pub compressed: bool,
    pub offset: Option<u64>,
    /// Compared when merging (qemu merges only within one file), not returned: qemu's JSON
    /// has no file name.
    pub file: Option<Arc<str>>,
}

/// qemu-img's `entry_mergeable`.
fn mergeable(curr: &QEntry, next: &QEntry) -> bool {
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

/// Names files as qemu does and finds the host file's holes inside flat extents (qemu
/// reports them as `zero: true, data: true`).
struct Converter {
    names: HashMap<u64, Arc<str>>,
    /// Flat extent files, opened again lazily to ask for their holes.
    flat: HashMap<u64, Option<RawFile>>,
}

impl Converter {
    fn for_image(img: &Image, name: &str) -> Converter {
        let mut names = HashMap::new();
        let mut flat = HashMap::new();
        for (layer, lname) in chain(img, name) {
            for (i, e) in layer.extents().iter().enumerate() {
                if let Some(f) = e.file() {
                    let n = extent_name(layer, &lname, i).unwrap_or_else(|| display(f.path()));
                    names.entry(f.id()).or_insert_with(|| Arc::from(n));
                    if matches!(e.kind, ExtentKind::Flat { .. }) {
                        flat.insert(f.id(), None);
                    }
                }
            }
        }
        Converter { names, flat }
    }

    fn name(&mut self, file: &ExtentFile) -> Arc<str> {
        self.names
            .entry(file.id())
            .or_insert_with(|| Arc::from(display(file.path())))
            .clone()
    }

    /// `(length, is_hole)` pieces of `[off, off+len)` in a flat extent's file; past the end
    /// of the file counts as a hole.
    fn holes(&mut self, file: &ExtentFile, off: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        let slot = self.flat.get_mut(&file.id()).expect("flat file");
        if slot.is_none() {
            // The image holds this file open (and locked) already; this second descriptor
            // only asks lseek for holes, so it takes no locks of its own.
            *slot = RawFile::open_with(file.path(), &vmdk::OpenOptions::new().locking(false)).ok();
        }
        let Some(raw) = slot.as_ref() else {
            return Ok(vec![(len, false)]);
        };
        let size = raw.size();
        let mut out = Vec::new();
        if off < size {
            let n = len.min(size - off);
            for e in raw.map(off, n)? {
                out.push((e.length, matches!(e.target, MapTarget::Zero)));
            }
        }
        if off + len > size {
            out.push((off + len - off.max(size), true));
        }
        Ok(out)
    }

    fn convert(&mut self, e: &MapEntry, out: &mut Vec<QEntry>) -> Result<()> {
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

/// The merged qemu-img map entries of `[start, end)` of `img` (shown as `name`). Like
/// qemu-img, an empty range still yields one zero-length entry.
pub fn map(img: &Image, name: &str, start: u64, end: u64) -> Result<Vec<QEntry>> {
    let mut conv = Converter::for_image(img, name);
    let mut out: Vec<QEntry> = Vec::new();
    let mut curr = QEntry {
        start,
        length: 0,
        depth: 0,
        present: false,
        zero: false,
        data: false,
        compressed: false,
        offset: None,
        file: None,
    };
    let mut walker = MapWalker::new(img, start, end);
    let mut entries = Vec::new();
    while let Some(e) = walker.next()? {
        conv.convert(&e, &mut entries)?;
        for next in entries.drain(..) {
            if mergeable(&curr, &next) {
                curr.length += next.length;
                continue;
            }
            if curr.length > 0 {
                out.push(std::mem::replace(&mut curr, next));
            } else {
                curr = next;
            }
        }
    }
    out.push(curr);
    Ok(out)
}
