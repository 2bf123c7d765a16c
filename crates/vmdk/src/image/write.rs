//! Writing to an open image: routing writes to extents, the CID update on first write, and
//! the rules for which images may be opened for writing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::extent::{ExtentKind, WriteOp};
use crate::format::descriptor::ExtentAccess;
use crate::format::layout::random_cid;
use crate::image::{DescriptorLocation, Image};

/// Per-image state used by writers.
#[derive(Debug, Default)]
pub struct WriteState {
    /// Flush data before metadata that points at it.
    pub(crate) durable: bool,
    cid_updated: AtomicBool,
    new_cid: AtomicU32,
    cid_lock: Mutex<()>,
}

impl Image {
    /// Refuse to open for writing what cannot be written safely.
    pub(crate) fn check_writable_open(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        for e in &self.extents {
            if let ExtentKind::Sparse(s) = &e.kind {
                if e.access == ExtentAccess::ReadWrite {
                    s.check_writable()
                        .map_err(|err| err.with_path(&self.path))?;
                }
                if let Some(h) = s.header() {
                    // VMware KB 2064959: version 3 adds changed-block tracking we would not
                    // keep up to date, so only read it (compressed stream files excepted).
                    if h.version == 3 && !s.is_compressed() {
                        return Err(Error::new(
                            ErrorKind::ReadOnly,
                            "VMDK version 3 images can only be opened read-only",
                        )
                        .with_path(&self.path));
                    }
                }
            }
        }
        Ok(())
    }

    /// The image's current CID (changed by the first write after open).
    pub fn cid(&self) -> u32 {
        if self.write_state.cid_updated.load(Ordering::Acquire) {
            self.write_state.new_cid.load(Ordering::Acquire)
        } else {
            self.descriptor.cid
        }
    }

    /// Give the image a new CID, once per open, before its first write, so children made
    /// from it notice that it changed (as qemu does).
    fn update_cid_once(&self) -> Result<()> {
        if self.write_state.cid_updated.load(Ordering::Acquire) {
            return Ok(());
        }
        let _g = self
            .write_state
            .cid_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.write_state.cid_updated.load(Ordering::Acquire) {
            return Ok(());
        }
        let cid = random_cid();
        self.write_cid(cid)?;
        self.write_state.new_cid.store(cid, Ordering::Release);
        self.write_state.cid_updated.store(true, Ordering::Release);
        Ok(())
    }

    fn write_cid(&self, cid: u32) -> Result<()> {
        self.edit_descriptor(&[("CID", Some(format!("{cid:08x}")))], |d| d.cid = cid)
    }

    /// Change descriptor lines in place, keeping every other byte (see
    /// [`crate::format::descriptor_edit`]); `model` makes the same change to the parsed
    /// descriptor, which is serialised instead when the text cannot be edited. A descriptor
    /// embedded in a sparse file must still fit the space reserved for it. Images without a
    /// descriptor on disk (bare COWD/seSparse extents) have nothing to edit.
    pub(crate) fn edit_descriptor(
        &self,
        edits: &[crate::format::descriptor_edit::Edit],
        model: impl FnOnce(&mut crate::format::descriptor::Descriptor),
    ) -> Result<()> {
        self.edit_descriptor_text(
            |old| crate::format::descriptor_edit::apply(old, edits),
            model,
        )
    }

    /// [`Image::edit_descriptor`] with any text transformation (`None`: reserialise the
    /// model instead).
    pub(crate) fn edit_descriptor_text(
        &self,
        transform: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
        model: impl FnOnce(&mut crate::format::descriptor::Descriptor),
    ) -> Result<()> {
        let (offset, capacity) = match self.desc_location {
            DescriptorLocation::Synthesized => return Ok(()),
            DescriptorLocation::File => (
                0,
                self.storage
                    .len()
                    .map_err(|e| Error::io(e, "reading descriptor").with_path(&self.path))?,
            ),
            DescriptorLocation::Embedded { offset, capacity } => (offset, capacity),
        };
        let mut old = vec![0u8; capacity as usize];
        self.storage
            .read_exact_at(&mut old, offset)
            .map_err(|e| Error::io(e, "reading descriptor").with_path(&self.path))?;
        let old_len = old.iter().position(|&b| b == 0).unwrap_or(old.len());
        old.truncate(old_len);
        let new = transform(&old).unwrap_or_else(|| {
            let mut d = self.descriptor.clone();
            model(&mut d);
            d.serialize().into_bytes()
        });
        let io = |e| Error::io(e, "updating the descriptor").with_path(&self.path);
        match self.desc_location {
            DescriptorLocation::File if (new.len() as u64) < capacity => {
                // Shorter: cutting the file before the new text is durable could leave the
                // old text cut short. So the new text goes in padded with NULs to the old
                // length (readers stop at the first NUL, as with qemu's own descriptor
                // files), is flushed, and only then is the padding cut off.
                let mut padded = new;
                let len = padded.len() as u64;
                padded.resize(capacity as usize, 0);
                self.storage.write_at(&padded, 0).map_err(io)?;
                self.storage.flush().map_err(io)?;
                self.storage.set_len(len).map_err(io)?;
            }
            DescriptorLocation::File => self.storage.write_at(&new, 0).map_err(io)?,
            _ => {
                if new.len() as u64 > capacity {
                    return Err(
                        Error::unsupported("descriptor no longer fits its reserved space")
                            .with_path(&self.path),
                    );
                }
                let mut padded = new;
                padded.resize(old_len.max(padded.len()), 0);
                self.storage.write_at(&padded, offset).map_err(io)?;
            }
        }
        Ok(())
    }

    /// Checks shared by every modifying call; `false` when there is nothing to do. The CID
    /// changes before the first byte of the first write lands, and only once the write is
    /// known not to go through a corrupt table: a refused write leaves the files untouched.
    fn begin_write(&self, offset: u64, len: u64, op: WriteOp) -> Result<bool> {
        self.writable_check(offset, len)?;
        if len == 0 {
            return Ok(false);
        }
        self.check_targets(offset, len, op)?;
        self.update_cid_once()?;
        Ok(true)
    }

    /// Fail if `op` over `[offset, offset+len)` would write through a corrupt grain
    /// directory or table onto metadata or past the end of a file (see
    /// [`SparseExtent::check_write_targets`](crate::extent::SparseExtent::check_write_targets)).
    fn check_targets(&self, offset: u64, len: u64, op: WriteOp) -> Result<()> {
        // The first write rewrites the CID in the embedded descriptor.
        if matches!(self.desc_location, DescriptorLocation::Embedded { .. })
            && !self.write_state.cid_updated.load(Ordering::Acquire)
        {
            if let Some(ExtentKind::Sparse(s)) = self.extents.first().map(|e| &e.kind) {
                s.check_writable()?;
                s.write_guard().check_descriptor(s.directory())?;
            }
        }
        self.writable_pieces(offset, len, |e, rel, n, _| match &e.kind {
            ExtentKind::Sparse(s) => s.check_write_targets(rel, n, op),
            _ => Ok(()),
        })
    }

    fn writable_check(&self, offset: u64, len: u64) -> Result<()> {
        if !self.writable {
            return Err(
                Error::new(ErrorKind::ReadOnly, "image was opened read-only").with_path(&self.path),
            );
        }
        self.check_range(offset, len)
    }

    /// Bytes of the backing chain under `[virt, virt+buf.len())` (zeros without one, and
    /// past the backing file's end).
    fn read_below(&self, virt: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        if let Some(b) = &self.backing {
            let inside = b.size().saturating_sub(virt).min(buf.len() as u64) as usize;
            if inside > 0 {
                b.read_at(&mut buf[..inside], virt)?;
            }
        }
        Ok(())
    }

    /// How a sparse extent starting at virtual `start` fills the unwritten parts of new
    /// grains: from the backing chain (see [`Image::read_below`]).
    fn below(&self, start: u64) -> impl Fn(u64, &mut [u8]) -> Result<()> + Sync + '_ {
        move |ext_off, dst| self.read_below(start + ext_off, dst)
    }

    /// The write-side counterpart of [`Image::map`], which `write_at`, `write_zeroes` and
    /// `discard` all go through: after the checks every write makes first (see
    /// `begin_write`), the extent pieces `[offset, offset+len)` covers, from the same walk
    /// as `map`, each handed to `f` as (extent, offset in the extent, length, offset in the
    /// request).
    fn map_for_write(
        &self,
        offset: u64,
        len: u64,
        op: WriteOp,
        f: impl FnMut(&crate::extent::Extent, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        if !self.begin_write(offset, len, op)? {
            return Ok(());
        }
        self.writable_pieces(offset, len, f)
    }

    /// The extent pieces of `[offset, offset+len)`, refusing extents that may not be
    /// written.
    fn writable_pieces(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&crate::extent::Extent, u64, u64, u64) -> Result<()>,
    ) -> Result<()> {
        self.walk_extents(offset, len, |i, e, rel, n, at| {
            if e.access != ExtentAccess::ReadWrite {
                return Err(Error::new(
                    ErrorKind::ReadOnly,
                    format!("extent {i} is {} and cannot be written", e.access.keyword()),
                )
                .with_path(&self.path));
            }
            f(e, rel, n, at)?;
            Ok(true)
        })
    }

    /// Write `buf` at virtual `offset`. Thread-safe: many writers and readers may work on
    /// one image at once.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let durable = self.write_state.durable;
        self.map_for_write(offset, buf.len() as u64, WriteOp::Data, |e, rel, n, at| {
            let data = &buf[at as usize..(at + n) as usize];
            match &e.kind {
                ExtentKind::Flat { file, offset: base } => file
                    .storage
                    .write_at(data, base + rel)
                    .map_err(|err| Error::io(err, "writing data").with_path(&file.path)),
                ExtentKind::Zero => {
                    if data.iter().all(|&b| b == 0) {
                        Ok(())
                    } else {
                        Err(
                            Error::new(ErrorKind::ReadOnly, "cannot store data in a ZERO extent")
                                .with_path(&self.path),
                        )
                    }
                }
                ExtentKind::Sparse(s) => s.write(rel, data, &self.below(e.start), durable),
            }
        })
    }

    /// Write zeros over `[offset, offset+len)`. With `may_unmap`, whole grains may be
    /// deallocated or marked zero instead of written, where that still reads back as zeros
    /// (their space goes back to the host), and flat extents are punched rather than written
    /// where the file system can.
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let op = WriteOp::Zeroes {
            may_unmap,
            hides_nothing: self.backing.is_none(),
        };
        let durable = self.write_state.durable;
        self.map_for_write(offset, len, op, |e, rel, n, _| match &e.kind {
            ExtentKind::Flat { file, offset: base } if may_unmap && punch(file, base + rel, n)? => {
                Ok(())
            }
            ExtentKind::Flat { file, offset: base } => {
                let zeros = vec![0u8; n.min(1 << 20) as usize];
                let mut done = 0;
                while done < n {
                    let k = (n - done).min(zeros.len() as u64);
                    file.storage
                        .write_at(&zeros[..k as usize], base + rel + done)
                        .map_err(|err| Error::io(err, "writing zeros").with_path(&file.path))?;
                    done += k;
                }
                Ok(())
            }
            ExtentKind::Zero => Ok(()),
            ExtentKind::Sparse(s) => s.write_zeroes(rel, n, op, &self.below(e.start), durable),
        })
    }

    /// Deallocate what can be deallocated in `[offset, offset+len)`, keeping it reading as
    /// zeros: whole grains of sparse extents (their space goes back to the host, see
    /// `GrainDirectory::release_cleared`), and the bytes of
    /// flat extents, punched out of their files where the file system can. Advisory: parts
    /// that cannot be deallocated keep their data, as a TRIM allows. An image in which
    /// nothing can ever be deallocated (compressed grains, or a backing file that would show
    /// through and no zeroed-grain entries) refuses with an `Unsupported` error that says
    /// why (see [`Image::can_discard`]).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.writable_check(offset, len)?;
        if len > 0 {
            if let Some(why) = self.discard_refusal() {
                return Err(Error::unsupported(why).with_path(&self.path));
            }
        }
        let op = WriteOp::Discard {
            hides_nothing: self.backing.is_none(),
        };
        let durable = self.write_state.durable;
        self.map_for_write(offset, len, op, |e, rel, n, _| match &e.kind {
            ExtentKind::Sparse(s) => s.discard(rel, n, op, durable),
            ExtentKind::Flat { file, offset: base } => {
                punch(file, base + rel, n)?;
                Ok(())
            }
            ExtentKind::Zero => Ok(()),
        })
    }

    /// Whether [`Image::discard`] can deallocate anything in this image: it is writable and
    /// has a writable flat extent, or a writable sparse extent of uncompressed grains that can
    /// leave them reading as zeros (no backing file, or zeroed-grain entries).
    pub fn can_discard(&self) -> bool {
        self.writable && self.discard_refusal().is_none()
    }

    /// Why nothing in this image can be deallocated, if nothing can.
    fn discard_refusal(&self) -> Option<String> {
        let mut why = None;
        for e in &self.extents {
            if e.access != ExtentAccess::ReadWrite {
                continue;
            }
            match &e.kind {
                ExtentKind::Flat { .. } => return None,
                ExtentKind::Zero => {}
                ExtentKind::Sparse(s) if s.is_compressed() => {
                    why = Some(
                        "cannot deallocate the grains of a compressed (streamOptimized) \
                         image: convert it to another subformat first"
                            .to_string(),
                    )
                }
                ExtentKind::Sparse(s) if self.backing.is_some() && !s.has_zero_grains() => {
                    why.get_or_insert_with(|| {
                        "cannot deallocate grains: the backing file would show through, and \
                         the image has no zeroed-grain entries (create it with \
                         zeroed_grain=on)"
                            .to_string()
                    });
                }
                ExtentKind::Sparse(_) => return None,
            }
        }
        Some(why.unwrap_or_else(|| "the image has no writable extent that stores data".into()))
    }

    /// The reuse gates of the writable sparse extents under `[offset, offset+len)`, held
    /// while reading there (see [`GrainDirectory::reading`](crate::extent::GrainDirectory));
    /// none when the image is read-only, since only writers give space back.
    pub(crate) fn reuse_gates(
        &self,
        offset: u64,
        len: u64,
    ) -> Vec<std::sync::RwLockReadGuard<'_, ()>> {
        let mut gates = Vec::new();
        if !self.writable || len == 0 {
            return gates;
        }
        // Lines naming one file share its extent: its gate is taken once.
        let mut seen: Vec<&crate::extent::SparseExtent> = Vec::new();
        let first = self.extent_index(offset);
        for e in self.extents[first..]
            .iter()
            .take_while(|e| e.start < offset + len)
        {
            if let ExtentKind::Sparse(s) = &e.kind {
                if e.access == ExtentAccess::ReadWrite
                    && !seen.iter().any(|o| std::ptr::eq(*o, &**s))
                {
                    seen.push(s);
                    gates.push(s.directory().reading());
                }
            }
        }
        gates
    }

    /// Start writing the image's dirty data (every writable extent file) to the device
    /// without waiting for it, so that the next [`Image::flush`] finds little left to do.
    /// Long copies call it as they go: the disk then works while the copy runs, instead of
    /// all of it after the copy, in the final flush (see [`crate::ops::commit`]).
    pub fn start_writeback(&self) -> Result<()> {
        self.each_written_file(|s| s.start_writeback(), "writing back")
    }

    /// Make all completed writes durable (and give back the space of grains cleared by a
    /// discard whose own flush failed).
    pub fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.storage
            .flush()
            .map_err(|e| Error::io(e, "flushing").with_path(&self.path))?;
        self.each_written_file(|s| s.flush(), "flushing")?;
        for e in &self.extents {
            if let ExtentKind::Sparse(s) = &e.kind {
                if e.access == ExtentAccess::ReadWrite {
                    s.directory().release_cleared()?;
                }
            }
        }
        Ok(())
    }

    /// Apply `op` to the storage of every extent file this image writes (none when it is
    /// open read-only); a failure is reported as `what` failing on that file.
    fn each_written_file(
        &self,
        op: impl Fn(&dyn crate::storage::Storage) -> std::io::Result<()>,
        what: &str,
    ) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        for e in &self.extents {
            if let Some(f) = e.file() {
                if e.access == ExtentAccess::ReadWrite {
                    op(&*f.storage).map_err(|err| Error::io(err, what).with_path(&f.path))?;
                }
            }
        }
        Ok(())
    }
}

/// Punch `[at, at+len)` out of a flat extent's file; whether the file system could (where
/// it cannot, nothing changed).
fn punch(file: &crate::extent::ExtentFile, at: u64, len: u64) -> Result<bool> {
    file.storage
        .punch_hole(at, len)
        .map_err(|e| Error::io(e, "punching a hole").with_path(&file.path))
}
