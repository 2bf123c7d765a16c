//! The `vmdk` command's integration tests (qemu as the oracle), one binary for all of them
//! (one link instead of one per file): each module is a feature or a command, listed in
//! ARCHITECTURE.md's Tests section; `common` runs `vmdk`, qemu-img and qemu-io.
//! `cargo test -p vmdk-cli inspect::` runs one of them.
//!
//! Adding a test file (one from a branch that still writes `tests/NAME.rs`): move it here,
//! `git mv tests/NAME.rs tests/integration/NAME.rs`, add one line `mod NAME;` below (in
//! order), and in the file replace `mod common;` / `use common::...` by `use crate::common::...`
//! (helpers other crates share, such as `Tmpfs` and the object-storage servers, are
//! `vmdk_test_support::...`). A test below fails while a file here has no `mod` line.

mod check;
mod check_repair;
mod commands;
mod common;
mod compact;
mod data_safety;
mod inspect;
mod iotests;
mod lifecycle;
mod limits;
mod more_commands;
mod mount;
mod no_data_loss;
mod object_storage;
mod oracle;
mod ova;
mod qcow2;
mod qcow2_target;
mod realworld;
mod serve;

/// Every file here is a module of this binary (a file left out would never run).
#[test]
fn every_test_file_is_a_module() {
    vmdk_test_support::assert_every_module_declared(env!("CARGO_MANIFEST_DIR"));
}
