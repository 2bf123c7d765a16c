//! The library's integration tests, one binary for all of them (one link instead of one per
//! file): each module is a feature, indexed in ../README.md; `common` holds the helpers
//! (qemu as the oracle, byte-level image builders). `cargo test -p vmdk read_qemu::` runs
//! one feature.
//!
//! Adding a test file (one from a branch that still writes `tests/NAME.rs`): move it here,
//! `git mv tests/NAME.rs tests/integration/NAME.rs`, add one line `mod NAME;` below (in
//! order), and in the file replace `mod common;` / `use common::...` by `use crate::common::...`
//! (helpers other crates share, such as `Tmpfs` and the object-storage servers, are
//! `vmdk_test_support::...`). A test below fails while a file here has no `mod` line.

mod common;
mod convert;
mod corrupt_writes;
mod crash_cut;
mod discard;
mod full_disk;
mod hostile;
mod locking;
mod namespace;
mod op_props;
mod operations;
mod ova;
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
