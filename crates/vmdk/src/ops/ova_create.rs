//! Writing an OVA in one pass: `.ovf` first, then `.mf`, then the disks (the order vSphere
//! reads a streamed OVA in), although the descriptor and the manifest depend on the disks.
//!
//! ```text
//! [ovf header][ovf, reserved: its longest possible text, padded with spaces]
//! [mf header][mf: one SHA256 line per file, its length known in advance]
//! [disk header, written last][streamOptimized VMDK, compressed on all workers]   per disk
//! [two zero blocks]
//! ```
//!
//! Each disk goes straight from its source into the archive through the parallel stream
//! engine ([`convert_to_stream`]); a sink computes its SHA-256 as the bytes go by. Only
//! when every disk is written are the disk headers, the descriptor (now knowing each
//! file's size) and the manifest written into the space left for them. Nothing is read
//! back and nothing is copied. The output is written front to back but for those ranges
//! ([`Namespace::create_append`]), so it can be an upload to object storage, which keeps
//! only the parts holding them until they are filled in.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::convert::{convert_to_stream, ConvertOptions, Progress};
use crate::create::{refuse_to_overwrite, AdapterType, CreateOptions, Subformat};
use crate::error::{Error, Result};
use crate::image::Disk;
use crate::namespace::{Namespace, StorageSink, StreamSink};
use crate::ova::compose::{self, ApplianceSpec, DiskFacts};
use crate::ova::manifest::hex;
use crate::ova::tar::{gnu_header, BLOCK};
use crate::ova::Template;
use crate::stream_writer::{StreamWriter, GRAIN_SECTORS};

/// Where the OVF descriptor comes from.
#[derive(Debug, Clone)]
pub enum OvfSource {
    /// Written from a description of the appliance.
    Compose(ApplianceSpec),
    /// The user's own descriptor, with the disk sizes filled in.
    Template(Template),
}

/// How an OVA is written.
#[derive(Debug, Clone)]
pub struct OvaOptions {
    /// Compression workers (0 = one per CPU).
    pub threads: usize,
    /// zlib level of the disks' grains.
    pub compression_level: u32,
    /// `ddb.adapterType` of the disks' descriptors.
    pub adapter: AdapterType,
    /// Flush the archive to stable storage before returning.
    pub durable: bool,
}

impl Default for OvaOptions {
    fn default() -> Self {
        OvaOptions {
            threads: 0,
            compression_level: crate::create::DEFAULT_COMPRESSION_LEVEL,
            adapter: AdapterType::Lsilogic,
            durable: false,
        }
    }
}

/// What [`create`] wrote.
#[derive(Debug, Clone)]
pub struct CreatedOva {
    /// The descriptor's member name.
    pub ovf_name: String,
    /// The manifest's member name.
    pub manifest_name: String,
    /// Each disk.
    pub disks: Vec<DiskFacts>,
    /// The archive's size in bytes.
    pub size: u64,
}

/// A finished member's length and SHA-256, left by [`MemberSink`]'s `finish`.
type Finished = Arc<Mutex<Option<(u64, [u8; 32])>>>;

/// A tar member's data, written front to back from its offset in the archive, hashed as it
/// goes; its length and digest are left in `done` by `finish`.
struct MemberSink {
    inner: StorageSink,
    hash: Sha256,
    done: Finished,
}

impl io::Write for MemberSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        self.hash.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamSink for MemberSink {
    fn position(&self) -> u64 {
        self.inner.position()
    }
    fn finish(self: Box<Self>, durable: bool) -> Result<()> {
        let len = self.inner.position();
        let digest: [u8; 32] = self.hash.finalize().into();
        Box::new(self.inner).finish(durable)?;
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some((len, digest));
        Ok(())
    }
}

/// Bytes of `src` that a stream image of it holds: every 64 KiB grain any data stretch
/// touches (what `ovf:populatedSize` reports; grains that turn out to be all zeros are
/// counted too, so this is an upper bound by at most those).
pub fn populated_size(src: &dyn Disk) -> Result<u64> {
    let grain = GRAIN_SECTORS * crate::format::SECTOR_SIZE;
    let size = src.size();
    let (mut off, mut grains, mut last) = (0u64, 0u64, None::<u64>);
    while off < size {
        let v = src.map_prefix(off, size - off, 4096)?;
        let Some(end) = v.last().map(|e| e.start + e.length) else {
            break;
        };
        for e in v.iter().filter(|e| e.target.is_data() && e.length > 0) {
            let mut g0 = e.start / grain;
            let g1 = (e.start + e.length - 1) / grain;
            if last == Some(g0) {
                g0 += 1;
            }
            if g1 >= g0 {
                grains += g1 - g0 + 1;
            }
            last = Some(g1);
        }
        if end <= off {
            break;
        }
        off = end;
    }
    Ok(grains * grain)
}

fn padded(n: u64) -> u64 {
    n.next_multiple_of(BLOCK)
}

fn mtime() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Write the OVA `out` (created in `ns`) holding `disks` as streamOptimized VMDKs, with
/// the descriptor `ovf` describes and a SHA-256 manifest. `progress` sees bytes of all
/// disks together.
pub fn create(
    out: &Path,
    ns: &dyn Namespace,
    disks: &[&dyn Disk],
    ovf: &OvfSource,
    opts: &OvaOptions,
    progress: Progress,
) -> Result<CreatedOva> {
    if disks.is_empty() {
        return Err(Error::invalid("an OVA needs at least one disk"));
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("output has no file name").with_path(out))?;
    let members: Vec<String> = match ovf {
        OvfSource::Compose(spec) => {
            spec.validate()?;
            (1..=disks.len())
                .map(|i| format!("{stem}-disk{i}.vmdk"))
                .collect()
        }
        OvfSource::Template(t) => {
            if t.disk_members().len() != disks.len() {
                return Err(Error::invalid(format!(
                    "the OVF template has {} disks ({}) but {} were given",
                    t.disk_members().len(),
                    t.disk_members().join(", "),
                    disks.len()
                )));
            }
            t.disk_members().to_vec()
        }
    };
    let ovf_name = format!("{stem}.ovf");
    let mf_name = format!("{stem}.mf");
    for n in members.iter().chain([&ovf_name, &mf_name]) {
        gnu_header(n, 0, 0)?;
    }
    let mut facts: Vec<DiskFacts> = Vec::with_capacity(disks.len());
    for (src, member) in disks.iter().zip(&members) {
        facts.push(DiskFacts {
            member: member.clone(),
            file_size: u64::MAX,
            capacity: src.size().next_multiple_of(crate::format::SECTOR_SIZE),
            populated: populated_size(*src)?,
        });
    }
    let render = |facts: &[DiskFacts]| -> Result<String> {
        match ovf {
            OvfSource::Compose(spec) => Ok(compose::render(spec, facts)),
            OvfSource::Template(t) => t.render(facts),
        }
    };
    // The longest the descriptor can be: every size at its widest.
    let ovf_reserved = render(&facts)?.len() as u64;
    let mf_line = |name: &str| format!("SHA256({name})= {}\n", "0".repeat(64)).len() as u64;
    let mf_len = mf_line(&ovf_name) + members.iter().map(|m| mf_line(m)).sum::<u64>();

    let mut spare = Vec::new();
    for s in disks {
        spare.extend(s.file_ids());
    }
    refuse_to_overwrite(ns, out, &spare, "one of the disks (or one of its files)")?;
    // Written front to back but for the headers and the descriptor, filled in last: so an
    // upload to object storage sends all but the parts holding those as it goes.
    let output = ns.create_append(out, true)?;
    let storage = output.storage();
    let io_err = |e: io::Error| Error::io(e, "writing OVA").with_path(out);

    let total: u64 = disks.iter().map(|d| d.size()).sum();
    let mut pos = BLOCK + padded(ovf_reserved) + BLOCK + padded(mf_len);
    let mut done_before = 0u64;
    let mut digests = Vec::with_capacity(disks.len());
    let convert = ConvertOptions {
        threads: opts.threads,
        compression_level: opts.compression_level,
        ..Default::default()
    };
    let create_opts = CreateOptions {
        subformat: Subformat::StreamOptimized,
        adapter_type: opts.adapter,
        compression_level: opts.compression_level,
        ..Default::default()
    };
    for (i, src) in disks.iter().enumerate() {
        let header_at = pos;
        let member_path = Path::new(&members[i]);
        let done: Finished = Arc::new(Mutex::new(None));
        let sink = MemberSink {
            inner: StorageSink::at(storage.clone(), &out.join(member_path), header_at + BLOCK),
            hash: Sha256::new(),
            done: done.clone(),
        };
        let writer = StreamWriter::new(
            Box::new(sink),
            member_path,
            src.size(),
            &create_opts,
            opts.compression_level,
        )?;
        let each = |d: u64, _t: u64| progress(done_before + d, total);
        convert_to_stream(*src, writer, &convert, opts.threads, &each)?;
        let (len, digest) = done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::invalid("stream writer did not finish").with_path(out))?;
        storage
            .write_at(&gnu_header(&members[i], len, mtime())?, header_at)
            .map_err(io_err)?;
        let end = header_at + BLOCK + len;
        let pad = padded(end) - end;
        if pad > 0 {
            storage
                .write_at(&vec![0u8; pad as usize], end)
                .map_err(io_err)?;
        }
        facts[i].file_size = len;
        digests.push(hex(&digest));
        pos = end + pad;
        done_before += src.size();
    }
    // End of archive: two zero blocks.
    storage
        .write_at(&[0u8; 2 * BLOCK as usize], pos)
        .map_err(io_err)?;
    let size = pos + 2 * BLOCK;

    let mut text = render(&facts)?.into_bytes();
    if text.len() as u64 > ovf_reserved {
        return Err(Error::invalid("OVF descriptor outgrew its reservation").with_path(out));
    }
    // Trailing whitespace after the root element is part of a well-formed document.
    text.resize(ovf_reserved as usize, b' ');
    if let Some(last) = text.last_mut() {
        *last = b'\n';
    }
    let mut mf = format!("SHA256({ovf_name})= {}\n", hex(&Sha256::digest(&text)));
    for (m, d) in members.iter().zip(&digests) {
        mf.push_str(&format!("SHA256({m})= {d}\n"));
    }
    debug_assert_eq!(mf.len() as u64, mf_len);
    let mut head = Vec::with_capacity((2 * BLOCK + padded(ovf_reserved) + padded(mf_len)) as usize);
    head.extend_from_slice(&gnu_header(&ovf_name, text.len() as u64, mtime())?);
    head.extend_from_slice(&text);
    head.resize(padded(head.len() as u64) as usize, 0);
    head.extend_from_slice(&gnu_header(&mf_name, mf.len() as u64, mtime())?);
    head.extend_from_slice(mf.as_bytes());
    head.resize(padded(head.len() as u64) as usize, 0);
    storage.write_at(&head, 0).map_err(io_err)?;
    drop(storage);
    output.finish(opts.durable)?;
    progress(total, total);
    Ok(CreatedOva {
        ovf_name,
        manifest_name: mf_name,
        disks: facts,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::MemNamespace;
    use crate::ova::{manifest, Archive};

    #[test]
    fn writes_an_archive_the_reader_reads_back() {
        let ns = Arc::new(MemNamespace::new());
        let mut disk = vec![0u8; 3 << 20];
        disk[100..200].fill(7);
        disk[(2 << 20) + 5] = 1;
        ns.insert("/d.raw", disk.clone());
        let opts = crate::OpenOptions::new().in_namespace(ns.clone());
        let src = crate::ops::open_disk(
            Path::new("/d.raw"),
            Some(crate::image::ImageFormat::Raw),
            &opts,
        )
        .unwrap();
        let created = create(
            Path::new("/a.ova"),
            &*ns,
            &[&*src],
            &OvfSource::Compose(ApplianceSpec::default()),
            &OvaOptions::default(),
            &|_, _| {},
        )
        .unwrap();
        // Memory cannot tell holes from data: every grain counts as populated.
        assert_eq!(created.disks[0].populated, 3 << 20);
        let bytes = ns.get("/a.ova").unwrap();
        assert_eq!(bytes.len() as u64, created.size);
        let arch = Archive::from_storage(
            Path::new("/a.ova"),
            Arc::new(crate::storage::MemStorage::new(bytes)),
        )
        .unwrap();
        let names: Vec<&str> = arch
            .index()
            .members
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["a.ovf", "a.mf", "a-disk1.vmdk"]);
        let env = arch.envelope().unwrap().unwrap();
        assert_eq!(
            env.files[0].size,
            Some(arch.index().file("a-disk1.vmdk").unwrap().size)
        );
        let mf = arch
            .read_member(arch.index().file("a.mf").unwrap(), 1 << 20)
            .unwrap();
        let checks = manifest::verify(&arch, &manifest::parse(&mf, Path::new("a.mf")).unwrap(), 2);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.status == manifest::Status::Match));
        assert_eq!(arch.first_disk().unwrap(), "a-disk1.vmdk");
    }
}
