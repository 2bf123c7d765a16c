//! The native `Image` class: an open image shared by every Python thread. The GIL is
//! released around every library call, so reads from several threads run in parallel
//! (`vmdk::Image` is `Send + Sync`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use vmdk::{Error, ErrorKind, OpenOptions};

use crate::errors::to_py;
use crate::info::{check_report, ToPy};
use vmdk::report::info::image_info;
use vmdk::report::map::{merged_entries, MapReporter};

/// An open VMDK image (subclassed by `vmdk.Image` in Python).
#[pyclass(module = "vmdk._vmdk", name = "Image", subclass, frozen)]
pub struct Image {
    /// `None` once closed. Each call clones the `Arc` and releases the lock before any I/O,
    /// so `close` never waits for reads, and the image itself is freed when the last
    /// running call ends.
    inner: RwLock<Option<Arc<vmdk::Image>>>,
    /// The path as given: `info` and `map` show file names the way the CLI shows the ones
    /// given on its command line.
    name: String,
    writable: bool,
    /// What backs file-object images (vmdk.pyvmdk): dropped with the image.
    _keep: Option<tempfile::TempDir>,
}

impl Image {
    /// Wrap an image the library opened.
    pub fn from_parts(img: vmdk::Image, name: String, keep: Option<tempfile::TempDir>) -> Self {
        Image {
            writable: img.is_writable(),
            inner: RwLock::new(Some(Arc::new(img))),
            name,
            _keep: keep,
        }
    }

    /// The open image, or `ValueError` once closed (as for closed Python files).
    pub fn get(&self) -> PyResult<Arc<vmdk::Image>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| PyValueError::new_err("I/O operation on closed image"))
    }
}

/// The library's options for `vmdk.open`'s keywords.
pub fn open_options(
    writable: bool,
    allow_paths: Vec<PathBuf>,
    allow_unsafe_paths: bool,
    ignore_cid_mismatch: bool,
    force_share: bool,
    open_backing: bool,
) -> OpenOptions {
    let mut o = OpenOptions::new()
        .writable(writable)
        .allow_unsafe_paths(allow_unsafe_paths)
        .ignore_cid_mismatch(ignore_cid_mismatch)
        .force_share(force_share)
        .open_backing(open_backing)
        .in_namespace(crate::namespace());
    o.allow_paths = allow_paths;
    o
}

/// `offset + len`, refusing what lies past `size` the way the library does.
fn end_of(offset: u64, len: u64, size: u64) -> PyResult<u64> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(end),
        _ => Err(to_py(Error::new(
            ErrorKind::InvalidArgument,
            format!("range {offset}+{len} lies past the end of the disk ({size} bytes)"),
        ))),
    }
}

#[pymethods]
impl Image {
    /// Open `path`. See `vmdk.open` for the keywords.
    #[new]
    // One argument per keyword of `vmdk.open`, as Python callers spell them.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (path, *, writable=false, allow_paths=Vec::new(), allow_unsafe_paths=false,
                        ignore_cid_mismatch=false, force_share=false, open_backing=true))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        writable: bool,
        allow_paths: Vec<PathBuf>,
        allow_unsafe_paths: bool,
        ignore_cid_mismatch: bool,
        force_share: bool,
        open_backing: bool,
    ) -> PyResult<Self> {
        let opts = open_options(
            writable,
            allow_paths,
            allow_unsafe_paths,
            ignore_cid_mismatch,
            force_share,
            open_backing,
        );
        let img = py
            .allow_threads(|| vmdk::Image::open_with(&path, &opts))
            .map_err(to_py)?;
        Ok(Image::from_parts(
            img,
            path.to_string_lossy().into_owned(),
            None,
        ))
    }

    /// Virtual size in bytes.
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.get()?.size())
    }

    /// The path the image was opened from.
    #[getter]
    fn path(&self) -> String {
        self.name.clone()
    }

    /// Whether the image was opened for writing.
    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }

    /// Whether the image has been closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// The descriptor's `createType` (e.g. `monolithicSparse`).
    #[getter]
    fn create_type(&self) -> PyResult<String> {
        Ok(self.get()?.create_type().to_string())
    }

    /// Up to `length` bytes at `offset`: fewer only where the disk ends (like `os.pread`).
    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        length: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let img = self.get()?;
        let n = length.min(img.size().saturating_sub(offset));
        let n = usize::try_from(n).map_err(|_| PyValueError::new_err("length too large"))?;
        PyBytes::new_with(py, n, |buf| {
            // The bytes object is not yet visible to any Python code, so other threads
            // cannot touch `buf` while the GIL is released.
            py.allow_threads(|| img.read_at(buf, offset)).map_err(to_py)
        })
    }

    /// Write `data` (bytes) at `offset`.
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let img = self.get()?;
        let bytes = data.downcast::<PyBytes>().map_err(|_| {
            PyTypeError::new_err("data must be bytes (vmdk.Image.write converts other buffers)")
        })?;
        let buf = bytes.as_bytes();
        end_of(offset, buf.len() as u64, img.size())?;
        // `bytes` is immutable and we hold a reference, so `buf` stays valid and unchanged
        // while the GIL is released.
        py.allow_threads(|| img.write_at(buf, offset))
            .map_err(to_py)
    }

    /// Make `[offset, offset+length)` read as zeros; with `may_unmap`, whole grains may be
    /// deallocated instead of written.
    #[pyo3(signature = (offset, length, *, may_unmap=false))]
    fn write_zeroes(
        &self,
        py: Python<'_>,
        offset: u64,
        length: u64,
        may_unmap: bool,
    ) -> PyResult<()> {
        let img = self.get()?;
        end_of(offset, length, img.size())?;
        py.allow_threads(|| img.write_zeroes(offset, length, may_unmap))
            .map_err(to_py)
    }

    /// Deallocate what can be deallocated in the range (advisory, like TRIM).
    fn discard(&self, py: Python<'_>, offset: u64, length: u64) -> PyResult<()> {
        let img = self.get()?;
        end_of(offset, length, img.size())?;
        py.allow_threads(|| img.discard(offset, length))
            .map_err(to_py)
    }

    /// Make every completed write durable.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let img = self.get()?;
        py.allow_threads(|| img.flush()).map_err(to_py)
    }

    /// Flush (if writable) and close. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(img) = taken {
            if img.is_writable() {
                py.allow_threads(|| img.flush()).map_err(to_py)?;
            }
            // Dropping the Arc closes the files (and releases the locks) unless a call on
            // another thread still uses them; it closes them when it ends.
            py.allow_threads(move || drop(img));
        }
        Ok(())
    }

    /// What each stretch of `[offset, offset+length)` holds, as the dicts
    /// `qemu-img map --output=json` prints.
    #[pyo3(signature = (offset=0, length=None))]
    fn map<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        length: Option<u64>,
    ) -> PyResult<Bound<'py, PyList>> {
        let img = self.get()?;
        let size = img.size();
        let end = length.map_or(size, |l| offset.saturating_add(l).min(size));
        let start = offset.min(end);
        let entries = py
            .allow_threads(|| {
                let mut reporter = MapReporter::for_image(&img, &self.name);
                merged_entries(&*img, &mut reporter, start, end)
            })
            .map_err(to_py)?;
        let out = PyList::empty(py);
        for e in entries {
            let d = pyo3::types::PyDict::new(py);
            d.set_item("start", e.start)?;
            d.set_item("length", e.length)?;
            d.set_item("depth", e.depth)?;
            d.set_item("present", e.present)?;
            d.set_item("zero", e.zero)?;
            d.set_item("data", e.data)?;
            d.set_item("compressed", e.compressed)?;
            if let Some(o) = e.offset {
                d.set_item("offset", o)?;
            }
            out.append(d)?;
        }
        Ok(out)
    }

    /// The dict `vmdk info --output=json` prints for this image.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let img = self.get()?;
        let node = py.allow_threads(|| image_info(&img, &self.name));
        node.to_py(py)
    }

    /// Check the image's consistency (not its backing chain): the dict `vmdk check
    /// --output=json` prints, plus `messages`, `clean` and `exit-code`.
    fn check<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let img = self.get()?;
        let report = py.allow_threads(|| vmdk::check(&img)).map_err(to_py)?;
        check_report(&report, &self.name).to_py(py)
    }

    /// The descriptor as pyvmdk reports it: a dict with `cid`, `parent_cid`, `create_type`,
    /// `parent_file_name_hint`, `extents` (as `parse_descriptor` returns them) and
    /// `total_sectors`.
    fn descriptor<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let img = self.get()?;
        crate::descriptor::descriptor_node(img.descriptor()).to_py(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "<vmdk.Image {:?}{}>",
            self.name,
            if self.closed() { " closed" } else { "" }
        )
    }
}
