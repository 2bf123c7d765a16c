//! On-disk structures, parsed and serialized as pure functions over byte slices. Nothing in
//! this module performs I/O, so all of it can be fuzzed and unit-tested in memory.

pub mod cowd_header;
pub mod descriptor;
pub(crate) mod descriptor_edit;
pub mod error;
pub mod foreign;
pub mod grain_entry;
pub(crate) mod layout;
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

/// Whether every byte of `b` is zero: a grain or cluster that reads as zeros is stored as a
/// zero entry, not as data. Safe code the compiler vectorises (each 256-byte block is ORed
/// as sixteen `u128` words, with no branch inside the block); it stops at the first block
/// holding a non-zero byte. It is on the convert hot path (every grain read is tested).
pub fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(256);
    blocks.by_ref().all(|block| {
        block
            .chunks_exact(16)
            .map(|w| u128::from_ne_bytes(w.try_into().expect("chunks_exact(16)")))
            .fold(0, |acc, w| acc | w)
            == 0
    }) && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_zero_sees_every_byte() {
        for len in [0, 1, 15, 16, 255, 256, 257, 4096, 65536 + 7] {
            let mut v = vec![0u8; len];
            assert!(super::is_zero(&v), "{len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    continue;
                }
                v[at] = 1;
                assert!(!super::is_zero(&v), "{len} @ {at}");
                assert!(!super::is_zero(&v[..=at]), "{len} @ {at}, cut");
                v[at] = 0;
            }
        }
    }
}
