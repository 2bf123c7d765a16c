//! Images read through Python file objects (pyvmdk's `open_file_object` and
//! `open_extent_data_files_file_objects`, which dfvfs uses to read images inside other
//! images or archives).
//!
//! The library opens files by path. So the files get stand-in names: empty placeholder
//! files in a private temporary directory, laid out as the descriptor names them, and a
//! [`StorageOpener`](vmdk::image::StorageOpener) that hands the library the Python file
//! object for each placeholder. Path checks, extent resolution and every read then work
//! exactly as for files on disk, and nothing outside the temporary directory is touched.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use vmdk::image::StorageOpener;
use vmdk::Storage;

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

/// A placeholder's relative path: plain names only (no absolute paths, no `..`), so every
/// placeholder stays inside the temporary directory.
fn plain_relative(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
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
    let dir = tempfile::Builder::new()
        .prefix("vmdk-fileobj-")
        .tempdir()
        .map_err(|e| to_py(vmdk::Error::io(e, "creating a temporary directory")))?;
    let root = dir
        .path()
        .canonicalize()
        .map_err(|e| to_py(vmdk::Error::io(e, "creating a temporary directory")))?;
    let mut by_path: HashMap<PathBuf, Arc<PyFileStorage>> = HashMap::new();
    for (name, obj) in files {
        let rel = plain_relative(&name).ok_or_else(|| {
            PyValueError::new_err(format!(
                "file name {name:?} must be relative, without '..' (as the descriptor names it)"
            ))
        })?;
        let at = root.join(&rel);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                to_py(vmdk::Error::io(e, "creating a placeholder").with_path(parent))
            })?;
        }
        std::fs::File::create(&at)
            .map_err(|e| to_py(vmdk::Error::io(e, "creating a placeholder").with_path(&at)))?;
        by_path.insert(
            at,
            Arc::new(PyFileStorage {
                obj,
                name,
                cursor: Mutex::new(()),
            }),
        );
    }
    let main_rel = plain_relative(&main)
        .ok_or_else(|| PyValueError::new_err(format!("bad main file name {main:?}")))?;
    let main_path = root.join(main_rel);
    let by_path = Arc::new(by_path);
    let opener = StorageOpener(Arc::new(move |path: &Path, writable: bool| {
        if writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "images read through file objects are read-only",
            ));
        }
        let key = path.canonicalize()?;
        match by_path.get(&key) {
            Some(s) => Ok(s.clone() as Arc<dyn Storage>),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no file object was given for this file",
            )),
        }
    }));
    let mut opts = vmdk::OpenOptions::new().open_backing(false).locking(false);
    opts.storage_opener = Some(opener);
    let img = py
        .allow_threads(|| vmdk::Image::open_with(&main_path, &opts))
        .map_err(to_py)?;
    Ok(Image::from_parts(img, main, Some(dir)))
}
