//! `vmdk io`: qemu-io's command language over an image: `read`, `write`, `discard`, `map`,
//! `info`, `flush`. Output lines match qemu-io's; a failed command (including a pattern
//! mismatch) makes the exit status 1 but later commands still run.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vmdk::image::allocation::{allocated_bytes, AllocationRun, AllocationWalker};
use vmdk::Image;

use crate::opts::{open_vmdk, OpenArgs};
use vmdk::qemu_syntax::{cvtstr, parse_size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image format (only vmdk).
    #[arg(short = 'f', value_name = "FMT")]
    format: Option<String>,
    /// Open read-only (writes fail).
    #[arg(short = 'r', long = "read-only")]
    read_only: bool,
    /// A command to run (repeatable; run in order). Without any, commands are read from
    /// standard input, one per line.
    #[arg(short = 'c', long = "cmd", value_name = "CMD")]
    cmds: Vec<String>,
    #[command(flatten)]
    open: OpenArgs,
    /// The image.
    image: PathBuf,
}

/// Commands that never modify the image.
const READ_ONLY_COMMANDS: [&str; 18] = [
    "read",
    "r",
    "readv",
    "aio_read",
    "map",
    "info",
    "i",
    "flush",
    "f",
    "aio_flush",
    "help",
    "alloc",
    "length",
    "sleep",
    "close",
    "open",
    "quit",
    "q",
];

/// Largest single read or write buffer.
const MAX_IO: u64 = 1 << 31;

/// Each command's usage line, as `help CMD` prints it.
const COMMANDS: [(&str, &str); 19] = [
    ("aio_flush", "aio_flush -- completes all outstanding aio requests"),
    ("aio_read", "aio_read [-Cqv] [-P pattern] off len [len..] -- asynchronously reads a number of bytes"),
    ("aio_write", "aio_write [-Cfquz] [-P pattern] off len [len..] -- asynchronously writes a number of bytes"),
    ("alloc", "alloc offset [count] -- checks if offset is allocated in the file"),
    ("close", "close -- close the current open file"),
    ("discard", "discard [-Cq] off len -- discards a number of bytes at a specified offset (deallocating whole grains)"),
    ("flush", "flush -- flush all in-core file state to disk"),
    ("help", "help [command] -- help for one or all commands"),
    ("info", "info -- prints information about the current file"),
    ("length", "length -- gets the length of the current file"),
    ("map", "map -- prints the allocation state of the whole file"),
    ("open", "open [-r] [-U] [filename] -- open the file specified by path"),
    ("quit", "quit -- exit the program"),
    ("read", "read [-bCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset"),
    ("readv", "readv [-Cqv] [-P pattern] off len [len..] -- reads a number of bytes at a specified offset"),
    ("sleep", "sleep milliseconds -- waits for the given value in milliseconds"),
    ("truncate", "truncate [-m prealloc_mode] off -- truncates the current file at the given offset"),
    ("write", "write [-bcCfnquz] [-P pattern] off len -- writes a number of bytes at a specified offset"),
    ("writev", "writev [-Cfq] [-P pattern] off len [len..] -- writes a number of bytes at a specified offset"),
];

fn help(args: &[&str], out: &mut impl Write) -> Result<bool> {
    let canonical = |n: &str| {
        match n {
            "r" => "read",
            "w" => "write",
            "d" => "discard",
            "i" => "info",
            "f" => "flush",
            "q" => "quit",
            other => other,
        }
        .to_string()
    };
    match args {
        [] => {
            for (_, line) in COMMANDS {
                writeln!(out, "{line}")?;
            }
            writeln!(out, "\nUse 'help commandname' for extended help.")?;
            Ok(true)
        }
        [cmd] => match COMMANDS.iter().find(|(n, _)| *n == canonical(cmd)) {
            Some((_, line)) => {
                writeln!(out, "{line}")?;
                Ok(true)
            }
            None => bail!("command {cmd} not found"),
        },
        _ => bail!("wrong number of arguments (usage: help [command])"),
    }
}

pub fn run(a: Args) -> Result<u8> {
    let cmds: Vec<String> = if a.cmds.is_empty() {
        let mut v = Vec::new();
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                v.push(line);
            }
        }
        v
    } else {
        a.cmds.clone()
    };
    let writes = cmds.iter().any(|c| {
        c.split_whitespace()
            .next()
            .is_some_and(|w| !READ_ONLY_COMMANDS.contains(&w))
    });
    let writable = writes && !a.read_only;
    let opts = a.open.options().writable(writable);
    let mut img = Some(open_vmdk(&a.image, a.format.as_deref(), &opts)?);
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for c in &cmds {
        let words: Vec<&str> = c.split_whitespace().collect();
        let Some((&name, args)) = words.split_first() else {
            continue;
        };
        let needs_image = !matches!(name, "help" | "quit" | "q" | "open" | "sleep");
        if needs_image && img.is_none() {
            out.flush()?;
            eprintln!("no file open, try 'help open'");
            failed = true;
            continue;
        }
        let r = match (name, img.as_ref()) {
            ("quit" | "q", _) => break,
            ("help", _) => help(args, &mut out),
            ("sleep", _) => sleep(args),
            ("open", _) => {
                img = None;
                match open_cmd(args, &a, writable) {
                    Ok(i) => {
                        img = Some(i);
                        Ok(true)
                    }
                    Err(e) => {
                        writeln!(out, "open: {}", crate::render_error(&e))?;
                        Ok(false)
                    }
                }
            }
            ("close", Some(i)) => {
                let r = i.flush();
                img = None;
                r.map(|()| true).map_err(Into::into)
            }
            ("read" | "r", Some(i)) => read(i, args, READ_OPTS, &mut out),
            ("aio_read", Some(i)) => read(i, args, AIO_READ_OPTS, &mut out),
            ("readv", Some(i)) => readv(i, args, &mut out),
            ("write" | "w", Some(i)) => write(i, args, WRITE_OPTS, &mut out),
            ("aio_write", Some(i)) => write(i, args, AIO_WRITE_OPTS, &mut out),
            ("writev", Some(i)) => writev(i, args, &mut out),
            ("discard" | "d", Some(i)) => discard(i, args, &mut out),
            ("map", Some(i)) => map(i, args, &mut out),
            ("alloc", Some(i)) => alloc(i, args, &mut out),
            ("length", Some(i)) => {
                writeln!(out, "{}", cvtstr(i.size() as f64))?;
                Ok(true)
            }
            ("truncate", Some(_)) => {
                // Resizing rewrites metadata the open image caches: close, resize, reopen.
                let path = img.take().map(|i| i.path().to_path_buf()).expect("open");
                let r = truncate(&path, args, a.open.options());
                img = Some(open_vmdk(&path, a.format.as_deref(), &opts)?);
                r
            }
            ("info" | "i", Some(i)) => info(i, &mut out),
            ("flush" | "f" | "aio_flush", Some(i)) => flush(i, &mut out),
            _ => {
                out.flush()?;
                eprintln!("command \"{name}\" not found");
                Ok(false)
            }
        };
        match r {
            Ok(true) => {}
            Ok(false) => failed = true,
            Err(e) => {
                // Usage errors.
                writeln!(out, "{name}: {}", crate::render_error(&e))?;
                failed = true;
            }
        }
    }
    out.flush()?;
    if let Some(i) = img {
        i.flush()?;
    }
    Ok(u8::from(failed))
}

/// `open [-r] [-U] [file]`: the image again (or another), read-only with -r.
fn open_cmd(args: &[&str], a: &Args, writable: bool) -> Result<Image> {
    let o = Opts::parse(args, "rsnkUCdio:c:")?;
    let path = match o.args.as_slice() {
        [] => a.image.clone(),
        [p] => PathBuf::from(p),
        _ => bail!("wrong number of arguments (usage: open [-r] [-U] [filename])"),
    };
    let opts = a
        .open
        .options()
        .writable(writable && !o.has('r'))
        .force_share(a.open.force_share || o.has('U'));
    open_vmdk(&path, a.format.as_deref(), &opts)
}

/// `truncate [-m off] size`: resize the image (growing or shrinking).
fn truncate(path: &std::path::Path, args: &[&str], open: vmdk::OpenOptions) -> Result<bool> {
    let o = Opts::parse(args, "m:")?;
    if o.value('m').is_some_and(|m| m != "off") {
        bail!("only -m off is supported");
    }
    let [size] = o.args.as_slice() else {
        bail!("wrong number of arguments (usage: truncate [-m prealloc_mode] off)");
    };
    let size =
        parse_size(size).map_err(|_| anyhow::anyhow!("non-numeric truncate argument -- {size}"))?;
    let r = vmdk::ops::resize::ResizeOptions { shrink: true };
    vmdk::ops::resize::resize(path, size, &r, &open)?;
    Ok(true)
}

fn sleep(args: &[&str]) -> Result<bool> {
    let [ms] = args else {
        bail!("wrong number of arguments (usage: sleep milliseconds)");
    };
    let ms: u64 = ms
        .parse()
        .map_err(|_| anyhow::anyhow!("Invalid value '{ms}' for milliseconds"))?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(true)
}

/// Options and positional arguments, getopt style: `spec` lists option letters, `:` after
/// one that takes a value.
struct Opts {
    flags: Vec<(char, Option<String>)>,
    args: Vec<String>,
}

impl Opts {
    fn parse(words: &[&str], spec: &str) -> Result<Opts> {
        let takes = |c: char| spec.find(c).map(|i| spec[i + 1..].starts_with(':'));
        let mut flags = Vec::new();
        let mut args = Vec::new();
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if *w == "--" {
                args.extend(it.by_ref().map(|s| s.to_string()));
                break;
            }
            if w.len() > 1 && w.starts_with('-') {
                for (i, c) in w[1..].char_indices() {
                    match takes(c) {
                        None => bail!("invalid option -- '{c}'"),
                        Some(false) => flags.push((c, None)),
                        Some(true) => {
                            let rest = &w[1 + i + c.len_utf8()..];
                            let v = if !rest.is_empty() {
                                rest.to_string()
                            } else {
                                match it.next() {
                                    Some(v) => v.to_string(),
                                    None => bail!("option requires an argument -- '{c}'"),
                                }
                            };
                            flags.push((c, Some(v)));
                            break;
                        }
                    }
                }
            } else {
                args.push(w.to_string());
            }
        }
        Ok(Opts { flags, args })
    }

    fn has(&self, c: char) -> bool {
        self.flags.iter().any(|(f, _)| *f == c)
    }

    fn value(&self, c: char) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| *f == c)
            .and_then(|(_, v)| v.as_deref())
    }

    /// `off len`, qemu-io style numbers.
    fn offset_len(&self, usage: &str) -> Result<(u64, u64)> {
        if self.args.len() != 2 {
            bail!("wrong number of arguments (usage: {usage})");
        }
        let off = parse_size(&self.args[0])
            .map_err(|_| anyhow::anyhow!("non-numeric offset argument -- {}", self.args[0]))?;
        let len = parse_size(&self.args[1])
            .map_err(|_| anyhow::anyhow!("non-numeric length argument -- {}", self.args[1]))?;
        Ok((off, len))
    }
}

/// qemu-io's `parse_pattern`: a byte in C `strtol(..., 0)` notation.
fn parse_pattern(s: &str) -> Result<u8> {
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        i64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<i64>().ok()
    };
    match v {
        Some(v) if (0..=255).contains(&v) => Ok(v as u8),
        _ => bail!("{s} is not a valid pattern byte"),
    }
}

/// qemu-io's `timestr` for durations below an hour... and beyond.
fn timestr(t: Duration) -> String {
    let secs = t.as_secs();
    let frac = t.subsec_nanos() as f64 / 1e9;
    if secs == 0 {
        format!("{frac:05.2} sec")
    } else {
        format!(
            "{}:{:02}:{:05.2}",
            secs / 3600,
            (secs / 60) % 60,
            (secs % 60) as f64 + frac
        )
    }
}

/// qemu-io's `print_report`, or with `-C` its one machine-readable line
/// (`bytes,ops,h:mm:ss.ss,bytes/s,ops/s`).
fn report_as(
    out: &mut impl Write,
    machine: bool,
    op: &str,
    t: Duration,
    offset: u64,
    count: u64,
) -> std::io::Result<()> {
    if !machine {
        return report(out, op, t, offset, count);
    }
    let secs = t.as_secs_f64().max(1e-9);
    let whole = t.as_secs();
    let frac = t.subsec_nanos() as f64 / 1e9;
    writeln!(
        out,
        "{count},1,{}:{:02}:{:05.2},{:.3},{:.3}",
        whole / 3600,
        (whole / 60) % 60,
        (whole % 60) as f64 + frac,
        count as f64 / secs,
        1.0 / secs
    )
}

/// qemu-io's `print_report`.
fn report(
    out: &mut impl Write,
    op: &str,
    t: Duration,
    offset: u64,
    count: u64,
) -> std::io::Result<()> {
    let secs = t.as_secs_f64();
    writeln!(out, "{op} {count}/{count} bytes at offset {offset}")?;
    writeln!(
        out,
        "{}, 1 ops; {} ({}/sec and {:.4} ops/sec)",
        cvtstr(count as f64),
        timestr(t),
        cvtstr(count as f64 / secs),
        1.0 / secs
    )
}

/// qemu-io's `dump_buffer`.
fn dump_buffer(out: &mut impl Write, buf: &[u8], offset: u64) -> std::io::Result<()> {
    for (i, line) in buf.chunks(16).enumerate() {
        write!(out, "{:08x}:  ", offset + i as u64 * 16)?;
        for b in line {
            write!(out, "{b:02x} ")?;
        }
        write!(out, " ")?;
        for &b in line {
            let c = if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            };
            write!(out, "{c}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

fn check_len(len: u64) -> Result<()> {
    if len > MAX_IO {
        bail!("length {len} is too large (at most {MAX_IO} bytes per request)");
    }
    Ok(())
}

/// The options of `read` and `write`, as getopt specs. `-p` (once "use pread/pwrite") is
/// accepted and ignored by qemu-io's read and write, for old scripts; its aio_read and
/// aio_write (and readv, writev) refuse it, as do these.
const READ_OPTS: &str = "bCpqvP:s:l:";
const AIO_READ_OPTS: &str = "bCqvP:s:l:";
const WRITE_OPTS: &str = "bcCfnpquzP:";
const AIO_WRITE_OPTS: &str = "bcCfnquzP:";

fn read(img: &Image, args: &[&str], spec: &str, out: &mut impl Write) -> Result<bool> {
    let o = Opts::parse(args, spec)?;
    if o.has('b') {
        bail!("vmstate is not supported");
    }
    let (offset, count) = o.offset_len("read [-qv] [-P pattern [-s off] [-l len]] off len")?;
    check_len(count)?;
    let pattern = o.value('P').map(parse_pattern).transpose()?;
    let p_off = o.value('s').map(parse_size).transpose()?.unwrap_or(0);
    let p_len = o.value('l').map(parse_size).transpose()?;
    if pattern.is_none() && (p_len.is_some() || o.value('s').is_some()) {
        bail!("-s and -l need -P");
    }
    let p_len = p_len.unwrap_or(count.saturating_sub(p_off));
    if p_off.checked_add(p_len).is_none_or(|e| e > count) {
        bail!("pattern verification range exceeds end of read data");
    }
    let mut buf = vec![0u8; count as usize];
    let t0 = Instant::now();
    if let Err(e) = img.read_at(&mut buf, offset) {
        writeln!(out, "read failed: {e:#}")?;
        return Ok(false);
    }
    let t = t0.elapsed();
    let mut ok = true;
    if let Some(p) = pattern {
        let range = &buf[p_off as usize..(p_off + p_len) as usize];
        if range.iter().any(|&b| b != p) {
            writeln!(
                out,
                "Pattern verification failed at offset {}, {p_len} bytes",
                offset + p_off
            )?;
            ok = false;
        }
    }
    if o.has('q') {
        return Ok(ok);
    }
    if o.has('v') {
        dump_buffer(out, &buf, offset)?;
    }
    report_as(out, o.has('C'), "read", t, offset, count)?;
    Ok(ok)
}

/// `off len [len..]` of readv/writev: the offset and the total of the lengths.
fn offset_lens(o: &Opts, usage: &str) -> Result<(u64, u64)> {
    if o.args.len() < 2 {
        bail!("wrong number of arguments (usage: {usage})");
    }
    let off = parse_size(&o.args[0])
        .map_err(|_| anyhow::anyhow!("non-numeric offset argument -- {}", o.args[0]))?;
    let mut total = 0u64;
    for l in &o.args[1..] {
        let n = parse_size(l).map_err(|_| anyhow::anyhow!("non-numeric length argument -- {l}"))?;
        total = total
            .checked_add(n)
            .ok_or_else(|| anyhow::anyhow!("total length too large"))?;
    }
    check_len(total)?;
    Ok((off, total))
}

fn readv(img: &Image, args: &[&str], out: &mut impl Write) -> Result<bool> {
    let o = Opts::parse(args, "CqvP:")?;
    let (offset, count) = offset_lens(&o, "readv [-Cqv] [-P pattern] off len [len..]")?;
    let pattern = o.value('P').map(parse_pattern).transpose()?;
    let mut buf = vec![0u8; count as usize];
    let t0 = Instant::now();
    if let Err(e) = img.read_at(&mut buf, offset) {
        writeln!(out, "readv failed: {e:#}")?;
        return Ok(false);
    }
    let t = t0.elapsed();
    if let Some(p) = pattern {
        if buf.iter().any(|&b| b != p) {
            writeln!(
                out,
                "Pattern verification failed at offset {offset}, {count} bytes"
            )?;
            return Ok(false);
        }
    }
    if o.has('q') {
        return Ok(true);
    }
    if o.has('v') {
        dump_buffer(out, &buf, offset)?;
    }
    report_as(out, o.has('C'), "read", t, offset, count)?;
    Ok(true)
}

fn writev(img: &Image, args: &[&str], out: &mut impl Write) -> Result<bool> {
    let o = Opts::parse(args, "CfqP:")?;
    let (offset, count) = offset_lens(&o, "writev [-Cfq] [-P pattern] off len [len..]")?;
    let pattern = o.value('P').map(parse_pattern).transpose()?.unwrap_or(0xcd);
    let buf = vec![pattern; count as usize];
    let t0 = Instant::now();
    let r = img
        .write_at(&buf, offset)
        .and_then(|()| if o.has('f') { img.flush() } else { Ok(()) });
    let t = t0.elapsed();
    if let Err(e) = r {
        writeln!(out, "writev failed: {e:#}")?;
        return Ok(false);
    }
    if !o.has('q') {
        report_as(out, o.has('C'), "wrote", t, offset, count)?;
    }
    Ok(true)
}

/// `alloc off [count]`: how much of the range this image itself holds (qemu-io counts
/// zeroed grains as allocated too).
fn alloc(img: &Image, args: &[&str], out: &mut impl Write) -> Result<bool> {
    let (off, count) = match args {
        [o] => (parse_size(o)?, 512),
        [o, c] => (parse_size(o)?, parse_size(c)?),
        _ => bail!("wrong number of arguments (usage: alloc offset [count])"),
    };
    let count = count.min(img.size().saturating_sub(off));
    let sum = match allocated_bytes(img, off, count) {
        Ok(sum) => sum,
        Err(e) => {
            writeln!(out, "alloc failed: {e:#}")?;
            return Ok(false);
        }
    };
    writeln!(
        out,
        "{sum}/{count} bytes allocated at offset {}",
        cvtstr(off as f64)
    )?;
    Ok(true)
}

fn write(img: &Image, args: &[&str], spec: &str, out: &mut impl Write) -> Result<bool> {
    let o = Opts::parse(args, spec)?;
    if o.has('b') {
        bail!("vmstate is not supported");
    }
    let (offset, count) = o.offset_len("write [-cfquz] [-P pattern] off len")?;
    let zero = o.has('z');
    if zero && o.value('P').is_some() {
        bail!("-z and -P cannot be specified at the same time");
    }
    if zero && o.has('c') {
        bail!("-z and -c cannot be specified at the same time");
    }
    if o.has('u') && !zero {
        bail!("-u requires -z to be specified");
    }
    let pattern = o.value('P').map(parse_pattern).transpose()?.unwrap_or(0xcd);
    let t0 = Instant::now();
    let r = if zero {
        img.write_zeroes(offset, count, o.has('u'))
    } else {
        check_len(count)?;
        let buf = vec![pattern; count as usize];
        if o.has('c') {
            vmdk::export::write_compressed(img, &buf, offset)
        } else {
            img.write_at(&buf, offset)
        }
    };
    let r = r.and_then(|()| if o.has('f') { img.flush() } else { Ok(()) });
    let t = t0.elapsed();
    if let Err(e) = r {
        writeln!(out, "write failed: {e:#}")?;
        return Ok(false);
    }
    if !o.has('q') {
        report_as(out, o.has('C'), "wrote", t, offset, count)?;
    }
    Ok(true)
}

fn discard(img: &Image, args: &[&str], out: &mut impl Write) -> Result<bool> {
    let o = Opts::parse(args, "Cq")?;
    let (offset, count) = o.offset_len("discard [-q] off len")?;
    let t0 = Instant::now();
    // Deallocate the grains the range covers whole (what NBD TRIM does); the rest keeps
    // its data, as a discard allows.
    if let Err(e) = img.discard(offset, count) {
        writeln!(out, "discard failed: {e:#}")?;
        return Ok(false);
    }
    let t = t0.elapsed();
    if !o.has('q') {
        report_as(out, o.has('C'), "discard", t, offset, count)?;
    }
    Ok(true)
}

fn map(img: &Image, args: &[&str], out: &mut impl Write) -> Result<bool> {
    if !args.is_empty() {
        bail!("wrong number of arguments (usage: map)");
    }
    let print = |out: &mut dyn Write, run: AllocationRun| {
        writeln!(
            out,
            "{} ({:#x}) bytes {} at offset {} ({:#x})",
            cvtstr(run.length as f64),
            run.length,
            if run.allocated {
                "    allocated"
            } else {
                "not allocated"
            },
            cvtstr(run.start as f64),
            run.start
        )
    };
    let mut walker = AllocationWalker::new(img, 0, img.size())?;
    loop {
        match walker.next() {
            Ok(Some(run)) => print(out, run)?,
            Ok(None) => return Ok(true),
            Err(e) => {
                writeln!(out, "map failed: {e:#}")?;
                return Ok(false);
            }
        }
    }
}

fn info(img: &Image, out: &mut impl Write) -> Result<bool> {
    writeln!(out, "format name: vmdk")?;
    writeln!(
        out,
        "cluster size: {}",
        cvtstr(vmdk::report::info::io_cluster_size(img) as f64)
    )?;
    writeln!(out, "vm state offset: 0 bytes")?;
    writeln!(out, "Format specific information:")?;
    vmdk::report::info::format_specific(img).print_human(1, out)?;
    Ok(true)
}

fn flush(img: &Image, out: &mut impl Write) -> Result<bool> {
    if let Err(e) = img.flush() {
        writeln!(out, "flush failed: {e:#}")?;
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getopt_style() {
        let o = Opts::parse(&["-P", "0xab", "-v", "0", "64k"], "qvP:").unwrap();
        assert!(o.has('v'));
        assert_eq!(o.value('P'), Some("0xab"));
        assert_eq!(o.offset_len("").unwrap(), (0, 65536));
        let o = Opts::parse(&["-qvP0x1", "1M", "512"], "qvP:").unwrap();
        assert!(o.has('q') && o.has('v'));
        assert_eq!(o.value('P'), Some("0x1"));
        assert_eq!(o.offset_len("").unwrap(), (1 << 20, 512));
        assert!(Opts::parse(&["-x"], "qv").is_err());
        assert!(Opts::parse(&["-P"], "P:").is_err());
        assert!(Opts::parse(&["1"], "").unwrap().offset_len("").is_err());
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("0xab").unwrap(), 0xab);
        assert_eq!(parse_pattern("171").unwrap(), 171);
        assert_eq!(parse_pattern("010").unwrap(), 8);
        assert_eq!(parse_pattern("0").unwrap(), 0);
        assert!(parse_pattern("256").is_err());
        assert!(parse_pattern("x").is_err());
    }

    #[test]
    fn hexdump_like_qemu_io() {
        let mut out = Vec::new();
        let mut buf = vec![0xabu8; 20];
        buf[16] = b'A';
        dump_buffer(&mut out, &buf, 0xf000).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0000f000:  ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab  ................\n\
             0000f010:  41 ab ab ab  A...\n"
        );
    }

    #[test]
    fn times_like_qemu_io() {
        assert_eq!(timestr(Duration::from_millis(0)), "00.00 sec");
        assert_eq!(timestr(Duration::from_millis(1500)), "0:00:01.50");
    }
}
