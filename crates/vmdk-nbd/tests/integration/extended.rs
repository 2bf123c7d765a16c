//! Extended headers (`NBD_OPT_EXTENDED_HEADERS`) with a raw client: negotiation rules,
//! 32-byte requests, extended reply chunks, 64-bit block status, `PAYLOAD_LEN`, and
//! requests of more than 4 GiB in one go.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::common::*;
use vmdk_nbd::{BlockExport, BlockStatus, ServerConfig};

const SIZE: u64 = 4 << 20;
const GIB: u64 = 1 << 30;

fn config() -> ServerConfig {
    ServerConfig {
        export_name: "disk".into(),
        persistent: true,
        max_clients: 4,
        ..Default::default()
    }
}

/// Negotiate extended headers and base:allocation, then GO. Returns (flags, context id).
fn go_extended(c: &mut RawClient) -> (u16, u32) {
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, &[])[0].0, REP_ACK);
    let r = c.option(
        OPT_SET_META_CONTEXT,
        &meta_payload("disk", &["base:allocation"]),
    );
    assert_eq!(r[0].0, REP_META_CONTEXT, "{r:?}");
    let ctx = be32(&r[0].1);
    let r = c.option(OPT_GO, &info_payload("disk", &[]));
    assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
    let export = r
        .iter()
        .find(|(t, d)| *t == REP_INFO && be16(d) == 0)
        .unwrap();
    (be16(&export.1[10..12]), ctx)
}

/// The one chunk of a reply, checking it is an extended chunk for `handle` at `offset`.
fn one_chunk(c: &mut RawClient, handle: u64, offset: u64) -> Chunk {
    let mut ch = c.chunks();
    assert_eq!(ch.len(), 1, "{ch:?}");
    let ch = ch.remove(0);
    assert_eq!((ch.handle, ch.offset), (handle, Some(offset)), "{ch:?}");
    ch
}

/// (length, flags) descriptors of a BLOCK_STATUS_EXT payload.
fn ext_extents(ch: &Chunk, ctx: u32) -> Vec<(u64, u64)> {
    assert_eq!(ch.ty, REPLY_TYPE_BLOCK_STATUS_EXT, "{ch:?}");
    assert_eq!(be32(&ch.payload), ctx);
    let count = be32(&ch.payload[4..]) as usize;
    assert_eq!(ch.payload.len(), 8 + 16 * count);
    (0..count)
        .map(|i| {
            let d = &ch.payload[8 + 16 * i..];
            (be64(d), be64(&d[8..]))
        })
        .collect()
}

#[test]
fn negotiation_rules() {
    let srv = TestServer::tcp(MemExport::new(SIZE), config());

    // Twice is invalid; structured replies after it are refused as the spec says.
    let mut c = RawClient::start(srv.socket_addr());
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, b"x")[0].0, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, &[])[0].0, REP_ACK);
    assert_eq!(c.option(OPT_EXTENDED_HEADERS, &[])[0].0, REP_ERR_INVALID);
    assert_eq!(
        c.option(OPT_STRUCTURED_REPLY, &[])[0].0,
        REP_ERR_EXT_HEADER_REQD
    );
    // Meta contexts need no structured replies once extended headers are on.
    let r = c.option(OPT_LIST_META_CONTEXT, &meta_payload("disk", &[]));
    assert_eq!(r[0].0, REP_META_CONTEXT);
    // EXPORT_NAME cannot say that transmission uses extended headers: the session ends.
    c.send_option(OPT_EXPORT_NAME, b"disk");
    c.expect_closed();

    // Structured replies first, then extended headers: allowed, and extended wins.
    let mut c = RawClient::start(srv.socket_addr());
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[])[0].0, REP_ACK);
    let (flags, _) = go_extended(&mut c);
    assert_ne!(flags & TF_SEND_DF, 0, "DF comes with extended headers");
    c.ext_request(0, CMD_FLUSH, 9, 0, 0, &[]);
    let ch = one_chunk(&mut c, 9, 0);
    assert_eq!(ch.ty, REPLY_TYPE_NONE);
    assert!(ch.done());
    c.ext_request(0, CMD_DISC, 10, 0, 0, &[]);
    c.expect_closed();
}

#[test]
fn commands_with_extended_headers() {
    let export = MemExport::new(SIZE);
    let srv = TestServer::tcp(export.clone(), config());
    let mut c = RawClient::start(srv.socket_addr());
    let (_, ctx) = go_extended(&mut c);

    // WRITE with PAYLOAD_LEN, as the spec asks of clients; and without, as qemu's server
    // also accepts.
    let data = pattern(8192, 1);
    c.ext_request(FLAG_PAYLOAD_LEN, CMD_WRITE, 1, 4096, 8192, &data);
    let ch = one_chunk(&mut c, 1, 4096);
    assert_eq!((ch.ty, ch.done()), (REPLY_TYPE_NONE, true));
    let more = pattern(4096, 2);
    c.ext_request(FLAG_FUA, CMD_WRITE, 2, 65536, 4096, &more);
    assert_eq!(one_chunk(&mut c, 2, 65536).ty, REPLY_TYPE_NONE);
    let snap = export.snapshot();
    assert_eq!(&snap[4096..12288], &data[..]);
    assert_eq!(&snap[65536..69632], &more[..]);

    // A sparse READ: data and hole chunks, every one an extended chunk for the request.
    c.ext_request(0, CMD_READ, 3, 0, 131072, &[]);
    let chunks = c.chunks();
    assert!(chunks
        .iter()
        .all(|ch| ch.handle == 3 && ch.offset == Some(0)));
    let (bytes, holes) = assemble_read(&chunks, 0, 131072);
    assert_eq!(bytes, &snap[..131072]);
    assert!(holes > 0, "the unwritten stretches are sent as holes");

    // Block status: 64-bit descriptors.
    c.ext_request(0, CMD_BLOCK_STATUS, 4, 0, SIZE, &[]);
    let ch = one_chunk(&mut c, 4, 0);
    let ext = ext_extents(&ch, ctx);
    assert_eq!(
        ext[..4],
        [(4096, 3), (8192, 0), (65536 - 12288, 3), (4096, 0)],
        "{ext:?}"
    );
    assert_eq!(ext.iter().map(|e| e.0).sum::<u64>(), SIZE);

    // Zero and trim answer NONE chunks; the data is gone.
    c.ext_request(0, CMD_WRITE_ZEROES, 5, 4096, 4096, &[]);
    assert_eq!(one_chunk(&mut c, 5, 4096).ty, REPLY_TYPE_NONE);
    c.ext_request(0, CMD_TRIM, 6, 65536, 4096, &[]);
    assert_eq!(one_chunk(&mut c, 6, 65536).ty, REPLY_TYPE_NONE);
    let snap = export.snapshot();
    assert!(snap[4096..8192].iter().all(|&b| b == 0));
    assert_eq!(&snap[8192..12288], &data[4096..]);

    // Errors are extended error chunks.
    c.ext_request(0, CMD_READ, 7, SIZE - 512, 1024, &[]);
    assert_eq!(one_chunk(&mut c, 7, SIZE - 512).error(), EINVAL);
    // A payload on a command that takes none is read and refused; the stream stays in
    // step.
    c.ext_request(FLAG_PAYLOAD_LEN, CMD_FLUSH, 8, 0, 8, &[0u8; 8]);
    assert_eq!(one_chunk(&mut c, 8, 0).error(), EINVAL);
    c.ext_request(FLAG_DF, CMD_READ, 9, 8192, 4096, &[]);
    let ch = one_chunk(&mut c, 9, 8192);
    assert_eq!(ch.ty, REPLY_TYPE_OFFSET_DATA);
    assert_eq!(&ch.payload[8..], &data[4096..]);

    // A compact request where an extended one is due (padded to an extended header's
    // size, so the server has a whole header to judge): the stream is lost, the server
    // hangs up.
    let mut compact = request_bytes(0, CMD_FLUSH, 10, 0, 0);
    compact.extend_from_slice(&[0u8; 4]);
    c.s.write_all(&compact).unwrap();
    c.expect_closed();
}

/// An export of `size` bytes of zeros that records the zero and trim requests it gets.
struct HoleExport {
    size: u64,
    calls: Mutex<Vec<(&'static str, u64, u64)>>,
}

impl BlockExport for HoleExport {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, buf: &mut [u8], _offset: u64) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::other("not written in this test"))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> io::Result<()> {
        self.calls.lock().unwrap().push(("zero", offset, len));
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.calls.lock().unwrap().push(("trim", offset, len));
        Ok(())
    }
    fn can_trim(&self) -> bool {
        true
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<BlockStatus>> {
        Ok(vec![BlockStatus {
            length: len.min(self.size - offset),
            hole: true,
            zero: true,
        }])
    }
}

#[test]
fn requests_beyond_four_gib() {
    let export = Arc::new(HoleExport {
        size: 8 * GIB,
        calls: Mutex::new(Vec::new()),
    });
    let srv = TestServer::tcp(export.clone(), config());
    let mut c = RawClient::start(srv.socket_addr());
    let (_, ctx) = go_extended(&mut c);

    // One descriptor of 6 GiB: no 32-bit length could say it.
    c.ext_request(0, CMD_BLOCK_STATUS, 1, GIB, 6 * GIB, &[]);
    let ch = one_chunk(&mut c, 1, GIB);
    assert_eq!(ext_extents(&ch, ctx), [(6 * GIB, 3)]);

    c.ext_request(0, CMD_WRITE_ZEROES, 2, 0, 5 * GIB, &[]);
    assert_eq!(one_chunk(&mut c, 2, 0).ty, REPLY_TYPE_NONE);
    c.ext_request(0, CMD_TRIM, 3, 3 * GIB, 5 * GIB, &[]);
    assert_eq!(one_chunk(&mut c, 3, 3 * GIB).ty, REPLY_TYPE_NONE);
    // Past the end by one byte: refused, and the export never sees it.
    c.ext_request(0, CMD_TRIM, 4, 3 * GIB, 5 * GIB + 1, &[]);
    assert_eq!(one_chunk(&mut c, 4, 3 * GIB).error(), EINVAL);
    // A read beyond the maximum payload is refused without being allocated.
    c.ext_request(0, CMD_READ, 5, 0, 5 * GIB, &[]);
    assert_eq!(one_chunk(&mut c, 5, 0).error(), EINVAL);
    // So is a write payload beyond it: the stream cannot be followed, the server hangs up.
    c.ext_request(FLAG_PAYLOAD_LEN, CMD_WRITE, 6, 0, 5 * GIB, &[]);
    c.expect_closed();

    assert_eq!(
        *export.calls.lock().unwrap(),
        [("zero", 0, 5 * GIB), ("trim", 3 * GIB, 5 * GIB)]
    );

    // Structured-only clients still get 32-bit BLOCK_STATUS over the same export.
    let mut c = RawClient::start(srv.socket_addr());
    let (_, _, ctx) = c.go("disk", true, true);
    c.request(0, CMD_BLOCK_STATUS, 7, 0, u32::MAX);
    let ch = c.chunks();
    assert_eq!(ch[0].ty, REPLY_TYPE_BLOCK_STATUS);
    assert_eq!(be32(&ch[0].payload), ctx.unwrap());
    assert_eq!(be32(&ch[0].payload[4..]), u32::MAX);
}
