//! Where an image's descriptor comes from: a descriptor file, the text embedded in a sparse
//! file, or (for a bare sparse extent) one made up to describe it.

use std::path::Path;

use super::open::read_head;
use super::DescriptorLocation;
use crate::error::{Error, ErrorKind, Result};
use crate::format::descriptor::{
    Descriptor, ExtentAccess, ExtentLine, ExtentType, CID_NONE, MAX_DESCRIPTOR_SIZE,
};
use crate::format::qemu_view::{self, OpenFailure};
use crate::format::sparse_header::SparseHeader;
use crate::format::SECTOR_SIZE;
use crate::storage::Storage;

/// The descriptor a descriptor file holds, refusing one too large to be a descriptor
/// before reading it.
pub(super) fn read_descriptor_file(storage: &dyn Storage, path: &Path) -> Result<Descriptor> {
    let len = storage
        .len()
        .map_err(|e| Error::io(e, "getting file size").with_path(path))?;
    if len > MAX_DESCRIPTOR_SIZE as u64 {
        return Err(Error::corrupt(format!(
            "descriptor file is {len} bytes (at most {MAX_DESCRIPTOR_SIZE})"
        ))
        .with_path(path));
    }
    let text = read_head(storage, path, len as usize)?;
    // QEMU's refusals first, in its words; but where it finds no createType, our parser
    // says more precisely what is wrong.
    let qemu = qemu_view::open_descriptor_file(&text).failure;
    if let Some(f) = qemu.clone().filter(|f| *f != OpenFailure::NoCreateType) {
        return Err(qemu_refusal(f, path));
    }
    let descriptor = parse_descriptor(&text, path)?;
    match qemu {
        Some(f) => Err(qemu_refusal(f, path)),
        None => Ok(descriptor),
    }
}

/// The error for a descriptor file QEMU will not open ([`qemu_view::open_descriptor_file`]),
/// in QEMU's words: a createType its driver does not take for a descriptor file (`custom`,
/// `fullDevice`, `monolithicSparse`, ...: only the six of
/// [`qemu_view::DESCRIPTOR_FILE_TYPES`]), or an `RW` extent line with a field too many or
/// too few (FLAT without an offset, VMFS or a sparse type with one). Our own parser would
/// read such files, and people would then make images that qemu-img, a VM or another host
/// refuses. Lines QEMU skips (other access modes, unknown types) stay ours to read.
///
/// Only descriptor *files*: QEMU makes these checks on no embedded descriptor but the one of
/// a capacity-0 sparse header, which is left alone because real files need it: qemu-img
/// itself writes capacity-0 `monolithicSparse` images that it then cannot reopen
/// (`shared/FORMAT-NOTES.md`, the `dualfuse` sample), and they stay valid 0-byte disks.
fn qemu_refusal(failure: OpenFailure, path: &Path) -> Error {
    let kind = match failure {
        OpenFailure::UnsupportedType(_) => ErrorKind::Unsupported,
        OpenFailure::NoCreateType | OpenFailure::InvalidExtentLine(_) => ErrorKind::Corrupt,
    };
    Error::new(kind, failure.to_string()).with_path(path)
}

/// The descriptor embedded in a sparse file, and where it is, if the header says there is one.
pub(super) fn read_embedded_descriptor(
    storage: &dyn Storage,
    path: &Path,
    header: &SparseHeader,
) -> Result<Option<(Descriptor, DescriptorLocation)>> {
    if header.desc_offset == 0 || header.desc_size == 0 {
        return Ok(None);
    }
    let max_sectors = MAX_DESCRIPTOR_SIZE as u64 / SECTOR_SIZE;
    if header.desc_size > max_sectors {
        return Err(Error::corrupt(format!(
            "embedded descriptor is {} sectors (at most {max_sectors})",
            header.desc_size
        ))
        .with_path(path));
    }
    let offset = header
        .desc_offset
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| Error::corrupt("descriptor offset overflows").with_path(path))?;
    let capacity = header.desc_size * SECTOR_SIZE;
    let mut buf = vec![0u8; capacity as usize];
    storage.read_exact_at(&mut buf, offset).map_err(|_| {
        Error::corrupt("file is truncated: embedded descriptor lies past its end").with_path(path)
    })?;
    let d = parse_descriptor(&buf, path)?;
    Ok(Some((d, DescriptorLocation::Embedded { offset, capacity })))
}

fn parse_descriptor(text: &[u8], path: &Path) -> Result<Descriptor> {
    Descriptor::parse(text)
        .map_err(|e| Error::corrupt(format!("invalid descriptor: {e}")).with_path(path))
}

/// The descriptor of a bare sparse extent, which has none: one `kind` extent line naming the file.
pub(super) fn synthesized_descriptor(
    create_type: &str,
    capacity: u64,
    kind: ExtentType,
    path: &Path,
) -> Descriptor {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Descriptor {
        version: 1,
        encoding: None,
        cid: CID_NONE,
        parent_cid: CID_NONE,
        create_type: create_type.to_string(),
        parent_file_name_hint: None,
        extents: vec![ExtentLine {
            access: ExtentAccess::ReadWrite,
            sectors: capacity / SECTOR_SIZE,
            kind,
            file: Some(name),
            offset: 0,
            extra: vec![],
        }],
        ddb: vec![],
        other: vec![],
    }
}
