//! The tar container of an OVA: an index of its members (read from the headers only, every
//! header's checksum verified, member data never read), and the headers our own OVAs are
//! written with.
//!
//! ustar, GNU (`L` long names, base-256 sizes) and pax (`x` and Solaris `X` records for
//! `path` and `size`) headers are read. The archive is hostile input: the number of members
//! and the size of long-name and pax records are bounded before anything is allocated, and a
//! member whose name climbs out of the archive (`..`, an absolute path) or whose data runs
//! past the end of the file makes the whole archive an error.
//!
//! Names and positions are the ones GNU tar extracts, since that is what an importer does
//! with the bytes (each rule below was checked against GNU tar 1.34, `tar -x`):
//!
//! * a pax `path` wins over a GNU long name, whichever header comes first; a pax value
//!   ends at its first NUL, as tar's C string does;
//! * a name is the path tar writes: `./a`, `a//b` and `a/./b/` are `a`, `a/b` and `a/b`
//!   (so two of them are one file, the last extracted winning); a regular file whose name
//!   ends in `/` is extracted as a directory;
//! * tar extracts links, devices, FIFOs and directories without reading past their header,
//!   yet `tar -t` skips their size: such a member claiming data is refused, as the two
//!   readings of the archive disagree about which headers follow;
//! * GNU sparse members (type `S`, or pax `GNU.sparse.*` records) are stored as maps and
//!   pieces, and a global pax header's `path` or `size` renames or resizes every member
//!   after it: both are refused rather than modelled;
//! * names that are not UTF-8 are refused (they could not be matched against the OVF or
//!   the manifest without guessing how tar would spell them).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::storage::Storage;
use crate::text::escape;

/// Size of a tar header and the unit member data is padded to.
pub const BLOCK: u64 = 512;
/// Most members an archive may hold (an OVA has a handful).
pub(crate) const MAX_MEMBERS: usize = 10_000;
/// Largest GNU long-name or pax extended-header record accepted.
const MAX_EXTENSION: u64 = 1 << 20;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A regular file (type `0`, NUL or `7`).
    File,
    /// A directory (type `5`, or a regular file's type with a name ending in `/`).
    Directory,
    /// Anything else (links, devices, FIFOs, volume labels, unknown types): listed, never
    /// opened.
    Other(u8),
}

impl MemberKind {
    /// A short stable name: `file`, `directory`, `hard-link`, `symlink`, `char-device`,
    /// `block-device`, `fifo`, `volume-label`, or `type-X` for other tar types.
    pub fn short_name(self) -> String {
        match self {
            MemberKind::File => "file".into(),
            MemberKind::Directory => "directory".into(),
            MemberKind::Other(t) => match t {
                b'1' => "hard-link".into(),
                b'2' => "symlink".into(),
                b'3' => "char-device".into(),
                b'4' => "block-device".into(),
                b'6' => "fifo".into(),
                b'V' => "volume-label".into(),
                t if t.is_ascii_graphic() => format!("type-{}", t as char),
                t => format!("type-0x{t:02x}"),
            },
        }
    }

    /// What it is, for messages: "a regular file", "a symbolic link", ...
    pub fn describe(self) -> String {
        match self {
            MemberKind::File => "a regular file".into(),
            MemberKind::Directory => "a directory".into(),
            MemberKind::Other(t) => match t {
                b'1' => "a hard link".into(),
                b'2' => "a symbolic link".into(),
                b'3' => "a character device".into(),
                b'4' => "a block device".into(),
                b'6' => "a FIFO".into(),
                b'V' => "a volume label".into(),
                t if t.is_ascii_graphic() => {
                    format!("not a regular file (tar type '{}')", t as char)
                }
                t => format!("not a regular file (tar type 0x{t:02x})"),
            },
        }
    }
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The path tar extracts it to ([`member_path`]: never absolute, never containing `..`,
    /// no `.` or empty components, no trailing `/`).
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

/// The members of a tar archive, in archive order, with a lookup by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarIndex {
    /// Every member (extension headers are folded into the member they describe).
    pub members: Vec<Member>,
    /// Positions in `members` of each name, in archive order: lookups cost the same
    /// however many members there are (a descriptor of 60,000 extent lines looks a member
    /// up per line).
    by_name: HashMap<String, Vec<usize>>,
    /// Whether any name is held by more than one member.
    duplicated: bool,
}

/// The path tar extracts a member named `name` to (the name as the index keeps it):
/// empty and `.` components dropped, trailing `/` dropped, `.` for nothing left.
pub fn member_path(name: &str) -> String {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// The index key a name written elsewhere (an OVF href, a manifest line, a descriptor)
/// stands for, or `None` when it cannot be a member (absolute, or climbing with `..`).
pub(crate) fn lookup_key(name: &str) -> Option<String> {
    if name.starts_with('/') || name.split('/').any(|c| c == "..") {
        return None;
    }
    Some(member_path(name))
}

impl TarIndex {
    /// The index of `members` (named as [`member_path`] spells them).
    pub fn new(members: Vec<Member>) -> TarIndex {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::with_capacity(members.len());
        for (i, m) in members.iter().enumerate() {
            by_name.entry(m.name.clone()).or_default().push(i);
        }
        let duplicated = by_name.values().any(|v| v.len() > 1);
        TarIndex {
            members,
            by_name,
            duplicated,
        }
    }

    /// The member `name` stands for, whatever it is: the last of that name, the one tar
    /// leaves on disk.
    pub fn member(&self, name: &str) -> Option<&Member> {
        let i = *self.by_name.get(&lookup_key(name)?)?.last()?;
        self.members.get(i)
    }

    /// The regular file `name` stands for (see [`TarIndex::member`]).
    pub fn file(&self, name: &str) -> Option<&Member> {
        self.member(name).filter(|m| m.kind == MemberKind::File)
    }

    /// Whether some name is held by several members.
    pub fn has_duplicates(&self) -> bool {
        self.duplicated
    }

    /// The members of each name held more than once, in archive order of each name's first
    /// member.
    pub fn duplicates(&self) -> Vec<Vec<&Member>> {
        if !self.duplicated {
            return Vec::new();
        }
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let all = &self.by_name[&m.name];
                (all.len() > 1 && all[0] == i)
                    .then(|| all.iter().map(|&j| &self.members[j]).collect())
            })
            .collect()
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
pub(crate) fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

/// Read the index of the tar archive in `storage` (named `path` in errors).
pub(crate) fn read_index(storage: &dyn Storage, path: &Path) -> Result<TarIndex> {
    let len = storage
        .len()
        .map_err(|e| Error::io(e, "getting archive size").with_path(path))?;
    let mut members = Vec::new();
    let mut pos = 0u64;
    let mut long_name: Option<Vec<u8>> = None;
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
        let header_size = parse_number(&block[124..136])
            .ok_or_else(|| corrupt(path, format!("tar header at offset {pos}: bad size field")))?;
        let data = pos + BLOCK;
        let data_end = |size: u64| {
            data.checked_add(size).filter(|&e| e <= len).ok_or_else(|| {
                corrupt(
                    path,
                    format!(
                        "tar member at offset {header_offset} claims {size} bytes, past the \
                         end of the archive ({len} bytes)"
                    ),
                )
            })
        };
        if matches!(typeflag, b'L' | b'K' | b'x' | b'X' | b'g') {
            // An extension header: its own size is the header's, whatever a pax record said.
            let end = data_end(header_size)?;
            if typeflag != b'K' {
                if header_size > MAX_EXTENSION {
                    return Err(corrupt(
                        path,
                        format!(
                            "tar extension header at offset {pos} is {header_size} bytes (at \
                             most {MAX_EXTENSION})"
                        ),
                    ));
                }
                let mut buf = vec![0u8; header_size as usize];
                storage
                    .read_exact_at(&mut buf, data)
                    .map_err(|e| Error::io(e, "reading tar header").with_path(path))?;
                let malformed = || corrupt(path, format!("malformed pax header at offset {pos}"));
                match typeflag {
                    b'L' => long_name = Some(until_nul(&buf).to_vec()),
                    // GNU tar reads Solaris `X` headers as pax `x` ones.
                    b'x' | b'X' => pax = Pax::parse(&buf).ok_or_else(malformed)?,
                    _ => {
                        let global = Pax::parse(&buf).ok_or_else(malformed)?;
                        if global.path.is_some() || global.size.is_some() || global.sparse {
                            return Err(corrupt(
                                path,
                                format!(
                                    "the global pax header at offset {pos} sets a name, size \
                                     or sparse map for every member after it (GNU tar applies \
                                     it to each); refusing the archive"
                                ),
                            ));
                        }
                    }
                }
            }
            pos = end.next_multiple_of(BLOCK).min(len);
            continue;
        }

        // A member: a pax `path` wins over a GNU long name (GNU tar applies pax records
        // last), and either over the header's own name.
        let raw_name = pax
            .path
            .take()
            .or(long_name.take())
            .unwrap_or_else(|| header_name(&block));
        let size = pax.size.take().unwrap_or(header_size);
        let sparse = std::mem::take(&mut pax).sparse;
        let (name, trailing_slash) = check_name(&raw_name, header_offset, path)?;
        let refuse = |why: String| {
            corrupt(
                path,
                format!(
                    "tar member \"{}\" (header at offset {header_offset}) {why}; refusing the \
                     archive",
                    escape(&name)
                ),
            )
        };
        if sparse || typeflag == b'S' {
            return Err(refuse(
                "is a GNU sparse file, stored as a map and pieces that tar reassembles \
                 (extract the archive with tar to read it)"
                    .into(),
            ));
        }
        let kind = match typeflag {
            // GNU tar extracts a regular file whose name ends in `/` as a directory.
            b'0' | b'\0' | b'7' if trailing_slash => MemberKind::Directory,
            b'0' | b'\0' | b'7' => MemberKind::File,
            b'5' => MemberKind::Directory,
            t => MemberKind::Other(t),
        };
        // Links, devices, FIFOs and directories: tar -x reads the next header right after
        // this one, tar -t skips `size` bytes first.
        let dataless = kind == MemberKind::Directory || matches!(typeflag, b'1'..=b'6');
        if dataless && size != 0 {
            return Err(refuse(format!(
                "is {} yet claims {size} bytes of data: tar lists such an archive one way and \
                 extracts it another",
                kind.describe()
            )));
        }
        let end = data_end(size)?;
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
        pos = end.next_multiple_of(BLOCK).min(len);
    }
    Ok(TarIndex::new(members))
}

fn corrupt(path: &Path, message: String) -> Error {
    Error::corrupt(message).with_path(path)
}

/// `b` up to its first NUL: how tar reads every name, a C string.
fn until_nul(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// The name a plain header gives: ustar's prefix joined to its name field.
fn header_name(block: &[u8]) -> Vec<u8> {
    let name = until_nul(&block[0..100]);
    // POSIX ustar ("ustar\0") keeps a prefix at 345; GNU ("ustar  ") uses those bytes for
    // times, so the prefix is read only from POSIX headers (as GNU tar does).
    if &block[257..263] == b"ustar\0" {
        let prefix = until_nul(&block[345..500]);
        if !prefix.is_empty() {
            return [prefix, b"/", name].concat();
        }
    }
    name.to_vec()
}

/// Refuse names that are not UTF-8 or that leave the archive; the path tar extracts the
/// member to, and whether the name ended in `/`.
fn check_name(raw: &[u8], at: u64, path: &Path) -> Result<(String, bool)> {
    let Ok(name) = std::str::from_utf8(raw) else {
        return Err(corrupt(
            path,
            format!(
                "tar member \"{}\" (header at offset {at}) is not named in UTF-8; refusing the \
                 archive",
                escape(&String::from_utf8_lossy(raw))
            ),
        ));
    };
    // Not fixable by any option: the archive itself is hostile (or broken), so these are
    // not path-gate errors (whose hint suggests allowing a directory).
    if name.starts_with('/') {
        return Err(corrupt(
            path,
            format!(
                "tar member \"{}\" (header at offset {at}) has an absolute name; refusing the \
                 archive",
                escape(name)
            ),
        ));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(corrupt(
            path,
            format!(
                "tar member \"{}\" (header at offset {at}) climbs out of the archive with \
                 \"..\"; refusing the archive",
                escape(name)
            ),
        ));
    }
    Ok((member_path(name), name.ends_with('/')))
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
pub(crate) fn is_tar_header(head: &[u8]) -> bool {
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
    /// `path`, up to its first NUL.
    path: Option<Vec<u8>>,
    size: Option<u64>,
    /// Whether any `GNU.sparse.*` record is present.
    sparse: bool,
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
                b"path" => pax.path = Some(until_nul(v).to_vec()),
                b"size" => pax.size = Some(std::str::from_utf8(v).ok()?.parse().ok()?),
                k if k.starts_with(b"GNU.sparse.") => pax.sparse = true,
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
            assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt, "{name}: {e}");
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
        assert_eq!(pax.path.as_deref(), Some(&b"long/name.x"[..]));
        assert_eq!(pax.size, Some(42));
        assert!(Pax::parse(b"99 path=x\n").is_none());
    }

    /// A member of type `kind` named `name` holding `data`.
    fn raw_member(name: &[u8], data: &[u8], kind: u8) -> Vec<u8> {
        let mut h = gnu_header("x", data.len() as u64, 0).unwrap();
        h[..100].fill(0);
        h[..name.len()].copy_from_slice(name);
        h[156] = kind;
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
        out
    }

    fn pax_member(kind: u8, key: &str, value: &[u8]) -> Vec<u8> {
        let rest = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
        let mut n = rest.len() + 1;
        while n.to_string().len() + rest.len() != n {
            n += 1;
        }
        raw_member(b"pax", &[n.to_string().as_bytes(), &rest].concat(), kind)
    }

    fn names(parts: &[Vec<u8>]) -> Result<Vec<(String, MemberKind)>> {
        let mut a = parts.concat();
        a.resize(a.len() + 1024, 0);
        Ok(index(a)?
            .members
            .into_iter()
            .map(|m| (m.name, m.kind))
            .collect())
    }

    #[test]
    fn names_are_the_ones_gnu_tar_extracts() {
        use MemberKind::*;
        let long = raw_member(b"././@LongLink", b"long\0", b'L');
        let file = raw_member(b"hdr", b"d", b'0');
        let pax = pax_member(b'x', "path", b"pax");
        // pax beats a long name in either order; Solaris X is pax; values end at NUL.
        for order in [
            vec![long.clone(), pax.clone(), file.clone()],
            vec![pax.clone(), long.clone(), file.clone()],
            vec![pax_member(b'X', "path", b"pax"), file.clone()],
            vec![pax_member(b'x', "path", b"pax\0evil"), file.clone()],
        ] {
            assert_eq!(names(&order).unwrap(), [("pax".to_string(), File)]);
        }
        assert_eq!(names(&[long, file.clone()]).unwrap()[0].0, "long");
        // Spellings of one path fold together; a trailing `/` makes a directory.
        let idx = {
            let mut a = [
                raw_member(b"./a//b", b"1", b'0'),
                raw_member(b"a/./b/", b"", b'0'),
                raw_member(b"c", b"2", b'0'),
            ]
            .concat();
            a.resize(a.len() + 1024, 0);
            index(a).unwrap()
        };
        assert_eq!(idx.members[0].name, "a/b");
        assert_eq!(idx.members[1].kind, Directory);
        assert!(idx.has_duplicates());
        assert_eq!(idx.duplicates().len(), 1);
        assert_eq!(idx.member("./a/b/").unwrap().header_offset, 1024);
        assert!(idx.file("a/b").is_none(), "the last a/b is a directory");
        assert!(idx.file("c").is_some() && idx.file("../c").is_none());

        let refused = |parts: &[Vec<u8>], why: &str| {
            let e = names(parts).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Corrupt, "{e}");
            assert!(e.to_string().contains(why), "{why}: {e}");
        };
        // Data after headers tar -x reads none after.
        for kind in [b'1', b'2', b'3', b'4', b'5', b'6'] {
            refused(&[raw_member(b"n", &[0; 512], kind)], "claims 512 bytes");
        }
        refused(
            &[raw_member(b"f/", b"x", b'0')],
            "is a directory yet claims",
        );
        refused(
            &[
                pax_member(b'x', "size", b"512"),
                raw_member(b"s", &[0; 512], b'2'),
            ],
            "is a symbolic link yet claims",
        );
        refused(
            &[pax_member(b'g', "path", b"all"), file.clone()],
            "global pax header",
        );
        refused(&[raw_member(b"s", b"", b'S')], "GNU sparse");
        refused(
            &[pax_member(b'x', "GNU.sparse.name", b"real"), file.clone()],
            "GNU sparse",
        );
        refused(&[raw_member(b"a\xffb", b"", b'0')], "not named in UTF-8");
    }
}
