//! Writing to sparse extents: in-place overwrites, grain allocation at the end of the file,
//! zeroed grains, and appending compressed grains to QEMU-layout stream files.
//!
//! Crash safety comes from ordering: a grain's data is written (and, in durable mode,
//! flushed) before any grain-table entry points at it, and a new grain table is written
//! before the directory entry that points at it. A crash therefore leaves at worst leaked
//! space, never a table pointing at garbage. Concurrent writers to different grains never
//! wait for each other's data I/O: only the grains being allocated are reserved, and the
//! file end is bumped under a short lock.

use crate::error::{Error, ErrorKind, Result};
use crate::extent::allocation::Allocation;
use crate::extent::compressed::encode_for_write;
use crate::extent::sparse::{GrainEntry, SparseExtent, SparseFlavor};
use crate::extent::write_guard::WriteGuard;
use crate::extent::write_map::{RunTarget, WriteOp, WriteRun};
use crate::format::SECTOR_SIZE;

/// How a write gets the bytes of a partially written new grain: from the backing chain
/// (or zeros), given an extent-relative offset.
pub type Fill<'a> = &'a (dyn Fn(u64, &mut [u8]) -> Result<()> + Sync);

fn io_err<'a>(ext: &'a SparseExtent, what: &'a str) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::io(e, what).with_path(&ext.file.path)
}

impl SparseExtent {
    /// Refuse writes this extent cannot take safely.
    pub fn check_writable(&self) -> Result<()> {
        let refuse = |m: &str| Err(Error::new(ErrorKind::ReadOnly, m).with_path(&self.file.path));
        if self.flavor == SparseFlavor::SeSparse {
            return refuse("seSparse extents are read-only");
        }
        if self.footer_layout {
            // Appending would have to move the footer; a crash half-way would leave a file
            // with no valid footer at its end. Convert instead.
            return refuse(
                "VMware-layout streamOptimized images (footer at end) cannot be modified; \
                 convert the image instead",
            );
        }
        Ok(())
    }

    /// Write `data` at extent-relative `off`. `fill` supplies backing bytes for the
    /// unwritten parts of newly allocated grains.
    pub fn write(&self, off: u64, data: &[u8], fill: Fill, durable: bool) -> Result<()> {
        self.apply(
            off,
            data.len() as u64,
            WriteOp::Data,
            Some(data),
            fill,
            durable,
        )
    }

    /// Write zeros over `[off, off+len)` as `op` (a `WriteOp::Zeroes`) says: whole grains
    /// become zeroed-grain entries where the extent supports them, unallocated where that
    /// reads as zeros and unmapping is allowed, and are written with zeros otherwise. The
    /// space of grains no longer stored goes back. Without `may_unmap`
    /// (NBD's NO_HOLE) no grain is left unallocated: zeros are stored, as a zeroed-grain
    /// entry where the extent has them (QEMU does the same).
    pub fn write_zeroes(
        &self,
        off: u64,
        len: u64,
        op: WriteOp,
        fill: Fill,
        durable: bool,
    ) -> Result<()> {
        debug_assert!(matches!(op, WriteOp::Zeroes { .. }));
        self.apply(off, len, op, None, fill, durable)
    }

    /// Deallocate the whole grains inside `[off, off+len)` where the result still reads as
    /// zeros, as `op` (a `WriteOp::Discard`) says: unallocated when nothing shows through,
    /// zeroed-grain entries otherwise when supported. Anything else is left alone (discard
    /// is advisory). The grains' space goes back (see
    /// `GrainDirectory::release_cleared`).
    pub fn discard(&self, off: u64, len: u64, op: WriteOp, durable: bool) -> Result<()> {
        debug_assert!(matches!(op, WriteOp::Discard { .. }));
        // Discards only change entries: nothing is ever filled.
        self.apply(off, len, op, None, &|_, _| Ok(()), durable)
    }

    /// Carry out `op` over `[off, off+len)`: `data` is what a data write stores (`None`:
    /// zeros). Everything goes through [`SparseExtent::map_for_write`].
    fn apply(
        &self,
        off: u64,
        len: u64,
        op: WriteOp,
        data: Option<&[u8]>,
        fill: Fill,
        durable: bool,
    ) -> Result<()> {
        let bytes =
            |start: u64, end: u64| data.map(|d| &d[(start - off) as usize..(end - off) as usize]);
        let mut store = |run: WriteRun<'_>| -> Result<()> {
            let src = bytes(run.start, run.end);
            match run.target {
                RunTarget::InPlace { host } => match src {
                    Some(src) => self
                        .file
                        .storage
                        .write_at(src, host)
                        .map_err(io_err(self, "writing data")),
                    None => self.write_zeros_at(host, run.end - run.start),
                },
                RunTarget::Allocate(a) => self.store_new(a, run.start, run.end, src, fill),
            }
        };
        let result = self.map_for_write(off, len, op, Some((&mut store, durable)));
        if op == WriteOp::Data {
            return result;
        }
        // Grains whose entries the walk cleared go back, even after a failure part-way.
        let released = self.dir.release_cleared();
        result.and(released)
    }

    /// Write `len` zero bytes at host offset `at`.
    fn write_zeros_at(&self, at: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let k = (len - done).min(zeros.len() as u64);
            self.file
                .storage
                .write_at(&zeros[..k as usize], at + done)
                .map_err(io_err(self, "writing zeros"))?;
            done += k;
        }
        Ok(())
    }

    /// Store the new grains of `a`, whose extent bytes `[start, end)` are `new` (`None`:
    /// zeros), then publish them. Fully covered runs are written straight from the caller's
    /// buffer; others are staged: backing (or zeros, for zeroed grains), then the new bytes
    /// on top.
    fn store_new(
        &self,
        mut a: Allocation<'_>,
        start: u64,
        end: u64,
        new: Option<&[u8]>,
        fill: Fill,
    ) -> Result<()> {
        let gs = self.grain_size;
        let grains = a.grains();
        let (run_start, run_end) = (grains.start * gs, grains.end * gs);
        let staged;
        let src: &[u8] = match new {
            Some(d) if start == run_start && end == run_end => d,
            _ => {
                let mut buf = vec![0u8; (run_end - run_start) as usize];
                for (i, old) in a.old().iter().enumerate() {
                    let g0 = run_start + i as u64 * gs;
                    let covered = start <= g0 && end >= g0 + gs;
                    if !covered && *old == GrainEntry::Unallocated {
                        let len = gs.min(self.capacity.saturating_sub(g0));
                        let at = i * gs as usize;
                        fill(g0, &mut buf[at..at + len as usize])?;
                    }
                }
                let dst = &mut buf[(start - run_start) as usize..(end - run_start) as usize];
                match new {
                    Some(d) => dst.copy_from_slice(d),
                    None => dst.fill(0),
                }
                staged = buf;
                &staged
            }
        };
        if self.compressed {
            for (i, chunk) in src.chunks(gs as usize).enumerate() {
                let lba = (run_start + i as u64 * gs) / SECTOR_SIZE;
                let rec = encode_for_write(lba, chunk, self.has_marker)?;
                let at = a.reserve_record(rec.len() as u64)?;
                self.file
                    .storage
                    .write_at(&rec, at)
                    .map_err(io_err(self, "writing compressed grain"))?;
            }
            crate::extent::compressed::forget_cached_grain();
        } else {
            self.file
                .storage
                .write_at(src, a.host())
                .map_err(io_err(self, "writing data"))?;
        }
        a.publish()
    }

    /// The write guard, made on first use (before anything is written).
    pub(crate) fn write_guard(&self) -> &WriteGuard {
        self.dir.guard()
    }

    /// Fail, without writing anything, if `op` over `[off, off+len)` (extent-relative)
    /// would write into metadata or past the end of the file through a corrupt table, or
    /// cannot be done at all (see `SparseExtent::map_for_write`, run without applying).
    pub fn check_write_targets(&self, off: u64, len: u64, op: WriteOp) -> Result<()> {
        self.map_for_write(off, len, op, None)
    }
}
