//! VMDK text descriptors: recognising, parsing and writing them.
//!
//! A descriptor is the small text document that says what a virtual disk is made of: a header
//! of `key=value` lines (`version`, `CID`, `parentCID`, `createType`, ...), one line per extent
//! (`RW 2048 SPARSE "disk.vmdk"`), and the disk database (`ddb.key = "value"`). It lives either
//! in its own file or embedded, NUL-padded, inside a monolithic sparse extent.
//!
//! Behaviour, and why:
//!
//! * Input ends at the first NUL byte, because embedded descriptors are padded with NULs up to
//!   the size of their reserved area. The text before it may be at most [`MAX_DESCRIPTOR_SIZE`]
//!   bytes (QEMU's cap); bytes after the NUL are not looked at.
//! * The text is UTF-8 (a leading byte-order mark is skipped). Text that is not valid UTF-8
//!   (Windows tools write `encoding="windows-1252"`) is decoded as Latin-1, byte for
//!   character, so such images still open; no byte can become ASCII that way.
//! * Lines end in LF or CRLF; a missing final newline is fine. Blank lines and lines starting
//!   with `#` (after leading whitespace) are comments and are not kept: [`Descriptor::serialize`]
//!   writes the customary comments itself.
//! * `key=value` lines may have whitespace around `=` and quoted or bare values. Keys are
//!   case-sensitive, as in VMware's and QEMU's readers. When a header key occurs twice the first
//!   occurrence wins (QEMU and VirtualBox both search for the first); later duplicates are kept
//!   in [`Descriptor::other`] so a rewrite loses nothing.
//! * A missing `version` or `createType` is an error, and so is a `version` other than 1, 2 or 3.
//! * A missing `CID` is an error. QEMU refuses to open such an image (`vmdk_read_cid` fails with
//!   `EINVAL`; it only appears to work when a `parentCID` line exists, because its substring
//!   search then finds the `CID` inside `parentCID`, an accident we do not reproduce).
//! * A missing `parentCID` means "no parent" ([`CID_NONE`]), which is what VMware and VirtualBox
//!   assume; a disk that has a parent always carries the line.
//! * Extent lines are recognised by their first word being an access keyword, or by their third
//!   word being an extent type (so `RX 2048 SPARSE "a.vmdk"` is reported as a bad access mode
//!   rather than skipped). Keywords are accepted in any case. Such a line that does not parse is
//!   an error naming the line and its text; more than [`MAX_EXTENTS`] of them is an error too.
//! * Any other line (not blank, not a comment, not `key=value`, not extent-like) is ignored, as
//!   VMware and QEMU do with text they do not understand. It is not kept, so a rewrite drops it.
//! * Nothing here panics, whatever the input.

use super::error::{FormatError, FormatResult};
use std::borrow::Cow;
use std::fmt;

/// Maximum descriptor size we accept (QEMU's cap).
pub const MAX_DESCRIPTOR_SIZE: usize = 1 << 20;

/// Maximum number of extent lines we accept.
pub const MAX_EXTENTS: usize = 1 << 16;

/// parentCID value meaning "no parent".
pub const CID_NONE: u32 = 0xffff_ffff;

/// How much of a buffer [`Descriptor::probe`] examines. Real descriptors put their `version`
/// line within the first few lines, and probing is run on arbitrary files, so it must stay cheap.
const PROBE_WINDOW: usize = 4096;

/// Editors on Windows sometimes prepend one; it carries no meaning in a descriptor.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Error messages quote the offending line; cap it so a megabyte-long line stays readable.
const MAX_QUOTED_LINE: usize = 160;

/// Who may access an extent, the first word of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentAccess {
    /// `RW`: readable and writable.
    ReadWrite,
    /// `RDONLY`: readable only.
    ReadOnly,
    /// `NOACCESS`: neither; reads of it are refused by VMware.
    NoAccess,
}

impl ExtentAccess {
    const ALL: [ExtentAccess; 3] = [
        ExtentAccess::ReadWrite,
        ExtentAccess::ReadOnly,
        ExtentAccess::NoAccess,
    ];

    /// The keyword written in descriptors: `RW`, `RDONLY` or `NOACCESS`.
    pub fn keyword(self) -> &'static str {
        match self {
            ExtentAccess::ReadWrite => "RW",
            ExtentAccess::ReadOnly => "RDONLY",
            ExtentAccess::NoAccess => "NOACCESS",
        }
    }

    fn from_keyword(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.keyword().eq_ignore_ascii_case(word))
    }
}

/// What kind of storage an extent is, the third word of an extent line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// `FLAT`: a raw file (or device) holding the sectors, starting at an offset.
    Flat,
    /// `SPARSE`: a hosted sparse extent (`KDMV` header, or `COWD` in old images).
    Sparse,
    /// `ZERO`: no storage at all; reads return zeros. Has no file name.
    Zero,
    /// `VMFS`: a preallocated extent on an ESX datastore.
    Vmfs,
    /// `VMFSSPARSE`: an ESX redo-log (`COWD`) sparse extent.
    VmfsSparse,
    /// `VMFSRDM`: an ESX raw device mapping.
    VmfsRdm,
    /// `VMFSRAW`: an ESX raw device.
    VmfsRaw,
    /// `SESPARSE`: an ESXi space-efficient sparse extent.
    SeSparse,
}

impl ExtentType {
    const ALL: [ExtentType; 8] = [
        ExtentType::Flat,
        ExtentType::Sparse,
        ExtentType::Zero,
        ExtentType::Vmfs,
        ExtentType::VmfsSparse,
        ExtentType::VmfsRdm,
        ExtentType::VmfsRaw,
        ExtentType::SeSparse,
    ];

    /// The keyword written in descriptors, e.g. `SPARSE`.
    pub fn keyword(self) -> &'static str {
        match self {
            ExtentType::Flat => "FLAT",
            ExtentType::Sparse => "SPARSE",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRdm => "VMFSRDM",
            ExtentType::VmfsRaw => "VMFSRAW",
            ExtentType::SeSparse => "SESPARSE",
        }
    }

    fn from_keyword(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.keyword().eq_ignore_ascii_case(word))
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET [EXTRA...]]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: ExtentAccess,
    /// Size of the extent in 512-byte sectors.
    pub sectors: u64,
    /// Kind of storage.
    pub kind: ExtentType,
    /// File name as written (relative to the descriptor's directory unless absolute). `None`
    /// only for `ZERO` extents, which have no file.
    pub file: Option<String>,
    /// Start of the extent's data inside the file, in sectors (meaningful for `FLAT` and
    /// `VMFS`); 0 when the line has no offset.
    pub offset: u64,
    /// Fields after the offset, kept verbatim (quotes included) so a rewrite reproduces them.
    /// Each must be one whitespace-free or double-quoted token.
    pub extra: Vec<String>,
}

/// A parsed VMDK text descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Descriptor format version: 1, 2 or 3.
    pub version: u32,
    /// The `encoding` header (e.g. `UTF-8`, `windows-1252`), unquoted, if present.
    pub encoding: Option<String>,
    /// Content ID (`CID`, hex in the file). Required: see the module notes.
    pub cid: u32,
    /// The parent's content ID (`parentCID`); [`CID_NONE`] when absent or when there is no parent.
    pub parent_cid: u32,
    /// The `createType`, unquoted, e.g. `monolithicSparse`.
    pub create_type: String,
    /// The `parentFileNameHint`, unquoted, if present.
    pub parent_file_name_hint: Option<String>,
    /// Extent lines in file order; together they make up the virtual disk, front to back.
    pub extents: Vec<ExtentLine>,
    /// Disk database entries: full keys (`ddb.adapterType`) and unquoted values, in file order.
    pub ddb: Vec<(String, String)>,
    /// Header keys not interpreted here (e.g. `isNativeSnapshot`), plus later duplicates of
    /// interpreted ones, in file order. The value is the raw text after `=`, trimmed, with any
    /// quotes kept, so a rewrite reproduces exactly how it was quoted.
    pub other: Vec<(String, String)>,
}

/// Why a descriptor could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError {
    /// 1-based line the problem is on, when it is on one line.
    pub line: Option<usize>,
    /// What is wrong, for people.
    pub message: String,
}

impl DescriptorError {
    fn at(line: usize, message: impl Into<String>) -> Self {
        DescriptorError {
            line: Some(line),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        DescriptorError {
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for DescriptorError {}

impl Descriptor {
    /// Whether `buf` looks like a text descriptor: its first line that is neither blank nor a
    /// comment is `version=1`, `version=2` or `version=3`.
    ///
    /// Cheap and safe on arbitrary binary input: a sparse extent's `KDMV` header or random bytes
    /// simply give `false`, and only the first 4 KiB (up to the first NUL) are looked at. The
    /// version line is judged exactly as [`Descriptor::parse`] reads it, so whitespace
    /// around `=`, a quoted value, CRLF and a leading byte-order mark are accepted. Only the first
    /// 4 KiB count: a descriptor whose version line does not end within them is not recognised.
    pub fn probe(buf: &[u8]) -> bool {
        let mut window = &buf[..buf.len().min(PROBE_WINDOW)];
        // A line cut off by the window could continue with anything, so it must not be judged;
        // one ended by a NUL or by the end of the buffer is complete.
        let mut cut = buf.len() > window.len();
        if let Some(nul) = window.iter().position(|&b| b == 0) {
            window = &window[..nul];
            cut = false;
        }
        let mut rest = window.strip_prefix(UTF8_BOM).unwrap_or(window);
        loop {
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], Some(&rest[end + 1..])),
                None if cut => return false,
                None => (rest, None),
            };
            let line = trim_ws_bytes(line);
            if line.is_empty() || line[0] == b'#' {
                match next {
                    Some(next) => {
                        rest = next;
                        continue;
                    }
                    None => return false,
                }
            }
            return std::str::from_utf8(line)
                .ok()
                .and_then(split_key_value)
                .is_some_and(|(key, value)| key == "version" && parse_version(value).is_some());
        }
    }

    /// Parses a descriptor from a separate descriptor file or from the descriptor area of a
    /// sparse extent.
    ///
    /// Reading stops at the first NUL byte; the text before it may be at most
    /// [`MAX_DESCRIPTOR_SIZE`] bytes and must be UTF-8. See the module notes for what is accepted, what is an error and what is ignored.
    pub fn parse(buf: &[u8]) -> Result<Descriptor, DescriptorError> {
        // Looking one byte past the cap is enough to tell an oversized text from a padded one,
        // and keeps the NUL search bounded on huge buffers.
        let head = &buf[..buf.len().min(MAX_DESCRIPTOR_SIZE + 1)];
        let text = match head.iter().position(|&b| b == 0) {
            Some(nul) => &head[..nul],
            None => head,
        };
        if text.len() > MAX_DESCRIPTOR_SIZE {
            return Err(DescriptorError::whole(format!(
                "descriptor is larger than {MAX_DESCRIPTOR_SIZE} bytes"
            )));
        }
        let text = text.strip_prefix(UTF8_BOM).unwrap_or(text);
        // Windows-made descriptors declare `encoding="windows-1252"` and carry such bytes in
        // comments and ddb values; refusing them would make the disk unreadable. Decode
        // them as Latin-1 instead (every byte is a character, nothing becomes ASCII, so a
        // file name can be wrong but never turns into a path separator or `..`).
        let latin1: String;
        let text = match std::str::from_utf8(text) {
            Ok(t) => t,
            Err(_) => {
                latin1 = text.iter().map(|&b| b as char).collect();
                &latin1
            }
        };

        let mut version = None;
        let mut encoding = None;
        let mut cid = None;
        let mut parent_cid = None;
        let mut create_type = None;
        let mut parent_file_name_hint = None;
        let mut extents = Vec::new();
        let mut ddb = Vec::new();
        let mut other = Vec::new();

        for (index, line) in text.split('\n').enumerate() {
            let number = index + 1;
            let line = trim_ws(line);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((key, value)) = split_key_value(line) {
                match key {
                    "version" if version.is_none() => {
                        version = Some(parse_version(value).ok_or_else(|| {
                            DescriptorError::at(
                                number,
                                format!(
                                    "unsupported descriptor version `{}` (expected 1, 2 or 3)",
                                    excerpt(value)
                                ),
                            )
                        })?);
                    }
                    "CID" if cid.is_none() => cid = Some(parse_cid(number, key, value)?),
                    "parentCID" if parent_cid.is_none() => {
                        parent_cid = Some(parse_cid(number, key, value)?);
                    }
                    "createType" if create_type.is_none() => {
                        create_type = Some(unquote(value).to_string());
                    }
                    "parentFileNameHint" if parent_file_name_hint.is_none() => {
                        parent_file_name_hint = Some(unquote(value).to_string());
                    }
                    "encoding" if encoding.is_none() => {
                        encoding = Some(unquote(value).to_string());
                    }
                    _ if key.starts_with("ddb.") => {
                        ddb.push((key.to_string(), unquote(value).to_string()));
                    }
                    _ => other.push((key.to_string(), value.to_string())),
                }
            } else if looks_like_extent(line) {
                if extents.len() == MAX_EXTENTS {
                    return Err(DescriptorError::at(
                        number,
                        format!("more than {MAX_EXTENTS} extent lines"),
                    ));
                }
                let extent = parse_extent(line).map_err(|why| {
                    DescriptorError::at(
                        number,
                        format!("invalid extent line `{}`: {why}", excerpt(line)),
                    )
                })?;
                extents.push(extent);
            }
            // Anything else is text no reader interprets; skipping it is what VMware and QEMU do.
        }

        let version =
            version.ok_or_else(|| DescriptorError::whole("descriptor has no version line"))?;
        let create_type =
            create_type.ok_or_else(|| DescriptorError::whole("descriptor has no createType"))?;
        let cid = cid.ok_or_else(|| DescriptorError::whole("descriptor has no CID"))?;

        Ok(Descriptor {
            version,
            encoding,
            cid,
            parent_cid: parent_cid.unwrap_or(CID_NONE),
            create_type,
            parent_file_name_hint,
            extents,
            ddb,
            other,
        })
    }

    /// Text in the layout qemu-img writes, with LF line endings.
    ///
    /// Header (`version`, optional `encoding`, `CID=%08x`, `parentCID=%08x`, `createType`,
    /// optional `parentFileNameHint`, then the [`other`](Descriptor::other) keys), a blank line,
    /// `# Extent description` and the extent lines, a blank line, `# The Disk Data Base`, `#DDB`,
    /// a blank line and the `ddb.key = "value"` lines. `parse(serialize(d)) == d` holds for every
    /// descriptor `parse` returns.
    ///
    /// The format has no escapes, so text it cannot carry is replaced rather than written raw
    /// (which would corrupt the lines around it): line feeds and NULs in values become spaces;
    /// in file names and extra fields they, and `"` in file names, become `_`; in keys,
    /// whitespace, `=` and `"` also become `_`. A non-`ZERO` extent without a file is written
    /// with an empty name (`""`).
    pub fn serialize(&self) -> String {
        let mut out = String::with_capacity(
            256 + 64 * (self.extents.len() + self.ddb.len() + self.other.len()),
        );
        // Formatting into a String cannot fail; the Result only exists for other writers.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> fmt::Result {
        use fmt::Write as _;

        writeln!(out, "# Disk DescriptorFile")?;
        writeln!(out, "version={}", self.version)?;
        if let Some(encoding) = &self.encoding {
            writeln!(out, "encoding=\"{}\"", clean_value(encoding))?;
        }
        writeln!(out, "CID={:08x}", self.cid)?;
        writeln!(out, "parentCID={:08x}", self.parent_cid)?;
        writeln!(out, "createType=\"{}\"", clean_value(&self.create_type))?;
        if let Some(hint) = &self.parent_file_name_hint {
            writeln!(out, "parentFileNameHint=\"{}\"", clean_value(hint))?;
        }
        for (key, value) in &self.other {
            writeln!(out, "{}={}", clean_key(key), clean_value(value))?;
        }

        writeln!(out)?;
        writeln!(out, "# Extent description")?;
        for extent in &self.extents {
            write!(
                out,
                "{} {} {}",
                extent.access.keyword(),
                extent.sectors,
                extent.kind.keyword()
            )?;
            if extent.file.is_some() || extent.kind != ExtentType::Zero {
                let file = extent.file.as_deref().unwrap_or("");
                write!(out, " \"{}\"", clean_file(file))?;
            }
            // FLAT always carries its offset (QEMU requires it); other kinds only when the offset
            // matters or when extra fields need it as a positional placeholder.
            if extent.kind == ExtentType::Flat || extent.offset != 0 || !extent.extra.is_empty() {
                write!(out, " {}", extent.offset)?;
            }
            for extra in &extent.extra {
                write!(out, " {}", clean_token(extra))?;
            }
            writeln!(out)?;
        }

        writeln!(out)?;
        writeln!(out, "# The Disk Data Base")?;
        writeln!(out, "#DDB")?;
        writeln!(out)?;
        for (key, value) in &self.ddb {
            writeln!(out, "{} = \"{}\"", clean_key(key), clean_value(value))?;
        }
        Ok(())
    }

    /// Look up a ddb key, given with or without the "ddb." prefix.
    ///
    /// Keys are case-sensitive. If the key occurs more than once the first wins, as in VirtualBox.
    pub fn ddb(&self, key: &str) -> Option<&str> {
        let bare = key.strip_prefix("ddb.").unwrap_or(key);
        self.ddb
            .iter()
            .find(|(k, _)| k.strip_prefix("ddb.") == Some(bare))
            .map(|(_, v)| v.as_str())
    }

    /// Set (replace in place, or append) a ddb key.
    ///
    /// The key may be given with or without the "ddb." prefix; it is stored with it. The first
    /// existing entry keeps its position; later duplicates are removed so that no reader can
    /// pick up a stale value.
    pub fn set_ddb(&mut self, key: &str, value: &str) {
        let bare = key.strip_prefix("ddb.").unwrap_or(key);
        let mut found = false;
        self.ddb.retain_mut(|(k, v)| {
            if k.strip_prefix("ddb.") != Some(bare) {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            *v = value.to_string();
            true
        });
        if !found {
            self.ddb.push((format!("ddb.{bare}"), value.to_string()));
        }
    }

    /// Total size of all extents in sectors (saturating).
    pub fn total_sectors(&self) -> u64 {
        self.extents
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.sectors))
    }

    /// Whether parentCID names a parent (parent_cid != CID_NONE).
    pub fn has_parent(&self) -> bool {
        self.parent_cid != CID_NONE
    }
}

/// Whitespace inside a line. `\r` counts so that CRLF files need no special casing; `\n` never
/// reaches here because it separates lines.
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c')
}

fn trim_ws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_ws(c as u8))
}

fn trim_ws_bytes(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ws(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ws(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Splits a trimmed line into key and raw value if it is a `key=value` line. The key must be a
/// single word: that is what tells `ddb.x = "1"` apart from an extent line whose quoted file
/// name happens to contain `=`.
fn split_key_value(line: &str) -> Option<(&str, &str)> {
    let eq = line.find('=')?;
    let key = trim_ws(&line[..eq]);
    if key.is_empty() || key.bytes().any(|b| is_ws(b) || b == b'"') {
        return None;
    }
    Some((key, trim_ws(&line[eq + 1..])))
}

/// The value inside double quotes, or the value itself when it is bare. A value that both
/// starts and ends with a quote keeps any quotes in between, since the format has no escapes
/// and tools do write them; an unterminated quote runs to the end of the line, as QEMU reads it.
fn unquote(value: &str) -> &str {
    let Some(rest) = value.strip_prefix('"') else {
        return value;
    };
    if let Some(inner) = rest.strip_suffix('"') {
        return inner;
    }
    match rest.find('"') {
        Some(end) => &rest[..end],
        None => rest,
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    // `u64::from_str` would also take a leading `+`, which no descriptor writer produces.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_hex_u32(s: &str) -> Option<u32> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

fn parse_version(value: &str) -> Option<u32> {
    match parse_decimal(unquote(value))? {
        v @ 1..=3 => u32::try_from(v).ok(),
        _ => None,
    }
}

fn parse_cid(line: usize, key: &str, value: &str) -> Result<u32, DescriptorError> {
    parse_hex_u32(unquote(value)).ok_or_else(|| {
        DescriptorError::at(
            line,
            format!(
                "invalid {key} `{}`: expected a 32-bit hexadecimal number",
                excerpt(value)
            ),
        )
    })
}

/// Whether a line that is not `key=value` should be read as an extent line (and so be an error
/// if it does not parse as one).
fn looks_like_extent(line: &str) -> bool {
    let mut words = line
        .split(|c: char| c.is_ascii() && is_ws(c as u8))
        .filter(|w| !w.is_empty());
    let first = words.next();
    let third = words.nth(1);
    first.is_some_and(|w| ExtentAccess::from_keyword(w).is_some())
        || third.is_some_and(|w| ExtentType::from_keyword(w).is_some())
}

/// One word of an extent line: its raw text, and for a double-quoted word its contents.
struct Token<'a> {
    raw: &'a str,
    quoted: Option<&'a str>,
}

/// An extent line's problem.
fn bad(why: impl Into<String>) -> FormatError {
    FormatError::Invalid(why.into())
}

fn tokenize(line: &str) -> FormatResult<Vec<Token<'_>>> {
    let bytes = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    // Only ASCII bytes are ever used as boundaries, so every slice is on a char boundary.
    while i < bytes.len() {
        if is_ws(bytes[i]) {
            i += 1;
        } else if bytes[i] == b'"' {
            let body = i + 1;
            let len = bytes[body..]
                .iter()
                .position(|&b| b == b'"')
                .ok_or_else(|| bad("unterminated double quote"))?;
            let end = body + len;
            tokens.push(Token {
                raw: &line[i..=end],
                quoted: Some(&line[body..end]),
            });
            i = end + 1;
        } else {
            let start = i;
            while i < bytes.len() && !is_ws(bytes[i]) {
                i += 1;
            }
            tokens.push(Token {
                raw: &line[start..i],
                quoted: None,
            });
        }
    }
    Ok(tokens)
}

fn parse_extent(line: &str) -> FormatResult<ExtentLine> {
    let mut tokens = tokenize(line)?.into_iter();

    let word = tokens.next().ok_or_else(|| bad("empty line"))?;
    let access = ExtentAccess::from_keyword(word.raw).ok_or_else(|| {
        bad(format!(
            "unknown access mode `{}` (expected RW, RDONLY or NOACCESS)",
            word.raw
        ))
    })?;

    let word = tokens
        .next()
        .ok_or_else(|| bad("missing size in sectors"))?;
    let sectors = parse_decimal(word.raw)
        .ok_or_else(|| bad(format!("invalid size in sectors `{}`", word.raw)))?;

    let word = tokens.next().ok_or_else(|| bad("missing extent type"))?;
    let kind = ExtentType::from_keyword(word.raw)
        .ok_or_else(|| bad(format!("unknown extent type `{}`", word.raw)))?;

    let mut next = tokens.next();
    let file = match next {
        Some(Token {
            quoted: Some(name), ..
        }) => {
            next = tokens.next();
            Some(name.to_string())
        }
        Some(Token { raw, quoted: None }) if kind != ExtentType::Zero => {
            return Err(bad(format!("file name `{raw}` is not double-quoted")));
        }
        None if kind != ExtentType::Zero => {
            return Err(bad(format!("{} extent has no file name", kind.keyword())));
        }
        _ => None,
    };

    let offset = match next {
        Some(word) => match (word.quoted, parse_decimal(word.raw)) {
            (None, Some(offset)) => offset,
            _ => return Err(bad(format!("invalid offset `{}`", word.raw))),
        },
        None => 0,
    };

    let extra = tokens.map(|t| t.raw.to_string()).collect();
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
        extra,
    })
}

/// The start of `s`, short enough to quote in an error message.
fn excerpt(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_QUOTED_LINE {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_QUOTED_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}...", &s[..end]))
}

fn replace_chars(s: &str, bad: impl Fn(char) -> bool, with: char) -> Cow<'_, str> {
    if s.chars().any(&bad) {
        Cow::Owned(s.chars().map(|c| if bad(c) { with } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// A value must not end its line early, nor end the whole descriptor (a NUL does that).
fn clean_value(s: &str) -> Cow<'_, str> {
    replace_chars(s, |c| c == '\n' || c == '\0', ' ')
}

/// A file name additionally cannot contain the quote that delimits it.
fn clean_file(s: &str) -> Cow<'_, str> {
    replace_chars(s, |c| c == '\n' || c == '\0' || c == '"', '_')
}

/// An extra field is one token; a line break inside it would split the extent line.
fn clean_token(s: &str) -> Cow<'_, str> {
    replace_chars(s, |c| c == '\n' || c == '\0', '_')
}

/// A key must stay one word before `=` and must not turn its line into a comment.
fn clean_key(s: &str) -> Cow<'_, str> {
    let cleaned = replace_chars(
        s,
        |c| c == '\n' || c == '\0' || c == '=' || c == '"' || (c.is_ascii() && is_ws(c as u8)),
        '_',
    );
    if cleaned.is_empty() || cleaned.starts_with('#') {
        Cow::Owned(format!("_{cleaned}"))
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor as QEMU's template writes it (block/vmdk.c `desc_template`): `after`
    /// follows the createType line (a blank line, or QEMU's parentFileNameHint line with no
    /// blank line after it), `extents` are the extent lines, `cylinders` the geometry.
    macro_rules! qemu_descriptor {
        ($cid:literal, $parent:literal, $create_type:literal, $after:literal, $extents:literal,
         $cylinders:literal) => {
            concat!(
                "# Disk DescriptorFile\nversion=1\nCID=",
                $cid,
                "\nparentCID=",
                $parent,
                "\ncreateType=\"",
                $create_type,
                "\"\n",
                $after,
                "# Extent description\n",
                $extents,
                "\n# The Disk Data Base\n#DDB\n\n",
                "ddb.virtualHWVersion = \"4\"\n",
                "ddb.geometry.cylinders = \"",
                $cylinders,
                "\"\n",
                "ddb.geometry.heads = \"16\"\n",
                "ddb.geometry.sectors = \"63\"\n",
                "ddb.adapterType = \"ide\"\n",
                "ddb.toolsVersion = \"2147483647\"\n",
            )
        };
    }

    // Written by `qemu-img create -f vmdk -o subformat=monolithicSparse ms.vmdk 10M` (QEMU 10.0.2)
    // and read back with `dd if=ms.vmdk bs=512 skip=1 count=2`.
    const QEMU_MONOLITHIC_SPARSE: &str = qemu_descriptor!(
        "7b9b5658",
        "ffffffff",
        "monolithicSparse",
        "\n",
        "RW 20480 SPARSE \"ms.vmdk\"\n",
        "20"
    );

    // `qemu-img create -f vmdk -o subformat=twoGbMaxExtentFlat tf.vmdk 5G`: a separate file.
    const QEMU_TWO_GB_FLAT: &str = qemu_descriptor!(
        "402a4429",
        "ffffffff",
        "twoGbMaxExtentFlat",
        "\n",
        "RW 4194304 FLAT \"tf-f001.vmdk\" 0\n\
         RW 4194304 FLAT \"tf-f002.vmdk\" 0\n\
         RW 2097152 FLAT \"tf-f003.vmdk\" 0\n",
        "10402"
    );

    // `qemu-img create -f vmdk -o subformat=streamOptimized so.vmdk 10M`, embedded at 512.
    const QEMU_STREAM_OPTIMIZED: &str = qemu_descriptor!(
        "fcf99585",
        "ffffffff",
        "streamOptimized",
        "\n",
        "RW 20480 SPARSE \"so.vmdk\"\n",
        "20"
    );

    // `qemu-img create -f vmdk -b ms.vmdk -F vmdk child.vmdk`, embedded at 512. QEMU's template
    // leaves out the blank line after parentFileNameHint.
    const QEMU_CHILD: &str = qemu_descriptor!(
        "7fdf1262",
        "7b9b5658",
        "monolithicSparse",
        "parentFileNameHint=\"ms.vmdk\"\n",
        "RW 20480 SPARSE \"child.vmdk\"\n",
        "20"
    );

    // What VMware-made and hand-edited descriptors look like: CRLF, odd spacing, lower-case
    // keywords, unknown keys, an unknown line, no final newline.
    const VMWARE_STYLE: &str = "# Disk DescriptorFile\r\n\
        \r\n\
        version=3\r\n\
        encoding=\"UTF-8\"\r\n\
        CID=fffffffe\r\n\
        parentCID=ffffffff\r\n\
        isNativeSnapshot=\"no\"\r\n\
        createType = \"partitionedDevice\"\r\n\
        \r\n\
        # Extent description\r\n\
        RDONLY 63 FLAT \"My Disk-pt.vmdk\" 0\r\n\
        NOACCESS 1985 ZERO\r\n\
        rw 4096 flat \"\\\\.\\PhysicalDrive0\" 2048\r\n\
        RW  2048   VMFSRDM  \"disk with spaces-rdm.vmdk\" 0 passthrough \"x y\"\r\n\
        RW 100 ZERO\r\n\
        \tRW 8 SPARSE \"a=b.vmdk\"   \r\n\
        this line means nothing to anyone\r\n\
        \r\n\
        # The Disk Data Base \r\n\
        #DDB\r\n\
        \r\n\
        ddb.adapterType = \"lsilogic\"\r\n\
        ddb.toolsInstallType = \"4\"\r\n\
        ddb.uuid = \"60 00 C2 9a 4b 1e 2c 3d-8f 70 61 52 43 34 25 16\"\r\n\
        ddb.geometry.cylinders=1024\r\n\
        someVendorKey = unquoted value\r\n\
        ddb.virtualHWVersion =  \"14\"";

    /// The bytes `dd ... skip=1 count=2` returns for an embedded descriptor: text, then NULs.
    fn embedded(text: &str) -> Vec<u8> {
        let mut buf = text.as_bytes().to_vec();
        buf.resize(1024.max(buf.len() + 1), 0);
        buf
    }

    fn extent(
        access: ExtentAccess,
        sectors: u64,
        kind: ExtentType,
        file: Option<&str>,
        offset: u64,
        extra: &[&str],
    ) -> ExtentLine {
        ExtentLine {
            access,
            sectors,
            kind,
            file: file.map(str::to_string),
            offset,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn assert_round_trip(d: &Descriptor) {
        let text = d.serialize();
        assert!(Descriptor::probe(text.as_bytes()), "probe rejects:\n{text}");
        let again = Descriptor::parse(text.as_bytes())
            .unwrap_or_else(|e| panic!("reparse failed: {e}\n{text}"));
        assert_eq!(&again, d, "round trip changed the descriptor:\n{text}");
    }

    fn parse_err(text: &str) -> DescriptorError {
        match Descriptor::parse(text.as_bytes()) {
            Ok(d) => panic!("expected an error, parsed {d:?}"),
            Err(e) => e,
        }
    }

    fn qemu_ddb(cylinders: &str) -> Vec<(String, String)> {
        pairs(&[
            ("ddb.virtualHWVersion", "4"),
            ("ddb.geometry.cylinders", cylinders),
            ("ddb.geometry.heads", "16"),
            ("ddb.geometry.sectors", "63"),
            ("ddb.adapterType", "ide"),
            ("ddb.toolsVersion", "2147483647"),
        ])
    }

    #[test]
    fn qemu_monolithic_sparse_embedded() {
        let buf = embedded(QEMU_MONOLITHIC_SPARSE);
        assert!(Descriptor::probe(&buf));
        let d = Descriptor::parse(&buf).unwrap();
        assert_eq!(
            d,
            Descriptor {
                version: 1,
                encoding: None,
                cid: 0x7b9b_5658,
                parent_cid: CID_NONE,
                create_type: "monolithicSparse".into(),
                parent_file_name_hint: None,
                extents: vec![extent(
                    ExtentAccess::ReadWrite,
                    20480,
                    ExtentType::Sparse,
                    Some("ms.vmdk"),
                    0,
                    &[]
                )],
                ddb: qemu_ddb("20"),
                other: vec![],
            }
        );
        assert!(!d.has_parent());
        assert_eq!(d.total_sectors(), 20480);
        assert_eq!(d.ddb("adapterType"), Some("ide"));
        assert_eq!(d.ddb("ddb.adapterType"), Some("ide"));
        assert_eq!(d.serialize(), QEMU_MONOLITHIC_SPARSE);
        assert_round_trip(&d);
    }

    #[test]
    fn qemu_two_gb_max_extent_flat() {
        let d = Descriptor::parse(QEMU_TWO_GB_FLAT.as_bytes()).unwrap();
        assert_eq!(d.create_type, "twoGbMaxExtentFlat");
        assert_eq!(d.cid, 0x402a_4429);
        let rw = ExtentAccess::ReadWrite;
        let flat = ExtentType::Flat;
        assert_eq!(
            d.extents,
            vec![
                extent(rw, 4_194_304, flat, Some("tf-f001.vmdk"), 0, &[]),
                extent(rw, 4_194_304, flat, Some("tf-f002.vmdk"), 0, &[]),
                extent(rw, 2_097_152, flat, Some("tf-f003.vmdk"), 0, &[]),
            ]
        );
        assert_eq!(d.total_sectors(), 5 << 21);
        assert_eq!(d.ddb, qemu_ddb("10402"));
        assert_eq!(d.serialize(), QEMU_TWO_GB_FLAT);
        assert_round_trip(&d);
    }

    #[test]
    fn flat_offsets_are_kept() {
        let text = QEMU_TWO_GB_FLAT
            .replace("\"tf-f002.vmdk\" 0", "\"tf-f002.vmdk\" 4194304")
            .replace(
                "\"tf-f003.vmdk\" 0",
                "\"tf-f003.vmdk\" 18446744073709551615",
            );
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        let offsets: Vec<u64> = d.extents.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [0, 4_194_304, u64::MAX]);
        assert_eq!(d.serialize(), text);
    }

    #[test]
    fn qemu_stream_optimized_embedded() {
        let d = Descriptor::parse(&embedded(QEMU_STREAM_OPTIMIZED)).unwrap();
        assert_eq!(d.create_type, "streamOptimized");
        assert_eq!(d.cid, 0xfcf9_9585);
        assert_eq!(d.extents.len(), 1);
        assert_eq!(d.extents[0].file.as_deref(), Some("so.vmdk"));
        assert_eq!(d.serialize(), QEMU_STREAM_OPTIMIZED);
        assert_round_trip(&d);
    }

    #[test]
    fn qemu_child_with_parent_hint() {
        let buf = embedded(QEMU_CHILD);
        assert!(Descriptor::probe(&buf));
        let d = Descriptor::parse(&buf).unwrap();
        assert_eq!(d.cid, 0x7fdf_1262);
        assert_eq!(d.parent_cid, 0x7b9b_5658);
        assert!(d.has_parent());
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("ms.vmdk"));
        assert_eq!(d.create_type, "monolithicSparse");
        assert_eq!(d.extents[0].file.as_deref(), Some("child.vmdk"));
        assert!(d.other.is_empty());
        // We always separate the header from the extents, which QEMU forgets to do here.
        let expected = QEMU_CHILD.replace(
            "parentFileNameHint=\"ms.vmdk\"\n",
            "parentFileNameHint=\"ms.vmdk\"\n\n",
        );
        assert_eq!(d.serialize(), expected);
        assert_round_trip(&d);
    }

    #[test]
    fn vmware_style_descriptor() {
        let mut buf = VMWARE_STYLE.as_bytes().to_vec();
        buf.extend_from_slice(&[0; 700]);
        // Garbage after the padding must not be read.
        buf.extend_from_slice(b"RW 1 SPARSE\n\xff\xfe");
        assert!(Descriptor::probe(&buf));
        let d = Descriptor::parse(&buf).unwrap();
        assert_eq!(d.version, 3);
        assert_eq!(d.encoding.as_deref(), Some("UTF-8"));
        assert_eq!(d.cid, 0xffff_fffe);
        assert_eq!(d.parent_cid, CID_NONE);
        assert_eq!(d.create_type, "partitionedDevice");
        assert_eq!(d.parent_file_name_hint, None);
        use ExtentAccess::*;
        use ExtentType::*;
        assert_eq!(
            d.extents,
            vec![
                extent(ReadOnly, 63, Flat, Some("My Disk-pt.vmdk"), 0, &[]),
                extent(NoAccess, 1985, Zero, None, 0, &[]),
                extent(
                    ReadWrite,
                    4096,
                    Flat,
                    Some("\\\\.\\PhysicalDrive0"),
                    2048,
                    &[]
                ),
                extent(
                    ReadWrite,
                    2048,
                    VmfsRdm,
                    Some("disk with spaces-rdm.vmdk"),
                    0,
                    &["passthrough", "\"x y\""]
                ),
                extent(ReadWrite, 100, Zero, None, 0, &[]),
                extent(ReadWrite, 8, Sparse, Some("a=b.vmdk"), 0, &[]),
            ]
        );
        assert_eq!(d.total_sectors(), 63 + 1985 + 4096 + 2048 + 100 + 8);
        assert_eq!(
            d.ddb,
            pairs(&[
                ("ddb.adapterType", "lsilogic"),
                ("ddb.toolsInstallType", "4"),
                (
                    "ddb.uuid",
                    "60 00 C2 9a 4b 1e 2c 3d-8f 70 61 52 43 34 25 16"
                ),
                ("ddb.geometry.cylinders", "1024"),
                ("ddb.virtualHWVersion", "14"),
            ])
        );
        assert_eq!(
            d.other,
            pairs(&[
                ("isNativeSnapshot", "\"no\""),
                ("someVendorKey", "unquoted value"),
            ])
        );
        assert_eq!(d.ddb("toolsInstallType"), Some("4"));

        let text = d.serialize();
        assert!(!text.contains('\r'));
        assert!(!text.contains("means nothing"));
        assert!(text.contains("\nisNativeSnapshot=\"no\"\nsomeVendorKey=unquoted value\n\n"));
        assert!(text.contains("\nRDONLY 63 FLAT \"My Disk-pt.vmdk\" 0\n"));
        assert!(text.contains("\nNOACCESS 1985 ZERO\n"));
        assert!(text
            .contains("\nRW 2048 VMFSRDM \"disk with spaces-rdm.vmdk\" 0 passthrough \"x y\"\n"));
        assert!(text.contains("\nddb.toolsInstallType = \"4\"\n"));
        assert!(text.contains("\nddb.geometry.cylinders = \"1024\"\n"));
        assert!(text.starts_with("# Disk DescriptorFile\nversion=3\nencoding=\"UTF-8\"\n"));
        assert!(text.ends_with("ddb.virtualHWVersion = \"14\"\n"));
        assert_round_trip(&d);
    }

    #[test]
    fn round_trips() {
        for text in [
            QEMU_MONOLITHIC_SPARSE,
            QEMU_TWO_GB_FLAT,
            QEMU_STREAM_OPTIMIZED,
            QEMU_CHILD,
            VMWARE_STYLE,
        ] {
            let d = Descriptor::parse(text.as_bytes()).unwrap();
            assert_round_trip(&d);
            // Serializing is a fixed point after one pass.
            let once = d.serialize();
            let twice = Descriptor::parse(once.as_bytes()).unwrap().serialize();
            assert_eq!(once, twice);
        }
    }

    #[test]
    fn extra_fields_and_offsets_on_other_kinds() {
        let text = "version=1\nCID=1\ncreateType=\"vmfs\"\n\
                    RW 10 VMFS \"a-flat.vmdk\"\n\
                    RW 10 SPARSE \"b.vmdk\" 0 x\n\
                    RW 10 VMFSSPARSE \"c.vmdk\" 7\n\
                    RW 10 ZERO 5\n\
                    RW 10 ZERO \"\" 0 \"q q\" z\n\
                    RW 10 SESPARSE \"d.vmdk\"7 \"e\"\n\
                    RW 10 VMFSRAW \"/dev/sda\"";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        use ExtentAccess::ReadWrite as Rw;
        use ExtentType::*;
        assert_eq!(
            d.extents,
            vec![
                extent(Rw, 10, Vmfs, Some("a-flat.vmdk"), 0, &[]),
                extent(Rw, 10, Sparse, Some("b.vmdk"), 0, &["x"]),
                extent(Rw, 10, VmfsSparse, Some("c.vmdk"), 7, &[]),
                extent(Rw, 10, Zero, None, 5, &[]),
                extent(Rw, 10, Zero, Some(""), 0, &["\"q q\"", "z"]),
                extent(Rw, 10, SeSparse, Some("d.vmdk"), 7, &["\"e\""]),
                extent(Rw, 10, VmfsRaw, Some("/dev/sda"), 0, &[]),
            ]
        );
        assert_round_trip(&d);
        let text = d.serialize();
        assert!(text.contains("\nRW 10 VMFS \"a-flat.vmdk\"\n"));
        assert!(text.contains("\nRW 10 SPARSE \"b.vmdk\" 0 x\n"));
        assert!(text.contains("\nRW 10 ZERO 5\n"));
        assert!(text.contains("\nRW 10 ZERO \"\" 0 \"q q\" z\n"));
    }

    #[test]
    fn header_defaults_and_duplicates() {
        // No parentCID: no parent. Duplicates: the first wins and the rest are kept.
        let text = "version=1\nCID=0x1A\nCID=2\ncreateType=\"a\"\ncreateType=\"b\"\nversion=7\n";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.cid, 0x1a);
        assert_eq!(d.parent_cid, CID_NONE);
        assert!(!d.has_parent());
        assert_eq!(d.create_type, "a");
        assert_eq!(
            d.other,
            pairs(&[("CID", "2"), ("createType", "\"b\""), ("version", "7")])
        );
        assert_round_trip(&d);

        // Quoted CIDs, quoted version, spaces around '=', unterminated and inner quotes.
        let text = "version = \"2\"\nCID=\"0000000000abcdef\"\nparentCID = 00000000\n\
                    createType=\"say \"hi\"\"\nparentFileNameHint=\"unterminated\n";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(d.cid, 0xabcdef);
        assert_eq!(d.parent_cid, 0);
        assert!(d.has_parent());
        assert_eq!(d.create_type, "say \"hi\"");
        assert_eq!(d.parent_file_name_hint.as_deref(), Some("unterminated"));
        assert!(d
            .serialize()
            .contains("\nCID=00abcdef\nparentCID=00000000\n"));
        assert_round_trip(&d);
    }

    #[test]
    fn ddb_get_and_set() {
        let mut d = Descriptor::parse(QEMU_MONOLITHIC_SPARSE.as_bytes()).unwrap();
        assert_eq!(d.ddb("geometry.heads"), Some("16"));
        assert_eq!(d.ddb("ddb.geometry.heads"), Some("16"));
        assert_eq!(d.ddb("Geometry.Heads"), None);
        assert_eq!(d.ddb("nope"), None);

        d.set_ddb("adapterType", "lsilogic");
        assert_eq!(d.ddb[4], ("ddb.adapterType".into(), "lsilogic".into()));
        d.set_ddb("ddb.uuid.image", "1234");
        assert_eq!(
            d.ddb.last().unwrap(),
            &("ddb.uuid.image".into(), "1234".into())
        );
        d.set_ddb("longContentID", "ab");
        assert_eq!(d.ddb("ddb.longContentID"), Some("ab"));
        assert_eq!(d.ddb.len(), 8);

        // Duplicates collapse into the first position.
        d.ddb.push(("ddb.adapterType".into(), "stale".into()));
        assert_eq!(d.ddb("adapterType"), Some("lsilogic"));
        d.set_ddb("adapterType", "buslogic");
        assert_eq!(d.ddb.len(), 8);
        assert_eq!(d.ddb[4].1, "buslogic");
        assert_round_trip(&d);
    }

    #[test]
    fn serialize_replaces_what_the_format_cannot_carry() {
        let mut d = Descriptor::parse(QEMU_MONOLITHIC_SPARSE.as_bytes()).unwrap();
        d.set_ddb("comment", "two\nlines\0");
        d.set_ddb("bad key=", "v");
        d.extents[0].file = Some("we\"ird\nname".into());
        d.extents.push(extent(
            ExtentAccess::ReadWrite,
            1,
            ExtentType::Sparse,
            None,
            0,
            &["a\nb"],
        ));
        d.other.push(("#x".into(), "1".into()));
        d.other.push((String::new(), "2".into()));
        let text = d.serialize();
        let again = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(again.ddb("comment"), Some("two lines "));
        assert_eq!(again.ddb("bad_key_"), Some("v"));
        assert_eq!(again.extents[0].file.as_deref(), Some("we_ird_name"));
        assert_eq!(again.extents[1].file.as_deref(), Some(""));
        assert_eq!(again.extents[1].extra, ["a_b"]);
        assert_eq!(again.other, pairs(&[("_#x", "1"), ("_", "2")]));
        assert_eq!(again.extents.len(), 2);
    }

    #[test]
    fn probe_accepts_descriptors() {
        assert!(Descriptor::probe(QEMU_TWO_GB_FLAT.as_bytes()));
        assert!(Descriptor::probe(&embedded(QEMU_CHILD)));
        assert!(Descriptor::probe(VMWARE_STYLE.as_bytes()));
        assert!(Descriptor::probe(b"version=1"));
        assert!(Descriptor::probe(b"version=2\r\n"));
        assert!(Descriptor::probe(b"version=3\n"));
        assert!(Descriptor::probe(
            b"\xEF\xBB\xBF# c\n\n   \n  version = \"1\"  \r\n"
        ));
        assert!(Descriptor::probe(
            b"#\xff\xfe binary comment\nversion=1\n\0\xff"
        ));
        let mut long = vec![b'#'; 3000];
        long.extend_from_slice(b"\nversion=1\n");
        long.resize(100_000, b'x');
        assert!(Descriptor::probe(&long));
    }

    #[test]
    fn probe_rejects_other_data() {
        const SPARSE_HEADER: [u8; 32] = [
            0x4b, 0x44, 0x4d, 0x56, 0x01, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x50,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00,
        ];
        assert!(!Descriptor::probe(&SPARSE_HEADER));
        assert!(!Descriptor::probe(b"KDMV"));
        assert!(!Descriptor::probe(b"COWD\x01\0\0\0"));
        assert!(!Descriptor::probe(b""));
        assert!(!Descriptor::probe(b"\0version=1\n"));
        assert!(!Descriptor::probe(b"\xff\xfe\x00\x01\x02garbage\n"));
        assert!(!Descriptor::probe(
            b"# Disk DescriptorFile\ncreateType=\"x\"\nversion=1\n"
        ));
        assert!(!Descriptor::probe(b"# only comments\n\n"));
        assert!(!Descriptor::probe(b"version=4\n"));
        assert!(!Descriptor::probe(b"version=\n"));
        assert!(!Descriptor::probe(b"version=1x\n"));
        assert!(!Descriptor::probe(b"Version=1\n"));
        assert!(!Descriptor::probe(b"version=\xff\n"));
        // The version line starts beyond the probe window.
        let mut far = vec![b'#'; PROBE_WINDOW + 10];
        far.extend_from_slice(b"\nversion=1\n");
        assert!(!Descriptor::probe(&far));
        // The window ends inside the version line: it might continue as `version=10`.
        let mut cut = vec![b'\n'; PROBE_WINDOW - 9];
        cut.extend_from_slice(b"version=1");
        assert!(Descriptor::probe(&cut));
        cut.push(b'0');
        assert!(!Descriptor::probe(&cut));
    }

    #[test]
    fn extent_errors_name_the_line() {
        let header = "# Disk DescriptorFile\nversion=1\nCID=1\ncreateType=\"x\"\n\n";
        for (line, why) in [
            ("RX 2048 SPARSE \"a.vmdk\"", "unknown access mode `RX`"),
            (
                "RW 2O48 SPARSE \"a.vmdk\"",
                "invalid size in sectors `2O48`",
            ),
            ("RW -1 FLAT \"a.vmdk\" 0", "invalid size in sectors `-1`"),
            ("RW +1 FLAT \"a.vmdk\" 0", "invalid size in sectors `+1`"),
            (
                "RW 18446744073709551616 FLAT \"a\" 0",
                "invalid size in sectors `18446744073709551616`",
            ),
            (
                "RW 2048 SPARSE a.vmdk",
                "file name `a.vmdk` is not double-quoted",
            ),
            ("RW 2048 SPARSE", "SPARSE extent has no file name"),
            ("RW 2048 FLAT", "FLAT extent has no file name"),
            ("RW 2048 BOGUS \"a.vmdk\"", "unknown extent type `BOGUS`"),
            ("RW 2048", "missing extent type"),
            ("RW", "missing size in sectors"),
            ("RW 2048 FLAT \"a.vmdk", "unterminated double quote"),
            ("RW 2048 FLAT \"a.vmdk\" x", "invalid offset `x`"),
            ("RW 2048 FLAT \"a.vmdk\" \"0\"", "invalid offset `\"0\"`"),
            ("RW 2048 FLAT \"a\" 99999999999999999999", "invalid offset"),
            ("RW 2048 ZERO junk", "invalid offset `junk`"),
        ] {
            let e = parse_err(&format!(
                "{header}# Extent description\n{line}\nRW 1 ZERO\n"
            ));
            assert_eq!(e.line, Some(7), "{line}: {e}");
            assert!(e.message.contains(line), "{line}: {e}");
            assert!(e.message.contains(why), "{line}: {e}");
            assert!(e.to_string().starts_with("line 7: invalid extent line `"));
        }
    }

    #[test]
    fn header_errors() {
        let e = parse_err("# c\nversion=4\nCID=1\ncreateType=\"x\"\n");
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("unsupported descriptor version `4`"),
            "{e}"
        );

        let e = parse_err("version=one\nCID=1\ncreateType=\"x\"\n");
        assert_eq!(e.line, Some(1));

        let e = parse_err("CID=1\ncreateType=\"x\"\n");
        assert_eq!(e, DescriptorError::whole("descriptor has no version line"));
        assert_eq!(e.to_string(), "descriptor has no version line");

        let e = parse_err("version=1\nCID=1\nRW 1 ZERO\n");
        assert_eq!(e.line, None);
        assert_eq!(e.message, "descriptor has no createType");

        let e = parse_err("version=1\nparentCID=ffffffff\ncreateType=\"x\"\n");
        assert_eq!(e.message, "descriptor has no CID");

        for cid in ["", "xyz", "123456789", "0x", "-1", "+1", "1 2"] {
            let e = parse_err(&format!("version=1\ncreateType=\"x\"\nCID={cid}\n"));
            assert_eq!(e.line, Some(3), "CID={cid}: {e}");
            assert!(e.message.starts_with("invalid CID"), "{e}");
        }
        let e = parse_err("version=1\nCID=1\nparentCID=fffffffff\ncreateType=\"x\"\n");
        assert_eq!(e.line, Some(3));
        assert!(e.message.starts_with("invalid parentCID"), "{e}");

        assert_eq!(parse_err("").message, "descriptor has no version line");
        assert_eq!(
            parse_err("\0version=1").message,
            "descriptor has no version line"
        );
    }

    #[test]
    fn invalid_utf8_is_read_as_latin1() {
        let mut buf = b"version=1\nCID=1\ncreateType=\"x\"\nRW 1 FLAT \"caf".to_vec();
        buf.extend_from_slice(b"\xe9.vmdk\" 0\n");
        let d = Descriptor::parse(&buf).unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("caf\u{e9}.vmdk"));
        // Valid multi-byte names are fine.
        let d = Descriptor::parse(
            "version=1\nCID=1\ncreateType=\"x\"\nRW 1 FLAT \"café ü.vmdk\" 0\n".as_bytes(),
        )
        .unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("café ü.vmdk"));
    }

    #[test]
    fn unknown_lines_are_ignored() {
        let text = "version=1\nCID=1\ncreateType=\"x\"\njust some words\n= nothing\n\
                    spaced key = 1\n\"quoted\"=1\nRW 1 ZERO\n";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert!(d.other.is_empty());
        assert!(d.ddb.is_empty());
        assert_eq!(d.extents.len(), 1);
    }

    #[test]
    fn size_limits() {
        // Exactly at the cap (after which NUL padding may follow) is accepted.
        let mut text = String::from("version=1\nCID=1\ncreateType=\"x\"\n#");
        text.push_str(&"x".repeat(MAX_DESCRIPTOR_SIZE - text.len()));
        let mut buf = text.clone().into_bytes();
        assert!(Descriptor::parse(&buf).is_ok());
        buf.extend_from_slice(&[0; 4096]);
        assert!(Descriptor::parse(&buf).is_ok());
        text.push('x');
        let e = Descriptor::parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e.message.contains("larger than"));

        let mut text = String::from("version=1\nCID=1\ncreateType=\"x\"\n");
        for _ in 0..MAX_EXTENTS {
            text.push_str("RW 1 ZERO\n");
        }
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.extents.len(), MAX_EXTENTS);
        assert_eq!(d.total_sectors(), MAX_EXTENTS as u64);
        text.push_str("RW 1 ZERO\n");
        let e = Descriptor::parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, Some(3 + MAX_EXTENTS + 1));
        assert!(e.message.contains("extent lines"));
    }

    #[test]
    fn total_sectors_saturates() {
        let mut d = Descriptor::parse(QEMU_MONOLITHIC_SPARSE.as_bytes()).unwrap();
        d.extents[0].sectors = u64::MAX - 1;
        d.extents.push(d.extents[0].clone());
        assert_eq!(d.total_sectors(), u64::MAX);
    }

    #[test]
    fn keywords() {
        for kind in ExtentType::ALL {
            assert_eq!(ExtentType::from_keyword(kind.keyword()), Some(kind));
            let lower = kind.keyword().to_ascii_lowercase();
            assert_eq!(ExtentType::from_keyword(&lower), Some(kind));
        }
        for access in ExtentAccess::ALL {
            assert_eq!(ExtentAccess::from_keyword(access.keyword()), Some(access));
        }
        assert_eq!(ExtentType::from_keyword("SPARSEX"), None);
        assert_eq!(ExtentAccess::from_keyword(""), None);
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz loop.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    const FRAGMENTS: &[&str] = &[
        "version=1\n",
        "version=3\r\n",
        "CID=",
        "parentCID=ffffffff\n",
        "createType=\"",
        "parentFileNameHint=",
        "encoding=\"UTF-8\"\n",
        "ddb.",
        " = \"",
        "=",
        "\"",
        "\n",
        "\r\n",
        "# c\n",
        "#",
        " ",
        "\t",
        "RW ",
        "rdonly ",
        "NOACCESS ",
        "2048 ",
        "0",
        "18446744073709551615",
        "99999999999999999999",
        "SPARSE ",
        "flat ",
        "ZERO",
        "VMFSRDM ",
        "\"a b.vmdk\" ",
        "\"x",
        "é",
        "\u{feff}",
        "ffffffff",
        "0x",
        "\0",
    ];

    fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
        const BYTES: &[u8] = b"\"=\n\r# \t0123456789abcdefRWZ\0\xff\xc3\xa9.";
        match rng.below(7) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.next() as u8;
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = *rng.pick(BYTES);
            }
            2 => {
                let i = rng.below(buf.len() + 1);
                let frag = rng.pick(FRAGMENTS).as_bytes();
                buf.splice(i..i, frag.iter().copied());
            }
            3 if !buf.is_empty() => {
                let start = rng.below(buf.len());
                let end = (start + 1 + rng.below(16)).min(buf.len());
                buf.drain(start..end);
            }
            4 if !buf.is_empty() => {
                // Duplicate a run, often a whole line: exercises duplicate keys and extents.
                let start = rng.below(buf.len());
                let end = (start + 1 + rng.below(40)).min(buf.len());
                let run = buf[start..end].to_vec();
                let at = rng.below(buf.len() + 1);
                buf.splice(at..at, run);
            }
            5 => {
                let len = rng.below(buf.len() + 1);
                buf.truncate(len);
            }
            _ => {
                let i = rng.below(buf.len() + 1);
                buf.insert(i, *rng.pick(BYTES));
            }
        }
    }

    fn check_no_panic_and_round_trip(buf: &[u8], accepted: &mut usize) {
        let _ = Descriptor::probe(buf);
        if let Ok(d) = Descriptor::parse(buf) {
            *accepted += 1;
            assert_round_trip(&d);
            let _ = d.ddb("adapterType");
            let _ = d.total_sectors();
        }
    }

    #[test]
    fn fuzz_random_inputs_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seeds = [
            QEMU_MONOLITHIC_SPARSE,
            QEMU_TWO_GB_FLAT,
            QEMU_STREAM_OPTIMIZED,
            QEMU_CHILD,
            VMWARE_STYLE,
        ];
        let mut accepted = 0;

        for _ in 0..4000 {
            let len = rng.below(300);
            let buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            check_no_panic_and_round_trip(&buf, &mut accepted);
        }

        for _ in 0..4000 {
            let mut text = String::new();
            for _ in 0..rng.below(60) {
                text.push_str(rng.pick::<&str>(FRAGMENTS));
            }
            check_no_panic_and_round_trip(text.as_bytes(), &mut accepted);
        }

        for _ in 0..12000 {
            let mut buf = rng.pick(&seeds).as_bytes().to_vec();
            for _ in 0..1 + rng.below(8) {
                mutate(&mut rng, &mut buf);
            }
            if rng.below(4) == 0 {
                buf.resize(buf.len() + rng.below(600), 0);
            }
            check_no_panic_and_round_trip(&buf, &mut accepted);
        }

        // The mutations must leave enough descriptors valid for the round trip to be exercised.
        assert!(accepted > 3000, "only {accepted} inputs parsed");
    }
}
