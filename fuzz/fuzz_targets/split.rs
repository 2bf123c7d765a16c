//! The input layout the multi-file targets share: the first byte picks how much of the rest
//! is the first file (`len * s / 255` bytes, all of it when `s == 0xff`); the remainder is
//! the second file.

/// The two files in `data`, or `None` for an empty input.
pub fn two_files(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&sel, rest) = data.split_first()?;
    let cut = if sel == 0xff {
        rest.len()
    } else {
        (rest.len() * sel as usize) / 255
    };
    Some(rest.split_at(cut))
}
