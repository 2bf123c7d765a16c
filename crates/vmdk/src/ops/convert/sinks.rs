//! Where conversions write: raw files, sparse VMDK images (through [`Image::write_at`](crate::Image::write_at)) and
//! streamOptimized images (through [`StreamWriter`]).

use std::path::Path;

use super::options::*;
use super::pipeline::*;
use crate::error::{Error, Result};
use crate::extent::GrainEncoder;
use crate::extent::{MapEntry, MapTarget};
use crate::format::is_zero;
use crate::format::SECTOR_SIZE;
use crate::image::Disk;
use crate::image::OpenOptions;
use crate::ops::create::refuse_to_overwrite;
use crate::ops::create::{CreateOptions, Subformat};
use crate::ops::stream_writer::StreamWriter;
use crate::storage::aligned_buf::AlignedBuf;

/// Write `src` to `dst` as a sparse raw file (holes where the source has zeros).
///
/// The output is `src.size()` rounded up to 512 bytes long, like qemu-img's. Stretches the
/// source maps as zero or unallocated are never read, and all-zero 4 KiB blocks inside data
/// are left as holes.
pub fn convert_to_raw(
    src: &dyn Disk,
    dst: &Path,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    let out_size = size
        .checked_next_multiple_of(SECTOR_SIZE)
        .ok_or_else(|| Error::invalid("image size too large"))?;
    let ns = opts
        .target_namespace
        .clone()
        .unwrap_or_else(|| crate::ova::default_namespace());
    refuse_to_overwrite_source(&*ns, dst, src)?;
    let block = if opts.min_sparse == 0 {
        RAW_ZERO_BLOCK
    } else {
        opts.min_sparse.next_multiple_of(SECTOR_SIZE)
    };
    if !opts.target_exists && ns.stream_only(dst) {
        return convert_to_raw_stream(src, dst, &*ns, out_size, opts, progress);
    }
    let out = if opts.target_exists {
        // Holes would leave stale contents where the disk has zeros: only regular files
        // (the namespace refuses devices unless told otherwise).
        let lock = crate::storage::lock::LockRequest::for_open(
            crate::storage::lock::FileRole::Data,
            true,
            false,
        );
        let mode = crate::storage::namespace::OpenMode {
            writable: true,
            lock: Some(lock),
            allow_devices: false,
        };
        ns.open(dst, mode)?
    } else {
        ns.create(dst, true)?
    };
    let current = out
        .len()
        .map_err(|e| Error::io(e, "getting file size").with_path(dst))?;
    if current < out_size {
        out.set_len(out_size)
            .map_err(|e| Error::io(e, "could not resize file").with_path(dst))?;
    }
    let threads = worker_count(opts.threads);
    let (ahead, max_task) = sizing(threads, 1, MAX_TASK);
    let pool = Pool::default();
    let planner = Planner::new(src, OUT_GRAIN, max_task, opts.want());
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Filled> {
        let buf = filled_buffer(&pool, opts, task, scratch)?;
        let runs = opts.runs(&buf, block);
        Ok((buf, runs))
    };
    let mut consume = |task: &Task, filled: Filled| -> Result<()> {
        write_runs(&pool, task, filled, |off, bytes| {
            out.write_at(bytes, off)
                .map_err(|e| Error::io(e, "writing").with_path(dst))
        })?;
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    // No sync unless asked, like qemu-img convert's default cache mode.
    if opts.durable {
        out.flush()
            .map_err(|e| Error::io(e, "flushing").with_path(dst))?;
    }
    progress(size, size);
    Ok(())
}

/// [`convert_to_raw`] into a destination written front to back only (an upload): tasks go
/// out in disk order, the stretches between them as zeros.
fn convert_to_raw_stream(
    src: &dyn Disk,
    dst: &Path,
    ns: &dyn crate::storage::namespace::Namespace,
    out_size: u64,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    use std::io::Write;
    let size = src.size();
    let mut sink = ns.create_stream(dst, true)?;
    let zeros = vec![0u8; 1 << 20];
    let fill_to = |sink: &mut dyn crate::storage::namespace::StreamSink, end: u64| -> Result<()> {
        while sink.position() < end {
            let n = (end - sink.position()).min(zeros.len() as u64) as usize;
            sink.write_all(&zeros[..n])
                .map_err(|e| Error::io(e, "writing").with_path(dst))?;
        }
        Ok(())
    };
    let threads = worker_count(opts.threads);
    let (ahead, max_task) = sizing(threads, 1, MAX_TASK);
    let pool = Pool::default();
    let planner = Planner::new(src, OUT_GRAIN, max_task, opts.want());
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<AlignedBuf> {
        filled_buffer(&pool, opts, task, scratch)
    };
    let mut consume = |task: &Task, buf: AlignedBuf| -> Result<()> {
        fill_to(&mut *sink, task.start)?;
        sink.write_all(&buf)
            .map_err(|e| Error::io(e, "writing").with_path(dst))?;
        pool.put(buf);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    fill_to(&mut *sink, out_size)?;
    sink.finish(opts.durable)?;
    progress(size, size);
    Ok(())
}

/// What a worker hands the stream writer: finished grain records and where each grain's
/// record starts.
struct Encoded {
    records: Vec<u8>,
    grains: Vec<(u64, usize)>,
}

/// Write `src` to a new VMDK image at `dst`.
///
/// streamOptimized output is written by [`StreamWriter`] in VMware's layout, compressing
/// grains on all worker threads; all-zero grains are left out. Other subformats are made
/// with [`crate::ops::create::create`] and filled with [`Image::write_at`](crate::Image::write_at) in large grain-aligned
/// runs, in disk order, skipping zero stretches and all-zero grains. When `create` names a
/// backing file, only what the source's own top layer holds is copied (the new image's
/// backing file is assumed to hold the rest, as with `qemu-img convert -B`), zeros included.
/// `opts.compress` is an error for flat subformats and, as in qemu-img, has no effect on
/// monolithicSparse/twoGbMaxExtentSparse (only stream images hold compressed grains).
pub fn convert_to_vmdk(
    src: &dyn Disk,
    dst: &Path,
    create: &CreateOptions,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    let threads = worker_count(opts.threads);
    if create.subformat == Subformat::StreamOptimized && !opts.target_exists {
        let ns = opts
            .target_namespace
            .clone()
            .unwrap_or_else(|| create.namespace());
        refuse_to_overwrite_source(&*ns, dst, src)?;
        let sink = ns.create_stream(dst, true)?;
        let writer = StreamWriter::new(sink, dst, size, create, opts.compression_level)?;
        return convert_to_stream(src, writer, opts, threads, progress);
    }
    if opts.compress && create.subformat.is_flat() {
        // qemu-img refuses this too ("invalid cluster size"); for hosted sparse
        // subformats it accepts -c and writes the grains uncompressed, and so do we.
        return Err(Error::invalid(
            "compression is not supported with flat subformats (use subformat=streamOptimized)",
        ));
    }
    let mut create = create.clone();
    if let Some(ns) = &opts.target_namespace {
        create.namespace = Some(ns.clone());
    }
    let create = &create;
    let ns = create.namespace();
    let open = OpenOptions {
        writable: true,
        durable: opts.durable,
        allow_unsafe_paths: create.allow_unsafe_paths,
        allow_paths: create.allow_paths.clone(),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let img = if opts.target_exists {
        refuse_to_overwrite_source(&*ns, dst, src)?;
        let img = open.open(dst)?;
        if img.size() < size {
            return Err(Error::invalid(format!(
                "the target is smaller ({} bytes) than the source ({size} bytes)",
                img.size()
            ))
            .with_path(dst));
        }
        img
    } else {
        crate::ops::create::create_sparing(dst, size, create, &src.file_ids())?;
        open.open(dst)?
    };
    // A new overlay (`-B`) takes only what the source's own top layer holds, as qemu-img
    // does: the backing file is taken to hold the rest.
    let new_overlay = create.backing_file.is_some() && !opts.target_exists;
    // Zeros must be written where the target may hold something else: under an overlay's
    // backing file, or in an existing target.
    let write_zeros =
        new_overlay || img.backing().is_some() || (opts.target_exists && !opts.target_is_zero);
    let fully = opts.min_sparse == 0;
    let (ahead, max_task) = sizing(threads, 1, MAX_TASK_SPARSE);
    let pool = Pool::default();
    let want: fn(&MapEntry) -> bool = if new_overlay {
        |e| e.depth == 0 && !matches!(e.target, MapTarget::Unallocated)
    } else if write_zeros || fully {
        |_| true
    } else {
        is_data
    };
    let planner = Planner::new(src, OUT_GRAIN, max_task, want);
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Filled> {
        let buf = filled_buffer(&pool, opts, task, scratch)?;
        let runs = if new_overlay {
            task.entries
                .iter()
                .map(|e| {
                    let s = (e.start - task.start) as usize;
                    (s, s + e.length as usize)
                })
                .collect()
        } else if write_zeros || fully {
            vec![(0, buf.len())]
        } else {
            nonzero_runs(&buf, OUT_GRAIN as usize)
        };
        Ok((buf, runs))
    };
    let mut consume = |task: &Task, filled: Filled| -> Result<()> {
        write_runs(&pool, task, filled, |off, bytes| {
            if write_zeros && !fully && is_zero(bytes) {
                img.write_zeroes(off, bytes.len() as u64, true)
            } else {
                img.write_at(bytes, off)
            }
        })?;
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    // No sync unless asked, like qemu-img convert's default cache mode.
    if opts.durable {
        img.flush()?;
    }
    progress(size, size);
    Ok(())
}

/// Compress `src` into `writer` (a stream image of `src.size()` bytes, just begun) on all
/// worker threads and finish it: the engine under streamOptimized output, whatever the
/// destination (a file, a tar member, an upload).
pub fn convert_to_stream(
    src: &dyn Disk,
    mut writer: StreamWriter,
    opts: &ConvertOptions,
    threads: usize,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    if writer.capacity() != size.next_multiple_of(SECTOR_SIZE) {
        return Err(Error::invalid(format!(
            "stream writer holds {} bytes, the source {size}",
            writer.capacity()
        )));
    }
    let threads = worker_count(threads);
    let level = opts.compression_level;
    GrainEncoder::new(level)?;
    let (ahead, max_task) = sizing(threads, 2, MAX_TASK);
    let pool = Pool::default();
    let records_pool: Pool<Vec<u8>> = Pool::default();
    let planner = Planner::new(src, OUT_GRAIN, max_task, is_data);
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Encoded> {
        let mut buf = filled_buffer(&pool, opts, task, scratch)?;
        // The disk's last grain is compressed up to the sector-rounded capacity (readers
        // such as qemu-img refuse a grain that inflates to less than they read from it).
        buf.resize(buf.len().next_multiple_of(SECTOR_SIZE as usize), 0);
        if scratch.encoder.is_none() {
            scratch.encoder = Some(GrainEncoder::new(level)?);
        }
        let enc = scratch.encoder.as_mut().expect("made above");
        let mut records = records_pool.get();
        records.clear();
        let mut grains = Vec::new();
        for (i, g) in buf.chunks(OUT_GRAIN as usize).enumerate() {
            if is_zero(g) {
                continue;
            }
            let vstart = task.start + i as u64 * OUT_GRAIN;
            grains.push((vstart / OUT_GRAIN, records.len()));
            enc.encode(vstart / SECTOR_SIZE, g, &mut records)?;
        }
        pool.put(buf);
        Ok(Encoded { records, grains })
    };
    let mut consume = |task: &Task, e: Encoded| -> Result<()> {
        writer.write_encoded(&e.records, &e.grains)?;
        records_pool.put(e.records);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    if opts.durable {
        writer.finish_sync()?;
    } else {
        writer.finish()?;
    }
    progress(size, size);
    Ok(())
}

/// A buffer from `pool` holding the source's bytes of `task`.
fn filled_buffer(
    pool: &Pool,
    opts: &ConvertOptions,
    task: &Task,
    scratch: &mut Scratch,
) -> Result<AlignedBuf> {
    let mut buf = pool.get();
    buf.resize((task.end - task.start) as usize, 0);
    opts.fill(task, &mut buf, scratch)?;
    Ok(buf)
}

/// Hand each run of a filled task to `write` (its offset in the disk, its bytes), in order,
/// then give the buffer back to `pool`.
fn write_runs(
    pool: &Pool,
    task: &Task,
    (buf, runs): Filled,
    mut write: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    for (s, e) in runs {
        write(task.start + s as u64, &buf[s..e])?;
    }
    pool.put(buf);
    Ok(())
}

/// Refuse to write the output `dst` over the source or one of its files, however named.
fn refuse_to_overwrite_source(
    ns: &dyn crate::storage::namespace::Namespace,
    dst: &Path,
    src: &dyn Disk,
) -> Result<()> {
    refuse_to_overwrite(
        ns,
        dst,
        &src.file_ids(),
        "the source image (or one of its files)",
    )
}
