//! qcow2 as a conversion's output: the pipeline's workers read (and with `-c` compress)
//! whole clusters and decide what each becomes; the calling thread hands them, in disk
//! order, to [`Qcow2Writer`], which lays the image out in one pass.
//!
//! What a cluster becomes:
//! - without a backing file: all zeros -> unallocated (unless every byte is to be written,
//!   `-S 0`), anything else -> data;
//! - with a backing file (`-B`): the same bytes as the backing file -> unallocated (the
//!   backing file shows through), zeros over a non-zero backing -> a zero cluster
//!   (version 3; version 2 has none and stores zeros), anything else -> data.
//!
//! Data is compressed with `-c` when it shrinks: raw deflate with a 4 KiB window, QEMU's
//! qcow2 compression (QEMU inflates with `windowBits = -12`, so a larger window would
//! produce streams it refuses).

use std::cell::RefCell;
use std::path::Path;

use super::options::*;
use super::pipeline::*;
use crate::error::{Error, Result};
use crate::extent::MapEntry;
use crate::format::is_zero;
use crate::image::OpenOptions;
use crate::image::{Disk, ImageFormat};
use crate::ops::create::refuse_to_overwrite;
use crate::ops::open_disk;
use crate::qcow2::layout::{Preallocation, Qcow2CreateOptions};
use crate::qcow2::writer::Qcow2Writer;
use crate::storage::aligned_buf::AlignedBuf;

/// What one cluster of a task becomes.
enum Op {
    /// Plain data at this offset of the task's buffer.
    Data(usize),
    /// This range of the task's compressed bytes.
    Compressed(usize, usize),
    /// Reads as zeros over a backing file that does not.
    Zero,
}

/// A worker's finished task: the data (padded to whole clusters), the compressed streams,
/// and what each cluster that is not left unallocated becomes.
struct Clusters {
    buf: AlignedBuf,
    compressed: Vec<u8>,
    ops: Vec<(u64, Op)>,
}

thread_local! {
    /// Each worker's deflate state (level, compressor), kept across tasks.
    static DEFLATE: RefCell<Option<(u32, flate2::Compress)>> = const { RefCell::new(None) };
}

/// Raw-deflate `data` into `out` (appended) with QEMU's 4 KiB window; `false` (and `out`
/// unchanged) when the stream would not be smaller than `data`.
fn deflate_cluster(level: u32, data: &[u8], out: &mut Vec<u8>) -> Result<bool> {
    DEFLATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.as_ref().is_none_or(|(l, _)| *l != level) {
            let c = flate2::Compress::new_with_window_bits(
                flate2::Compression::new(level.min(9)),
                false,
                12,
            );
            *d = Some((level, c));
        }
        let (_, c) = d.as_mut().expect("set above");
        c.reset();
        let start = out.len();
        // Only streams shorter than a cluster are worth storing compressed (QEMU's rule).
        out.resize(start + data.len() - 1, 0);
        let status = c
            .compress(data, &mut out[start..], flate2::FlushCompress::Finish)
            .map_err(|e| Error::invalid(format!("compression failed: {e}")))?;
        if status == flate2::Status::StreamEnd {
            out.truncate(start + c.total_out() as usize);
            Ok(true)
        } else {
            out.truncate(start);
            Ok(false)
        }
    })
}

/// The backing file named by `create`, opened for comparing: its format (given or probed)
/// and the source it reads as.
fn open_backing(
    dst: &Path,
    create: &Qcow2CreateOptions,
    ns: &std::sync::Arc<dyn crate::storage::namespace::Namespace>,
) -> Result<Option<(String, Box<dyn Disk>)>> {
    let Some(name) = &create.backing_file else {
        return Ok(None);
    };
    let bpath = crate::storage::paths::directory_of(dst).join(name);
    let fail =
        |e: Error| Error::new(e.kind(), format!("could not open backing file: {e}")).with_path(dst);
    let fmt = match &create.backing_format {
        Some(f) => f
            .parse::<ImageFormat>()
            .map_err(|e| fail(e.with_path(&bpath)))?,
        None => ImageFormat::probe_in(&**ns, &bpath).map_err(fail)?,
    };
    // Like qemu-img, read the backing file without excluding its other users.
    let open = OpenOptions {
        allow_unsafe_paths: create.allow_unsafe_paths,
        allow_paths: create.allow_paths.clone(),
        force_share: true,
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let src = open_disk(&bpath, Some(fmt), &open).map_err(fail)?;
    Ok(Some((fmt.to_string(), src)))
}

/// Write `src` to a new qcow2 image at `dst` (see the module docs).
///
/// The output goes through `opts.target_namespace` (host files by default), created and
/// locked like every other output, as an [`AppendOutput`](crate::storage::namespace::AppendOutput):
/// front to back but for the header and L1 table, filled in last, so object storage can
/// take it as an upload (`preallocation=metadata`, which writes all over the file, cannot
/// go there). `opts.compress` stores clusters compressed; `opts.target_exists` (`-n`) is
/// refused.
pub fn convert_to_qcow2(
    src: &dyn Disk,
    dst: &Path,
    create: &Qcow2CreateOptions,
    opts: &ConvertOptions,
    progress: Progress,
) -> Result<()> {
    let size = src.size();
    let layout = create.layout(size)?;
    if opts.target_exists {
        return Err(Error::invalid(
            "writing into an existing qcow2 image (-n) is not supported; let convert create it",
        ));
    }
    if opts.compress && create.preallocation != Preallocation::Off {
        return Err(Error::invalid(
            "compression (-c) cannot be combined with preallocation",
        ));
    }
    let ns = opts
        .target_namespace
        .clone()
        .unwrap_or_else(|| crate::ova::default_namespace());
    if ns.stream_only(dst) && create.preallocation != Preallocation::Off {
        return Err(Error::invalid(
            "preallocation=metadata needs a destination it can write anywhere, and this one \
             is written front to back (an upload); leave preallocation off",
        )
        .with_path(dst));
    }
    let backing = open_backing(dst, create, &ns)?;
    let mut spare = src.file_ids();
    if let Some((_, b)) = &backing {
        refuse_to_overwrite(
            &*ns,
            dst,
            &b.file_ids(),
            "the backing file (or one of its files)",
        )?;
        spare.extend(b.file_ids());
    }
    refuse_to_overwrite(&*ns, dst, &spare, "the source image (or one of its files)")?;
    let mut create = create.clone();
    if let Some((fmt, _)) = &backing {
        create.backing_format = Some(fmt.clone());
    }
    let backing = backing.map(|(_, b)| b);
    let output = ns.create_append(dst, true)?;
    let mut writer = Qcow2Writer::new(output.storage(), dst, &create, layout)?;
    let cs = writer.cluster_size();
    let zero_clusters = writer.has_zero_clusters();
    let prealloc = create.preallocation != Preallocation::Off;

    let threads = worker_count(opts.threads);
    let align = cs.max(OUT_GRAIN);
    // Plain copies want small tasks (still in cache when the writer copies them out, as
    // for raw output); compressing ones bigger runs.
    let (factor, max) = if opts.compress || backing.is_some() {
        (2, MAX_TASK_SPARSE)
    } else {
        (1, MAX_TASK)
    };
    let (ahead, max_task) = sizing(threads, factor, max);
    let max_task = max_task.next_multiple_of(align);
    let every = opts.writes_everything();
    // With a backing file, zero stretches of the source matter too (they may hide data).
    let want: fn(&MapEntry) -> bool = if backing.is_some() || every {
        |_| true
    } else {
        is_data
    };
    let planner = Planner::new(src, align, max_task, want);
    let pool: Pool = Pool::default();
    let compressed_pool: Pool<Vec<u8>> = Pool::default();
    let level = opts.compression_level;
    progress(0, size);
    let produce = |task: &Task, scratch: &mut Scratch| -> Result<Clusters> {
        let len = (task.end - task.start) as usize;
        let mut buf = pool.get();
        buf.resize(len, 0);
        opts.fill(task, &mut buf, scratch)?;
        buf.resize(len.next_multiple_of(cs as usize), 0);
        let below = match &backing {
            Some(b) => Some(read_backing(&**b, task.start, buf.len(), scratch, &pool)?),
            None => None,
        };
        let mut compressed = compressed_pool.get();
        compressed.clear();
        let mut ops = Vec::new();
        for (i, c) in buf.chunks(cs as usize).enumerate() {
            let vc = task.start / cs + i as u64;
            let at = i * cs as usize;
            let zero = is_zero(c);
            match &below {
                Some(b) if b[at..at + c.len()] == *c => continue,
                Some(_) if zero && zero_clusters => {
                    ops.push((vc, Op::Zero));
                    continue;
                }
                None if zero && (!every || prealloc) => continue,
                _ => {}
            }
            let start = compressed.len();
            if opts.compress && deflate_cluster(level, c, &mut compressed)? {
                ops.push((vc, Op::Compressed(start, compressed.len())));
            } else {
                ops.push((vc, Op::Data(at)));
            }
        }
        if let Some(b) = below {
            pool.put(b);
        }
        Ok(Clusters {
            buf,
            compressed,
            ops,
        })
    };
    let mut consume = |task: &Task, c: Clusters| -> Result<()> {
        let mut i = 0;
        while i < c.ops.len() {
            let (vc, ref op) = c.ops[i];
            match *op {
                Op::Data(at) => {
                    // Runs of neighbouring plain clusters go out with one write.
                    let mut j = i + 1;
                    while j < c.ops.len()
                        && matches!(c.ops[j].1, Op::Data(a) if a == at + (j - i) * cs as usize)
                        && c.ops[j].0 == vc + (j - i) as u64
                    {
                        j += 1;
                    }
                    // Whole clusters: the last one's padding past the disk's end is zeros.
                    writer.write_data(vc, &c.buf[at..at + (j - i) * cs as usize])?;
                    i = j;
                    continue;
                }
                Op::Compressed(s, e) => writer.write_compressed(vc, &c.compressed[s..e])?,
                Op::Zero => writer.write_zero(vc)?,
            }
            i += 1;
        }
        pool.put(c.buf);
        compressed_pool.put(c.compressed);
        progress(task.end, size);
        Ok(())
    };
    run_pipeline(planner, threads, ahead, &produce, &mut consume)?;
    writer.finish()?;
    // No sync unless asked, like qemu-img convert's default cache mode. An upload is
    // completed here (dropped unfinished, on an error above, it is aborted).
    output.finish(opts.durable)?;
    progress(size, size);
    Ok(())
}

/// The backing file's bytes for `[start, start + len)` (zeros past its end), in a pooled
/// buffer, read through the same task filler as the source.
fn read_backing(
    b: &dyn Disk,
    start: u64,
    len: usize,
    scratch: &mut Scratch,
    pool: &Pool,
) -> Result<AlignedBuf> {
    let mut out = pool.get();
    out.clear();
    out.resize(len, 0);
    let bsize = b.size();
    if start < bsize {
        let end = (start + len as u64).min(bsize);
        let entries: Vec<MapEntry> = b
            .map(start, end - start)?
            .into_iter()
            .filter(is_data)
            .collect();
        if !entries.is_empty() {
            let task = Task {
                index: 0,
                start,
                end,
                entries,
            };
            fill_task(&task, &mut out[..(end - start) as usize], scratch)?;
        }
    }
    Ok(out)
}
