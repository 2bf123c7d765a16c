//! Output held back until a command has succeeded: in memory while small, then in an
//! unlinked temporary file, so holding back a huge output costs no memory. `map
//! --output=json` uses it so that a failure leaves stdout empty instead of a fragment no
//! JSON parser accepts.

use std::fs::File;
use std::io::{self, Seek, Write};

/// Bytes kept in memory before moving to a temporary file.
const MEMORY_LIMIT: usize = 8 << 20;

/// A write sink whose content is released with [`Spool::copy_to`].
#[derive(Default)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
}

impl Spool {
    /// An empty spool.
    pub fn new() -> Spool {
        Spool::default()
    }

    /// Write everything held to `out`.
    pub fn copy_to(self, out: &mut impl Write) -> io::Result<()> {
        match self.file {
            None => out.write_all(&self.memory),
            Some(mut f) => {
                f.rewind()?;
                io::copy(&mut f, out)?;
                Ok(())
            }
        }
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + buf.len() > MEMORY_LIMIT {
            let mut f = temp_file()?;
            f.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write(buf),
            None => {
                self.memory.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

/// A new file in the temporary directory, readable by us alone and already unlinked (it
/// disappears with the process, whatever happens).
fn temp_file() -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let mut last = None;
    for attempt in 0..64u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(
            ".vmdk-spool-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create a temporary file in {}: {e}", dir.display()),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("cannot create a temporary file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_outputs_come_back_whole() {
        for len in [
            0usize,
            10,
            MEMORY_LIMIT,
            MEMORY_LIMIT + 1,
            3 * MEMORY_LIMIT + 7,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut s = Spool::new();
            for chunk in data.chunks(100_000) {
                s.write_all(chunk).unwrap();
            }
            assert_eq!(s.file.is_some(), len > MEMORY_LIMIT, "{len}");
            let mut out = Vec::new();
            s.copy_to(&mut out).unwrap();
            assert!(out == data, "{len}");
        }
    }
}
