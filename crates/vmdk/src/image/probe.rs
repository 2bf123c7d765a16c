//! What a file is: content decides (VMDK kinds, other image formats by name, or raw),
//! never the file name.

use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::format::cowd_header::COWD_MAGIC;
use crate::format::descriptor::Descriptor;
use crate::format::foreign::{self, ForeignFormat};
use crate::format::sesparse_header;
use crate::format::sparse_header::SPARSE_MAGIC;
use crate::storage::namespace::{Namespace, OpenMode};
use crate::storage::Storage;

/// What kind of file was probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A text descriptor.
    Descriptor,
    /// A VMDK4 (`KDMV`) sparse extent.
    Vmdk4Sparse,
    /// An ESX `COWD` sparse extent.
    Cowd,
    /// An seSparse extent.
    SeSparse,
    /// An image of another format (qcow2, VHD, ...), which this library does not read.
    Foreign(ForeignFormat),
}

impl FileFormat {
    /// Whether this is one of the VMDK file kinds.
    pub fn is_vmdk(self) -> bool {
        !matches!(self, FileFormat::Foreign(_))
    }
}

/// Look at the first bytes of a file and say what it is, if any format we know marks its
/// start: a VMDK file, or another image format's header. Content decides, never the file
/// name. Formats marked only at the end of the file need [`probe_storage`].
pub fn probe(head: &[u8]) -> Option<FileFormat> {
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == SPARSE_MAGIC {
            return Some(FileFormat::Vmdk4Sparse);
        }
        if magic == COWD_MAGIC {
            return Some(FileFormat::Cowd);
        }
    }
    if sesparse_header::is_sesparse(head) {
        return Some(FileFormat::SeSparse);
    }
    if Descriptor::probe(head) {
        return Some(FileFormat::Descriptor);
    }
    foreign::probe_head(head).map(FileFormat::Foreign)
}

/// What an open file holds: [`probe`] over its start, then the trailers of formats that
/// mark their end (fixed VHD, DMG). `None` means no known format: a raw disk.
pub fn probe_storage(storage: &dyn Storage) -> std::io::Result<Option<FileFormat>> {
    Ok(probe_storage_full(storage)?.0)
}

/// [`probe_storage`], also returning the head and tail it read (for `info`'s sizes).
pub(crate) fn probe_storage_full(
    storage: &dyn Storage,
) -> std::io::Result<(Option<FileFormat>, Vec<u8>, Vec<u8>)> {
    let mut head = vec![0u8; foreign::HEAD_BYTES];
    let n = storage.read_up_to(&mut head, 0)?;
    head.truncate(n);
    let len = storage.len()?;
    let tail_len = len.min(foreign::TAIL_BYTES as u64);
    let mut tail = vec![0u8; tail_len as usize];
    let n = storage.read_up_to(&mut tail, len - tail_len)?;
    tail.truncate(n);
    let format = probe(&head).or_else(|| foreign::probe_tail(&tail).map(FileFormat::Foreign));
    Ok((format, head, tail))
}

/// What the file `path` of the library's
/// [`default_namespace`](crate::ova::default_namespace) is (a host file, an OVA member), as
/// [`probe_storage`] says; `None` for a raw disk.
pub fn probe_path(path: &Path) -> Result<Option<FileFormat>> {
    probe_in(&*crate::ova::default_namespace(), path)
}

/// What the file `name` of `ns` is, as [`probe_storage`] says; `None` for a raw disk. The
/// file is opened without locks (probing reads two small pieces and keeps nothing), and may
/// be a device: the user named it, and a raw disk is a legitimate source.
pub fn probe_in(ns: &dyn Namespace, name: &Path) -> Result<Option<FileFormat>> {
    let mode = OpenMode {
        allow_devices: true,
        ..OpenMode::read_only()
    };
    let s = ns.open(name, mode)?;
    probe_storage(&*s).map_err(|e| Error::io(e, "reading header").with_path(name))
}

/// The virtual size a foreign image's header records, if it is in a fixed field (the file
/// `path` of the library's [`default_namespace`](crate::ova::default_namespace)).
pub fn foreign_virtual_size(path: &Path, format: ForeignFormat) -> Option<u64> {
    let s = crate::ova::default_namespace()
        .open(path, OpenMode::read_only())
        .ok()?;
    foreign_virtual_size_of(&*s, format)
}

/// [`foreign_virtual_size`] of an open file.
pub fn foreign_virtual_size_of(storage: &dyn Storage, format: ForeignFormat) -> Option<u64> {
    let (_, head, tail) = probe_storage_full(storage).ok()?;
    foreign::virtual_size(format, &head, &tail)
}

/// The error for a file that is an image of another format, for a reader of the formats
/// `readable` names ("VMDK", "VMDK, qcow2 or raw"): "this is a VDI image, not VMDK".
pub fn foreign_format_error(path: &Path, format: ForeignFormat, readable: &str) -> Error {
    Error::new(
        ErrorKind::ForeignFormat,
        format!("this is a {} image, not {readable}", format.description()),
    )
    .with_path(path)
}

/// What [`crate::ops::open_disk()`] (and a qcow2 image's backing chain) reads, as
/// [`foreign_format_error`] names it.
pub const SOURCE_FORMATS: &str = "VMDK, qcow2 or raw";
