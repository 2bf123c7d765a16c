//! Library errors as Python exceptions. The classes live in `vmdk/_errors.py` (Python
//! allows the multiple inheritance they need, e.g. an I/O error that is both a
//! `vmdk.Error` and an `OSError`); this file only picks the class for an
//! [`vmdk::ErrorKind`] and fills in the attributes.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use vmdk::ErrorKind;

/// The `vmdk._errors` class for a library error kind.
fn class_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "IoError",
        ErrorKind::NotVmdk => "NotVmdkError",
        ErrorKind::Corrupt => "CorruptImageError",
        ErrorKind::Unsupported => "UnsupportedError",
        ErrorKind::UnsafePath => "UnsafePathError",
        ErrorKind::CidMismatch => "CidMismatchError",
        ErrorKind::BackingChain => "BackingChainError",
        ErrorKind::InvalidArgument => "InvalidArgumentError",
        ErrorKind::ReadOnly => "ReadOnlyError",
        ErrorKind::Decompress => "DecompressError",
        ErrorKind::Locked => "LockedError",
        ErrorKind::ForeignFormat => "ForeignFormatError",
        // The kind enum is non-exhaustive: a new kind is still a vmdk.Error.
        _ => "Error",
    }
}

/// A short, stable name of the kind, for `Error.kind`.
fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Io => "io",
        ErrorKind::NotVmdk => "not-vmdk",
        ErrorKind::Corrupt => "corrupt",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::UnsafePath => "unsafe-path",
        ErrorKind::CidMismatch => "cid-mismatch",
        ErrorKind::BackingChain => "backing-chain",
        ErrorKind::InvalidArgument => "invalid-argument",
        ErrorKind::ReadOnly => "read-only",
        ErrorKind::Decompress => "decompress",
        ErrorKind::Locked => "locked",
        ErrorKind::ForeignFormat => "foreign-format",
        _ => "other",
    }
}

/// The Python exception for a library error: `vmdk._errors.<Class>(message, kind, path,
/// errno)`, where `message` is the library's full text (`'<file>': <what>`).
pub fn to_py(e: vmdk::Error) -> PyErr {
    Python::with_gil(|py| match build(py, &e) {
        Ok(err) => err,
        // Only if the package is broken (vmdk._errors missing): still say what happened.
        Err(import_failure) => {
            let err = PyRuntimeError::new_err(format!("{e:#}"));
            err.set_cause(py, Some(import_failure));
            err
        }
    })
}

fn build(py: Python<'_>, e: &vmdk::Error) -> PyResult<PyErr> {
    let module = py.import("vmdk._errors")?;
    let mut name = class_name(e.kind());
    let errno = e.os_error().and_then(|o| o.raw_os_error());
    if e.kind() == ErrorKind::Io {
        // The OSError subclasses Python code catches by errno.
        name = match errno {
            Some(libc::ENOENT) => "MissingFileError",
            Some(libc::EACCES) | Some(libc::EPERM) => "PermissionDeniedError",
            _ => name,
        };
    }
    let class = module.getattr(name)?;
    let path = e.path().map(|p| p.to_string_lossy().into_owned());
    let args = PyTuple::new(
        py,
        [
            format!("{e:#}").into_pyobject(py)?.into_any(),
            kind_name(e.kind()).into_pyobject(py)?.into_any(),
            path.into_pyobject(py)?,
            errno.into_pyobject(py)?,
            e.message().into_pyobject(py)?.into_any(),
        ],
    )?;
    let value = class.call1(args)?;
    Ok(PyErr::from_value(value))
}
