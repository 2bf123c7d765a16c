//! Archives shared while anything read from them is open.
//!
//! Every name inside an OVA reaches a fresh [`OvaNamespace`](super::OvaNamespace) (the
//! router makes one per call), and a descriptor names its extent files one line at a time,
//! each resolved, identified and opened by name: a descriptor of 60,000 lines read the tar
//! index (and, named as the bare archive, parsed its OVF) hundreds of thousands of times,
//! minutes for a 6 MB archive. An archive opened here is remembered weakly: while a member
//! storage handed out from it is alive (it holds the archive), a later open of the same
//! archive (same name, same file, same length, a compatible lock) reuses it. Nothing is kept
//! once the last member closes, so what is held is bounded by the images open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::archive::Archive;
use crate::error::Result;
use crate::storage::lock::LockRequest;
use crate::storage::namespace::Namespace;
use crate::storage::FileId;

struct Entry {
    /// The archive's name in its namespace, and the file it was when opened.
    name: PathBuf,
    id: FileId,
    /// The lock its storage holds.
    lock: Option<LockRequest>,
    archive: Weak<Archive>,
}

static OPEN: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The archive `name` of `outer`, holding `lock` (any lock when `None`: the caller reads
/// the index only): one already open when there is one, else opened and indexed now.
pub(super) fn open(
    outer: &dyn Namespace,
    name: &Path,
    lock: Option<LockRequest>,
) -> Result<Arc<Archive>> {
    // A file without an identity cannot be told from a replacement: not shared.
    let id = outer.identity(name).ok().flatten();
    if let Some(id) = id {
        let open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        let found = open
            .iter()
            .filter(|e| e.id == id && e.name == name && (lock.is_none() || e.lock == lock))
            .find_map(|e| e.archive.upgrade().filter(|a| a.unchanged()));
        if let Some(a) = found {
            return Ok(a);
        }
    }
    let archive = Arc::new(Archive::open_in(outer, name, lock)?);
    if let Some(id) = id.filter(|&id| archive.file_id() == Some(id)) {
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        // Entries whose archives were dropped go on every insert: the list stays as long
        // as the number of archives in use.
        open.retain(|e| e.archive.strong_count() > 0);
        open.push(Entry {
            name: name.to_path_buf(),
            id,
            lock,
            archive: Arc::downgrade(&archive),
        });
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ova::tar::gnu_header;
    use crate::storage::namespace::LocalNamespace;

    #[test]
    fn shared_while_a_member_is_open_and_dropped_after() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ova");
        let mut bytes = gnu_header("d.vmdk", 5, 0).unwrap().to_vec();
        bytes.extend_from_slice(b"hello");
        bytes.resize(2048, 0);
        std::fs::write(&path, &bytes).unwrap();
        let ns = LocalNamespace;
        let remembered = || {
            OPEN.lock()
                .unwrap()
                .iter()
                .filter(|e| e.name == path && e.archive.strong_count() > 0)
                .count()
        };

        let a = open(&ns, &path, None).unwrap();
        let member = a.shared_member_storage(a.file("d.vmdk").unwrap());
        drop(a);
        // The member keeps the archive: the next open is the same one.
        let b = open(&ns, &path, None).unwrap();
        assert_eq!(remembered(), 1);
        let c = open(&ns, &path, None).unwrap();
        assert!(Arc::ptr_eq(&b, &c));
        drop((b, c, member));
        assert_eq!(remembered(), 0);

        // A changed archive is indexed again.
        let a = open(&ns, &path, None).unwrap();
        let member = a.shared_member_storage(a.file("d.vmdk").unwrap());
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).unwrap();
        let b = open(&ns, &path, None).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        drop(member);
    }
}
