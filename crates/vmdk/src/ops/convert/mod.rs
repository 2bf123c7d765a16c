//! Whole-disk operations shared by the CLI and exports: convert to raw, VMDK or qcow2, compare.
//! Everything is driven by the mapping primitive so holes and zero grains cost nothing.
//!
//! # How a conversion runs
//!
//! A *planner* walks the source's map in batches of entries (so a huge zero stretch costs one
//! step) and cuts the stretches that hold data into *tasks*: grain-aligned virtual ranges of
//! at most 512 KiB (4 MiB when writing a sparse VMDK, where bigger runs mean fewer
//! allocations), numbered in disk order.
//! Zero and unallocated stretches never become tasks. Worker threads (one per core by
//! default) take the next task, read it into a pooled buffer (one positional read per
//! contiguous data run; compressed grains that lie next to each other in the file are fetched
//! with one read and inflated from memory), find the all-zero 4 KiB blocks or grains, and for
//! streamOptimized output compress the non-zero grains. The calling thread is the single
//! writer: it takes finished tasks in disk order (a small reorder buffer), writes them, and
//! returns the buffers to the pool. Workers may run at most a fixed number of tasks ahead of
//! the writer, so memory is bounded (tens of MiB) whatever the disk size.
//!
//! What is read is any [`Disk`](crate::image::Disk) (opened by
//! [`open_disk`](fn@crate::ops::open_disk)). The parts: `options`,
//! `pipeline` (planner, workers, in-order writer), `sinks` (raw, sparse VMDK and stream
//! outputs), `qcow2_sink` (qcow2 output) and `compare`.

mod compare;
mod options;
pub(crate) mod pipeline;
mod qcow2_sink;
mod sinks;

pub use compare::{
    compare, compare_with, first_allocation_difference, CompareError, CompareResult, CompareStage,
};
pub use options::{ConvertOptions, Progress, RAW_ZERO_BLOCK};
pub use qcow2_sink::convert_to_qcow2;
pub use sinks::{convert_to_raw, convert_to_stream, convert_to_vmdk};
