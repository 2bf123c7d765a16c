//! Fixed newstyle negotiation: greeting, client flags, option haggling.

use std::io::{self, Read, Write};

use tracing::{debug, warn};

use crate::proto::*;
use crate::server::ExportCtx;

/// Metadata context id handed out for `base:allocation`.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;
/// Metadata context id handed out for `qemu:allocation-depth`.
pub(crate) const ALLOCATION_DEPTH_ID: u32 = 2;

/// The metadata contexts a client selected (`NBD_OPT_SET_META_CONTEXT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MetaContexts {
    /// `base:allocation`.
    pub base_allocation: bool,
    /// `qemu:allocation-depth` (only when the server offers it).
    pub allocation_depth: bool,
}

impl MetaContexts {
    /// Whether any context is selected, so `NBD_CMD_BLOCK_STATUS` may be used.
    pub fn any(&self) -> bool {
        self.base_allocation || self.allocation_depth
    }

    /// What `queries` select, qemu's way: `base:allocation` and `qemu:allocation-depth` by
    /// name (the latter only if `offer_depth`); for a LIST, no query at all, or a namespace
    /// alone (`base:`, `qemu:`), also lists that namespace's contexts. Other names select
    /// nothing.
    fn select(queries: &[String], list: bool, offer_depth: bool) -> MetaContexts {
        if list && queries.is_empty() {
            return MetaContexts {
                base_allocation: true,
                allocation_depth: offer_depth,
            };
        }
        let mut m = MetaContexts::default();
        for q in queries {
            match q.as_str() {
                BASE_ALLOCATION => m.base_allocation = true,
                "base:" if list => m.base_allocation = true,
                ALLOCATION_DEPTH => m.allocation_depth = offer_depth,
                "qemu:" if list => m.allocation_depth |= offer_depth,
                _ => {}
            }
        }
        m
    }
}

/// Upper bound on options in one handshake. Real clients send fewer than ten;
/// this only stops a peer from keeping a connection in negotiation forever.
const MAX_OPTIONS: usize = 1024;

/// What the client and server agreed on, for the transmission phase.
#[derive(Debug, Clone)]
pub(crate) struct Negotiated {
    /// Structured replies were negotiated, or extended headers (which imply them).
    pub structured: bool,
    /// Extended headers were negotiated: 32-byte requests with 64-bit lengths, and every
    /// reply an extended chunk.
    pub extended: bool,
    /// The metadata contexts the client selected.
    pub meta: MetaContexts,
    /// Export size as advertised.
    pub size: u64,
    /// Transmission flags as advertised.
    pub flags: u16,
}

/// Mutable negotiation state while options are exchanged.
#[derive(Default)]
struct State {
    structured: bool,
    extended: bool,
    meta: MetaContexts,
}

impl State {
    fn negotiated(&self, size: u64, flags: u16) -> Negotiated {
        Negotiated {
            structured: self.structured || self.extended,
            extended: self.extended,
            meta: self.meta,
            size,
            flags,
        }
    }
}

enum Next {
    Continue,
    Abort,
    StartTls,
    Transmit(Negotiated),
}

/// How option haggling ended.
pub(crate) enum Outcome {
    /// Transmission starts with these settings.
    Transmit(Negotiated),
    /// The client ended negotiation cleanly with `NBD_OPT_ABORT`.
    Abort,
    /// `NBD_OPT_STARTTLS` was acknowledged: the caller runs the TLS handshake and then
    /// haggles again, over TLS, with [`options`] (nothing agreed before TLS survives it).
    StartTls,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Send the greeting and read the client's flags; returns whether the client asked for
/// `NBD_FLAG_C_NO_ZEROES`. Any error means the connection must be dropped.
pub(crate) fn greet<R: Read, W: Write>(r: &mut R, w: &mut W) -> io::Result<bool> {
    w.write_all(&encode_greeting())?;
    w.flush()?;

    let mut cf = [0u8; 4];
    r.read_exact(&mut cf)?;
    let client_flags = u32::from_be_bytes(cf);
    // The spec requires dropping clients that set flags we do not know
    // (this also catches most non-NBD garbage early).
    if client_flags & !KNOWN_CLIENT_FLAGS != 0 {
        return Err(invalid(format!("unknown client flags {client_flags:#x}")));
    }
    Ok(client_flags & FLAG_C_NO_ZEROES != 0)
}

/// Called once a client has picked the export (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`), before
/// the reply that starts transmission is written: the server takes a client slot there,
/// waiting for one if need be (and may then give the writer more time). An error ends the
/// connection.
pub(crate) type Admit<'a, W> = &'a mut dyn FnMut(&mut W) -> io::Result<()>;

/// Haggle over options until the client picks an export, aborts or starts TLS.
/// `tls_required` is set while TLS is configured but not yet running: then only
/// `NBD_OPT_STARTTLS` (and `NBD_OPT_ABORT`) are served, as the spec asks. Any error means
/// the connection must be dropped (hard disconnect).
pub(crate) fn options<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    ctx: &ExportCtx,
    no_zeroes: bool,
    tls_required: bool,
    admit: Admit<'_, W>,
) -> io::Result<Outcome> {
    let mut st = State::default();
    for _ in 0..MAX_OPTIONS {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut hdr)?;
        let h = decode_option_header(&hdr).map_err(|e| invalid(e.to_string()))?;
        if h.length > MAX_OPTION_LEN {
            // The payload cannot be skipped without reading an arbitrary
            // amount of data, so say why and hang up.
            if h.option != OPT_EXPORT_NAME {
                let _ = w.write_all(&encode_option_reply(
                    h.option,
                    REP_ERR_TOO_BIG,
                    b"option data too large",
                ));
            }
            return Err(invalid(format!(
                "option {} length {} too large",
                h.option, h.length
            )));
        }
        // Bounded by MAX_OPTION_LEN above.
        let mut data = vec![0u8; h.length as usize];
        r.read_exact(&mut data)?;
        debug!(option = h.option, length = h.length, "handshake option");

        let next = if tls_required {
            before_tls(h.option, &data, w)?
        } else {
            handle_option(h.option, data, &mut st, w, ctx, no_zeroes, admit)?
        };
        match next {
            Next::Continue => {}
            Next::Abort => return Ok(Outcome::Abort),
            Next::StartTls => {
                w.flush()?;
                return Ok(Outcome::StartTls);
            }
            Next::Transmit(n) => {
                w.flush()?;
                return Ok(Outcome::Transmit(n));
            }
        }
    }
    Err(invalid("too many options during negotiation"))
}

/// An option received while TLS is required and not yet running.
fn before_tls<W: Write>(option: u32, data: &[u8], w: &mut W) -> io::Result<Next> {
    match option {
        OPT_STARTTLS => {
            if !data.is_empty() {
                // A client that cannot even start TLS correctly is not worth keeping.
                return Err(invalid("NBD_OPT_STARTTLS with data"));
            }
            w.write_all(&encode_option_reply(option, REP_ACK, &[]))?;
            Ok(Next::StartTls)
        }
        // No way to send an error: the session ends.
        OPT_EXPORT_NAME => Err(invalid("NBD_OPT_EXPORT_NAME before TLS")),
        _ => {
            // The client may hang up right after an ABORT; the reply is best effort then.
            let r = w.write_all(&encode_option_reply(
                option,
                REP_ERR_TLS_REQD,
                b"TLS is required: send NBD_OPT_STARTTLS first",
            ));
            if option == OPT_ABORT {
                let _ = w.flush();
                return Ok(Next::Abort);
            }
            r?;
            Ok(Next::Continue)
        }
    }
}

fn handle_option<W: Write>(
    option: u32,
    data: Vec<u8>,
    st: &mut State,
    w: &mut W,
    ctx: &ExportCtx,
    no_zeroes: bool,
    admit: Admit<'_, W>,
) -> io::Result<Next> {
    let reply = |w: &mut W, ty: u32, msg: &str| -> io::Result<Next> {
        w.write_all(&encode_option_reply(option, ty, msg.as_bytes()))?;
        Ok(Next::Continue)
    };

    match option {
        OPT_EXPORT_NAME => {
            // No way to report errors here: an unknown name ends the session.
            if st.extended {
                // Its reply cannot say that transmission uses extended headers.
                return Err(invalid(
                    "NBD_OPT_EXPORT_NAME after extended headers were negotiated",
                ));
            }
            let name = String::from_utf8(data).map_err(|_| invalid("export name is not UTF-8"))?;
            if !ctx.name_matches(&name) {
                warn!(name = %name, "client asked for an unknown export");
                return Err(invalid(format!("unknown export {name:?}")));
            }
            admit(w)?;
            let size = ctx.export.size();
            let flags = ctx.transmission_flags(st.structured);
            w.write_all(&encode_export_name_reply(size, flags, no_zeroes))?;
            Ok(Next::Transmit(st.negotiated(size, flags)))
        }
        OPT_ABORT => {
            // The client may already have closed; the ack is best effort.
            let _ = w.write_all(&encode_option_reply(option, REP_ACK, &[]));
            let _ = w.flush();
            Ok(Next::Abort)
        }
        OPT_LIST => {
            if !data.is_empty() {
                return reply(w, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
            }
            let mut out = Vec::new();
            put_option_reply(
                &mut out,
                option,
                REP_SERVER,
                &encode_rep_server(&ctx.name, ctx.description.as_deref()),
            );
            put_option_reply(&mut out, option, REP_ACK, &[]);
            w.write_all(&out)?;
            Ok(Next::Continue)
        }
        OPT_STARTTLS => {
            if !data.is_empty() {
                return reply(w, REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data");
            }
            if ctx.tls.is_some() {
                reply(w, REP_ERR_INVALID, "TLS is already running")
            } else {
                reply(w, REP_ERR_POLICY, "TLS is not configured on this server")
            }
        }
        OPT_INFO | OPT_GO => {
            let req = match parse_info_request(&data) {
                Ok(r) => r,
                Err(e) => return reply(w, REP_ERR_INVALID, &e.to_string()),
            };
            if !ctx.name_matches(&req.name) {
                return reply(
                    w,
                    REP_ERR_UNKNOWN,
                    &format!("export {:?} not found", truncate_str(&req.name, 256)),
                );
            }
            let size = ctx.export.size();
            let flags = ctx.transmission_flags(st.structured || st.extended);
            let mut out = Vec::new();
            put_option_reply(&mut out, option, REP_INFO, &encode_info_export(size, flags));
            if req.requests.contains(&INFO_NAME) {
                put_option_reply(
                    &mut out,
                    option,
                    REP_INFO,
                    &encode_info_string(INFO_NAME, &ctx.name),
                );
            }
            if let (true, Some(d)) = (req.requests.contains(&INFO_DESCRIPTION), &ctx.description) {
                put_option_reply(
                    &mut out,
                    option,
                    REP_INFO,
                    &encode_info_string(INFO_DESCRIPTION, d),
                );
            }
            // Always sent (the spec allows unrequested info). We accept any
            // alignment, so a client ignoring it loses nothing.
            let min = if size.is_multiple_of(512) { 512 } else { 1 };
            put_option_reply(
                &mut out,
                option,
                REP_INFO,
                &encode_info_block_size(min, PREFERRED_BLOCK, MAX_PAYLOAD),
            );
            put_option_reply(&mut out, option, REP_ACK, &[]);
            if option == OPT_GO {
                admit(w)?;
            }
            w.write_all(&out)?;
            if option == OPT_GO {
                Ok(Next::Transmit(st.negotiated(size, flags)))
            } else {
                Ok(Next::Continue)
            }
        }
        OPT_STRUCTURED_REPLY => {
            if !data.is_empty() {
                return reply(w, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
            }
            if st.extended {
                return reply(
                    w,
                    REP_ERR_EXT_HEADER_REQD,
                    "extended headers are already negotiated",
                );
            }
            st.structured = true;
            reply(w, REP_ACK, "")
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let set = option == OPT_SET_META_CONTEXT;
            if set {
                // SET replaces the selection even when it fails.
                st.meta = MetaContexts::default();
            }
            if !st.structured && !st.extended {
                return reply(
                    w,
                    REP_ERR_INVALID,
                    "structured replies or extended headers must be negotiated first",
                );
            }
            let req = match parse_meta_context_request(&data) {
                Ok(r) => r,
                Err(e) => return reply(w, REP_ERR_INVALID, &e.to_string()),
            };
            if !ctx.name_matches(&req.export_name) {
                return reply(
                    w,
                    REP_ERR_UNKNOWN,
                    &format!("export {:?} not found", truncate_str(&req.export_name, 256)),
                );
            }
            let selected = MetaContexts::select(&req.queries, !set, ctx.allocation_depth);
            let mut out = Vec::new();
            // LIST replies carry a reserved id of zero.
            for (on, id, name) in [
                (
                    selected.base_allocation,
                    BASE_ALLOCATION_ID,
                    BASE_ALLOCATION,
                ),
                (
                    selected.allocation_depth,
                    ALLOCATION_DEPTH_ID,
                    ALLOCATION_DEPTH,
                ),
            ] {
                if on {
                    let id = if set { id } else { 0 };
                    put_option_reply(
                        &mut out,
                        option,
                        REP_META_CONTEXT,
                        &encode_rep_meta_context(id, name),
                    );
                }
            }
            if set {
                st.meta = selected;
            }
            put_option_reply(&mut out, option, REP_ACK, &[]);
            w.write_all(&out)?;
            Ok(Next::Continue)
        }
        OPT_EXTENDED_HEADERS => {
            if !data.is_empty() {
                return reply(w, REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS takes no data");
            }
            if st.extended {
                return reply(
                    w,
                    REP_ERR_INVALID,
                    "extended headers are already negotiated",
                );
            }
            st.extended = true;
            reply(w, REP_ACK, "")
        }
        _ => reply(w, REP_ERR_UNSUP, "unsupported option"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(queries: &[&str], list: bool, offer: bool) -> (bool, bool) {
        let q: Vec<String> = queries.iter().map(|s| s.to_string()).collect();
        let m = MetaContexts::select(&q, list, offer);
        (m.base_allocation, m.allocation_depth)
    }

    /// qemu's rules: names select; for a LIST, no query or a bare namespace lists it; the
    /// depth context only when offered; unknown names select nothing.
    #[test]
    fn meta_context_selection_as_qemu() {
        assert_eq!(sel(&[], true, true), (true, true));
        assert_eq!(sel(&[], true, false), (true, false));
        assert_eq!(sel(&[], false, true), (false, false));
        assert_eq!(sel(&["base:allocation"], false, true), (true, false));
        assert_eq!(sel(&["qemu:allocation-depth"], false, true), (false, true));
        assert_eq!(
            sel(&["qemu:allocation-depth"], false, false),
            (false, false)
        );
        assert_eq!(
            sel(&["qemu:allocation-depth", "base:allocation"], false, true),
            (true, true)
        );
        assert_eq!(sel(&["base:", "qemu:"], false, true), (false, false));
        assert_eq!(sel(&["base:", "qemu:"], true, true), (true, true));
        assert_eq!(
            sel(&["qemu:dirty-bitmap:x", "other:x"], true, true),
            (false, false)
        );
    }
}
