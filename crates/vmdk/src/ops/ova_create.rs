//! `ova create`: each disk converted into a member of a new archive, in one pass.
//!
//! Each disk goes straight from its source into the archive through the parallel stream
//! engine ([`convert_to_stream`]); a sink computes its SHA-256 as the bytes go by. Only
//! when every disk is written are the disk headers, the descriptor (now knowing each
//! file's size) and the manifest written into the space left for them
//! (`ova::layout` has the archive's layout and those primitives).
//! Nothing is read back and nothing is copied. The output is written front to back but for
//! those ranges ([`Namespace::create_append`]), so it can be an upload to object storage,
//! which keeps only the parts holding them until they are filled in.
//!
//! This is an operation, not part of the ova layer, because it converts disks: it names
//! convert and the stream writer, which sit above archives.

use std::path::Path;

use crate::error::{Error, Result};
use crate::image::Disk;
use crate::ops::convert::{convert_to_stream, ConvertOptions, Progress};
use crate::ops::create::{refuse_to_overwrite, AdapterType, CreateOptions, Subformat};
use crate::ops::stream_writer::{StreamWriter, GRAIN_SECTORS};
use crate::ova::compose::DiskFacts;
use crate::ova::layout::{self, Front, MemberSink, OvfSource};
use crate::ova::manifest::hex;
use crate::storage::namespace::Namespace;

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
            compression_level: crate::ops::create::DEFAULT_COMPRESSION_LEVEL,
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
    let front = Front::names(out, ovf, disks.len())?;
    let mut facts: Vec<DiskFacts> = Vec::with_capacity(disks.len());
    for (src, member) in disks.iter().zip(&front.members) {
        facts.push(DiskFacts {
            member: member.clone(),
            file_size: u64::MAX,
            capacity: src.size().next_multiple_of(crate::format::SECTOR_SIZE),
            populated: populated_size(*src)?,
        });
    }
    // The longest the descriptor can be: every size at its widest.
    let front = front.reserve(ovf, &facts)?;

    let mut spare = Vec::new();
    for s in disks {
        spare.extend(s.file_ids());
    }
    refuse_to_overwrite(ns, out, &spare, "one of the disks (or one of its files)")?;
    // Written front to back but for the headers and the descriptor, filled in last: so an
    // upload to object storage sends all but the parts holding those as it goes.
    let output = ns.create_append(out, true)?;
    let storage = output.storage();

    let total: u64 = disks.iter().map(|d| d.size()).sum();
    let mut pos = front.disks_start();
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
        let member_path = Path::new(&front.members[i]);
        let (sink, done) = MemberSink::new(storage.clone(), &out.join(member_path), header_at);
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
        pos = layout::write_member_header(&*storage, out, &front.members[i], len, header_at)?;
        facts[i].file_size = len;
        digests.push(hex(&digest));
        done_before += src.size();
    }
    let size = layout::write_end(&*storage, out, pos)?;
    front.write(&*storage, out, ovf, &facts, &digests)?;
    drop(storage);
    output.finish(opts.durable)?;
    progress(total, total);
    Ok(CreatedOva {
        ovf_name: front.ovf_name,
        manifest_name: front.manifest_name,
        disks: facts,
        size,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ova::{manifest, ApplianceSpec, Archive};
    use crate::storage::namespace::MemNamespace;

    #[test]
    fn writes_an_archive_the_reader_reads_back() {
        let ns = Arc::new(MemNamespace::new());
        let mut disk = vec![0u8; 3 << 20];
        disk[100..200].fill(7);
        disk[(2 << 20) + 5] = 1;
        ns.insert("/d.raw", disk.clone());
        let opts = crate::image::OpenOptions::new().in_namespace(ns.clone());
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
