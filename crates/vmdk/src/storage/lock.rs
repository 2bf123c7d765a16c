//! Image locking that QEMU understands, so a `vmdk` process and a QEMU process (or two of
//! either) never write one image at once, and nobody reads an image while another writes it
//! unless the reader asked to share.
//!
//! QEMU does not take one lock per file: it takes open-file-description (OFD) byte-range
//! locks on bytes past any real header field, one byte per *permission*. For every
//! permission a user holds it takes a shared (read) lock on byte `100 + bit`; for every
//! permission it refuses to let others hold, a shared lock on byte `200 + bit`. Shared locks
//! never conflict with each other, so taking them always succeeds; exclusion comes from the
//! *test* that follows: nobody may have refused what we want (`200 + bit` free of others for
//! each bit we hold) and nobody may hold what we refuse (`100 + bit` free of others for each
//! bit we do not share). Because the locks are taken before the test, two processes racing
//! for the same image both see each other and at worst both fail; neither can slip past.
//!
//! OFD locks belong to the open file description, so they go away when the file is closed
//! (the `File` dropped) or the process dies, never outliving either; and unlike POSIX
//! `fcntl` locks they are not dropped when some other descriptor of the same file closes.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, ErrorKind, Result};

/// Permission bits, numbered as QEMU numbers them (`BLK_PERM_*`); the bit number is the
/// offset from the lock bases.
pub mod perm {
    /// Reads see a consistent image (nobody rewrites metadata under the reader).
    pub const CONSISTENT_READ: u8 = 1 << 0;
    /// Guest-visible data may change.
    pub const WRITE: u8 = 1 << 1;
    /// Writes that leave the content as it was (e.g. a mirror job).
    pub const WRITE_UNCHANGED: u8 = 1 << 2;
    /// The file may grow or shrink.
    pub const RESIZE: u8 = 1 << 3;
    /// Every permission QEMU 10 knows.
    pub const ALL: u8 = CONSISTENT_READ | WRITE | WRITE_UNCHANGED | RESIZE;
}

/// Byte whose shared lock says "I hold permission `bit`".
const PERM_BASE: i64 = 100;
/// Byte whose shared lock says "I do not let others hold permission `bit`".
const SHARED_BASE: i64 = 200;
const PERM_BITS: u32 = 4;

/// What one open file holds and what it lets others hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// Permissions taken ([`perm`] bits).
    pub perm: u8,
    /// Permissions left to others ([`perm`] bits).
    pub shared: u8,
}

/// How a file takes part in an image, which decides what QEMU locks on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// A file holding metadata: a descriptor, a sparse extent, any file of a backing image.
    /// Nobody else may write or resize it while it is open, because our view of its tables
    /// would go stale.
    Metadata,
    /// A flat extent: only guest data. Others may write it (a guest sharing a disk), but not
    /// resize it.
    Data,
}

impl LockRequest {
    /// What QEMU takes on a file of `role` for an image opened `writable` (or read-only),
    /// with `force_share` (`-U`) meaning "read whatever others do" (read-only only).
    ///
    /// Measured against qemu-io/qemu-nbd 10 (`/proc/locks`): a metadata file holds
    /// {read} or {read, write, resize} and refuses {write, resize}; a flat extent holds the
    /// same and refuses only {resize}; `-U` holds {read} and refuses nothing.
    pub fn for_open(role: FileRole, writable: bool, force_share: bool) -> Self {
        use perm::*;
        let held = if writable {
            CONSISTENT_READ | WRITE | RESIZE
        } else {
            CONSISTENT_READ
        };
        let shared = if force_share && !writable {
            ALL
        } else {
            match role {
                FileRole::Metadata => ALL & !(WRITE | RESIZE),
                FileRole::Data => ALL & !RESIZE,
            }
        };
        LockRequest { perm: held, shared }
    }

    /// What QEMU takes while it creates (truncates and lays out) a file: it writes and
    /// resizes, and refuses to let anyone else resize.
    pub fn for_create() -> Self {
        LockRequest {
            perm: perm::WRITE | perm::RESIZE,
            shared: perm::ALL & !perm::RESIZE,
        }
    }
}

/// QEMU's names of the permissions, for its error messages.
fn perm_name(bit: u32) -> &'static str {
    match bit {
        0 => "consistent read",
        1 => "write",
        2 => "write unchanged",
        _ => "resize",
    }
}

/// Warn once per process when the file system cannot lock, as QEMU does, and go on unlocked.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Take `req`'s locks on `file` (opened from `path`), then check that nobody else holds a
/// conflicting one. On conflict every lock byte is released again and the error says which
/// permission could not be had, in QEMU's words.
///
/// On a file system without OFD lock support the image is opened unlocked with a warning
/// (QEMU's `locking=auto` behaviour), not refused.
pub fn lock(file: &File, path: &Path, req: LockRequest) -> Result<()> {
    // A conflict can be a ghost: when another thread of this process spawns a program, the
    // child holds copies of all our descriptors (and so the locks of files we have already
    // closed) until it execs, a few milliseconds at most. A real holder stays; a ghost goes.
    // So a conflict is tested again a few times before it is believed.
    let mut result = apply_and_check(file, path, req);
    for delay_ms in [1, 2, 5, 10, 20, 40] {
        match &result {
            Err(LockFailure::Error(e)) if e.kind() == ErrorKind::Locked => {
                release(file);
                std::thread::sleep(std::time::Duration::from_millis(delay_ms));
                result = apply_and_check(file, path, req);
            }
            _ => break,
        }
    }
    match result {
        Ok(()) => Ok(()),
        Err(LockFailure::Unsupported(e)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "'{}': file locking is not supported here ({e}); opening without locks",
                    path.display()
                );
                eprintln!(
                    "warning: '{}': file locking is not supported here ({e}); \
                     the image is not protected against concurrent use",
                    path.display()
                );
            }
            release(file);
            Ok(())
        }
        Err(LockFailure::Error(e)) => {
            release(file);
            Err(e)
        }
    }
}

enum LockFailure {
    /// The file system (or kernel) does not do OFD locks.
    Unsupported(std::io::Error),
    /// A conflict, or another failure worth reporting.
    Error(Error),
}

fn apply_and_check(file: &File, path: &Path, req: LockRequest) -> Result<(), LockFailure> {
    let fail = |e: std::io::Error, what: String| {
        if is_unsupported(&e) {
            LockFailure::Unsupported(e)
        } else {
            LockFailure::Error(Error::io(e, what).with_path(path))
        }
    };
    for bit in 0..PERM_BITS {
        if req.perm & (1 << bit) != 0 {
            let off = PERM_BASE + bit as i64;
            set_lock(file, off, libc::F_RDLCK as i16)
                .map_err(|e| fail(e, format!("Failed to lock byte {off}")))?;
        }
        if req.shared & (1 << bit) == 0 {
            let off = SHARED_BASE + bit as i64;
            set_lock(file, off, libc::F_RDLCK as i16)
                .map_err(|e| fail(e, format!("Failed to lock byte {off}")))?;
        }
    }
    let conflict = |msg: String| {
        LockFailure::Error(
            Error::new(
                ErrorKind::Locked,
                format!(
                    "{msg}: Is another process using the image [{}]?",
                    path.display()
                ),
            )
            .with_path(path),
        )
    };
    for bit in 0..PERM_BITS {
        if req.perm & (1 << bit) != 0 {
            let off = SHARED_BASE + bit as i64;
            if held_by_others(file, off)
                .map_err(|e| fail(e, format!("Failed to test byte {off}")))?
            {
                return Err(conflict(format!(
                    "Failed to get \"{}\" lock",
                    perm_name(bit)
                )));
            }
        }
    }
    for bit in 0..PERM_BITS {
        if req.shared & (1 << bit) == 0 {
            let off = PERM_BASE + bit as i64;
            if held_by_others(file, off)
                .map_err(|e| fail(e, format!("Failed to test byte {off}")))?
            {
                return Err(conflict(format!(
                    "Failed to get shared \"{}\" lock",
                    perm_name(bit)
                )));
            }
        }
    }
    Ok(())
}

/// Errors meaning "no OFD locks here" rather than "locked": an old kernel (EINVAL for the
/// unknown command), or a file system that does not lock (ENOLCK, EOPNOTSUPP, ENOSYS).
fn is_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS)
    )
}

fn flock_at(offset: i64, kind: i16) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all-zero is a valid
    // value (and the value OFD commands require for `l_pid`).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = offset;
    fl.l_len = 1;
    fl
}

fn set_lock(file: &File, offset: i64, kind: i16) -> std::io::Result<()> {
    let fl = flock_at(offset, kind);
    // SAFETY: fcntl(F_OFD_SETLK) reads the `flock` we pass by pointer, which lives on our
    // stack for the whole call; the descriptor is owned by `file` and open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether an exclusive lock on `offset` would conflict with a lock some *other* open file
/// description holds (our own locks never conflict with a test through the same one).
fn held_by_others(file: &File, offset: i64) -> std::io::Result<bool> {
    let mut fl = flock_at(offset, libc::F_WRLCK as i16);
    // SAFETY: fcntl(F_OFD_GETLK) reads and overwrites the `flock` we pass by mutable
    // pointer, which lives on our stack for the whole call; the descriptor is owned by
    // `file` and open.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as i16)
}

/// Drop every lock byte this file description holds (after a failed attempt).
fn release(file: &File) {
    for base in [PERM_BASE, SHARED_BASE] {
        for bit in 0..PERM_BITS {
            let _ = set_lock(file, base + bit as i64, libc::F_UNLCK as i16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perm::*;

    fn open(path: &Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    #[test]
    fn requests_match_qemu() {
        let rw = LockRequest::for_open(FileRole::Metadata, true, false);
        assert_eq!(rw.perm, CONSISTENT_READ | WRITE | RESIZE);
        assert_eq!(!rw.shared & ALL, WRITE | RESIZE);
        let ro = LockRequest::for_open(FileRole::Metadata, false, false);
        assert_eq!(ro.perm, CONSISTENT_READ);
        assert_eq!(!ro.shared & ALL, WRITE | RESIZE);
        let flat = LockRequest::for_open(FileRole::Data, true, false);
        assert_eq!(!flat.shared & ALL, RESIZE);
        let u = LockRequest::for_open(FileRole::Metadata, false, true);
        assert_eq!((u.perm, u.shared), (CONSISTENT_READ, ALL));
    }

    #[test]
    fn writers_and_readers_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let md = |w, u| LockRequest::for_open(FileRole::Metadata, w, u);

        let writer = open(&p);
        lock(&writer, &p, md(true, false)).unwrap();
        // A second writer, and a reader that does not share writes, are refused.
        let e = lock(&open(&p), &p, md(true, false)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Locked);
        assert!(
            e.to_string().contains("Failed to get \"write\" lock"),
            "{e}"
        );
        let e = lock(&open(&p), &p, md(false, false)).unwrap_err();
        assert!(
            e.to_string()
                .contains("Failed to get shared \"write\" lock"),
            "{e}"
        );
        // A force-share reader gets in.
        lock(&open(&p), &p, md(false, true)).unwrap();
        drop(writer);
        // Once the writer is gone, readers share with each other but keep writers out.
        let r1 = open(&p);
        lock(&r1, &p, md(false, false)).unwrap();
        let r2 = open(&p);
        lock(&r2, &p, md(false, false)).unwrap();
        let refused = open(&p);
        let e = lock(&refused, &p, md(true, false)).unwrap_err();
        assert!(
            e.to_string().contains("Failed to get \"write\" lock"),
            "{e}"
        );
        drop((r1, r2));
        // The refused attempt left no lock behind although its file is still open.
        lock(&open(&p), &p, md(true, false)).unwrap();
        drop(refused);
    }
}
