//! `inspect`'s promise, checked on arbitrary bytes: a file it calls safe opens (in this
//! library) without any other file being opened, and QEMU's own scans of it (the backing
//! file hint in its 10 KiB window at sector 1, the capacity-0 descriptor file) find
//! nothing. The input is split as for `open_image`: the upload, then the bytes of every
//! other file a reference could reach (`other.vmdk`, `extent.vmdk` beside it), so a file
//! naming them does open something. Errors are fine; panics and broken promises are bugs.
#![no_main]

#[path = "split.rs"]
mod split;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmdk::format::qemu_view;
use vmdk::ops::inspect::{inspect_storage, InspectPolicy, Verdict};
use vmdk::storage::namespace::OpenMode;
use vmdk::storage::paths::PathPolicy;
use vmdk::storage::{FileId, MemStorage, Storage};
use vmdk::{MemNamespace, Namespace, OpenOptions};

const UPLOAD: &str = "/fuzz/upload.vmdk";

/// A memory namespace that remembers every file opened through it.
#[derive(Debug)]
struct Recording {
    inner: MemNamespace,
    opened: Mutex<Vec<PathBuf>>,
}

impl Namespace for Recording {
    fn resolve(
        &self,
        referrer: &Path,
        name: &str,
        what: &str,
        policy: &PathPolicy,
    ) -> vmdk::Result<PathBuf> {
        self.inner.resolve(referrer, name, what, policy)
    }
    fn open(&self, name: &Path, mode: OpenMode) -> vmdk::Result<Arc<dyn Storage>> {
        self.opened.lock().unwrap().push(name.to_path_buf());
        self.inner.open(name, mode)
    }
    fn create(&self, name: &Path, _lock: bool) -> vmdk::Result<Arc<dyn Storage>> {
        panic!("opening an image created {name:?}");
    }
    fn identity(&self, name: &Path) -> vmdk::Result<Option<FileId>> {
        self.inner.identity(name)
    }
    fn remove(&self, name: &Path) -> vmdk::Result<()> {
        panic!("opening an image removed {name:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((upload, other)) = split::two_files(data) else {
        return;
    };
    let storage = MemStorage::new(upload.to_vec());
    let Ok(rep) = inspect_storage(&storage, UPLOAD, &InspectPolicy::default()) else {
        return;
    };
    if rep.verdict() != Verdict::Safe {
        return;
    }
    // QEMU's reading of the same bytes.
    let window = upload.get(512..).unwrap_or_default();
    assert!(
        qemu_view::parent_hint(window).is_none(),
        "safe, but QEMU finds a backing file hint"
    );
    if upload.len() >= 28 {
        let capacity = u64::from_le_bytes(upload[12..20].try_into().unwrap());
        let desc = u64::from_le_bytes(upload[28..36].try_into().unwrap());
        assert!(
            capacity != 0 || desc == 0,
            "safe, but QEMU opens the descriptor as a descriptor file"
        );
    }
    // This library's reading: only the upload itself is opened.
    let ns = MemNamespace::new();
    ns.insert(UPLOAD, upload.to_vec());
    ns.insert("/fuzz/other.vmdk", other.to_vec());
    ns.insert("/fuzz/extent.vmdk", other.to_vec());
    let rec = Arc::new(Recording {
        inner: ns,
        opened: Mutex::new(Vec::new()),
    });
    if let Ok(img) = OpenOptions::new().in_namespace(rec.clone()).open(UPLOAD) {
        let mut buf = vec![0u8; 4096];
        let _ = img.read_at(&mut buf[..img.size().min(4096) as usize], 0);
    }
    for name in rec.opened.lock().unwrap().iter() {
        assert_eq!(
            name,
            Path::new(UPLOAD),
            "a file inspect calls safe made the library open another file"
        );
    }
});
