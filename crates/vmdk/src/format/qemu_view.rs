//! What QEMU 10 actually reads from a file's bytes, modelled byte for byte: the block
//! layer's format probe, and the VMDK driver's scans of descriptor text. `inspect` judges
//! an upload by these, not by our own (friendlier, line-based) descriptor parser, because
//! an attacker writes for the reader that will open the file, and that reader is QEMU.
//!
//! The driver (`block/vmdk.c`) does not parse a descriptor into lines and keys. It treats a
//! buffer as a C string and searches it:
//!
//! * `vmdk_parent_open` and `vmdk_read_cid` read [`DESC_SCAN_BYTES`] at the descriptor
//!   offset, which for a sparse (`KDMV`/`COWD`) file is *always* [`SPARSE_DESC_OFFSET`]
//!   (sector 1) whatever the header says, and `strstr` for `parentFileNameHint`,
//!   `CID` and `parentCID` anywhere in it up to the first NUL: inside a comment, inside
//!   another key's name, or past the end of a one-sector descriptor that no NUL ends;
//! * `vmdk_parse_description` finds `createType` the same way;
//! * `vmdk_parse_extents` runs `sscanf` from the start of every `\n`-separated line, and
//!   `sscanf`'s whitespace skipping crosses line ends, so an extent "line" may span lines;
//! * a `KDMV` header with capacity 0 and a descriptor offset makes the driver read the text
//!   there (up to 1 MiB) as a descriptor *file* and open the extents it names.
//!
//! Everything here is a pure function over bytes the caller read; reads past the end of a
//! file are zeros to QEMU's block layer, which callers model by passing what exists.

/// Bytes the block layer reads to probe a file's format (`BLOCK_PROBE_BUF_SIZE`); a shorter
/// file is padded with zeros.
pub const PROBE_BYTES: usize = 2048;
/// Bytes of descriptor text the driver scans for the CIDs and the backing file hint
/// (`DESC_SIZE`: 20 sectors).
pub const DESC_SCAN_BYTES: usize = 20 * 512;
/// Where the driver reads descriptor text in a sparse file, whatever the header says.
pub const SPARSE_DESC_OFFSET: u64 = 512;
/// Most bytes `vmdk_read_desc` reads (1 MiB - 1), the buffer descriptor files and the
/// capacity-0 embedded descriptor are parsed from.
pub const READ_DESC_MAX: usize = (1 << 20) - 1;

/// The key the driver searches for the backing file name.
pub const PARENT_HINT_KEY: &[u8] = b"parentFileNameHint";
/// Longest backing file name the driver takes (`PATH_MAX - 1`); a longer one fails the open.
pub const MAX_BACKING_NAME: usize = 4095;

/// The part of `buf` a C string function sees: everything before the first NUL.
pub fn c_str(buf: &[u8]) -> &[u8] {
    match buf.iter().position(|&b| b == 0) {
        Some(n) => &buf[..n],
        None => buf,
    }
}

/// `strstr`: the first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `vmdk_probe`: whether the VMDK driver claims a file whose first bytes are `head` (score
/// 100). A `KDMV` or `COWD` magic, or text whose first line that is neither a `#` comment nor
/// made of spaces alone is exactly `version=1`, `2` or `3` followed by `\n` or `\r\n`.
pub fn vmdk_probe(head: &[u8]) -> bool {
    let buf = &head[..head.len().min(PROBE_BYTES)];
    if buf.len() < 4 {
        return false;
    }
    if &buf[..4] == b"KDMV" || &buf[..4] == b"COWD" {
        return true;
    }
    let end = buf.len();
    let mut p = 0;
    while p < end {
        match buf[p] {
            b'#' => {
                while p < end && buf[p] != b'\n' {
                    p += 1;
                }
                p += 1;
            }
            b' ' => {
                while p < end && buf[p] == b' ' {
                    p += 1;
                }
                if p < end && buf[p] == b'\r' {
                    p += 1;
                }
                // Only lines of spaces may come before the version line.
                if p == end || buf[p] != b'\n' {
                    return false;
                }
                p += 1;
            }
            _ => {
                let rest = &buf[p..];
                return [b'1', b'2', b'3'].iter().any(|&v| {
                    let lf = [b"version=".as_slice(), &[v], b"\n"].concat();
                    let crlf = [b"version=".as_slice(), &[v], b"\r\n"].concat();
                    rest.starts_with(&lf) || rest.starts_with(&crlf)
                });
            }
        }
    }
    false
}

/// What the driver makes of a `parentFileNameHint` it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentHint {
    /// The backing file name QEMU takes (it opens it as a VMDK, relative to the image's
    /// directory unless absolute; an empty name means no backing file).
    Name(Vec<u8>),
    /// The key is there but no closing quote follows, or the name is too long: the open
    /// fails.
    Unusable,
}

/// `vmdk_parent_open` over the descriptor text `desc` (the bytes at the descriptor offset,
/// at most [`DESC_SCAN_BYTES`]): the first `parentFileNameHint` anywhere before the first
/// NUL, the name taken from two bytes after the key (whatever they are: normally `="`) up
/// to the next `"`.
pub fn parent_hint(desc: &[u8]) -> Option<(usize, ParentHint)> {
    let text = c_str(&desc[..desc.len().min(DESC_SCAN_BYTES)]);
    let at = find(text, PARENT_HINT_KEY)?;
    let start = at + PARENT_HINT_KEY.len() + 2;
    let hint = match text.get(start..).and_then(|rest| {
        let end = rest.iter().position(|&b| b == b'"')?;
        Some(&rest[..end])
    }) {
        Some(name) if name.len() <= MAX_BACKING_NAME => ParentHint::Name(name.to_vec()),
        _ => ParentHint::Unusable,
    };
    Some((at, hint))
}

/// `vmdk_read_cid`: the value after the first `CID` (or, with `parent`, `parentCID`)
/// anywhere in the first [`DESC_SCAN_BYTES`] - 1 bytes before a NUL, skipping one byte
/// (normally `=`) and reading hex as `sscanf("%x")` does. `None` fails QEMU's open.
pub fn read_cid(desc: &[u8], parent: bool) -> Option<u32> {
    let text = c_str(&desc[..desc.len().min(DESC_SCAN_BYTES - 1)]);
    let key: &[u8] = if parent { b"parentCID" } else { b"CID" };
    let at = find(text, key)?;
    let mut p = at + key.len() + 1;
    while p < text.len() && is_c_space(text[p]) {
        p += 1;
    }
    let rest = text.get(p..).unwrap_or_default();
    if rest.starts_with(b"0x") || rest.starts_with(b"0X") {
        // `%x` takes an optional 0x prefix, but only if a hex digit follows it.
        if text.get(p + 2).is_some_and(u8::is_ascii_hexdigit) {
            p += 2;
        }
    }
    let digits: Vec<u8> = text
        .get(p..)
        .unwrap_or_default()
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .copied()
        .collect();
    if digits.is_empty() {
        return None;
    }
    // `%x` into a 32-bit value keeps the low bits of a longer number.
    let mut v: u32 = 0;
    for d in digits {
        v = v
            .wrapping_mul(16)
            .wrapping_add((d as char).to_digit(16).unwrap_or(0));
    }
    Some(v)
}

/// `vmdk_parse_description(desc, "createType")`: the text from two bytes after the first
/// `createType` (normally `="`) to the next `"`; `None` fails QEMU's open of a descriptor
/// file ("invalid VMDK image descriptor").
pub fn create_type(desc: &[u8]) -> Option<Vec<u8>> {
    let text = c_str(desc);
    let at = find(text, b"createType")?;
    let start = at + b"createType".len() + 2;
    if start >= text.len() {
        return None;
    }
    let end = text[start..].iter().position(|&b| b == b'"')?;
    // QEMU copies into a 128-byte buffer and fails on a longer value.
    if end + 1 > 128 {
        return None;
    }
    Some(text[start..start + end].to_vec())
}

/// The createTypes the driver opens as descriptor files.
pub const DESCRIPTOR_FILE_TYPES: [&str; 6] = [
    "monolithicFlat",
    "vmfs",
    "vmfsSparse",
    "seSparse",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
];

/// One extent the driver opens from a descriptor file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuExtent {
    /// The extent type as written (`FLAT`, `SPARSE`, `VMFS`, `VMFSSPARSE`, `SESPARSE`).
    pub kind: String,
    /// The file name QEMU opens: relative to the descriptor's directory unless absolute.
    pub file: Vec<u8>,
    /// Byte offset of the line where the match started.
    pub line_offset: usize,
}

/// Extents [`open_descriptor_file`] lists at most.
pub const MAX_EXTENTS: usize = 1024;

/// What the driver does with a descriptor file (or a capacity-0 embedded descriptor).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DescriptorFileOpen {
    /// Its createType, as the driver finds it.
    pub create_type: Option<Vec<u8>>,
    /// The files it opens, in order, up to the first failure (at most [`MAX_EXTENTS`]).
    pub extents: Vec<QemuExtent>,
    /// Whether it opens more extents than [`MAX_EXTENTS`] (the rest are not listed, but the
    /// lines after them are still checked for [`Self::failure`]).
    pub more_extents: bool,
    /// Why the open fails, if it does (files before the failure were opened already).
    pub failure: Option<OpenFailure>,
}

/// Why the driver refuses a descriptor file before opening its extents, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// No `createType` value where `vmdk_parse_description` looks.
    NoCreateType,
    /// A createType not in [`DESCRIPTOR_FILE_TYPES`].
    UnsupportedType(Vec<u8>),
    /// An `RW` extent line of a known shape with a field too many or too few: a FLAT line
    /// without an offset (or a negative one), or a VMFS or sparse line with one. The line's
    /// text, its end of line left out.
    InvalidExtentLine(Vec<u8>),
}

/// Longest stretch of an extent line [`OpenFailure`]'s message quotes.
const MAX_QUOTED_LINE: usize = 160;

impl std::fmt::Display for OpenFailure {
    /// QEMU's messages (`vmdk_open_desc_file`, `vmdk_parse_extents`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenFailure::NoCreateType => f.write_str("invalid VMDK image descriptor"),
            OpenFailure::UnsupportedType(t) => {
                write!(f, "Unsupported image type '{}'", String::from_utf8_lossy(t))
            }
            OpenFailure::InvalidExtentLine(line) => {
                let cut = line.len().min(MAX_QUOTED_LINE);
                write!(
                    f,
                    "Invalid extent line: {}{}",
                    String::from_utf8_lossy(&line[..cut]),
                    if cut < line.len() { "..." } else { "" }
                )
            }
        }
    }
}

/// `vmdk_open_desc_file` over `buf` (the bytes at the descriptor offset, at most
/// [`READ_DESC_MAX`]): the createType check, then `vmdk_parse_extents`.
pub fn open_descriptor_file(buf: &[u8]) -> DescriptorFileOpen {
    let text = c_str(&buf[..buf.len().min(READ_DESC_MAX)]);
    let mut out = DescriptorFileOpen {
        create_type: create_type(text),
        ..Default::default()
    };
    match &out.create_type {
        None => {
            out.failure = Some(OpenFailure::NoCreateType);
            return out;
        }
        Some(ct)
            if !DESCRIPTOR_FILE_TYPES
                .iter()
                .any(|t| t.as_bytes() == ct.as_slice()) =>
        {
            out.failure = Some(OpenFailure::UnsupportedType(ct.clone()));
            return out;
        }
        Some(_) => {}
    }
    // QEMU restarts `sscanf` at every line, and its whitespace skipping runs across lines:
    // over a run of blank lines that is quadratic. Where each skip ends is the same for
    // every start inside a run, so it is computed once, backwards.
    let mut next_word = vec![0u32; text.len() + 1];
    next_word[text.len()] = text.len() as u32;
    for i in (0..text.len()).rev() {
        next_word[i] = if is_c_space(text[i]) {
            next_word[i + 1]
        } else {
            i as u32
        };
    }
    let mut line = 0;
    while line < text.len() {
        let next = text[line..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |n| line + n + 1);
        let scan = Scan {
            s: text,
            p: line,
            next_word: &next_word,
        };
        match scan_extent_line(scan) {
            LineScan::Skip => {}
            LineScan::Invalid => {
                // QEMU quotes the line up to its `\n` (a CRLF line's `\r` is left out too).
                let text = &text[line..next];
                let text = text.strip_suffix(b"\n").unwrap_or(text);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                out.failure = Some(OpenFailure::InvalidExtentLine(text.to_vec()));
                return out;
            }
            LineScan::Extent { kind, file } => {
                if out.extents.len() == MAX_EXTENTS {
                    // Enough to say what it opens (a hostile text can name millions); the
                    // scan goes on for a line that fails the open.
                    out.more_extents = true;
                    line = next;
                    continue;
                }
                out.extents.push(QemuExtent {
                    kind,
                    file,
                    line_offset: line,
                });
            }
        }
        line = next;
    }
    out
}

enum LineScan {
    Skip,
    Invalid,
    Extent { kind: String, file: Vec<u8> },
}

/// A `sscanf` cursor over a C string.
struct Scan<'a> {
    s: &'a [u8],
    p: usize,
    /// For every position, the first byte at or after it that is not whitespace.
    next_word: &'a [u32],
}

impl Scan<'_> {
    fn skip_space(&mut self) {
        self.p = self.next_word[self.p] as usize;
    }
    /// `%Ns`: whitespace skipped, then 1 to `max` non-space bytes.
    fn word(&mut self, max: usize) -> Option<&[u8]> {
        self.skip_space();
        let start = self.p;
        while self.p < self.s.len() && self.p - start < max && !is_c_space(self.s[self.p]) {
            self.p += 1;
        }
        (self.p > start).then(|| &self.s[start..self.p])
    }
    /// `%lld` (`SCNd64`): whitespace, an optional sign, decimal digits; saturating as glibc's
    /// `strtoll` does.
    fn number(&mut self) -> Option<i64> {
        self.skip_space();
        let mut q = self.p;
        let neg = match self.s.get(q) {
            Some(b'-') => {
                q += 1;
                true
            }
            Some(b'+') => {
                q += 1;
                false
            }
            _ => false,
        };
        let digits = q;
        let mut v: i64 = 0;
        while let Some(d) = self.s.get(q).filter(|b| b.is_ascii_digit()) {
            let d = i64::from(d - b'0');
            v = if neg {
                v.saturating_mul(10).saturating_sub(d)
            } else {
                v.saturating_mul(10).saturating_add(d)
            };
            q += 1;
        }
        if q == digits {
            return None;
        }
        self.p = q;
        Some(v)
    }
    /// A literal byte in the format.
    fn literal(&mut self, b: u8) -> bool {
        if self.s.get(self.p) == Some(&b) {
            self.p += 1;
            true
        } else {
            false
        }
    }
    /// `%511[^\n\r"]`.
    fn name(&mut self) -> Option<&[u8]> {
        let start = self.p;
        while self.p < self.s.len()
            && self.p - start < 511
            && !matches!(self.s[self.p], b'\n' | b'\r' | b'"')
        {
            self.p += 1;
        }
        (self.p > start).then(|| &self.s[start..self.p])
    }
}

/// One iteration of `vmdk_parse_extents`: `sscanf(p, "%10s %lld %10s \"%511[^\n\r\"]\" %lld")`
/// from the start of a line to the end of the whole text, then the driver's checks.
fn scan_extent_line(mut sc: Scan<'_>) -> LineScan {
    let Some(access) = sc.word(10).map(<[u8]>::to_vec) else {
        return LineScan::Skip;
    };
    // Format whitespace and %lld's own skipping.
    let Some(sectors) = sc.number() else {
        return LineScan::Skip;
    };
    let Some(kind) = sc.word(10).map(<[u8]>::to_vec) else {
        return LineScan::Skip;
    };
    sc.skip_space();
    if !sc.literal(b'"') {
        return LineScan::Skip;
    }
    let Some(file) = sc.name().map(<[u8]>::to_vec) else {
        return LineScan::Skip;
    };
    // Four conversions so far; the fifth needs the closing quote and a number.
    let offset = if sc.literal(b'"') { sc.number() } else { None };
    if access != b"RW" {
        return LineScan::Skip;
    }
    let kind_is = |k: &str| kind == k.as_bytes();
    if kind_is("FLAT") {
        if offset.is_none_or(|o| o < 0) {
            return LineScan::Invalid;
        }
    } else if offset.is_some() {
        // VMFS and the sparse types take no offset.
        return LineScan::Invalid;
    }
    if sectors <= 0
        || !["FLAT", "SPARSE", "VMFS", "VMFSSPARSE", "SESPARSE"]
            .iter()
            .any(|k| kind_is(k))
    {
        return LineScan::Skip;
    }
    LineScan::Extent {
        kind: String::from_utf8_lossy(&kind).into_owned(),
        file,
    }
}

/// Formats of QEMU's block layer whose probe claims a file, by the first [`PROBE_BYTES`]
/// of it (zero-padded) and its name. Each driver's test as QEMU 10 writes it: most score
/// 100 on a magic at the start; cloop and dmg (by the `.dmg` name) score 2; raw, which
/// scores 1, is left out, as is VMDK ([`vmdk_probe`]).
pub fn other_probes(head: &[u8], file_name: &str) -> Vec<(&'static str, u8)> {
    let mut buf = [0u8; PROBE_BYTES];
    let n = head.len().min(PROBE_BYTES);
    buf[..n].copy_from_slice(&head[..n]);
    let be32 = |o: usize| u32::from_be_bytes(buf[o..o + 4].try_into().unwrap());
    let le32 = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().unwrap());
    let be16 = |o: usize| u16::from_be_bytes(buf[o..o + 2].try_into().unwrap());
    let c_eq = |o: usize, len: usize, s: &[u8]| c_str(&buf[o..o + len]) == s;
    let mut out = Vec::new();
    if &buf[..4] == b"QFI\xfb" {
        out.push(if be32(4) >= 2 {
            ("qcow2", 100)
        } else {
            ("qcow", 100)
        });
    }
    if &buf[..4] == b"QED\0" {
        out.push(("qed", 100));
    }
    if le32(0x40) == 0xbeda_107f {
        out.push(("vdi", 100));
    }
    if &buf[..8] == b"conectix" {
        out.push(("vpc", 100));
    }
    if &buf[..8] == b"vhdxfile" {
        out.push(("vhdx", 100));
    }
    if (&buf[..16] == b"WithoutFreeSpace" || &buf[..16] == b"WithouFreSpacExt") && le32(16) == 2 {
        out.push(("parallels", 100));
    }
    if c_eq(0, 32, b"Bochs Virtual HD Image")
        && c_eq(32, 16, b"Redolog")
        && c_eq(48, 16, b"Growing")
        && matches!(le32(64), 0x0002_0000 | 0x0001_0000)
    {
        out.push(("bochs", 100));
    }
    if buf.starts_with(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE\n") {
        out.push(("cloop", 2));
    }
    if file_name.len() > 4 && file_name.ends_with(".dmg") {
        out.push(("dmg", 2));
    }
    if &buf[..6] == b"LUKS\xba\xbe" && be16(6) == 1 {
        out.push(("luks", 100));
    }
    out
}

/// What `qemu-img` without `-f` takes a file for: the drivers with the highest probe score
/// (more than one means the pick depends on QEMU's driver registration order), or raw.
pub fn probed_formats(head: &[u8], file_name: &str) -> Vec<&'static str> {
    let mut all = other_probes(head, file_name);
    if vmdk_probe(head) {
        all.push(("vmdk", 100));
    }
    let Some(best) = all.iter().map(|&(_, s)| s).max() else {
        return vec!["raw"];
    };
    all.into_iter()
        .filter(|&(_, s)| s == best)
        .map(|(f, _)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_qemus() {
        assert!(vmdk_probe(b"KDMV\x01\0\0\0"));
        assert!(vmdk_probe(b"# Disk DescriptorFile\nversion=1\nCID=1\n"));
        assert!(vmdk_probe(b"#\n   \r\nversion=3\r\n"));
        // A blank line without spaces, whitespace around '=', a tab: not to QEMU.
        assert!(!vmdk_probe(b"\nversion=1\n"));
        assert!(!vmdk_probe(b"version = 1\n"));
        assert!(!vmdk_probe(b"\tversion=1\n"));
        assert!(!vmdk_probe(b"version=1"));
        // A comment running past the probe window.
        let mut long = vec![b'#'; 3000];
        long.extend_from_slice(b"\nversion=1\n");
        assert!(!vmdk_probe(&long));
    }

    #[test]
    fn hint_is_found_anywhere() {
        let (at, h) = parent_hint(b"# parentFileNameHint=\"/etc/passwd\"\n").unwrap();
        assert_eq!(at, 2);
        assert_eq!(h, ParentHint::Name(b"/etc/passwd".to_vec()));
        // Inside another key's name; the two bytes after the key are skipped blindly.
        let (_, h) = parent_hint(b"xparentFileNameHintXX../v.vmdk\"").unwrap();
        assert_eq!(h, ParentHint::Name(b"../v.vmdk".to_vec()));
        assert_eq!(
            parent_hint(b"parentFileNameHint=\"open").unwrap().1,
            ParentHint::Unusable
        );
        // After a NUL it is invisible, as to QEMU; past the scan window too.
        assert!(parent_hint(b"\0parentFileNameHint=\"x\"").is_none());
        let mut far = vec![b' '; DESC_SCAN_BYTES - 5];
        far.extend_from_slice(b"parentFileNameHint=\"x\"");
        assert!(parent_hint(&far).is_none());
        assert_eq!(
            parent_hint(b"parentFileNameHint=\"\"").unwrap().1,
            ParentHint::Name(vec![])
        );
    }

    #[test]
    fn cids_read_like_sscanf() {
        assert_eq!(
            read_cid(b"CID=fffffffe\nparentCID=ffffffff", false),
            Some(0xffff_fffe)
        );
        assert_eq!(
            read_cid(b"CID=fffffffe\nparentCID=ffffffff", true),
            Some(0xffff_ffff)
        );
        // The first "CID" may be the one inside parentCID.
        assert_eq!(read_cid(b"parentCID=12\nCID=34", false), Some(0x12));
        assert_eq!(read_cid(b"CID= 0x1f", false), Some(0x1f));
        assert_eq!(read_cid(b"CID=zz", false), None);
        assert_eq!(read_cid(b"no key", false), None);
    }

    #[test]
    fn extents_as_sscanf_sees_them() {
        let d = b"version=1\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"a.img\" 0\n\
                  RDONLY 100 FLAT \"ro.img\" 0\nRW 0 FLAT \"zero.img\" 0\n# RW 1 FLAT \"c\" 0\n";
        let o = open_descriptor_file(d);
        assert_eq!(o.failure, None);
        let names: Vec<_> = o.extents.iter().map(|e| e.file.clone()).collect();
        assert_eq!(names, vec![b"a.img".to_vec()]);
        // An extent spread over lines, found from the blank line before it and again from
        // each of its own lines that starts a match.
        let d = b"createType=\"vmfs\"\n\nRW\n100\nVMFS\n\"/etc/passwd\"\n";
        let o = open_descriptor_file(d);
        assert!(!o.extents.is_empty());
        assert!(o.extents.iter().all(|e| e.file == b"/etc/passwd"));
        // FLAT without an offset fails the open, and so does VMFS or SPARSE with one; the
        // message quotes the line as QEMU does.
        let o = open_descriptor_file(b"createType=\"monolithicFlat\"\nRW 1 FLAT \"a\"\n");
        assert_eq!(
            o.failure.map(|f| f.to_string()).as_deref(),
            Some("Invalid extent line: RW 1 FLAT \"a\"")
        );
        for line in [
            "RW 1 VMFS \"a\" 0",
            "RW 1 SPARSE \"a\" 7",
            "RW 1 FLAT \"a\" -1",
        ] {
            let d = format!("createType=\"vmfs\"\r\n{line}\r\n");
            let o = open_descriptor_file(d.as_bytes());
            assert_eq!(
                o.failure,
                Some(OpenFailure::InvalidExtentLine(line.as_bytes().to_vec()))
            );
        }
        // Extra words that are not a number are not a fifth field.
        let o = open_descriptor_file(b"createType=\"vmfs\"\nRW 1 SPARSE \"a\" x\n");
        assert_eq!(o.failure, None);
        let o = open_descriptor_file(b"version=1\nRW 1 FLAT \"a\" 0\n");
        assert_eq!(o.failure, Some(OpenFailure::NoCreateType));
        assert_eq!(
            OpenFailure::UnsupportedType(b"custom".to_vec()).to_string(),
            "Unsupported image type 'custom'"
        );
        // createType in a comment counts; an unknown one stops before any extent.
        let o = open_descriptor_file(b"# createType=\"vmfs\"\nRW 1 VMFS \"x\"\n");
        assert_eq!(o.extents.len(), 1);
        let o = open_descriptor_file(b"createType=\"custom\"\nRW 1 VMFS \"x\"\n");
        assert!(o.extents.is_empty() && o.failure.is_some());
    }

    /// A megabyte of blank lines: QEMU's per-line sscanf would skip to the end from each
    /// of them; the model stays linear.
    #[test]
    fn blank_lines_cost_linear_time() {
        let mut d = b"createType=\"vmfs\"\n".to_vec();
        d.resize(READ_DESC_MAX - 64, b'\n');
        d.extend_from_slice(b"RW 1 OTHER \"x\"\n");
        let t = std::time::Instant::now();
        let o = open_descriptor_file(&d);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
        assert!(o.extents.is_empty() && o.failure.is_none());
        // With an extent QEMU opens, every blank line finds it again: listed up to a bound.
        let n = d.len();
        d[n - 10..n - 4].copy_from_slice(b"VMFS  ");
        let o = open_descriptor_file(&d);
        assert_eq!(o.extents.len(), MAX_EXTENTS);
        assert!(o.more_extents);
        assert!(o.extents.iter().all(|e| e.file == b"x"));
    }

    #[test]
    fn other_formats_and_ties() {
        assert_eq!(probed_formats(b"hello", "x.vmdk"), vec!["raw"]);
        assert_eq!(probed_formats(b"KDMV", "x"), vec!["vmdk"]);
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.resize(512, 0);
        assert_eq!(probed_formats(&q, "x"), vec!["qcow2"]);
        // A descriptor with a VDI signature at 0x40: two drivers score 100.
        let mut v = b"# x\nversion=1\n".to_vec();
        v.resize(0x40, b'#');
        v.extend_from_slice(&0xbeda_107fu32.to_le_bytes());
        let f = probed_formats(&v, "x");
        assert!(f.contains(&"vmdk") && f.contains(&"vdi"));
        assert_eq!(probed_formats(b"abc", "x.dmg"), vec!["dmg"]);
    }
}
