//! The `vmdk` command's integration tests (qemu as the oracle), one binary for all of them
//! (one link instead of one per file): each module is a feature or a command, listed in
//! ARCHITECTURE.md's Tests section; `common` runs `vmdk`, qemu-img and qemu-io.
//! `cargo test -p vmdk-cli inspect::` runs one of them.

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
