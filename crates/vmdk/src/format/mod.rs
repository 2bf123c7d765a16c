//! On-disk structures, parsed and serialized as pure functions over byte slices. Nothing in
//! this module performs I/O, so all of it can be fuzzed and unit-tested in memory.

pub mod cowd_header;
pub mod descriptor;
pub mod descriptor_edit;
pub mod error;
pub mod foreign;
pub mod grain_entry;
pub mod layout;
pub(crate) mod le;
pub mod marker;
pub mod qemu_view;
pub mod sesparse_header;
pub mod sparse_header;

/// Bytes per sector; every offset and size in VMDK metadata counts these.
pub const SECTOR_SIZE: u64 = 512;

/// Largest virtual disk (and extent) accepted: QEMU's `BDRV_MAX_LENGTH` (`INT64_MAX` rounded
/// down to 1 GiB). QEMU refuses anything bigger ("File too large") and NBD clients cannot
/// take a size past `INT64_MAX`; offsets inside the disk also stay far from overflowing.
pub const MAX_VIRTUAL_SIZE: u64 = (1 << 63) - (1 << 30);
