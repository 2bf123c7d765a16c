//! The NBD server's integration tests, one binary for all of them: the protocol with a raw
//! client, extended headers, and qemu's and libnbd's clients; `common` holds the raw client
//! and the test backends.
//!
//! Adding a test file (one from a branch that still writes `tests/NAME.rs`): move it here,
//! `git mv tests/NAME.rs tests/integration/NAME.rs`, add one line `mod NAME;` below (in
//! order), and in the file replace `mod common;` / `use common::...` by `use crate::common::...`
//! (helpers other crates share, such as `Tmpfs` and the object-storage servers, are
//! `vmdk_test_support::...`). A test below fails while a file here has no `mod` line.

mod common;
mod extended;
mod libnbd_clients;
mod protocol;
mod qemu_clients;

/// Every file here is a module of this binary (a file left out would never run).
#[test]
fn every_test_file_is_a_module() {
    vmdk_test_support::assert_every_module_declared(env!("CARGO_MANIFEST_DIR"));
}
