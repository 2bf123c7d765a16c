//! Images read through Python file objects (pyvmdk's `open_file_object` and
//! `open_extent_data_files_file_objects`, which dfvfs uses to read images inside other
//! images or archives).
//!
//! The library reaches files through a [`Namespace`]: here one whose files are the Python
//! file objects, under the names the descriptor spells. Extent resolution and the path
//! gate work exactly as for files on disk (lexically: there are no symlinks), and nothing on
//! disk is touched.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vmdk::storage::namespace::{Namespace, OpenMode};
use vmdk::{ErrorKind, FileId, Storage};

use crate::errors::to_py;
use crate::image::Image;

/// A read-only [`Storage`] over a Python file object (anything with `seek`, `read` and
/// `tell`). Reads take the GIL; a mutex keeps each seek+read pair together when several
/// threads read one object.
struct PyFileStorage {
    obj: Py<PyAny>,
    name: String,
    cursor: Mutex<()>,
}

impl std::fmt::Debug for PyFileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyFileStorage({:?})", self.name)
    }
}

/// A Python exception raised by the file object, as an `io::Error` (its text kept).
fn io_err(e: PyErr) -> io::Error {
    io::Error::other(format!("file object: {e}"))
}

impl Storage for PyFileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let _g = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        Python::with_gil(|py| {
            let obj = self.obj.bind(py);
            obj.call_method1("seek", (offset, 0)).map_err(io_err)?;
            let data = obj.call_method1("read", (buf.len(),)).map_err(io_err)?;
            let bytes = data
                .downcast::<PyBytes>()
                .map_err(|_| io::Error::other("file object's read() did not return bytes"))?
                .as_bytes();
            if bytes.len() > buf.len() {
                return Err(io::Error::other("file object's read() returned too much"));
            }
            buf[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        })
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "images read through file objects are read-only",
        ))
    }

    fn len(&self) -> io::Result<u64> {
        let _g = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        Python::with_gil(|py| {
            let obj = self.obj.bind(py);
            obj.call_method1("seek", (0, 2))
                .and_then(|_| obj.call_method0("tell"))
                .and_then(|t| t.extract::<u64>())
                .map_err(io_err)
        })
    }

    fn set_len(&self, _len: u64) -> io::Result<()> {
        self.write_at(&[], 0)
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A file name as the descriptor spells it: plain relative names only (no absolute paths,
/// no `..`).
fn plain_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
}

/// The files of one image, each a Python file object, by name. Read-only.
#[derive(Debug)]
struct FileObjectNamespace {
    files: HashMap<PathBuf, (u64, Arc<PyFileStorage>)>,
}

impl FileObjectNamespace {
    fn refuse(name: &Path, what: &str) -> vmdk::Error {
        vmdk::Error::new(
            ErrorKind::Unsupported,
            format!("images read through file objects are read-only; cannot {what}"),
        )
        .with_path(name)
    }
}

impl Namespace for FileObjectNamespace {
    // `resolve`: the default, lexical (file objects have no symlinks).
    fn open(&self, name: &Path, mode: OpenMode) -> vmdk::Result<Arc<dyn Storage>> {
        if mode.writable {
            return Err(Self::refuse(name, "open for writing"));
        }
        match self
            .files
            .get(&vmdk::storage::paths::normalize_lexically(name))
        {
            Some((_, s)) => Ok(s.clone()),
            None => Err(vmdk::Error::io(
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no file object was given for this file",
                ),
                "cannot open",
            )
            .with_path(name)),
        }
    }
    fn create(&self, name: &Path, _lock: bool) -> vmdk::Result<Arc<dyn Storage>> {
        Err(Self::refuse(name, "create files"))
    }
    fn remove(&self, name: &Path) -> vmdk::Result<()> {
        Err(Self::refuse(name, "remove files"))
    }
    fn identity(&self, name: &Path) -> vmdk::Result<Option<FileId>> {
        Ok(self
            .files
            .get(&vmdk::storage::paths::normalize_lexically(name))
            .map(|(ino, _)| FileId {
                dev: u64::MAX,
                ino: *ino,
            }))
    }
}

/// Open an image whose descriptor (or monolithic file) is `main` and whose files are the
/// `(name, file object)` pairs of `files`, names as the descriptor spells them (the main
/// file among them, under `main`). Read-only; backing files are not followed (pyvmdk
/// reads a child's unallocated grains as zeros unless a parent is set).
#[pyfunction]
pub fn open_file_objects(
    py: Python<'_>,
    main: String,
    files: Vec<(String, Py<PyAny>)>,
) -> PyResult<Image> {
    let mut by_name = HashMap::new();
    for (i, (name, obj)) in files.into_iter().enumerate() {
        let rel = plain_relative(&name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "file name {name:?} must be relative, without '..' (as the descriptor names it)"
            ))
        })?;
        let storage = Arc::new(PyFileStorage {
            obj,
            name,
            cursor: Mutex::new(()),
        });
        by_name.insert(
            vmdk::storage::paths::normalize_lexically(&rel),
            (i as u64 + 1, storage),
        );
    }
    let main_path = plain_relative(&main)
        .ok_or_else(|| PyValueError::new_err(format!("bad main file name {main:?}")))?;
    let ns = Arc::new(FileObjectNamespace { files: by_name });
    let opts = vmdk::OpenOptions::new()
        .open_backing(false)
        .locking(false)
        .in_namespace(ns);
    let img = py
        .allow_threads(|| vmdk::Image::open_with(&main_path, &opts))
        .map_err(to_py)?;
    Ok(Image::from_parts(img, main, None))
}
