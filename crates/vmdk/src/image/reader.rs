//! A `std::io::Read + Seek` view of an image, for code that wants a plain reader.

use std::io::{self, Read, Seek, SeekFrom};

use crate::image::Image;

/// Reads an [`Image`] sequentially from a cursor position.
#[derive(Debug)]
pub struct ImageReader<'a> {
    image: &'a Image,
    pos: u64,
}

impl<'a> ImageReader<'a> {
    /// A reader starting at offset 0.
    pub fn new(image: &'a Image) -> Self {
        ImageReader { image, pos: 0 }
    }
}

impl Read for ImageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.image.size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - self.pos) as usize;
        self.image.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ImageReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.image.size() as i128;
        let target = match to {
            SeekFrom::Start(o) => o as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            ));
        }
        self.pos = target as u64;
        Ok(self.pos)
    }
}
