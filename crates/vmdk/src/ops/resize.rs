//! Changing an image's virtual size (`qemu-img resize`, which QEMU's VMDK driver refuses
//! entirely: "Image format driver does not support resize").
//!
//! Growing works for every writable subformat:
//! - flat extents grow in place (their file is extended sparsely);
//! - a sparse extent gets a larger capacity and more grain-directory entries, with a zeroed
//!   grain table for each new entry (`SparseExtent::grow`, `extent/grow.rs`);
//! - split images (twoGbMaxExtent*) fill their last extent up to 2 GiB, then get new
//!   extent files named as qemu-img names them.
//!
//! Shrinking needs `shrink`. Flat extents: whole trailing extents are dropped, the last one
//! is cut. Hosted sparse extents shrink only when no data lies past the new end: grains
//! there that are unallocated, zeroed or read as zeros are dropped (their table entries
//! cleared, redundant copy first, then the space punched out of the file); any other
//! allocated grain refuses the shrink, naming its offset, before anything is changed
//! (`extent/shrink.rs`). Whole sparse extents past the new end obey the same rule before
//! their files go.
//!
//! Crash ordering: new tables, directories and files are written and flushed first, the
//! sparse header (capacity and directory offsets) next, and the descriptor last, so an
//! interrupted resize leaves the old disk (plus unreferenced space at the end of a file).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::extent::{ExtentKind, SparseExtent};
use crate::format::descriptor::ExtentType;
use crate::format::SECTOR_SIZE;
use crate::image::{DescriptorLocation, Image, OpenOptions};
use crate::ops::create::{
    flat_extent, geometry, sparse_layout, write_sparse_extent, AdapterType, SPLIT_SIZE,
};

/// Largest virtual size: QEMU's and the NBD protocol's limit (a signed 64-bit offset).
const MAX_SIZE: u64 = i64::MAX as u64 / SECTOR_SIZE * SECTOR_SIZE;

/// How to resize.
#[derive(Debug, Clone, Default)]
pub struct ResizeOptions {
    /// Allow the disk to get smaller (data past the new end is lost).
    pub shrink: bool,
}

/// Resize the image at `path` to `new_size` bytes (rounded up to 512). `open` says how to
/// open it (paths, locking); it is opened for writing without its backing chain.
pub fn resize(path: &Path, new_size: u64, opts: &ResizeOptions, open: &OpenOptions) -> Result<()> {
    let new_size = new_size
        .checked_next_multiple_of(SECTOR_SIZE)
        .filter(|s| *s <= MAX_SIZE)
        .ok_or_else(|| Error::invalid("the new size is too large").with_path(path))?;
    let img = OpenOptions {
        open_backing: false,
        ..open.for_writing(path)?
    }
    .open(path)?;
    let old = img.size();
    if new_size == old {
        return Ok(());
    }
    for e in img.extents() {
        if let ExtentKind::Sparse(s) = &e.kind {
            if !s.is_hosted() {
                return Err(Error::unsupported(
                    "only flat and hosted sparse extents can be resized (not stream, COWD or \
                     seSparse extents)",
                )
                .with_path(path));
            }
        }
    }
    if new_size < old {
        if !opts.shrink {
            return Err(
                Error::invalid("Use the --shrink option to perform a shrink operation.")
                    .with_path(path),
            );
        }
        return shrink(&img, new_size);
    }
    // A backing file longer than the old size would show its data in the new range once
    // the capacity grows: qemu zero-fills that stretch (`bdrv_co_truncate`), and so do we.
    // Measured before anything changes; a backing file that cannot be opened shows nothing.
    let backing_len = OpenOptions {
        writable: false,
        locking: false,
        ..open.clone()
    }
    .open(path)
    .ok()
    .and_then(|chain| chain.backing().map(Image::size))
    .filter(|&len| len > old);
    grow(&img, new_size)?;
    if let Some(len) = backing_len {
        drop(img);
        let img = OpenOptions {
            durable: true,
            ..open.for_writing(path)?
        }
        .open(path)?;
        img.write_zeroes(old, len.min(new_size) - old, false)?;
        img.flush()?;
    }
    Ok(())
}

/// Zero what the last sparse extent still holds past the old end, in the grain a shrink
/// cut part-way (its bytes past the end were kept, unread), so growing never brings back
/// data a shrink dropped. Done before the capacity grows, while nothing reads those bytes,
/// and flushed, so a power loss cannot expose them either.
fn zero_partial_grain(img: &Image) -> Result<()> {
    let Some(last) = img.extents().last() else {
        return Ok(());
    };
    let ExtentKind::Sparse(s) = &last.kind else {
        return Ok(());
    };
    s.zero_past(last.length)
}

/// Whether the image is split into 2 GiB extents (new space goes into new extent files).
fn is_split(img: &Image) -> bool {
    img.create_type().starts_with("twoGbMaxExtent")
}

fn grow(img: &Image, new_size: u64) -> Result<()> {
    let path = img.path();
    let split = is_split(img);
    let last = img.extents().last().expect("an image has extents");
    let mut sectors: Vec<u64> = img
        .extents()
        .iter()
        .map(|e| e.length / SECTOR_SIZE)
        .collect();
    zero_partial_grain(img)?;
    let mut extra = new_size - img.size();
    // The last extent takes what it can: everything, unless the image is split.
    let room = if split {
        SPLIT_SIZE.saturating_sub(last.length)
    } else {
        extra
    };
    let take = room.min(extra);
    let mut new_lines = Vec::new();
    if take > 0 {
        let new_len = last.length + take;
        match &last.kind {
            ExtentKind::Flat { file, offset } => {
                let want = offset + new_len;
                let have = file
                    .storage
                    .len()
                    .map_err(|e| Error::io(e, "getting file size").with_path(&file.path))?;
                if have < want {
                    file.storage
                        .set_len(want)
                        .map_err(|e| Error::io(e, "extending the extent").with_path(&file.path))?;
                }
            }
            ExtentKind::Sparse(s) => s.grow(new_len)?,
            ExtentKind::Zero => {}
        }
        *sectors.last_mut().expect("non-empty") = new_len / SECTOR_SIZE;
        extra -= take;
    }
    // Split images: whole new extent files after the last one.
    if extra > 0 {
        let kind = last.kind_keyword;
        let flat = matches!(kind, ExtentType::Flat);
        let (stem, ext) = split_name(path)?;
        let mut idx = img.extents().len() + 1;
        while extra > 0 {
            let len = extra.min(SPLIT_SIZE);
            let name = if flat {
                format!("{stem}-f{idx:03}{ext}")
            } else {
                format!("{stem}-s{idx:03}{ext}")
            };
            let file = path.with_file_name(&name);
            let ns = img.namespace();
            if ns.exists(&file) {
                return Err(Error::invalid(format!(
                    "a file named {name} exists already; refusing to overwrite it"
                ))
                .with_path(path));
            }
            let storage = if flat {
                new_lines.push(format!("RW {} FLAT \"{name}\" 0", len / SECTOR_SIZE));
                flat_extent(&**ns, &file, len)?
            } else {
                new_lines.push(format!("RW {} SPARSE \"{name}\"", len / SECTOR_SIZE));
                let h = sparse_layout(len, false, false, false)?;
                write_sparse_extent(&**ns, &file, &h, None)?
            };
            storage
                .flush()
                .map_err(|e| Error::io(e, "syncing").with_path(&file))?;
            extra -= len;
            idx += 1;
        }
    }
    update_descriptor(img, new_size, &sectors, &new_lines)
}

fn shrink(img: &Image, new_size: u64) -> Result<()> {
    let path = img.path();
    let mut sectors = Vec::new();
    let mut drop_files: Vec<PathBuf> = Vec::new();
    let mut cut: Option<(std::sync::Arc<crate::extent::ExtentFile>, u64)> = None;
    let mut sparse_cut: Option<(&SparseExtent, u64, Vec<u64>)> = None;
    // Sparse data past the new end refuses the shrink before anything changes.
    for e in img.extents() {
        if let ExtentKind::Sparse(s) = &e.kind {
            let keep = new_size.saturating_sub(e.start).min(e.length);
            if keep < e.length {
                let dropped = s.grains_past(keep, e.start)?;
                if e.start < new_size {
                    sparse_cut = Some((s, keep, dropped));
                }
            }
        }
    }
    for e in img.extents() {
        if e.start >= new_size {
            if let Some(f) = e.file() {
                drop_files.push(f.path.clone());
            }
            continue;
        }
        let keep = (new_size - e.start).min(e.length);
        if keep < e.length {
            match &e.kind {
                ExtentKind::Flat { file, offset } if *offset == 0 => {
                    cut = Some((file.clone(), keep));
                }
                _ => {}
            }
        }
        sectors.push(keep / SECTOR_SIZE);
    }
    if drop_files.iter().any(|f| {
        img.extents()
            .iter()
            .any(|e| e.start < new_size && e.file().is_some_and(|g| g.path == *f))
    }) {
        return Err(
            Error::unsupported("an extent file to be dropped also holds kept extents")
                .with_path(path),
        );
    }
    // A monolithic file holds descriptor and data: never drop or cut the descriptor.
    if drop_files.iter().any(|f| f == path) {
        return Err(Error::unsupported("cannot drop the descriptor's own extent").with_path(path));
    }
    if let Some((s, keep, _)) = &sparse_cut {
        s.shrink(*keep)?;
    }
    update_descriptor(img, new_size, &sectors, &[])?;
    if let Some((s, _, dropped)) = &sparse_cut {
        s.punch_grains(dropped)?;
    }
    if let Some((file, keep)) = cut {
        file.storage
            .set_len(keep)
            .map_err(|e| Error::io(e, "cutting the extent").with_path(&file.path))?;
        file.storage
            .flush()
            .map_err(|e| Error::io(e, "flushing").with_path(&file.path))?;
    }
    for f in drop_files {
        img.namespace().remove(&f)?;
    }
    Ok(())
}

/// The stem and extension qemu-img names split extents after (`disk` and `.vmdk`).
fn split_name(path: &Path) -> Result<(String, String)> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("image path has no file name"))?
        .to_string_lossy()
        .into_owned();
    Ok(match name.rfind('.') {
        Some(i) if i > 0 => (name[..i].to_string(), name[i..].to_string()),
        _ => (name, String::new()),
    })
}

/// Record the new extent sizes, extra extent lines and geometry in the descriptor (last, so
/// an interrupted resize leaves the old disk).
fn update_descriptor(
    img: &Image,
    new_size: u64,
    sectors: &[u64],
    new_lines: &[String],
) -> Result<()> {
    let adapter = img
        .descriptor()
        .ddb("adapterType")
        .and_then(|a| AdapterType::parse(a).ok())
        .unwrap_or_default();
    let (cyl, _, _) = geometry(new_size, adapter);
    if matches!(img.descriptor_location(), DescriptorLocation::Synthesized) {
        return Ok(());
    }
    let lines = new_lines.to_vec();
    let sectors_owned = sectors.to_vec();
    let has_cyl = img.descriptor().ddb("geometry.cylinders").is_some();
    img.edit_descriptor_text(
        |old| {
            let t = crate::format::descriptor_edit::set_extents(old, sectors, new_lines)?;
            if has_cyl {
                crate::format::descriptor_edit::apply(
                    &t,
                    &[("ddb.geometry.cylinders", Some(format!("\"{cyl}\"")))],
                )
            } else {
                Some(t)
            }
        },
        |d| {
            for (l, n) in d.extents.iter_mut().zip(&sectors_owned) {
                l.sectors = *n;
            }
            d.extents.truncate(sectors_owned.len());
            for line in &lines {
                if let Ok(parsed) = crate::format::descriptor::Descriptor::parse(
                    format!("version=1\ncreateType=\"x\"\n{line}\n").as_bytes(),
                ) {
                    d.extents.extend(parsed.extents);
                }
            }
            if has_cyl {
                d.set_ddb("geometry.cylinders", &cyl.to_string());
            }
        },
    )?;
    img.flush()
}
