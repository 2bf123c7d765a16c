//! # vmdk
//!
//! Open, read, write, create and check VMware VMDK virtual disks: monolithicSparse,
//! monolithicFlat, twoGbMaxExtentSparse/Flat, streamOptimized (QEMU's and VMware's layouts),
//! vmfs, vmfsSparse (COWD), seSparse, multi-extent descriptors and backing chains.
//!
//! The crate is layered; each folder is a layer and uses only those before it (a test,
//! `layers.rs`, checks every `crate::` path against this order):
//! - [`format`](mod@format): on-disk structures as pure functions over byte slices (no I/O), fuzzed;
//!   with `error` and [`text`] (escaping names for terminals), the base of everything;
//! - [`storage`]: [`Storage`] (positional I/O on one file) and [`storage::namespace`]
//!   (names to files, the path gate, QEMU's locks): the only code that touches `std::fs`;
//! - [`ova`]: OVA archives as a namespace of byte ranges, and the archive-writing primitives;
//! - [`extent`]: flat, zero and sparse extents, and the map's target types they produce;
//! - [`image`]: [`Image`], its one read mapping ([`Image::map`]) and one write walk, and
//!   [`Disk`], what every whole-disk operation reads (VMDK, raw, qcow2, windows of them);
//! - [`qcow2`]: qcow2 as a [`Disk`] and as a convert target;
//! - [`ops`]: every operation (check, create, convert, commit, rebase, resize, compact,
//!   amend, measure, inspect, `ova create`, ...) and [`open_disk()`];
//! - [`report`] and `export` (feature `nbd`): the trees the CLI and Python print, and
//!   an image as an NBD export.
//!
//! ```no_run
//! let img = vmdk::Image::open("disk.vmdk")?;
//! let mut buf = vec![0u8; 4096];
//! img.read_at(&mut buf, 0)?;
//! # Ok::<(), vmdk::Error>(())
//! ```
//!
//! ## A tour
//!
//! Each step below runs as a doctest, on files in a temporary directory.
//!
//! **Create** a 64 MiB monolithicSparse image, as `qemu-img create -f vmdk` would
//! ([`create()`], [`CreateOptions`]):
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("disk.vmdk");
//! vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! # Ok(()) }
//! ```
//!
//! **Open** it and **write** to it ([`OpenOptions`], [`Image::write_at`]); writes are
//! durable once [`Image::flush`] returns:
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vmdk");
//! # vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! let img = vmdk::OpenOptions::new().writable(true).open(&path)?;
//! img.write_at(&[0xab; 65536], 1 << 20)?;
//! img.flush()?;
//! # Ok(()) }
//! ```
//!
//! **Read** it back ([`Image::open`], [`Image::read_at`]); what was never written reads as
//! zeros:
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vmdk");
//! # vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! # let w = vmdk::OpenOptions::new().writable(true).open(&path)?;
//! # w.write_at(&[0xab; 65536], 1 << 20)?;
//! # w.flush()?;
//! # drop(w);
//! let img = vmdk::Image::open(&path)?;
//! assert_eq!(img.size(), 64 << 20);
//! let mut buf = vec![0u8; 4096];
//! img.read_at(&mut buf, 1 << 20)?;
//! assert!(buf.iter().all(|&b| b == 0xab));
//! img.read_at(&mut buf, 0)?;
//! assert!(buf.iter().all(|&b| b == 0));
//! # Ok(()) }
//! ```
//!
//! **Map** it: which stretches hold data, which read as zeros, which fall through to a
//! backing file ([`Image::map`], [`MapEntry`], [`MapTarget`]):
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vmdk");
//! # vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! # let w = vmdk::OpenOptions::new().writable(true).open(&path)?;
//! # w.write_at(&[0xab; 65536], 1 << 20)?;
//! # w.flush()?;
//! # drop(w);
//! let img = vmdk::Image::open(&path)?;
//! let data: Vec<(u64, u64)> = img
//!     .map(0, img.size())?
//!     .iter()
//!     .filter(|e| e.target.is_data())
//!     .map(|e| (e.start, e.length))
//!     .collect();
//! assert_eq!(data, [(1 << 20, 65536)]);
//! # Ok(()) }
//! ```
//!
//! **Check** it, as `qemu-img check` does ([`check()`], [`CheckReport`]):
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vmdk");
//! # vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! let report = vmdk::check(&vmdk::Image::open(&path)?)?;
//! assert!(report.is_clean());
//! # Ok(()) }
//! ```
//!
//! **Convert** it to a streamOptimized image (what OVAs and clouds take), from any
//! [`Disk`] [`open_disk()`] opens: VMDK, qcow2 or raw ([`ops::convert`],
//! [`ConvertOptions`]):
//!
//! ```rust
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("disk.vmdk");
//! # vmdk::create(&path, 64 << 20, &vmdk::CreateOptions::default())?;
//! use vmdk::{CreateOptions, ConvertOptions, OpenOptions, Subformat};
//!
//! let src = vmdk::open_disk(&path, None, &OpenOptions::new())?;
//! let out = dir.path().join("stream.vmdk");
//! let create = CreateOptions {
//!     subformat: Subformat::StreamOptimized,
//!     ..CreateOptions::default()
//! };
//! vmdk::ops::convert::convert_to_vmdk(&*src, &out, &create, &ConvertOptions::default(), &|_, _| {})?;
//! assert_eq!(vmdk::Image::open(&out)?.size(), 64 << 20);
//! # Ok(()) }
//! ```
//!
//! The same image can live anywhere a [`Namespace`] serves files from: in memory
//! ([`MemNamespace`]), inside an OVA, or in object storage (the `vmdk-object` crate).

#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod error;
#[cfg(feature = "nbd")]
pub mod export;
pub mod extent;
pub mod format;
pub mod image;
pub mod ops;
pub mod ova;
pub mod qcow2;
pub mod qemu_syntax;
pub mod report;
pub mod storage;
pub mod text;

#[cfg(test)]
mod layers;

pub use error::{Error, ErrorKind, Result};
pub use extent::{ExtentFile, MapEntry, MapTarget};
pub use image::reader::ImageReader;
pub use image::{probe, DescriptorLocation, Disk, FileFormat, Image, ImageFormat, OpenOptions};
pub use ops::check::{check, CheckReport};
pub use ops::convert::{CompareResult, ConvertOptions};
pub use ops::create::{create, AdapterType, CreateOptions, Subformat, DEFAULT_COMPRESSION_LEVEL};
pub use ops::inspect::{inspect, InspectPolicy, InspectReport, Verdict};
pub use ops::open_disk;
pub use ova::default_namespace;
pub use storage::namespace::{LocalNamespace, MemNamespace, Namespace, OpenMode, RouterNamespace};
pub use storage::{FileId, FileStorage, MemStorage, Storage};
#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn image_is_send_sync() {
        assert_send_sync::<crate::image::Image>();
    }
}
