//! Operations on images: each one built on [`Image`](crate::image::Image), its one read
//! mapping and its one write walk, or on any [`Disk`](crate::image::Disk) (VMDK, raw,
//! qcow2, windows of them).
//!
//! ```text
//! check.rs, repair.rs   qemu-img check, and its -r leaks / -r all
//! create.rs             new images (every subformat), and the layout rules they share
//! create_options.rs     qemu-img's vmdk `-o` options and create's backing-file rules
//! convert/              convert and compare: planner, workers, in-order writer, sinks
//! stream_writer.rs      streamOptimized output written front to back
//! measure.rs            qemu-img measure
//! commit.rs, rebase.rs  backing-chain operations
//! resize.rs, amend.rs   changing an image's size or descriptor fields
//! compact.rs            zero grains dropped, grains moved into holes, file cut
//! inspect/              the upload verdict on one file (never an Image)
//! open_disk.rs          a file as a Disk of the format given or probed
//! source_window.rs      a window of a disk (dd's skip/count)
//! ova_create.rs         ova create: each disk converted into an archive member
//! ```

pub mod amend;
pub mod check;
pub mod commit;
pub mod compact;
pub mod convert;
pub mod create;
pub mod create_options;
pub mod inspect;
pub mod measure;
mod open_disk;
pub mod ova_create;
pub mod rebase;
pub mod repair;
pub mod resize;
pub mod source_window;
pub mod stream_writer;

pub use open_disk::open_disk;
