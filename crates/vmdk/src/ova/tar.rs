//! The tar container of an OVA: an index of its members (read from the headers only, every
//! header's checksum verified, member data never read), and the headers our own OVAs are
//! written with.
//!
//! ustar, GNU (`L` long names, base-256 sizes) and pax (`x` records for `path` and `size`)
//! headers are read. The archive is hostile input: the number of members and the size of
//! long-name and pax records are bounded before anything is allocated, and a member whose
//! name climbs out of the archive (`..`, an absolute path) or whose data runs past the end
//! of the file makes the whole archive an error.

use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Size of a tar header and the unit member data is padded to.
pub const BLOCK: u64 = 512;
/// Most members an archive may hold (an OVA has a handful).
pub const MAX_MEMBERS: usize = 10_000;
/// Largest GNU long-name or pax extended-header record accepted.
const MAX_EXTENSION: u64 = 1 << 20;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file (type `0`, NUL or `7`).
    File,
    /// A directory (type `5`).
    Directory,
    /// Anything else (links, devices, GNU sparse files): listed, never opened.
    Other(u8),
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name, without a leading `./` (never absolute, never containing `..`).
    pub name: String,
    /// What it is.
    pub kind: MemberKind,
    /// Offset of its header in the archive.
    pub header_offset: u64,
    /// Offset of its first data byte in the archive.
    pub offset: u64,
    /// Its size in bytes.
    pub size: u64,
}

/// The members of a tar archive, in archive order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarIndex {
    /// Every member (extension headers are folded into the member they describe).
    pub members: Vec<Member>,
}

impl TarIndex {
    /// The regular file named `name` (a leading `./` ignored).
    pub fn file(&self, name: &str) -> Option<&Member> {
        let name = name.trim_start_matches("./");
        self.members
            .iter()
            .find(|m| m.kind == MemberKind::File && m.name == name)
    }

    /// The member named `name`, whatever it is.
    pub fn member(&self, name: &str) -> Option<&Member> {
        let name = name.trim_start_matches("./");
        self.members
            .iter()
            .find(|m| m.name.trim_end_matches('/') == name)
    }

    /// Regular files whose name ends with `suffix` (ASCII case ignored), in archive order.
    pub fn files_ending(&self, suffix: &str) -> impl Iterator<Item = &Member> {
        let suffix = suffix.to_ascii_lowercase();
        self.members.iter().filter(move |m| {
            m.kind == MemberKind::File && m.name.to_ascii_lowercase().ends_with(&suffix)
        })
    }
}

/// Whether `head` starts like a gzip stream (an `.ova.gz`, or a `.ova` that was gzipped).
pub fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

/// Read the index of the tar archive in `storage` (named `path` in errors).
pub fn read_index(storage: &dyn Storage, path: &Path) -> Result<TarIndex> {
    let len = storage
        .len()
        .map_err(|e| Error::io(e, "getting archive size").with_path(path))?;
    let mut members = Vec::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    let mut pax = Pax::default();
    let mut block = [0u8; BLOCK as usize];
    let got = storage
        .read_up_to(&mut block, 0)
        .map_err(|e| Error::io(e, "reading tar header").with_path(path))?;
    if is_gzip(&block[..got]) {
        return Err(Error::unsupported(
            "the archive is gzip-compressed (an .ova.gz?): disks are read in place only \
             from an uncompressed tar; decompress it first (gunzip)",
        )
        .with_path(path));
    }
    loop {
        if pos == len {
            // An archive without its two zero blocks: every header read was complete, so
            // accept what is there (GNU tar does, with a warning).
            break;
        }
        if len - pos < BLOCK {
            return Err(corrupt(
                path,
                format!("archive is truncated: the header at offset {pos} is cut short"),
            ));
        }
        storage
            .read_exact_at(&mut block, pos)
            .map_err(|e| Error::io(e, "reading tar header").with_path(path))?;
        if block.iter().all(|&b| b == 0) {
            break;
        }
        verify_checksum(&block, pos, path)?;
        let header_offset = pos;
        let typeflag = block[156];
        let mut size = parse_number(&block[124..136])
            .ok_or_else(|| corrupt(path, format!("tar header at offset {pos}: bad size field")))?;
        if matches!(typeflag, b'0' | b'\0' | b'7' | b'S') {
            if let Some(s) = pax.size.take() {
                size = s;
            }
        }
        let data = pos + BLOCK;
        let end = data
            .checked_add(size)
            .filter(|&e| e <= len)
            .ok_or_else(|| {
                corrupt(
                    path,
                    format!(
                        "tar member at offset {header_offset} claims {size} bytes, past the end \
                     of the archive ({len} bytes)"
                    ),
                )
            })?;
        match typeflag {
            b'L' | b'x' => {
                if size > MAX_EXTENSION {
                    return Err(corrupt(
                        path,
                        format!("tar extension header at offset {pos} is {size} bytes (at most {MAX_EXTENSION})"),
                    ));
                }
                let mut buf = vec![0u8; size as usize];
                storage
                    .read_exact_at(&mut buf, data)
                    .map_err(|e| Error::io(e, "reading tar header").with_path(path))?;
                if typeflag == b'L' {
                    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    long_name = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                } else {
                    pax = Pax::parse(&buf).ok_or_else(|| {
                        corrupt(path, format!("malformed pax header at offset {pos}"))
                    })?;
                }
            }
            // Global pax headers, long link names: nothing an OVA reader needs.
            b'g' | b'K' => {}
            _ => {
                let raw_name = long_name
                    .take()
                    .or_else(|| pax.path.take())
                    .unwrap_or_else(|| header_name(&block));
                pax = Pax::default();
                let name = check_name(&raw_name, header_offset, path)?;
                let kind = match typeflag {
                    b'0' | b'\0' | b'7' => MemberKind::File,
                    b'5' => MemberKind::Directory,
                    t => MemberKind::Other(t),
                };
                if members.len() >= MAX_MEMBERS {
                    return Err(corrupt(
                        path,
                        format!("archive holds more than {MAX_MEMBERS} members"),
                    ));
                }
                members.push(Member {
                    name,
                    kind,
                    header_offset,
                    offset: data,
                    size,
                });
            }
        }
        pos = end.next_multiple_of(BLOCK).min(len);
    }
    Ok(TarIndex { members })
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::corrupt(message).with_path(path)
}

/// The name a plain header gives: ustar's prefix joined to its name field.
fn header_name(block: &[u8]) -> String {
    let field = |r: std::ops::Range<usize>| {
        let f = &block[r];
        let n = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..n]).into_owned()
    };
    let name = field(0..100);
    // POSIX ustar ("ustar\0") keeps a prefix at 345; GNU ("ustar  ") uses those bytes for
    // times, so the prefix is read only from POSIX headers.
    if &block[257..263] == b"ustar\0" {
        let prefix = field(345..500);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// Refuse names that leave the archive; drop a leading `./`.
fn check_name(name: &str, at: u64, path: &Path) -> Result<String> {
    if name.starts_with('/') {
        return Err(Error::new(
            crate::ErrorKind::UnsafePath,
            format!("tar member \"{name}\" (header at offset {at}) has an absolute name; refusing the archive"),
        )
        .with_path(path));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(Error::new(
            crate::ErrorKind::UnsafePath,
            format!("tar member \"{name}\" (header at offset {at}) climbs out of the archive with \"..\"; refusing the archive"),
        )
        .with_path(path));
    }
    let mut n = name;
    while let Some(rest) = n.strip_prefix("./") {
        n = rest;
    }
    if n.is_empty() || n == "." {
        return Ok(".".into());
    }
    Ok(n.to_string())
}

fn verify_checksum(block: &[u8; 512], pos: u64, path: &Path) -> Result<()> {
    if checksum_matches(block) {
        Ok(())
    } else {
        Err(corrupt(
            path,
            format!(
                "tar header at offset {pos} has a bad checksum (not a tar archive, or a damaged one)"
            ),
        ))
    }
}

fn checksum_matches(block: &[u8; 512]) -> bool {
    let stored = parse_octal(&block[148..156]);
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    // Old tars summed signed chars; both are accepted, as GNU tar does.
    matches!(stored, Some(s) if s == unsigned || s as i64 == signed)
}

/// Whether a file starting with `head` is a tar archive to GNU tar: its first block is a
/// header whose checksum matches (an all-zero block is the end of an empty archive, not a
/// header). The magic is not required: tar reads old v7 headers, which have none.
pub fn is_tar_header(head: &[u8]) -> bool {
    let Some(block) = head.get(..BLOCK as usize) else {
        return false;
    };
    let block: &[u8; 512] = block.try_into().expect("512 bytes");
    block.iter().any(|&b| b != 0) && checksum_matches(block)
}

/// An octal field (NUL- or space-terminated, leading spaces allowed); `None` if it holds
/// anything else.
fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add((b - b'0') as u64)?;
    }
    Some(v)
}

/// A numeric field: octal, or GNU base-256 when the top bit of its first byte is set.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    parse_octal(field)
}

/// What a pax extended header says about the next member.
#[derive(Debug, Default)]
struct Pax {
    path: Option<String>,
    size: Option<u64>,
}

impl Pax {
    /// Records `"<len> <key>=<value>\n"`; `None` when malformed.
    fn parse(mut buf: &[u8]) -> Option<Pax> {
        let mut pax = Pax::default();
        while !buf.is_empty() {
            if buf.iter().all(|&b| b == 0) {
                break;
            }
            let sp = buf.iter().position(|&b| b == b' ')?;
            let n: usize = std::str::from_utf8(&buf[..sp]).ok()?.parse().ok()?;
            if n <= sp + 1 || n > buf.len() || buf[n - 1] != b'\n' {
                return None;
            }
            let rec = &buf[sp + 1..n - 1];
            let eq = rec.iter().position(|&b| b == b'=')?;
            let (k, v) = (&rec[..eq], &rec[eq + 1..]);
            match k {
                b"path" => pax.path = Some(String::from_utf8_lossy(v).into_owned()),
                b"size" => pax.size = Some(std::str::from_utf8(v).ok()?.parse().ok()?),
                _ => {}
            }
            buf = &buf[n..];
        }
        Some(pax)
    }
}

/// A GNU-format header for a regular file `name` of `size` bytes, mode 0644, owned by root,
/// modified at `mtime` (seconds since the epoch): what `tar --format=gnu --owner=0
/// --group=0 --mode=0644` writes. Sizes of 8 GiB and more use GNU base-256. Names longer
/// than 100 bytes are refused (our member names are short).
pub fn gnu_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    let mut h = [0u8; 512];
    if name.is_empty() || name.len() > 100 {
        return Err(Error::invalid(format!(
            "tar member name \"{name}\" must be 1 to 100 bytes long"
        )));
    }
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut h[100..108], 0o644);
    put_octal(&mut h[108..116], 0);
    put_octal(&mut h[116..124], 0);
    if size < 0o77777777777 {
        put_octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    put_octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    // Six octal digits, NUL, space: the traditional layout.
    let digits = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(digits.as_bytes());
    Ok(h)
}

/// `v` as zero-padded octal filling all but the field's last byte, which stays NUL.
fn put_octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(&s.as_bytes()[s.len() - w..]);
    field[w] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend_from_slice(&gnu_header(name, data.len() as u64, 0).unwrap());
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn index(bytes: Vec<u8>) -> Result<TarIndex> {
        read_index(&MemStorage::new(bytes), Path::new("t.ova"))
    }

    #[test]
    fn reads_what_it_writes() {
        let idx = index(archive(&[("a.ovf", b"<x/>"), ("./d.vmdk", &[7u8; 1000])])).unwrap();
        assert_eq!(idx.members.len(), 2);
        assert_eq!(idx.members[0].name, "a.ovf");
        assert_eq!(idx.members[0].offset, 512);
        assert_eq!(idx.members[0].size, 4);
        let d = idx.file("d.vmdk").unwrap();
        assert_eq!((d.offset, d.size), (1536, 1000));
    }

    #[test]
    fn refuses_hostile_names_sizes_and_checksums() {
        for name in ["../x", "a/../../x", "/etc/passwd"] {
            let e = index(archive(&[(name, b"x")])).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::UnsafePath, "{name}: {e}");
        }
        let mut a = archive(&[("a", b"x")]);
        a[0] = b'b';
        assert!(index(a).unwrap_err().to_string().contains("bad checksum"));
        let mut a = archive(&[("a", &[1u8; 600])]);
        a.truncate(1024);
        let e = index(a).unwrap_err();
        assert!(e.to_string().contains("past the end"), "{e}");
        let e = index(vec![0x1f, 0x8b, 8, 0]).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    #[test]
    fn base256_sizes_and_pax_records_round_trip() {
        let h = gnu_header("big", 10 << 30, 0).unwrap();
        assert_eq!(parse_number(&h[124..136]), Some(10 << 30));
        let pax = Pax::parse(b"20 path=long/name.x\n11 size=42\n").unwrap();
        assert_eq!(pax.path.as_deref(), Some("long/name.x"));
        assert_eq!(pax.size, Some(42));
        assert!(Pax::parse(b"99 path=x\n").is_none());
    }
}
