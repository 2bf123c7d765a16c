//! `vmdk.create` and `vmdk.convert`: the library's `create` and `convert_to_vmdk` /
//! `convert_to_qcow2` / `convert_to_raw`, with the GIL released while they run.

use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::prelude::*;
use vmdk::ops::create_options::VmdkOptions;
use vmdk::qcow2::{Compat, Qcow2CreateOptions};
use vmdk::{AdapterType, ConvertOptions, CreateOptions, ImageFormat, Subformat};

use crate::errors::to_py;
use crate::image::open_options;

/// qemu-img's vmdk creation options.
#[allow(clippy::too_many_arguments)]
fn create_options(
    subformat: &str,
    adapter_type: &str,
    backing: Option<String>,
    hwversion: Option<String>,
    toolsversion: Option<String>,
    compat6: bool,
    zeroed_grain: bool,
    allow_paths: Vec<PathBuf>,
) -> PyResult<CreateOptions> {
    Ok(CreateOptions {
        subformat: Subformat::parse(subformat).map_err(to_py)?,
        adapter_type: AdapterType::parse(adapter_type)
            .map_err(|e| to_py(vmdk::Error::invalid(e.to_string())))?,
        backing_file: backing,
        hwversion,
        toolsversion,
        compat6,
        zeroed_grain,
        allow_paths,
        namespace: Some(crate::namespace()),
        ..Default::default()
    })
}

/// `options`, qemu-img's `-o` text (`"subformat=streamOptimized,compat6=on"`), split as
/// qemu does; `None` gives none.
fn qemu_options(options: Option<&str>) -> PyResult<Vec<(String, String)>> {
    vmdk::qemu_syntax::split_options(options.as_slice()).map_err(to_py)
}

/// Create a new, empty image of `size` bytes at `path` (as `qemu-img create -f vmdk`).
/// `options` takes qemu-img's `-o` text too, applied after the keywords; without a size
/// (here or as `size=` in `options`) the backing file's size is taken, as qemu-img does.
#[pyfunction]
#[pyo3(signature = (path, size=None, *, subformat="monolithicSparse", adapter_type="ide",
                    backing=None, hwversion=None, toolsversion=None, compat6=false,
                    zeroed_grain=false, allow_paths=Vec::new(), options=None))]
#[allow(clippy::too_many_arguments)]
pub fn create(
    py: Python<'_>,
    path: PathBuf,
    size: Option<u64>,
    subformat: &str,
    adapter_type: &str,
    backing: Option<String>,
    hwversion: Option<String>,
    toolsversion: Option<String>,
    compat6: bool,
    zeroed_grain: bool,
    allow_paths: Vec<PathBuf>,
    options: Option<&str>,
) -> PyResult<()> {
    let opts = create_options(
        subformat,
        adapter_type,
        backing,
        hwversion,
        toolsversion,
        compat6,
        zeroed_grain,
        allow_paths,
    )?;
    // The `-o` text goes over the keywords, with create's own parser.
    let v = VmdkOptions::parse_onto(opts, &qemu_options(options)?, true).map_err(to_py)?;
    py.allow_threads(|| {
        if v.backing_fmt.is_some() {
            vmdk::ops::create_options::check_backing_format(
                &path,
                &v.create,
                v.backing_fmt.as_deref(),
                false,
            )?;
        }
        let size = match v.size.or(size) {
            Some(s) => s,
            None => vmdk::ops::create_options::size_from_backing(&path, &v.create, false)?,
        };
        vmdk::create(&path, size, &v.create)
    })
    .map_err(to_py)
}

/// What `convert` writes.
enum Target {
    Raw,
    Vmdk(CreateOptions),
    Qcow2(Qcow2CreateOptions),
}

/// Copy `src` (a VMDK or qcow2 image or a raw file; `src_format` "vmdk"/"qcow2"/"raw",
/// probed when None) to a new image `dst`: `format="vmdk"` in `subformat`, `format="qcow2"`
/// (`cluster_size`, `compat` "0.10"/"1.1", `lazy_refcounts`), or `format="raw"`; `options`
/// takes qemu-img's `-o` text for the output format as well. `durable=True` makes the
/// output durable before returning (qemu-img's `-t none`/`writethrough`).
/// `progress`, if given, is called as `progress(done, total)` (bytes) from the converting
/// threads; an exception it raises is re-raised once the conversion has ended (the
/// conversion itself cannot be interrupted half way).
#[pyfunction]
#[pyo3(signature = (src, dst, *, format="vmdk", subformat="monolithicSparse", compress=false,
                    progress=None, src_format=None, adapter_type="ide", threads=0,
                    allow_paths=Vec::new(), ignore_cid_mismatch=false, cluster_size=None,
                    compat=None, lazy_refcounts=false, options=None, durable=false))]
#[allow(clippy::too_many_arguments)]
pub fn convert(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    format: &str,
    subformat: &str,
    compress: bool,
    progress: Option<Py<PyAny>>,
    src_format: Option<String>,
    adapter_type: &str,
    threads: usize,
    allow_paths: Vec<PathBuf>,
    ignore_cid_mismatch: bool,
    cluster_size: Option<u64>,
    compat: Option<String>,
    lazy_refcounts: bool,
    options: Option<&str>,
    durable: bool,
) -> PyResult<()> {
    let options = qemu_options(options)?;
    if format != "qcow2" && (cluster_size.is_some() || compat.is_some() || lazy_refcounts) {
        return Err(to_py(vmdk::Error::invalid(
            "cluster_size, compat and lazy_refcounts are qcow2 options (format=\"qcow2\")",
        )));
    }
    // A Python caller names formats as qemu does; the one parser of those names decides.
    let mut compression_level = None;
    let target = match format.parse::<ImageFormat>() {
        Ok(ImageFormat::Vmdk) => {
            let c = create_options(
                subformat,
                adapter_type,
                None,
                None,
                None,
                false,
                false,
                Vec::new(),
            )?;
            // convert takes the backing file and the size from elsewhere, as qemu-img does.
            let v = VmdkOptions::parse_onto(c, &options, false).map_err(to_py)?;
            compression_level = v.compression_level;
            Target::Vmdk(v.create)
        }
        Ok(ImageFormat::Qcow2) => {
            let mut q = Qcow2CreateOptions {
                lazy_refcounts,
                ..Default::default()
            };
            if let Some(c) = cluster_size {
                q.cluster_size = c;
            }
            if let Some(c) = &compat {
                q.compat = Compat::parse(c).map_err(to_py)?;
            }
            q.apply_options(&options).map_err(to_py)?;
            Target::Qcow2(q)
        }
        Ok(ImageFormat::Raw) => {
            if let Some((k, _)) = options.first() {
                return Err(to_py(vmdk::Error::invalid(format!(
                    "Invalid parameter '{k}'"
                ))));
            }
            Target::Raw
        }
        _ => {
            return Err(to_py(vmdk::Error::invalid(format!(
                "unknown output format '{format}' (expected vmdk, qcow2 or raw)"
            ))))
        }
    };
    let mut copts = ConvertOptions {
        threads,
        compress,
        durable,
        target_namespace: Some(crate::namespace()),
        ..Default::default()
    };
    if let Some(l) = compression_level {
        copts.compression_level = l;
    }
    let oopts = open_options(false, allow_paths, false, ignore_cid_mismatch, false, true);
    let failed: Mutex<Option<PyErr>> = Mutex::new(None);
    let report = |done: u64, total: u64| {
        let Some(cb) = &progress else { return };
        let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.is_some() {
            return;
        }
        Python::with_gil(|py| {
            if let Err(e) = cb.call1(py, (done, total)) {
                *failed = Some(e);
            }
        });
    };
    let result = py.allow_threads(|| {
        let src_format = src_format
            .map(|f| f.parse::<ImageFormat>().map_err(|e| e.with_path(&src)))
            .transpose()?;
        let src = vmdk::open_disk(&src, src_format, &oopts)?;
        match &target {
            Target::Vmdk(c) => vmdk::ops::convert::convert_to_vmdk(&*src, &dst, c, &copts, &report),
            Target::Qcow2(c) => {
                vmdk::ops::convert::convert_to_qcow2(&*src, &dst, c, &copts, &report)
            }
            Target::Raw => vmdk::ops::convert::convert_to_raw(&*src, &dst, &copts, &report),
        }
    });
    result.map_err(to_py)?;
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(())
}
