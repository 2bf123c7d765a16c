//! Test helpers used by the integration tests of more than one crate of the workspace (a
//! dev-dependency of `vmdk`, `vmdk-cli` and `vmdk-object`, never a dependency of anything
//! shipped). Helpers used by one crate's tests only stay in that crate's
//! `tests/integration/common`.
//!
//! - [`Tmpfs`]: a small tmpfs to fill (the full-disk tests of the library and the command).
//! - [`servers`]: moto's S3 server, nginx and a fault-injecting proxy on loopback ports (the
//!   object-storage tests of `vmdk-object` and `vmdk-cli`).
//! - [`sparse`]: comparing large sparse files by their data, not by reading their holes.
//! - [`qemu`]: qemu-img making the images the oracle tests start from (converts, overlays,
//!   creates), and the subformats it makes.

pub mod qemu;
pub mod servers;
pub mod sparse;
mod tmpfs;

pub use tmpfs::Tmpfs;

use std::path::Path;

/// Fail unless every `*.rs` file beside `tests/integration/main.rs` of the crate at
/// `manifest_dir` is declared there as a module (`mod NAME;`): a file left out would compile
/// into nothing and its tests would silently never run. A `*.rs` file directly in `tests/`
/// fails it too: it would be a test binary of its own, not a module of the one binary.
pub fn assert_every_module_declared(manifest_dir: &str) {
    let dir = Path::new(manifest_dir).join("tests/integration");
    let main = std::fs::read_to_string(dir.join("main.rs"))
        .unwrap_or_else(|e| panic!("reading {}/main.rs: {e}", dir.display()));
    let declared: Vec<&str> = main
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("reading tests/integration") {
        let path = entry.expect("reading tests/integration").path();
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if path.is_dir() && path.join("mod.rs").exists() => n.to_string(),
            Some(n) if n.ends_with(".rs") && n != "main.rs" => n.trim_end_matches(".rs").into(),
            _ => continue,
        };
        if !declared.contains(&name.as_str()) {
            missing.push(name);
        }
    }
    // A file left directly in tests/ (as branches older than this layout write them) would
    // be a test binary of its own: it belongs here, as a module.
    let tests = Path::new(manifest_dir).join("tests");
    for entry in std::fs::read_dir(&tests).expect("reading tests/") {
        let path = entry.expect("reading tests/").path();
        if path.extension().is_some_and(|e| e == "rs") {
            missing.push(format!(
                "{} (move it into tests/integration/)",
                path.display()
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{}: not declared in main.rs (add `mod NAME;`): {missing:?}",
        dir.display()
    );
}
