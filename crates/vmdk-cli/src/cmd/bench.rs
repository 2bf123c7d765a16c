//! `vmdk bench`: qemu-img bench's simple benchmark (a number of same-sized reads or writes,
//! some in parallel, at offsets stepping through the image), with its output lines, so the
//! two can be run side by side on one image.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};

use crate::opts::{open_vmdk, OpenArgs};
use vmdk::qemu_syntax::parse_size;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of requests.
    #[arg(short = 'c', long = "count", default_value_t = 75000)]
    count: u64,
    /// Requests in flight at once.
    #[arg(short = 'd', long = "depth", default_value_t = 64)]
    depth: u64,
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Offset of the first request.
    #[arg(
        short = 'o',
        long = "offset",
        value_name = "OFFSET",
        default_value = "0"
    )]
    offset: String,
    /// Size of each request.
    #[arg(
        short = 's',
        long = "buffer-size",
        value_name = "SIZE",
        default_value = "4096"
    )]
    buffer_size: String,
    /// Increment between request offsets (default: the request size).
    #[arg(short = 'S', long = "step-size", value_name = "SIZE")]
    step_size: Option<String>,
    /// Cache mode: none, directsync and writethrough make each write durable; writeback
    /// (default) and unsafe do not.
    #[arg(
        short = 't',
        long = "cache",
        value_name = "CACHE",
        default_value = "writeback"
    )]
    cache: String,
    /// AIO backend (accepted for compatibility; requests run on threads).
    #[arg(short = 'i', long = "aio", value_name = "AIO")]
    aio: Option<String>,
    /// Native AIO (accepted for compatibility).
    #[arg(short = 'n', long = "native")]
    native: bool,
    /// Write instead of read.
    #[arg(short = 'w', long = "write")]
    write: bool,
    /// Byte written by write requests.
    #[arg(long, default_value_t = 0)]
    pattern: u8,
    /// Flush after this many requests (0: never).
    #[arg(long = "flush-interval", default_value_t = 0)]
    flush_interval: u64,
    /// Do not wait for requests in flight before a flush (accepted; flushes cover what has
    /// completed).
    #[arg(long = "no-drain")]
    no_drain: bool,
    /// Quiet.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
}

pub fn run(a: Args) -> Result<u8> {
    let size = parse_size(&a.buffer_size)?;
    let step = match &a.step_size {
        Some(s) => parse_size(s)?,
        None => size,
    };
    let offset = parse_size(&a.offset)?;
    if a.depth == 0 || size == 0 {
        bail!("Invalid queue depth or buffer size specified");
    }
    let durable = match a.cache.as_str() {
        "writeback" | "unsafe" => false,
        "none" | "directsync" | "writethrough" => true,
        other => bail!("Invalid cache mode '{other}'"),
    };
    let _ = (&a.aio, a.native, a.no_drain);
    let opts = a.open.options().writable(a.write).durable(durable);
    let img = open_vmdk(&a.image, a.format.as_deref(), &opts)?;
    let image_size = img.size();
    if size > image_size {
        bail!("Buffer size is larger than the image");
    }
    if !a.quiet {
        println!(
            "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step \
             size {})",
            a.count,
            if a.write { "write" } else { "read" },
            size,
            a.depth,
            offset,
            step
        );
        if a.flush_interval > 0 {
            println!("Sending flush every {} requests", a.flush_interval);
        }
    }
    // qemu-img bench wraps to offset 0 when a request would pass the end of the image.
    let offset_of = |i: u64| -> u64 {
        let span = image_size - size + 1;
        let o = offset.wrapping_add(i.wrapping_mul(step));
        if span == 0 {
            0
        } else {
            o % span
        }
    };
    let next = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..a.depth.min(a.count.max(1)) {
            s.spawn(|| {
                let mut buf = vec![a.pattern; size as usize];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.count {
                        break;
                    }
                    let off = offset_of(i);
                    let r = if a.write {
                        img.write_at(&buf, off)
                    } else {
                        img.read_at(&mut buf, off)
                    };
                    if let Err(e) = r {
                        eprintln!("vmdk: request at {off} failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if a.flush_interval > 0 && (i + 1).is_multiple_of(a.flush_interval) {
                        if let Err(e) = img.flush() {
                            eprintln!("vmdk: flush failed: {e:#}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    if a.write {
        img.flush()?;
    }
    let secs = start.elapsed().as_secs_f64();
    if failed.load(Ordering::Relaxed) > 0 {
        return Ok(1);
    }
    if !a.quiet {
        println!("Run completed in {secs:.3} seconds.");
    }
    Ok(0)
}
