//! What the `format/` parsers and codecs say is wrong with an on-disk structure. Callers
//! name the file and choose the [`crate::ErrorKind`]; the text here names the problem.

/// A structure that cannot be parsed, validated or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the structure takes (the structure's name).
    #[error("{0} truncated")]
    Truncated(&'static str),
    /// The structure's magic number is not there (the structure's name).
    #[error("bad {0} magic")]
    BadMagic(&'static str),
    /// A version, flag or feature this library does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// A value that cannot be right, or that the structure cannot hold.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results carrying [`FormatError`].
pub type FormatResult<T> = Result<T, FormatError>;
