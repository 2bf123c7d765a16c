//! OVA archives in memory: the tar index, the OVF descriptor, the manifest, and opening the
//! first disk through the archive never panic, whatever the bytes.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::ova::{manifest, ovf, Archive};
use vmdk::storage::MemStorage;

fuzz_target!(|data: &[u8]| {
    let _ = ovf::parse(data, Path::new("f.ovf"));
    let _ = manifest::parse(data, Path::new("f.mf"));
    let storage = Arc::new(MemStorage::new(data.to_vec()));
    let Ok(arch) = Archive::from_storage(Path::new("f.ova"), storage) else {
        return;
    };
    for m in &arch.index().members {
        assert!(
            m.offset + m.size <= data.len() as u64,
            "member past the end"
        );
        assert!(!m.name.starts_with('/') && !m.name.split('/').any(|c| c == ".."));
    }
    let _ = arch.envelope();
    if let Ok(first) = arch.first_disk() {
        if let Ok(m) = arch.file(&first) {
            let s = arch.member_storage(m);
            let mut buf = [0u8; 512];
            let _ = s.read_up_to(&mut buf, 0);
        }
    }
});
