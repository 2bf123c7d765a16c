//! `--fork`: put a server in the background once it is ready, as qemu-nbd does. The
//! parent waits until the child says it is running, then exits 0, so a script can connect
//! as soon as the command returns.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;

/// The child's promise to tell the waiting parent that it is up.
pub struct Ready(Option<std::fs::File>);

impl Drop for Ready {
    /// Dropped without [`Ready::signal`]: the command is failing. The pipe stays open until
    /// the process exits, so the parent (which exits 1 when the pipe closes) returns only
    /// after the child has printed why.
    fn drop(&mut self) {
        if let Some(pipe) = self.0.take() {
            std::mem::forget(pipe);
        }
    }
}

impl Ready {
    /// Let the parent exit 0: everything a caller of `--fork` may rely on (the listening
    /// socket, the pid file) exists now.
    pub fn signal(mut self) -> std::io::Result<()> {
        if let Some(mut pipe) = self.0.take() {
            pipe.write_all(b"1")?;
        }
        // The standard descriptors go to /dev/null, as qemu-nbd's do: whoever started us (a
        // script reading our output to its end) must not wait for the server to exit.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(null.as_raw_fd(), 2);
            }
        }
        Ok(())
    }
}

/// Fork; the parent waits for the child's [`Ready::signal`] and exits (0 if it came, 1 if
/// the child died first), the child returns and carries on as the server, detached from the
/// terminal's session.
///
/// Must be called while the process has one thread (serve and mount call it before they
/// open the image, whose object-storage client starts threads): `fork` copies only the
/// calling thread, and any lock another thread held would stay locked forever in the child.
pub fn detach() -> std::io::Result<Ready> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we pass, which lives for the call.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the caller guarantees the process is single-threaded here (the server and
    // signal threads start after this call), so the child's copy of the address space is
    // consistent: no lock is held by a thread that does not exist in the child.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid > 0 {
        // Parent: wait for one byte (the child is serving) or end of file (it died).
        // SAFETY: fds[1] is our copy of the pipe's write end, closed once here; fds[0] is
        // owned by the File from here on.
        unsafe { libc::close(fds[1]) };
        let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let mut b = [0u8; 1];
        let ok = matches!(r.read(&mut b), Ok(1));
        std::process::exit(if ok { 0 } else { 1 });
    }
    // Child: leave the terminal's session, tell the parent we are up.
    // SAFETY: setsid takes no pointers; fds[0] is the child's copy of the read end.
    unsafe {
        libc::setsid();
        libc::close(fds[0]);
    }
    // SAFETY: fds[1] is the child's copy of the write end, owned by the File from here on.
    let w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    Ok(Ready(Some(w)))
}
