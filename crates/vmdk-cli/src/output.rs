//! `--output` choices, and the report tree the library builds ([`vmdk::report::Node`]).

pub use vmdk::report::Node;

/// `--output` of info, map and check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text for people, like qemu-img's.
    Human,
    /// JSON with qemu-img's field names.
    Json,
}
