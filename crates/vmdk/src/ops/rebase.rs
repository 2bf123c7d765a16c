//! Changing an overlay's backing file (`qemu-img rebase`).
//!
//! Safe mode keeps what the guest sees: wherever the overlay holds nothing of its own, the
//! old and the new backing chains are compared, and every stretch where they differ is
//! copied from the old chain into the overlay before the descriptor is switched to the new
//! backing file. Stretches that both chains leave empty or zero are never read. With an empty
//! new backing name the overlay takes all of the old chain's data and becomes standalone.
//! Unsafe mode (`-u`) only rewrites `parentFileNameHint` and `parentCID` (QEMU's VMDK driver
//! cannot do even that).
//!
//! A crash part-way leaves the overlay on its old backing with some of the data copied:
//! still the same disk. The descriptor changes last.

use std::path::Path;

use crate::error::{Error, Result};
use crate::extent::{MapEntry, MapTarget};
use crate::format::descriptor::CID_NONE;
use crate::image::walk::{NoDisk, PairWalker};
use crate::image::Disk;
use crate::image::{Image, OpenOptions};
use crate::storage::aligned_buf::AlignedBuf;

/// How to rebase.
#[derive(Debug, Clone, Default)]
pub struct RebaseOptions {
    /// The new backing file name, as it is to be written (relative to the overlay's
    /// directory); empty to make the overlay standalone.
    pub backing: String,
    /// Only rewrite the descriptor (`-u`): the caller vouches that the new backing file
    /// holds what the old one did.
    pub unsafe_mode: bool,
}

/// Bytes compared per step.
const CHUNK: u64 = 1 << 20;
/// Entries of the overlay's own map taken at a time.
const OWN_BATCH: usize = 1024;

/// Rebase `image`. `opts` opens the image and both chains (paths, CIDs, locking).
pub fn rebase(
    image: &Path,
    rebase: &RebaseOptions,
    opts: &OpenOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let writable = OpenOptions {
        open_backing: opts.open_backing && !rebase.unsafe_mode,
        ..opts.for_writing(image)?
    };
    let flatten = rebase.backing.is_empty();
    let new_path = crate::storage::paths::directory_of(image).join(&rebase.backing);
    // The new backing file is the user's choice: opened wherever it is (its own extents and
    // backing files still pass the path gate). Read-only and shared, as for create -b.
    let open_new = || {
        OpenOptions {
            writable: false,
            force_share: true,
            ..opts.clone()
        }
        .open(&new_path)
    };
    if rebase.unsafe_mode {
        let img = writable.open(image)?;
        let cid = if flatten {
            CID_NONE
        } else {
            // A new backing file that does not open yet is allowed (-u is for fixing names);
            // then no CID is recorded and none is checked.
            open_new().map(|b| b.cid()).unwrap_or(CID_NONE)
        };
        return set_parent(&img, &rebase.backing, cid);
    }
    // Durable writes: a copied grain's data is flushed before its table entry points at it,
    // so a power loss part-way never shows the guest anything but the old chain's data.
    let img = OpenOptions {
        durable: true,
        ..writable.clone()
    }
    .open(image)?;
    let new = if flatten { None } else { Some(open_new()?) };
    if let Some(n) = &new {
        if n.file_ids()
            .iter()
            .any(|id| img.storage.file_id() == Some(*id))
        {
            return Err(
                Error::invalid("the new backing chain contains the image itself").with_path(image),
            );
        }
    }
    let old = img.backing();
    let size = img.size();
    progress(0, size);
    // Page-aligned: reads into them run at the kernel's full copy speed.
    let mut a = AlignedBuf::new();
    let mut b = AlignedBuf::new();
    // The overlay's own map in batches of entries, and each of its holes compared through a
    // pair walk: memory stays a few batches however many entries the chains hold, and a huge
    // empty stretch is one step.
    let mut pos = 0;
    while pos < size {
        let batch = img.map_layer_prefix(pos, size - pos, OWN_BATCH)?;
        let covered = batch.last().map_or(pos, |e| e.start + e.length);
        if covered <= pos {
            return Err(
                Error::invalid(format!("mapping made no progress at offset {pos}"))
                    .with_path(image),
            );
        }
        for own in &batch {
            if matches!(own.target, MapTarget::Unallocated) {
                copy_differences(&img, old, new.as_ref(), own, &mut a, &mut b)?;
            }
        }
        pos = covered;
        progress(pos, size);
    }
    img.flush()?;
    let cid = new.as_ref().map_or(CID_NONE, |n| n.cid());
    set_parent(&img, &rebase.backing, cid)
}

fn read_chain(layer: Option<&Image>, buf: &mut [u8], offset: u64) -> Result<()> {
    let end = offset + buf.len() as u64;
    let inside = layer.map_or(offset, |l| l.size().clamp(offset, end));
    let n = (inside - offset) as usize;
    if let Some(l) = layer.filter(|_| n > 0) {
        l.read_at(&mut buf[..n], offset)?;
    }
    buf[n..].fill(0);
    Ok(())
}

/// Within the overlay's unallocated stretch `own`, write into `img` whatever the old chain
/// holds where the new one differs.
fn copy_differences(
    img: &Image,
    old: Option<&Image>,
    new: Option<&Image>,
    own: &MapEntry,
    a: &mut AlignedBuf,
    b: &mut AlignedBuf,
) -> Result<()> {
    let end = own.start + own.length;
    // A missing chain is a disk of no bytes: walked, it reads as zeros throughout.
    let (old_src, new_src): (&dyn Disk, &dyn Disk) = (
        old.map_or(&NoDisk as &dyn Disk, |l| l),
        new.map_or(&NoDisk as &dyn Disk, |l| l),
    );
    // Walk both maps together; stretches where neither side holds data read as zeros on
    // both sides and need no reading.
    let mut pairs = PairWalker::new(old_src, new_src, own.start, end);
    while let Some((pos, stop, eo, en)) = pairs.next()? {
        if !(eo.target.is_data() || en.target.is_data()) {
            continue;
        }
        let mut p = pos;
        while p < stop {
            let n = (stop - p).min(CHUNK) as usize;
            a.resize(n, 0);
            b.resize(n, 0);
            read_chain(old, a, p)?;
            read_chain(new, b, p)?;
            if a[..] != b[..] {
                img.write_at(a, p)?;
            }
            p += n as u64;
        }
    }
    Ok(())
}

fn set_parent(img: &Image, backing: &str, cid: u32) -> Result<()> {
    if backing.contains('"') || backing.contains('\n') || backing.contains('\0') {
        return Err(Error::invalid("invalid backing file name"));
    }
    let hint = (!backing.is_empty()).then(|| format!("\"{backing}\""));
    let owned = backing.to_string();
    img.edit_descriptor(
        &[
            ("parentCID", Some(format!("{cid:08x}"))),
            ("parentFileNameHint", hint),
        ],
        |d| {
            d.parent_cid = cid;
            d.parent_file_name_hint = (!owned.is_empty()).then(|| owned.clone());
        },
    )?;
    img.flush()
}
