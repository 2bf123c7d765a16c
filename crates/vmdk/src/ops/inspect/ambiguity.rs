//! Polyglots: bytes that are a VMDK (or an OVA) to one reader and something else to
//! another. A sparse header's padding can hold a valid tar header or an MBR; a VDI
//! signature sits at 0x40, an ISO volume descriptor 32 KiB in, a VHD or DMG trailer at the
//! end; an OVA's first tar header can hold descriptor text that `qemu-img` probes as a
//! VMDK. Whoever decides by one format while another program reads the other is fooled, so
//! a second format anywhere is a reason.

use super::{extent_names, Counted, InspectReport};
use crate::error::Result;
use crate::format::foreign;
use crate::format::qemu_view;
use crate::image::FileFormat;

/// Add a reason for every format the bytes are besides the one they were inspected as.
/// Only the verdicts that could otherwise be "safe" need this: a sparse VMDK, an OVA.
pub(super) fn check(
    r: &Counted<'_>,
    head: &[u8],
    tail: &[u8],
    ours: Option<FileFormat>,
    is_tar: bool,
    rep: &mut InspectReport,
) -> Result<()> {
    match ours {
        Some(FileFormat::Vmdk4Sparse) => {
            let mut also: Vec<String> = foreign::probe_head_all(head)
                .into_iter()
                .chain(foreign::probe_tail(tail))
                .map(|f| format!("a {} image", f.description()))
                .collect();
            if is_tar {
                also.push("a tar archive (its header's checksum matches)".into());
            }
            if head.get(510..512) == Some(&[0x55, 0xaa]) {
                also.push("a partitioned disk (an MBR boot signature ends the header)".into());
            }
            for what in also {
                rep.add(
                    "ambiguous-format",
                    format!(
                        "the file is also {what}: programs that decide by that format see \
                         another file than VMDK readers do"
                    ),
                );
            }
            if rep.qemu_format != "vmdk" {
                rep.add(
                    "ambiguous-format",
                    format!(
                        "qemu-img's probe takes the file for {} (several of its drivers claim \
                         it, and the one registered first wins)",
                        rep.qemu_format
                    ),
                );
            }
        }
        _ if is_tar && rep.format == "ova" => {
            if rep.qemu_format != "raw" {
                let mut what = format!("a {} image", rep.qemu_format);
                if rep.qemu_format == "vmdk" && !head.starts_with(b"KDMV") {
                    // Descriptor text in the first tar header: say what QEMU would open.
                    let text = r.bytes(0, qemu_view::READ_DESC_MAX as u64)?;
                    let open = qemu_view::open_descriptor_file(&text);
                    what = if open.extents.is_empty() {
                        "a VMDK descriptor".to_string()
                    } else {
                        format!("a VMDK descriptor naming {}", extent_names(&open))
                    };
                }
                rep.add(
                    "ambiguous-format",
                    format!(
                        "qemu-img's probe (without -f) takes the archive itself for {what}: \
                         whoever runs qemu-img on the .ova opens it as that"
                    ),
                );
            }
            for f in foreign::probe_head_all(head)
                .into_iter()
                .chain(foreign::probe_tail(tail))
            {
                rep.add(
                    "ambiguous-format",
                    format!("the archive is also a {} image", f.description()),
                );
            }
        }
        _ => {}
    }
    Ok(())
}
