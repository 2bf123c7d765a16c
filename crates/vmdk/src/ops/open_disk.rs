//! Opening a file as a [`Disk`] of any format: the one place where a format, given by name
//! or probed from the content, becomes a type.

use std::path::Path;

use crate::error::Result;
use crate::image::raw::RawFile;
use crate::image::{Disk, Image, ImageFormat, OpenOptions};
use crate::qcow2::Qcow2Image;

/// Open `path` in `opts`'s namespace as a disk of `format`, or of the format its content
/// says when `None` ([`ImageFormat::probe_in`]): a VMDK file opens as an [`Image`], a
/// qcow2 file as a [`Qcow2Image`], an image of another format (VHD, ...) is refused with
/// its name rather than read as raw bytes, and anything else is a [`RawFile`].
pub fn open_disk(
    path: &Path,
    format: Option<ImageFormat>,
    opts: &OpenOptions,
) -> Result<Box<dyn Disk>> {
    if opts.writable {
        opts.refuse_force_share(path)?;
    }
    let format = match format {
        Some(f) => f,
        None => ImageFormat::probe_in(&*opts.namespace(), path)?,
    };
    Ok(match format {
        ImageFormat::Vmdk => Box::new(Image::open_with(path, opts)?),
        ImageFormat::Raw => Box::new(RawFile::open_with(path, opts)?),
        ImageFormat::Qcow2 => Box::new(Qcow2Image::open_with(path, opts)?),
    })
}
