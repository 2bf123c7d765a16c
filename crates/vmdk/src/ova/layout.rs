//! The primitives `ova create` writes an archive with, in one pass, `.ovf` first, then
//! `.mf`, then the disks (the order vSphere reads a streamed OVA in), although the
//! descriptor and the manifest depend on the disks:
//!
//! ```text
//! [ovf header][ovf, reserved: its longest possible text, padded with spaces]
//! [mf header][mf: one SHA256 line per file, its length known in advance]
//! [disk header, written last][streamOptimized VMDK, compressed on all workers]   per disk
//! [two zero blocks]
//! ```
//!
//! [`Front`] reserves the descriptor's and the manifest's space and fills it in once every
//! disk is written; [`MemberSink`] writes a disk member's data in place, hashing it as it
//! goes; [`write_member_header`] puts the header (and the padding) around it afterwards.
//! Converting each disk into its member is an operation
//! ([`ops::ova_create`](crate::ops::ova_create)): this layer knows archives, not disks.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::compose::{self, ApplianceSpec, DiskFacts};
use super::manifest::hex;
use super::tar::{gnu_header, BLOCK};
use super::template::Template;
use crate::error::{Error, Result};
use crate::storage::namespace::{StorageSink, StreamSink};
use crate::storage::Storage;

/// Where the OVF descriptor comes from.
#[derive(Debug, Clone)]
pub enum OvfSource {
    /// Written from a description of the appliance.
    Compose(ApplianceSpec),
    /// The user's own descriptor, with the disk sizes filled in.
    Template(Template),
}

impl OvfSource {
    /// The descriptor's text for disks of `facts`.
    pub fn render(&self, facts: &[DiskFacts]) -> Result<String> {
        match self {
            OvfSource::Compose(spec) => Ok(compose::render(spec, facts)),
            OvfSource::Template(t) => t.render(facts),
        }
    }
}

/// The names of an archive's members, and the space its descriptor and manifest take at
/// its front (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Front {
    /// The descriptor's member name (`STEM.ovf`).
    pub ovf_name: String,
    /// The manifest's member name (`STEM.mf`).
    pub manifest_name: String,
    /// The disks' member names, in order.
    pub members: Vec<String>,
    /// Bytes reserved for the descriptor: its longest possible text.
    ovf_reserved: u64,
    /// The manifest's length (its digests are all the same length).
    manifest_len: u64,
}

impl Front {
    /// The members of an archive named `out` holding `disks` disks with the descriptor
    /// `ovf` describes: `STEM.ovf`, `STEM.mf`, and the disks (`STEM-diskN.vmdk`, or as the
    /// template names them). Every name is checked to fit a tar header.
    pub fn names(out: &Path, ovf: &OvfSource, disks: usize) -> Result<Front> {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid("output has no file name").with_path(out))?;
        let members: Vec<String> = match ovf {
            OvfSource::Compose(spec) => {
                spec.validate()?;
                (1..=disks)
                    .map(|i| format!("{stem}-disk{i}.vmdk"))
                    .collect()
            }
            OvfSource::Template(t) => {
                if t.disk_members().len() != disks {
                    return Err(Error::invalid(format!(
                        "the OVF template has {} disks ({}) but {} were given",
                        t.disk_members().len(),
                        t.disk_members().join(", "),
                        disks
                    )));
                }
                t.disk_members().to_vec()
            }
        };
        let ovf_name = format!("{stem}.ovf");
        let manifest_name = format!("{stem}.mf");
        for n in members.iter().chain([&ovf_name, &manifest_name]) {
            gnu_header(n, 0, 0)?;
        }
        Ok(Front {
            ovf_name,
            manifest_name,
            members,
            ovf_reserved: 0,
            manifest_len: 0,
        })
    }

    /// Reserve the descriptor's space for `facts` whose `file_size` is still unknown
    /// (`u64::MAX`: every size at its widest), and the manifest's.
    pub fn reserve(mut self, ovf: &OvfSource, facts: &[DiskFacts]) -> Result<Front> {
        self.ovf_reserved = ovf.render(facts)?.len() as u64;
        let mf_line = |name: &str| format!("SHA256({name})= {}\n", "0".repeat(64)).len() as u64;
        self.manifest_len =
            mf_line(&self.ovf_name) + self.members.iter().map(|m| mf_line(m)).sum::<u64>();
        Ok(self)
    }

    /// Where the first disk's header goes: after the descriptor and the manifest.
    pub fn disks_start(&self) -> u64 {
        BLOCK + padded(self.ovf_reserved) + BLOCK + padded(self.manifest_len)
    }

    /// Write the descriptor (for `facts`, now with every size) and the manifest (the
    /// descriptor's digest, then `digests`, the disks' SHA-256s in hex) into the space
    /// reserved for them at the start of `storage` (the archive `out`).
    pub fn write(
        &self,
        storage: &dyn Storage,
        out: &Path,
        ovf: &OvfSource,
        facts: &[DiskFacts],
        digests: &[String],
    ) -> Result<()> {
        let mut text = ovf.render(facts)?.into_bytes();
        if text.len() as u64 > self.ovf_reserved {
            return Err(Error::invalid("OVF descriptor outgrew its reservation").with_path(out));
        }
        // Trailing whitespace after the root element is part of a well-formed document.
        text.resize(self.ovf_reserved as usize, b' ');
        if let Some(last) = text.last_mut() {
            *last = b'\n';
        }
        let mut mf = format!(
            "SHA256({})= {}\n",
            self.ovf_name,
            hex(&Sha256::digest(&text))
        );
        for (m, d) in self.members.iter().zip(digests) {
            mf.push_str(&format!("SHA256({m})= {d}\n"));
        }
        debug_assert_eq!(mf.len() as u64, self.manifest_len);
        let mut head = Vec::with_capacity(self.disks_start() as usize);
        head.extend_from_slice(&gnu_header(&self.ovf_name, text.len() as u64, mtime())?);
        head.extend_from_slice(&text);
        head.resize(padded(head.len() as u64) as usize, 0);
        head.extend_from_slice(&gnu_header(&self.manifest_name, mf.len() as u64, mtime())?);
        head.extend_from_slice(mf.as_bytes());
        head.resize(padded(head.len() as u64) as usize, 0);
        storage.write_at(&head, 0).map_err(|e| io_error(e, out))
    }
}

/// A finished member's length and SHA-256, left by [`MemberSink`]'s `finish`.
pub type Finished = Arc<Mutex<Option<(u64, [u8; 32])>>>;

/// A tar member's data, written front to back from its offset in the archive, hashed as it
/// goes; its length and digest are left in `done` by `finish`.
pub struct MemberSink {
    inner: StorageSink,
    hash: Sha256,
    done: Finished,
}

impl MemberSink {
    /// The data of the member whose header is at `header_at` of `storage` (named `name`,
    /// for messages), and where its length and digest will be once it is finished.
    pub fn new(storage: Arc<dyn Storage>, name: &Path, header_at: u64) -> (MemberSink, Finished) {
        let done: Finished = Arc::new(Mutex::new(None));
        let sink = MemberSink {
            inner: StorageSink::at(storage, name, header_at + BLOCK),
            hash: Sha256::new(),
            done: done.clone(),
        };
        (sink, done)
    }
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

/// Write the header of the member `name` of `len` bytes at `header_at` of `storage` (the
/// archive `out`), and the zeros that pad its data to a block; returns where the next
/// member's header goes.
pub fn write_member_header(
    storage: &dyn Storage,
    out: &Path,
    name: &str,
    len: u64,
    header_at: u64,
) -> Result<u64> {
    storage
        .write_at(&gnu_header(name, len, mtime())?, header_at)
        .map_err(|e| io_error(e, out))?;
    let end = header_at + BLOCK + len;
    let pad = padded(end) - end;
    if pad > 0 {
        storage
            .write_at(&vec![0u8; pad as usize], end)
            .map_err(|e| io_error(e, out))?;
    }
    Ok(end + pad)
}

/// Write the end of the archive (two zero blocks) at `at`; returns the archive's size.
pub fn write_end(storage: &dyn Storage, out: &Path, at: u64) -> Result<u64> {
    storage
        .write_at(&[0u8; 2 * BLOCK as usize], at)
        .map_err(|e| io_error(e, out))?;
    Ok(at + 2 * BLOCK)
}

fn io_error(e: io::Error, out: &Path) -> Error {
    Error::io(e, "writing OVA").with_path(out)
}

fn padded(n: u64) -> u64 {
    n.next_multiple_of(BLOCK)
}

fn mtime() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
