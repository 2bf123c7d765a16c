//! The library's one public error type: a kind, a message naming what is wrong, the file it
//! concerns, and the underlying cause where there is one.
//!
//! An error's message is its own context only: the cause's text is never copied into it but
//! reached through [`std::error::Error::source`], so printing an error's chain (as `{:#}`
//! does, or the CLI) says each thing once.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::text::Printable;

/// What class of problem an [`Error`] reports. Callers match on this; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The operating system refused or failed an I/O operation.
    Io,
    /// The file is not a VMDK image (or not one we recognise).
    NotVmdk,
    /// The file is a VMDK image but its metadata is malformed, truncated or inconsistent.
    Corrupt,
    /// The image uses a feature or variant this library does not handle.
    Unsupported,
    /// An extent or backing path leaves the image's directory and unsafe paths were not allowed.
    UnsafePath,
    /// A child's `parentCID` does not match its parent's `CID`.
    CidMismatch,
    /// The backing chain is cyclic, too deep, or a backing file is missing.
    BackingChain,
    /// An access outside the virtual disk, or an invalid argument from the caller.
    InvalidArgument,
    /// A write was attempted on an image or extent that cannot be written.
    ReadOnly,
    /// A compressed grain could not be decompressed.
    Decompress,
    /// Another process holds the image in a way that excludes this use (QEMU's image
    /// locking: a writer excludes other writers and readers that do not share).
    Locked,
    /// The file is an image of another format (VHD, VDI, ...; qcow2 where only VMDK is read)
    /// than the operation reads.
    ForeignFormat,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::Io => "I/O error",
            ErrorKind::NotVmdk => "not a VMDK image",
            ErrorKind::Corrupt => "corrupt image",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::UnsafePath => "unsafe path",
            ErrorKind::CidMismatch => "CID mismatch",
            ErrorKind::BackingChain => "backing chain error",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Decompress => "decompression error",
            ErrorKind::Locked => "image locked",
            ErrorKind::ForeignFormat => "image of another format",
        };
        f.write_str(s)
    }
}

/// An error from the library. Its `Display` reads `'<file>': <message>` when a file is known;
/// the alternate form (`{:#}`) adds its causes, `'<file>': <message>: <cause>: ...`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    path: Option<PathBuf>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            path: None,
            message: message.into(),
            source: None,
        }
    }

    /// Shorthand for a [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// An I/O error with what we were doing when it happened.
    pub fn io(err: io::Error, what: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Io,
            path: None,
            message: what.into(),
            source: Some(Box::new(err)),
        }
    }

    /// Attach the file this error concerns, unless one is already attached (the innermost file
    /// is the most precise).
    pub fn with_path(mut self, path: impl AsRef<Path>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Attach an underlying cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What class of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file this error concerns, if known.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The message without the file name (and without the causes).
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Names in messages come from files (an extent line, a tar member), so the file and the
/// message are shown escaped ([`crate::text`]): an error is printed to a terminal.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = Printable(&self.message);
        match &self.path {
            Some(p) => write!(f, "'{}': {message}", Printable(&p.to_string_lossy()))?,
            None => write!(f, "{message}")?,
        }
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(c) = cause {
                write!(f, ": {}", Printable(&c.to_string()))?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl Error {
    /// The operating system's error behind this one, if it came from a failed system call
    /// (e.g. `ENOSPC` for a full file system).
    pub fn os_error(&self) -> Option<&io::Error> {
        let mut cause = self
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                return Some(io);
            }
            cause = c.source();
        }
        None
    }
}

/// Into an `io::Error` for callers speaking `std::io` (e.g. an NBD export). What the OS
/// said survives as the kind: a full file system stays [`io::ErrorKind::StorageFull`], so a
/// server can answer `ENOSPC` rather than a generic I/O error; the `vmdk` error (and
/// through it the original `io::Error`) stays reachable as the inner error.
impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        let kind = match e.kind {
            ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            ErrorKind::ReadOnly => io::ErrorKind::PermissionDenied,
            ErrorKind::Io => e.os_error().map_or(io::ErrorKind::Other, |o| o.kind()),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_survive_conversion() {
        let e = Error::io(io::Error::from_raw_os_error(28), "writing data").with_path("x.vmdk");
        assert_eq!(e.os_error().and_then(|o| o.raw_os_error()), Some(28));
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::StorageFull);
        assert_eq!(io.to_string(), "'x.vmdk': writing data");
        let inner = io.get_ref().unwrap().downcast_ref::<Error>().unwrap();
        assert_eq!(inner.os_error().unwrap().raw_os_error(), Some(28));
        let ro: io::Error = Error::new(ErrorKind::ReadOnly, "no").into();
        assert_eq!(ro.kind(), io::ErrorKind::PermissionDenied);
        let c: io::Error = Error::corrupt("bad").into();
        assert_eq!(c.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn message_is_own_context_and_alternate_adds_causes() {
        let e = Error::io(io::Error::from_raw_os_error(libc::ENOENT), "cannot open").with_path("x");
        assert_eq!(e.to_string(), "'x': cannot open");
        assert_eq!(e.message(), "cannot open");
        let os = io::Error::from_raw_os_error(libc::ENOENT).to_string();
        assert_eq!(format!("{e:#}"), format!("'x': cannot open: {os}"));
        let src = std::error::Error::source(&e).unwrap();
        assert_eq!(src.to_string(), os);
        assert!(src.source().is_none());
        let plain = Error::corrupt("bad").with_path("y");
        assert_eq!(format!("{plain:#}"), plain.to_string());
    }
}
