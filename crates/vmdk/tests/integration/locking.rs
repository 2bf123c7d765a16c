//! Library side of image locking and of self-overwrite protection: locks are on by default,
//! cover every file of the image, go away when the image is dropped, and can be switched
//! off by a caller that excludes other users itself. (The CLI tests run the same rules
//! against real qemu processes.)

use std::path::Path;
use vmdk_test_support::qemu::{qemu_create_as, qemu_overlay};

use crate::common::*;
use vmdk::{ErrorKind, FileId, OpenOptions};

fn rw() -> OpenOptions {
    OpenOptions::new().writable(true)
}

#[test]
fn locks_are_on_by_default_and_released_on_drop() {
    let dir = Dir::new();
    let p = dir.path("a.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), "8M"]);
    let writer = rw().open(&p).unwrap();
    let e = rw().open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    assert!(
        e.to_string().contains("Failed to get \"write\" lock"),
        "{e}"
    );
    let e = OpenOptions::new().open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    // Sharing readers get in; a caller that locks itself can switch locking off.
    OpenOptions::new().force_share(true).open(&p).unwrap();
    OpenOptions::new().locking(false).open(&p).unwrap();
    drop(writer);
    let again = rw().open(&p).unwrap();
    again.write_at(&[1; 512], 0).unwrap();
    drop(again);
    qemu_img(&["check", p.to_str().unwrap()]);
}

#[test]
fn force_share_is_for_readers() {
    let dir = Dir::new();
    let p = dir.path("a.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), "1M"]);
    let e = rw().force_share(true).open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(
        e.to_string(),
        format!(
            "'{}': force-share=on can only be used with read-only images",
            p.display()
        )
    );
}

/// Every operation that writes refuses force-share with the same message, before it opens
/// (and so before it could write) anything: none of them drops it quietly.
#[test]
fn writing_operations_refuse_force_share() {
    let dir = Dir::new();
    let base = dir.path("base.vmdk");
    let top = dir.path("top.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", base.to_str().unwrap(), "1M"]);
    qemu_overlay(&top, "base.vmdk", "", "");
    let before = (std::fs::read(&base).unwrap(), std::fs::read(&top).unwrap());
    let shared = OpenOptions::new().force_share(true);
    let none = |_: u64, _: u64| {};
    let refused: Vec<(&str, vmdk::Error)> = vec![
        (
            "resize",
            vmdk::ops::resize::resize(&top, 2 << 20, &Default::default(), &shared).unwrap_err(),
        ),
        (
            "rebase",
            vmdk::ops::rebase::rebase(
                &top,
                &vmdk::ops::rebase::RebaseOptions {
                    backing: String::new(),
                    unsafe_mode: false,
                },
                &shared,
                &none,
            )
            .unwrap_err(),
        ),
        (
            "rebase -u",
            vmdk::ops::rebase::rebase(
                &top,
                &vmdk::ops::rebase::RebaseOptions {
                    backing: String::new(),
                    unsafe_mode: true,
                },
                &shared,
                &none,
            )
            .unwrap_err(),
        ),
        (
            "commit",
            vmdk::ops::commit::commit(&top, &Default::default(), &shared, &none).unwrap_err(),
        ),
        (
            "compact",
            vmdk::ops::compact::compact(&top, &shared, &none).unwrap_err(),
        ),
        (
            "repair",
            vmdk::ops::repair::repair(&top, vmdk::ops::repair::RepairMode::All, &shared)
                .unwrap_err(),
        ),
        (
            "open_disk",
            vmdk::open_disk(&top, None, &shared.clone().writable(true))
                .map(|_| ())
                .unwrap_err(),
        ),
    ];
    for (what, e) in refused {
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{what}: {e}");
        assert_eq!(
            e.to_string(),
            format!(
                "'{}': force-share=on can only be used with read-only images",
                top.display()
            ),
            "{what}"
        );
    }
    assert!(
        (std::fs::read(&base).unwrap(), std::fs::read(&top).unwrap()) == before,
        "a refused operation changed a file"
    );
    // Readers still share.
    shared.open(&top).unwrap();
}

#[test]
fn file_ids_cover_descriptor_extents_and_chain() {
    let dir = Dir::new();
    let base = dir.path("base.vmdk");
    qemu_create_as("vmdk", &base, "3G", "subformat=twoGbMaxExtentFlat");
    let top = dir.path("top.vmdk");
    qemu_overlay(&top, "base.vmdk", "", "");
    let img = OpenOptions::new().open(&top).unwrap();
    let ids = img.file_ids();
    let id = |n: &str| FileId::of_path(&dir.path(n)).unwrap().unwrap();
    for n in ["top.vmdk", "base.vmdk", "base-f001.vmdk", "base-f002.vmdk"] {
        assert!(ids.contains(&id(n)), "{n} missing from {ids:?}");
    }
    assert_eq!(ids.len(), 4);
    assert_eq!(FileId::of_path(Path::new("/nonexistent/x")).unwrap(), None);
}

#[test]
fn convert_refuses_its_own_input() {
    let dir = Dir::new();
    let p = dir.path("a.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", p.to_str().unwrap(), "4M"]);
    qemu_io(&p, &["write -P 0x61 0 64k"]);
    let before = std::fs::read(&p).unwrap();
    let src = vmdk::open_disk(&p, None, &OpenOptions::new().force_share(true)).unwrap();
    let e =
        vmdk::ops::convert::convert_to_raw(&*src, &p, &Default::default(), &|_, _| {}).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let e = vmdk::ops::convert::convert_to_vmdk(
        &*src,
        &p,
        &Default::default(),
        &Default::default(),
        &|_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    drop(src);
    assert!(std::fs::read(&p).unwrap() == before);
}

#[test]
fn creating_over_a_file_keeps_its_creation_lock() {
    // Creating over an existing file empties it and then opens and closes a second
    // descriptor of it (to clear ext4's write-back-on-close mark). The creation lock is an
    // OFD lock of the first descriptor: it must survive that close, while the storage
    // lives, and go away with it.
    let dir = Dir::new();
    let p = dir.path("out.raw");
    std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
    let created = vmdk::storage::FileStorage::create(&p).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    let e = OpenOptions::new().open(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let e = vmdk::storage::FileStorage::create(&p).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    drop(created);
    vmdk::storage::FileStorage::create(&p).unwrap();
}
