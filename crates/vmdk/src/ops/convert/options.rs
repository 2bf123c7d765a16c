//! What a conversion is asked to do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::pipeline::*;
use crate::error::Result;
use crate::extent::MapEntry;
use crate::storage::namespace::Namespace;

/// Options for conversions.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Worker threads (compression, reading); 0 = number of CPUs.
    pub threads: usize,
    /// Compress output grains (streamOptimized is always compressed).
    pub compress: bool,
    /// zlib level for compressed output.
    pub compression_level: u32,
    /// Runs of zeros at least this long (and aligned to it) become holes in raw output
    /// (qemu-img's `-S`, default 4 KiB); 0 writes every byte, and every grain of sparse VMDK
    /// output, so the output is fully allocated.
    pub min_sparse: u64,
    /// Write into an existing image instead of creating one (`-n`): nothing is created or
    /// truncated, and zeros are written wherever the source reads as zeros.
    pub target_exists: bool,
    /// With `target_exists`: the target already reads as zeros, so zeros need no writing.
    pub target_is_zero: bool,
    /// Read errors become zeros, counted in `salvaged`, instead of failing the conversion.
    pub salvage: bool,
    /// How many stretches `salvage` turned into zeros.
    pub salvaged: Arc<AtomicU64>,
    /// Make the output durable before returning (qemu-img's `none`, `directsync` and
    /// `writethrough` cache modes): every output flushes its files at the end, and sparse
    /// VMDK output is also written durably as the conversion goes (each new grain's data
    /// flushed before its table entry points at it, as
    /// [`OpenOptions::durable`](crate::OpenOptions::durable)), so a power loss part-way
    /// leaves an image that opens and checks clean, every sector holding its old or its new
    /// content. Off by default, like qemu-img's default (`unsafe`).
    pub durable: bool,
    /// Where the output goes (host files by default). For VMDK output,
    /// [`CreateOptions::namespace`](crate::ops::create::CreateOptions::namespace) is used when this is unset.
    pub target_namespace: Option<Arc<dyn Namespace>>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            threads: 0,
            compress: false,
            compression_level: crate::ops::create::DEFAULT_COMPRESSION_LEVEL,
            min_sparse: RAW_ZERO_BLOCK,
            target_exists: false,
            target_is_zero: false,
            salvage: false,
            salvaged: Arc::new(AtomicU64::new(0)),
            durable: false,
            target_namespace: None,
        }
    }
}

impl ConvertOptions {
    /// Whether every byte is written, zeros included: for a fully allocated output, or an
    /// existing target that may hold something else.
    pub(super) fn writes_everything(&self) -> bool {
        self.min_sparse == 0 || (self.target_exists && !self.target_is_zero)
    }

    /// Which map stretches must be read: everything when zeros are to be written too.
    pub(super) fn want(&self) -> fn(&MapEntry) -> bool {
        if self.writes_everything() {
            |_| true
        } else {
            is_data
        }
    }

    /// Fill `buf` with `task`'s bytes; with `salvage`, a stretch that fails to read becomes
    /// zeros (with a warning) instead of failing the task.
    pub(super) fn fill(&self, task: &Task, buf: &mut [u8], scratch: &mut Scratch) -> Result<()> {
        match fill_task(task, buf, scratch) {
            Err(e) if self.salvage => {
                tracing::warn!("{e:#}; retrying stretch by stretch");
                buf.fill(0);
                for en in &task.entries {
                    let at = (en.start - task.start) as usize;
                    let dst = &mut buf[at..at + en.length as usize];
                    if let Err(e) = en.target.read_into(dst) {
                        dst.fill(0);
                        self.salvaged.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "warning: error while reading offset {}: {e:#}; writing zeros",
                            en.start
                        );
                    }
                }
                Ok(())
            }
            r => r,
        }
    }

    /// The stretches of `buf` to write: all of it when zeros must be written, else the
    /// non-zero runs at `block` granularity.
    pub(super) fn runs(&self, buf: &[u8], block: u64) -> Vec<(usize, usize)> {
        if self.writes_everything() {
            vec![(0, buf.len())]
        } else {
            nonzero_runs(buf, block as usize)
        }
    }
}

/// Progress callback: (bytes done, bytes total).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Blocks of this size that are all zero are left as holes in raw output (qemu-img's `-S 4k`).
pub const RAW_ZERO_BLOCK: u64 = 4096;
