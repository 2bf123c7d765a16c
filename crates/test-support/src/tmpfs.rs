//! A small tmpfs to fill (shared by the library's and the command's tests).

use std::path::Path;
use std::process::Command;

/// A small tmpfs mounted on a fresh temporary directory, to fill a file system; unmounted
/// when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (a mount option, e.g. `2m`). Mounting needs root: when it
    /// fails the test fails, unless `VMDK_TEST_NO_MOUNT=1`, when this says that `test` is
    /// skipped and returns `None`.
    pub fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        if std::env::var_os("VMDK_TEST_NO_MOUNT").is_some_and(|v| v == "1") {
            eprintln!("{test}: SKIPPED (VMDK_TEST_NO_MOUNT=1: no tmpfs to fill)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("vmdk-tmpfs")
            .tempdir()
            .unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "vmdk-test"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => panic!(
                "{test}: cannot mount a {size} tmpfs to fill (needs root; set \
                 VMDK_TEST_NO_MOUNT=1 to skip): {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!(
                "{test}: cannot run mount (needs root; set VMDK_TEST_NO_MOUNT=1 to skip): {e}"
            ),
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Another test's child process may briefly hold our files between fork and exec.
        for _ in 0..10 {
            let unmounted = Command::new("umount")
                .arg(self.dir.path())
                .output()
                .is_ok_and(|o| o.status.success());
            if unmounted {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Still busy: detach it rather than leave the mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output();
    }
}
