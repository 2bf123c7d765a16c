//! The library's integration tests, one binary for all of them (one link instead of one per
//! file): each module is a feature, indexed in ../README.md; `common` holds the helpers
//! (qemu as the oracle, byte-level image builders). `cargo test -p vmdk read_qemu::` runs
//! one feature.

mod common;
mod convert;
mod corrupt_writes;
mod crash_cut;
mod full_disk;
mod hostile;
mod locking;
mod namespace;
mod props;
mod read_built;
mod read_qemu;
mod write_matrix;
mod write_props;

/// Every file here is a module of this binary (a file left out would never run).
#[test]
fn every_test_file_is_a_module() {
    vmdk_test_support::assert_every_module_declared(env!("CARGO_MANIFEST_DIR"));
}
