//! qcow2 (versions 2 and 3), QEMU's native format, as a source of convert, compare, dd,
//! info and map, and as a convert target.
//!
//! Reading is ours rather than a crate's (see the commit that added it for the measurement):
//! the pipeline needs each cluster's host offset or compressed stream to read and inflate
//! clusters on its own workers, through the project's namespace and locks, which a
//! self-contained block driver does not expose.
//!
//! Writing is ours too: `writer` lays out a new image in one pass from clusters that
//! arrive in disk order (compressed on the pipeline's workers), which a general driver's
//! allocate-as-you-write interface cannot take (see the commit that added it).

pub(crate) mod header;
pub(crate) mod l2;
mod l2_cache;
pub(crate) mod layout;
pub(crate) mod options;
pub(crate) mod source;
pub(crate) mod writer;

pub use layout::{Compat, Preallocation, Qcow2CreateOptions};
pub use options::QCOW2_OPTIONS_HELP;
pub use source::Qcow2Image;
pub use writer::Qcow2Writer;
