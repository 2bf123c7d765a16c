//! NBD wire format: constants, and encoders/decoders written as pure
//! functions over byte slices so they can be unit-tested without sockets.
//!
//! All integers on the wire are big-endian. Names follow the protocol
//! document (`doc/proto.md` of the NBD project) with the `NBD_` prefix
//! dropped.

use thiserror::Error;

// ---------------------------------------------------------------------------
// Magic numbers
// ---------------------------------------------------------------------------

/// `NBDMAGIC`, first eight bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, newstyle greeting magic and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply in fixed newstyle negotiation.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every (compact) transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every transmission request once extended headers are negotiated.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Prefix of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Prefix of every reply chunk once extended headers are negotiated.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------
// Handshake flags
// ---------------------------------------------------------------------------

/// Server handshake flag: fixed newstyle negotiation supported.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Server handshake flag: the 124 bytes of zero padding may be omitted.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: omit the zero padding after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this server understands; anything else ends the session.
pub const KNOWN_CLIENT_FLAGS: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---------------------------------------------------------------------------
// Transmission flags
// ---------------------------------------------------------------------------

pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const TFLAG_SEND_CACHE: u16 = 1 << 10;

// ---------------------------------------------------------------------------
// Options and option replies
// ---------------------------------------------------------------------------

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
pub const REP_ERR_UNSUP: u32 = REP_ERR + 1;
pub const REP_ERR_POLICY: u32 = REP_ERR + 2;
pub const REP_ERR_INVALID: u32 = REP_ERR + 3;
pub const REP_ERR_TLS_REQD: u32 = REP_ERR + 5;
pub const REP_ERR_UNKNOWN: u32 = REP_ERR + 6;
pub const REP_ERR_TOO_BIG: u32 = REP_ERR + 9;
pub const REP_ERR_EXT_HEADER_REQD: u32 = REP_ERR + 10;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Commands, command flags, replies
// ---------------------------------------------------------------------------

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Extended headers only: the length field is the payload's length, not the effect's.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

pub const REPLY_FLAG_DONE: u16 = 1 << 0;

pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Block status with 64-bit extents (extended headers).
pub const REPLY_TYPE_BLOCK_STATUS_EXT: u16 = 6;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// `base:allocation` extent flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Error values. They look like Linux errno values but are protocol constants.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

// ---------------------------------------------------------------------------
// Limits and fixed sizes
// ---------------------------------------------------------------------------

/// Largest option payload accepted. Real options are a name (<= 4 KiB) plus a
/// few small fields; anything bigger is refused before any allocation.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Longest string the protocol allows (export names, messages, queries).
pub const MAX_STRING_LEN: usize = 4096;
/// Largest READ/WRITE payload (also the advertised maximum block size).
/// The spec says lengths below 32 MiB should never be treated as abusive.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;
/// Advertised preferred block size.
pub const PREFERRED_BLOCK: u32 = 4096;

/// The only metadata context this server implements.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// qemu's allocation-depth context (`docs/interop/nbd.txt`).
pub const ALLOCATION_DEPTH: &str = "qemu:allocation-depth";

pub const GREETING_LEN: usize = 18;
pub const OPTION_HEADER_LEN: usize = 16;
pub const REQUEST_LEN: usize = 28;
pub const EXTENDED_REQUEST_LEN: usize = 32;
pub const SIMPLE_REPLY_LEN: usize = 16;
pub const STRUCTURED_HEADER_LEN: usize = 20;
pub const EXTENDED_HEADER_LEN: usize = 32;

/// A malformed message from the peer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("malformed option payload: {0}")]
    Malformed(&'static str),
}

// ---------------------------------------------------------------------------
// Handshake phase
// ---------------------------------------------------------------------------

/// The server's opening message: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
pub fn encode_greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// Header of one option request from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

/// Decode the 16-byte option header, checking the `IHAVEOPT` magic.
pub fn decode_option_header(buf: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let magic = be_u64(&buf[0..8]);
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    Ok(OptionHeader {
        option: be_u32(&buf[8..12]),
        length: be_u32(&buf[12..16]),
    })
}

/// Append one option reply (header + data) to `out`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, data: &[u8]) {
    out.reserve(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Callers only pass bounded data (names, descriptions <= a few KiB).
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// One option reply as a fresh buffer.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_option_reply(&mut out, option, reply_type, data);
    out
}

/// Reply that ends `NBD_OPT_EXPORT_NAME` (no option-reply header).
pub fn encode_export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    out
}

/// Payload of an `NBD_REP_INFO` / `NBD_INFO_EXPORT` reply.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out
}

/// Payload of an `NBD_REP_INFO` carrying a string (`NBD_INFO_NAME`/`DESCRIPTION`).
pub fn encode_info_string(info_type: u16, s: &str) -> Vec<u8> {
    let s = truncate_str(s, MAX_STRING_LEN);
    let mut out = Vec::with_capacity(2 + s.len());
    out.extend_from_slice(&info_type.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out
}

/// Payload of an `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE` reply.
pub fn encode_info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    out.extend_from_slice(&min.to_be_bytes());
    out.extend_from_slice(&preferred.to_be_bytes());
    out.extend_from_slice(&max.to_be_bytes());
    out
}

/// Payload of an `NBD_REP_SERVER` reply: name, then free-form description.
pub fn encode_rep_server(name: &str, description: Option<&str>) -> Vec<u8> {
    let name = truncate_str(name, MAX_STRING_LEN);
    let mut out = Vec::new();
    out.extend_from_slice(&(name.len() as u32).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    if let Some(d) = description {
        out.extend_from_slice(truncate_str(d, MAX_STRING_LEN).as_bytes());
    }
    out
}

/// Payload of an `NBD_REP_META_CONTEXT` reply.
pub fn encode_rep_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out
}

/// Parsed data of `NBD_OPT_INFO` / `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// Parse the data of `NBD_OPT_INFO` / `NBD_OPT_GO`:
/// name length (u32), name, count (u16), count x info type (u16).
pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let mut c = Cursor::new(data);
    let name = c
        .string32()
        .ok_or(ProtoError::Malformed("bad export name"))?;
    let n = c.u16().ok_or(ProtoError::Malformed("missing info count"))?;
    // Checking the exact remaining length first means the loop below never
    // trusts `n` beyond what was actually received.
    if c.remaining() != usize::from(n) * 2 {
        return Err(ProtoError::Malformed(
            "info request count does not match length",
        ));
    }
    let requests = (0..n).map(|_| c.u16().unwrap_or(0)).collect();
    Ok(InfoRequest { name, requests })
}

/// Parsed data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export_name: String,
    pub queries: Vec<String>,
}

/// Parse the data of the two meta-context options:
/// name length (u32), name, query count (u32), then per query length (u32) + string.
pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    let mut c = Cursor::new(data);
    let export_name = c
        .string32()
        .ok_or(ProtoError::Malformed("bad export name"))?;
    let n = c
        .u32()
        .ok_or(ProtoError::Malformed("missing query count"))?;
    let mut queries = Vec::new();
    for _ in 0..n {
        // Each query needs at least its 4-byte length, so a lying count runs
        // out of data quickly instead of looping or allocating.
        let q = c.string32().ok_or(ProtoError::Malformed("bad query"))?;
        queries.push(q);
    }
    if c.remaining() != 0 {
        return Err(ProtoError::Malformed("trailing data after queries"));
    }
    Ok(MetaContextRequest {
        export_name,
        queries,
    })
}

// ---------------------------------------------------------------------------
// Transmission phase
// ---------------------------------------------------------------------------

/// A transmission-phase request header, compact or extended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    /// 32 bits on the wire in compact requests, 64 in extended ones.
    pub length: u64,
}

/// Decode a request header: the 28-byte compact form, or the 32-byte extended form
/// (64-bit length) once extended headers are negotiated. The magic must match the form.
pub fn decode_request(buf: &[u8], extended: bool) -> Result<Request, ProtoError> {
    let (expect, len) = if extended {
        (EXTENDED_REQUEST_MAGIC, EXTENDED_REQUEST_LEN)
    } else {
        (REQUEST_MAGIC, REQUEST_LEN)
    };
    if buf.len() != len {
        return Err(ProtoError::Malformed("request header of the wrong size"));
    }
    let magic = be_u32(&buf[0..4]);
    if magic != expect {
        return Err(ProtoError::BadMagic(u64::from(magic)));
    }
    Ok(Request {
        flags: be_u16(&buf[4..6]),
        command: be_u16(&buf[6..8]),
        handle: be_u64(&buf[8..16]),
        offset: be_u64(&buf[16..24]),
        length: if extended {
            be_u64(&buf[24..32])
        } else {
            u64::from(be_u32(&buf[24..28]))
        },
    })
}

/// Write a simple reply header into the first 16 bytes of `out`.
pub fn write_simple_reply(out: &mut [u8], handle: u64, error: u32) {
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
}

/// A complete simple reply without payload.
pub fn encode_simple_reply(handle: u64, error: u32) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    write_simple_reply(&mut out, handle, error);
    out
}

/// Reply chunks for one request: structured (20-byte headers) or, once extended headers
/// are negotiated, extended (32-byte headers carrying the request's offset and a 64-bit
/// length). Every encoder of a chunk goes through [`Chunks::header`], so the two forms
/// cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunks {
    pub extended: bool,
    pub handle: u64,
    /// The request's offset (echoed by extended headers).
    pub offset: u64,
}

impl Chunks {
    /// Length of one chunk header.
    pub fn header_len(&self) -> usize {
        if self.extended {
            EXTENDED_HEADER_LEN
        } else {
            STRUCTURED_HEADER_LEN
        }
    }

    /// Append a chunk header announcing `length` bytes of payload.
    pub fn header(&self, out: &mut Vec<u8>, flags: u16, reply_type: u16, length: u64) {
        if self.extended {
            out.extend_from_slice(&EXTENDED_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&reply_type.to_be_bytes());
            out.extend_from_slice(&self.handle.to_be_bytes());
            out.extend_from_slice(&self.offset.to_be_bytes());
            out.extend_from_slice(&length.to_be_bytes());
        } else {
            out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
            out.extend_from_slice(&flags.to_be_bytes());
            out.extend_from_slice(&reply_type.to_be_bytes());
            out.extend_from_slice(&self.handle.to_be_bytes());
            // Structured payloads are bounded by the maximum block size (or a few
            // thousand block-status descriptors), far below 4 GiB.
            out.extend_from_slice(&(length as u32).to_be_bytes());
        }
    }

    /// Append an `OFFSET_HOLE` chunk (the hole's length is 32 bits in both forms).
    pub fn hole(&self, out: &mut Vec<u8>, flags: u16, offset: u64, len: u32) {
        self.header(out, flags, REPLY_TYPE_OFFSET_HOLE, 12);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
    }

    /// A final `NBD_REPLY_TYPE_ERROR` chunk with a human-readable message.
    pub fn error(&self, error: u32, message: &str) -> Vec<u8> {
        let msg = truncate_str(message, MAX_STRING_LEN);
        let mut out = Vec::with_capacity(self.header_len() + 6 + msg.len());
        self.header(
            &mut out,
            REPLY_FLAG_DONE,
            REPLY_TYPE_ERROR,
            6 + msg.len() as u64,
        );
        out.extend_from_slice(&error.to_be_bytes());
        out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        out.extend_from_slice(msg.as_bytes());
        out
    }

    /// A final `NBD_REPLY_TYPE_NONE` chunk (success, no payload).
    pub fn none(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len());
        self.header(&mut out, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0);
        out
    }

    /// Append a block-status chunk for one context (`flags`: `REPLY_FLAG_DONE` on the
    /// last); `extents` are (length, flags). Structured replies carry `BLOCK_STATUS` with
    /// 32-bit lengths (the caller keeps them below 4 GiB), extended ones `BLOCK_STATUS_EXT`
    /// with a descriptor count and 64-bit lengths.
    pub fn block_status(
        &self,
        out: &mut Vec<u8>,
        flags: u16,
        context_id: u32,
        extents: &[(u64, u32)],
    ) {
        let (reply_type, fixed, each) = if self.extended {
            (REPLY_TYPE_BLOCK_STATUS_EXT, 8, 16)
        } else {
            (REPLY_TYPE_BLOCK_STATUS, 4, 8)
        };
        let payload_len = fixed + each * extents.len();
        out.reserve(self.header_len() + payload_len);
        self.header(out, flags, reply_type, payload_len as u64);
        out.extend_from_slice(&context_id.to_be_bytes());
        if self.extended {
            out.extend_from_slice(&(extents.len() as u32).to_be_bytes());
            for &(len, flags) in extents {
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&u64::from(flags).to_be_bytes());
            }
        } else {
            for &(len, flags) in extents {
                out.extend_from_slice(&(len as u32).to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Cut `s` to at most `max` bytes on a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bounds-checked reader over an option payload; every accessor returns
/// `None` instead of panicking when the data runs out.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.remaining() {
            return None;
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(be_u16)
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(be_u32)
    }

    /// A u32-length-prefixed UTF-8 string of at most `MAX_STRING_LEN` bytes.
    fn string32(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        if len > MAX_STRING_LEN {
            return None;
        }
        let raw = self.bytes(len)?;
        String::from_utf8(raw.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_payload(name: &str, reqs: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
        for r in reqs {
            v.extend_from_slice(&r.to_be_bytes());
        }
        v
    }

    fn meta_payload(name: &str, queries: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
        for q in queries {
            v.extend_from_slice(&(q.len() as u32).to_be_bytes());
            v.extend_from_slice(q.as_bytes());
        }
        v
    }

    #[test]
    fn greeting_layout() {
        let g = encode_greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn option_header_roundtrip_and_bad_magic() {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(b"IHAVEOPT");
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        b[12..16].copy_from_slice(&99u32.to_be_bytes());
        assert_eq!(
            decode_option_header(&b),
            Ok(OptionHeader {
                option: 7,
                length: 99
            })
        );
        b[0] = b'X';
        assert!(matches!(
            decode_option_header(&b),
            Err(ProtoError::BadMagic(_))
        ));
    }

    #[test]
    fn option_reply_layout() {
        let r = encode_option_reply(OPT_GO, REP_ACK, b"ab");
        assert_eq!(r.len(), 22);
        assert_eq!(&r[0..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&r[8..12], &7u32.to_be_bytes());
        assert_eq!(&r[12..16], &1u32.to_be_bytes());
        assert_eq!(&r[16..20], &2u32.to_be_bytes());
        assert_eq!(&r[20..], b"ab");
    }

    #[test]
    fn export_name_reply_padding() {
        assert_eq!(encode_export_name_reply(1, 1, false).len(), 134);
        let r = encode_export_name_reply(0x1234, 0x0105, true);
        assert_eq!(r, vec![0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x01, 0x05]);
    }

    #[test]
    fn info_request_parsing() {
        let p = info_payload("disk", &[INFO_NAME, INFO_BLOCK_SIZE]);
        assert_eq!(
            parse_info_request(&p).unwrap(),
            InfoRequest {
                name: "disk".into(),
                requests: vec![1, 3]
            }
        );
        // Name length beyond the payload.
        let mut bad = p.clone();
        bad[3] = 200;
        assert!(parse_info_request(&bad).is_err());
        // Count claims more entries than present.
        let mut bad = info_payload("", &[1]);
        bad[5] = 9;
        assert!(parse_info_request(&bad).is_err());
        // Trailing garbage.
        let mut bad = info_payload("", &[]);
        bad.push(0);
        assert!(parse_info_request(&bad).is_err());
        assert!(parse_info_request(&[]).is_err());
        // Huge declared name length must not allocate or panic.
        assert!(parse_info_request(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn meta_context_parsing() {
        let p = meta_payload("x", &["base:allocation", "qemu:dirty-bitmap:a"]);
        let r = parse_meta_context_request(&p).unwrap();
        assert_eq!(r.export_name, "x");
        assert_eq!(r.queries, vec!["base:allocation", "qemu:dirty-bitmap:a"]);
        let r = parse_meta_context_request(&meta_payload("", &[])).unwrap();
        assert!(r.queries.is_empty());
        // Lying query count.
        let mut bad = meta_payload("", &["base:"]);
        bad[7] = 0xff;
        assert!(parse_meta_context_request(&bad).is_err());
        let mut bad = meta_payload("", &[]);
        bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context_request(&bad).is_err());
        // Truncated query.
        let p = meta_payload("", &["base:allocation"]);
        assert!(parse_meta_context_request(&p[..p.len() - 1]).is_err());
    }

    #[test]
    fn request_decoding() {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_FUA.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        b[8..16].copy_from_slice(&0xdead_beefu64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            decode_request(&b, false).unwrap(),
            Request {
                flags: 1,
                command: 1,
                handle: 0xdead_beef,
                offset: 4096,
                length: 512
            }
        );
        // A compact header where an extended one is due (and the reverse) is refused.
        assert!(decode_request(&b, true).is_err());
        b[0] = 0;
        assert!(decode_request(&b, false).is_err());

        let mut e = [0u8; 32];
        e[0..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        e[4..6].copy_from_slice(&CMD_FLAG_PAYLOAD_LEN.to_be_bytes());
        e[6..8].copy_from_slice(&CMD_WRITE.to_be_bytes());
        e[8..16].copy_from_slice(&7u64.to_be_bytes());
        e[16..24].copy_from_slice(&(1u64 << 40).to_be_bytes());
        e[24..32].copy_from_slice(&(5u64 << 32).to_be_bytes());
        let r = decode_request(&e, true).unwrap();
        assert_eq!(
            (r.flags, r.command, r.handle),
            (CMD_FLAG_PAYLOAD_LEN, CMD_WRITE, 7)
        );
        assert_eq!((r.offset, r.length), (1 << 40, 5 << 32));
        assert!(decode_request(&e, false).is_err());
        e[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        assert!(decode_request(&e, true).is_err());
    }

    #[test]
    fn reply_encodings() {
        let s = encode_simple_reply(5, EINVAL);
        assert_eq!(&s[0..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&s[4..8], &22u32.to_be_bytes());
        assert_eq!(&s[8..16], &5u64.to_be_bytes());

        let c = Chunks {
            extended: false,
            handle: 9,
            offset: 0,
        };
        let e = c.error(EIO, "boom");
        assert_eq!(e.len(), 20 + 6 + 4);
        assert_eq!(&e[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&e[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
        assert_eq!(&e[16..20], &10u32.to_be_bytes());
        assert_eq!(&e[20..24], &EIO.to_be_bytes());
        assert_eq!(&e[24..26], &4u16.to_be_bytes());

        let mut b = Vec::new();
        c.block_status(
            &mut b,
            REPLY_FLAG_DONE,
            1,
            &[(4096, STATE_HOLE | STATE_ZERO), (512, 0)],
        );
        assert_eq!(b.len(), 20 + 4 + 16);
        assert_eq!(&b[16..20], &20u32.to_be_bytes());

        let mut h = Vec::new();
        c.hole(&mut h, 0, 8192, 4096);
        assert_eq!(h.len(), 32);
        assert_eq!(&h[6..8], &REPLY_TYPE_OFFSET_HOLE.to_be_bytes());
    }

    #[test]
    fn extended_reply_encodings() {
        let c = Chunks {
            extended: true,
            handle: 3,
            offset: 1 << 33,
        };
        let n = c.none();
        assert_eq!(n.len(), 32);
        assert_eq!(&n[0..4], &EXTENDED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&n[4..6], &REPLY_FLAG_DONE.to_be_bytes());
        assert_eq!(&n[6..8], &REPLY_TYPE_NONE.to_be_bytes());
        assert_eq!(&n[8..16], &3u64.to_be_bytes());
        assert_eq!(&n[16..24], &(1u64 << 33).to_be_bytes());
        assert_eq!(&n[24..32], &0u64.to_be_bytes());

        // 64-bit extents: context id, count, then (length, flags) as two u64s.
        let mut b = Vec::new();
        c.block_status(
            &mut b,
            REPLY_FLAG_DONE,
            1,
            &[(5 << 32, STATE_HOLE | STATE_ZERO)],
        );
        assert_eq!(b.len(), 32 + 8 + 16);
        assert_eq!(&b[6..8], &REPLY_TYPE_BLOCK_STATUS_EXT.to_be_bytes());
        assert_eq!(&b[24..32], &24u64.to_be_bytes());
        assert_eq!(&b[32..36], &1u32.to_be_bytes());
        assert_eq!(&b[36..40], &1u32.to_be_bytes());
        assert_eq!(&b[40..48], &(5u64 << 32).to_be_bytes());
        assert_eq!(&b[48..56], &3u64.to_be_bytes());

        let e = c.error(EINVAL, "no");
        assert_eq!(e.len(), 32 + 6 + 2);
        assert_eq!(&e[24..32], &8u64.to_be_bytes());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_str("héllo", 2), "h");
        assert_eq!(truncate_str("abc", 10), "abc");
    }
}
