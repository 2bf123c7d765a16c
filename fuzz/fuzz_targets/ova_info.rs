//! `ova info` over archives in memory: `inspect_archive` (the OVF parsed, the manifest
//! checked, the archive vetted) never panics whatever the bytes, every finding's message is
//! safe to print, and the index agrees with itself about the names tar extracts.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vmdk::ova::tar::{member_path, MemberKind};
use vmdk::ova::{self, Archive, FindingCode};
use vmdk::report::text::is_shown;
use vmdk::storage::MemStorage;

fuzz_target!(|data: &[u8]| {
    let storage = Arc::new(MemStorage::new(data.to_vec()));
    let Ok(arch) = Archive::from_storage(Path::new("f.ova"), storage) else {
        return;
    };
    let index = arch.index();
    for m in &index.members {
        // Names are kept as the paths tar writes: already folded, never escaping.
        assert_eq!(member_path(&m.name), m.name);
        assert!(!m.name.starts_with('/') && !m.name.split('/').any(|c| c == ".."));
        assert!(m.offset + m.size <= data.len() as u64, "member past the end");
        // A lookup finds the last member of the name: the one tar leaves on disk.
        let last = index.members.iter().rev().find(|x| x.name == m.name);
        assert_eq!(index.member(&m.name), last);
        assert_eq!(index.member(&format!("./{}", m.name)), last);
        if matches!(m.kind, MemberKind::Directory | MemberKind::Other(b'1'..=b'6')) {
            assert_eq!(m.size, 0, "a member tar -x reads no data for");
        }
    }
    let Ok(info) = ova::inspect_archive(&arch, 1) else {
        return;
    };
    for f in &info.findings {
        assert!(f.message.chars().all(is_shown), "{:?}", f.message);
    }
    let dup = info
        .findings
        .iter()
        .any(|f| f.code == FindingCode::DuplicateMember);
    assert_eq!(dup, index.has_duplicates());
    if dup {
        // Nothing is read out of an archive whose names are ambiguous.
        for m in &index.members {
            assert!(arch.file(&m.name).is_err());
        }
    }
    for c in &info.digests {
        if c.status == ova::manifest::Status::Match {
            assert!(info.member(&c.entry.file).is_some(), "{:?}", c.entry.file);
        }
    }
});
