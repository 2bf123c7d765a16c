//! On-disk structures, parsed and serialized as pure functions over byte slices. Nothing in
//! this module performs I/O, so all of it can be fuzzed and unit-tested in memory.

pub mod cowd_header;
pub mod descriptor;
pub mod descriptor_edit;
pub mod foreign;
pub(crate) mod le;
pub mod marker;
pub mod sesparse_header;
pub mod sparse_header;

/// Bytes per sector; every offset and size in VMDK metadata counts these.
pub const SECTOR_SIZE: u64 = 512;
