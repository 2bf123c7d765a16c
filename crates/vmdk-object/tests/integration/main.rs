//! The object-storage backend's integration tests (one binary): against moto's S3 server,
//! which vmdk_test_support::servers starts.

mod moto;

/// Every file here is a module of this binary (a file left out would never run).
#[test]
fn every_test_file_is_a_module() {
    vmdk_test_support::assert_every_module_declared(env!("CARGO_MANIFEST_DIR"));
}
