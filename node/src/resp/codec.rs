//! The RESP wire format: requests in, replies out, as a `tokio_util` codec.
//!
//! Requests are what Redis itself accepts from clients: an array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) or an inline command (`PING\r\n`). Like Redis'
//! own request parser this one rejects anything else (nested arrays, other types)
//! instead of decoding general RESP3: a general decoder would accept frames no client
//! sends, with unbounded nesting. Every length is bounded before a byte is buffered for
//! it, so a peer cannot make the node hold more than [`Limits::max_request`] bytes or
//! build more than [`Limits::max_args`] arguments.
//!
//! [`Decoder::decode`] distinguishes *incomplete* input (`Ok(None)`: wait for more) from
//! *invalid* input (`Err(CodecError::Protocol)`: the server answers with a protocol
//! error and closes the connection, as Redis does).
//!
//! Replies are a small [`Reply`] tree encoded as RESP2 or, after `HELLO 3`, RESP3
//! ([`RespCodec::set_protocol`]): they differ only in nulls, maps, doubles and booleans.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bounds on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request in bytes: everything it takes on the wire, headers included.
    pub max_request: usize,
    /// Most arguments in one request (Redis: 1,048,576).
    pub max_args: usize,
    /// Longest header or inline line (Redis: 64 KiB).
    pub max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request: 16 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_line: 64 * 1024,
        }
    }
}

impl Limits {
    /// The limits before `AUTH` (when a password is set), as Redis bounds unauthenticated
    /// input (CVE-2021-32675): 16 KiB, 10 arguments — enough for
    /// `HELLO 3 AUTH user password SETNAME name`.
    pub fn unauthenticated(self) -> Limits {
        Limits {
            max_request: self.max_request.min(16 * 1024),
            max_args: self.max_args.min(10),
            max_line: self.max_line.min(16 * 1024),
        }
    }
}

/// A codec failure: bad input, or the socket.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The client sent something that is not a valid request; the connection is closed
    /// after the error reply.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One reply. RESP2 and RESP3 encode it differently ([`RespCodec::set_protocol`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`.
    Simple(&'static str),
    /// `-ERR ...` (the text includes the error code, e.g. `ERR`, `WRONGTYPE`).
    Error(String),
    /// `:42`.
    Int(i64),
    /// A bulk string.
    Bulk(Bytes),
    /// The null reply (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// The null array (`*-1` in RESP2, `_` in RESP3).
    NullArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3 `%`; a flat array of keys and values in RESP2).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An error reply; `msg` starts with its code (`ERR ...`).
    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// A bulk string or null.
    pub fn opt_bulk(b: Option<Bytes>) -> Reply {
        b.map_or(Reply::Null, Reply::Bulk)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// How far the request at the start of the buffer has been parsed: parsing resumes
/// here when more bytes arrive, so the cost of a request is linear in its size however
/// it is split into reads (Redis' own parser keeps the same state per client).
#[derive(Debug, Clone, Default)]
struct Partial {
    /// The multibulk count, once its header line is parsed.
    count: Option<usize>,
    /// The arguments parsed so far: (offset, length) in the buffer.
    args: Vec<(usize, usize)>,
    /// Where parsing resumes (the next header, or the pending bulk's header).
    pos: usize,
    /// How far the current line was searched for its end.
    scanned: usize,
}

/// The server side of RESP: decodes requests (`Vec<Bytes>`: command and arguments),
/// encodes [`Reply`]s.
#[derive(Debug, Clone)]
pub struct RespCodec {
    limits: Limits,
    protocol: u8,
    partial: Partial,
}

impl RespCodec {
    /// A codec speaking RESP2 until [`RespCodec::set_protocol`].
    pub fn new(limits: Limits) -> Self {
        RespCodec {
            limits,
            protocol: 2,
            partial: Partial::default(),
        }
    }

    /// Switches the reply encoding (2 or 3), as `HELLO` does.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.protocol = protocol;
    }

    /// The reply encoding in use.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Changes the request limits (from the next request on): wider once the client
    /// authenticated.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }
}

fn protocol(msg: impl Into<String>) -> CodecError {
    CodecError::Protocol(msg.into())
}

fn too_large(limits: &Limits) -> CodecError {
    protocol(format!("request larger than {} bytes", limits.max_request))
}

/// Finds `\r\n` in the line starting at `from`, resuming the search at `*scanned`;
/// `Ok(None)` when not there yet, an error when the line would exceed `max` bytes.
fn line_end(
    buf: &[u8],
    from: usize,
    scanned: &mut usize,
    max: usize,
    what: &str,
) -> Result<Option<usize>, CodecError> {
    let start = (*scanned).max(from);
    let limit = buf.len().min(from.saturating_add(max + 2));
    if start < limit {
        if let Some(p) = buf[start..limit].windows(2).position(|w| w == b"\r\n") {
            *scanned = 0;
            return Ok(Some(start + p));
        }
    }
    if limit - from >= max + 2 {
        return Err(protocol(format!("too big {what}")));
    }
    // A CR at the end may be the first half of the CRLF: search it again.
    *scanned = limit.saturating_sub(1).max(from);
    Ok(None)
}

fn parse_len(digits: &[u8], what: &str) -> Result<i64, CodecError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| protocol(format!("invalid {what}")))
}

/// A parsed multibulk request: the (offset, length) of each argument in the buffer, and
/// the bytes it took.
pub type Parsed = (Vec<(usize, usize)>, usize);

/// Parses one multibulk request at the start of `buf`: `Ok(Some((args, consumed)))`,
/// `Ok(None)` when incomplete. Pure; does not consume.
pub fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, CodecError> {
    parse_resumable(buf, limits, &mut Partial::default())
}

/// [`parse_multibulk`] resuming from (and saving its progress in) `st`.
fn parse_resumable(
    buf: &[u8],
    limits: &Limits,
    st: &mut Partial,
) -> Result<Option<Parsed>, CodecError> {
    debug_assert_eq!(buf.first(), Some(&b'*'));
    let n = match st.count {
        Some(n) => n,
        None => {
            let max = limits.max_line.min(limits.max_request);
            let Some(end) = line_end(buf, 1, &mut st.scanned, max, "mbulk count string")? else {
                return Ok(None);
            };
            let n = parse_len(&buf[1..end], "multibulk length")?;
            if n > limits.max_args as i64 {
                return Err(protocol("invalid multibulk length"));
            }
            let n = n.max(0) as usize;
            st.count = Some(n);
            st.pos = end + 2;
            st.args = Vec::with_capacity(n.min(64));
            n
        }
    };
    while st.args.len() < n {
        let pos = st.pos;
        let Some(&first) = buf.get(pos) else {
            return Ok(None);
        };
        if first != b'$' {
            return Err(protocol(format!(
                "expected '$', got '{}'",
                (first as char).escape_default()
            )));
        }
        // Header bytes count toward the request's size like its bodies do.
        let room = limits.max_request.saturating_sub(pos + 1);
        let max = limits.max_line.min(room);
        let end = match line_end(buf, pos + 1, &mut st.scanned, max, "bulk count string") {
            Ok(Some(end)) => end,
            Ok(None) => return Ok(None),
            Err(_) if room < limits.max_line => return Err(too_large(limits)),
            Err(e) => return Err(e),
        };
        let len = parse_len(&buf[pos + 1..end], "bulk length")?;
        if len < 0 {
            return Err(protocol("invalid bulk length"));
        }
        let start = end + 2;
        let Some(stop) = start
            .checked_add(len as usize)
            .and_then(|s| s.checked_add(2))
            .filter(|s| *s <= limits.max_request)
        else {
            return Err(too_large(limits));
        };
        if buf.len() < stop {
            return Ok(None);
        }
        if &buf[stop - 2..stop] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        st.args.push((start, len as usize));
        st.pos = stop;
    }
    let consumed = st.pos;
    let args = std::mem::take(&mut st.args);
    *st = Partial::default();
    Ok(Some((args, consumed)))
}

impl Decoder for RespCodec {
    type Item = Vec<Bytes>;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Vec<Bytes>>, CodecError> {
        loop {
            let Some(&first) = src.first() else {
                return Ok(None);
            };
            if first == b'*' {
                let parsed = parse_resumable(src, &self.limits, &mut self.partial);
                let Some((args, consumed)) = parsed.inspect_err(|_| {
                    self.partial = Partial::default();
                })?
                else {
                    return Ok(None);
                };
                let frame = src.split_to(consumed).freeze();
                if args.is_empty() {
                    continue; // `*0` / `*-1`: Redis ignores it
                }
                return Ok(Some(
                    args.into_iter()
                        .map(|(s, l)| frame.slice(s..s + l))
                        .collect(),
                ));
            }
            // Inline command: one line, arguments separated by spaces.
            let max = self.limits.max_line.min(self.limits.max_request);
            let from = self.partial.scanned;
            let window = &src[from..src.len().min(max + 1)];
            let Some(nl) = window.iter().position(|&b| b == b'\n').map(|p| from + p) else {
                if src.len() > max {
                    self.partial = Partial::default();
                    return Err(protocol("too big inline request"));
                }
                self.partial.scanned = src.len();
                return Ok(None);
            };
            self.partial = Partial::default();
            let line = src.split_to(nl + 1).freeze();
            let text = line.slice(..line.len() - 1);
            let text = text
                .strip_suffix(b"\r")
                .map(|t| text.slice(..t.len()))
                .unwrap_or(text);
            if text.contains(&b'"') || text.contains(&b'\'') {
                return Err(protocol("quoted inline arguments are not supported"));
            }
            let args: Vec<Bytes> = text
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|a| !a.is_empty())
                .map(|a| {
                    let off = a.as_ptr() as usize - text.as_ptr() as usize;
                    text.slice(off..off + a.len())
                })
                .collect();
            if args.len() > self.limits.max_args {
                return Err(protocol("invalid multibulk length"));
            }
            if args.is_empty() {
                continue; // empty line
            }
            return Ok(Some(args));
        }
    }
}

fn put_header(dst: &mut BytesMut, tag: u8, n: i64) {
    dst.put_u8(tag);
    dst.put_slice(itoa(n).as_bytes());
    dst.put_slice(b"\r\n");
}

fn itoa(n: i64) -> String {
    n.to_string()
}

impl RespCodec {
    fn encode_reply(&self, r: &Reply, dst: &mut BytesMut) {
        match r {
            Reply::Simple(s) => {
                dst.put_u8(b'+');
                dst.put_slice(s.as_bytes());
                dst.put_slice(b"\r\n");
            }
            Reply::Error(e) => {
                dst.put_u8(b'-');
                // An error line cannot carry CR or LF.
                for b in e.bytes() {
                    dst.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
                }
                dst.put_slice(b"\r\n");
            }
            Reply::Int(n) => put_header(dst, b':', *n),
            Reply::Bulk(b) => {
                put_header(dst, b'$', b.len() as i64);
                dst.put_slice(b);
                dst.put_slice(b"\r\n");
            }
            Reply::Null if self.protocol >= 3 => dst.put_slice(b"_\r\n"),
            Reply::Null => dst.put_slice(b"$-1\r\n"),
            Reply::NullArray if self.protocol >= 3 => dst.put_slice(b"_\r\n"),
            Reply::NullArray => dst.put_slice(b"*-1\r\n"),
            Reply::Array(items) => {
                put_header(dst, b'*', items.len() as i64);
                for i in items {
                    self.encode_reply(i, dst);
                }
            }
            Reply::Map(pairs) => {
                if self.protocol >= 3 {
                    put_header(dst, b'%', pairs.len() as i64);
                } else {
                    put_header(dst, b'*', 2 * pairs.len() as i64);
                }
                for (k, v) in pairs {
                    self.encode_reply(k, dst);
                    self.encode_reply(v, dst);
                }
            }
        }
    }
}

impl Encoder<Reply> for RespCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Reply, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_reply(&item, dst);
        Ok(())
    }
}

/// Encodes one reply to bytes (tests, and callers without a `Framed`).
pub fn encode(reply: &Reply, protocol: u8) -> Bytes {
    let mut c = RespCodec::new(Limits::default());
    c.set_protocol(protocol);
    let mut b = BytesMut::new();
    c.encode_reply(reply, &mut b);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limits: Limits) -> Result<Vec<Vec<Bytes>>, CodecError> {
        let mut c = RespCodec::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = c.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    fn strs(v: &[Bytes]) -> Vec<&[u8]> {
        v.iter().map(|b| b.as_ref()).collect()
    }

    #[test]
    fn multibulk_and_inline_and_pipelining() {
        let got = decode_all(
            b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n*0\r\nPING\r\n\r\n  SET a  b\n",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(strs(&got[0]), vec![&b"GET"[..], b"k\r\n"]);
        assert_eq!(strs(&got[1]), vec![&b"PING"[..]]);
        assert_eq!(strs(&got[2]), vec![&b"SET"[..], b"a", b"b"]);
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete_not_invalid() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        for cut in 0..req.len() {
            let mut c = RespCodec::new(Limits::default());
            let mut buf = BytesMut::from(&req[..cut]);
            assert!(c.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
        }
        let mut c = RespCodec::new(Limits::default());
        let mut buf = BytesMut::from(&req[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().len(), 3);
        assert!(buf.is_empty());
    }

    #[test]
    fn invalid_input_is_a_protocol_error() {
        for bad in [
            &b"*1\r\n:5\r\n"[..],
            b"*1\r\n$x\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"*z\r\n",
            b"*1\r\n*1\r\n$1\r\na\r\n",
            b"PING \"quoted\"\r\n",
        ] {
            assert!(
                matches!(
                    decode_all(bad, Limits::default()),
                    Err(CodecError::Protocol(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let small = Limits {
            max_request: 10,
            max_args: 2,
            max_line: 8,
        };
        // A declared 1 GB bulk is refused at once, not waited for.
        assert!(decode_all(b"*1\r\n$1000000000\r\n", small).is_err());
        assert!(decode_all(b"*3\r\n", small).is_err());
        assert!(decode_all(b"*1\r\n$123456789012\r\n", small).is_err());
        // A header or inline line longer than max_line with no CRLF yet.
        assert!(decode_all(b"*1111111111111", small).is_err());
        assert!(decode_all(b"PINGPINGPINGPING", small).is_err());
        // Within the limits: fine. Header bytes count: the same 26-byte request is too
        // large for a 25-byte limit.
        let req = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n";
        let fits = Limits {
            max_request: req.len(),
            ..small
        };
        assert_eq!(decode_all(req, fits).unwrap().len(), 1);
        let short = Limits {
            max_request: req.len() - 1,
            ..small
        };
        assert!(decode_all(req, short).is_err());
        // Zero-padded lengths are header bytes too: refused once past the limit.
        let mut padded = b"*1\r\n$".to_vec();
        padded.extend(std::iter::repeat_n(b'0', 20_000));
        padded.extend(b"1\r\na\r\n");
        let pre_auth = Limits::default().unauthenticated();
        assert!(decode_all(&padded, pre_auth).is_err());
        assert!(
            decode_all(&cmd_of(11), pre_auth).is_err(),
            "11 arguments before AUTH"
        );
        assert_eq!(decode_all(&cmd_of(10), pre_auth).unwrap().len(), 1);
    }

    fn cmd_of(n: usize) -> Vec<u8> {
        let mut out = format!("*{n}\r\n").into_bytes();
        for _ in 0..n {
            out.extend(b"$1\r\nx\r\n");
        }
        out
    }

    #[test]
    fn parsing_resumes_where_it_stopped() {
        // Pipelined requests fed one byte at a time decode exactly as fed at once, and
        // the parse state carries across reads (no request is parsed twice).
        let mut input = Vec::new();
        input.extend(cmd_of(300));
        input.extend(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$12\r\nhello\r\nworld\r\n");
        input.extend(b"PING\r\n");
        let whole = decode_all(&input, Limits::default()).unwrap();
        let mut c = RespCodec::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &input {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = c.decode(&mut buf).unwrap() {
                got.push(f);
            }
            if !got.is_empty() && got.len() < 3 && !buf.is_empty() && buf[0] == b'*' {
                assert!(c.partial.pos <= buf.len(), "resume point inside the buffer");
            }
        }
        assert_eq!(got, whole);
        assert_eq!(got.len(), 3);
        assert_eq!(strs(&got[1]), vec![&b"SET"[..], b"k", b"hello\r\nworld"]);
    }

    #[test]
    fn replies_in_resp2_and_resp3() {
        let map = Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]);
        assert_eq!(&encode(&map, 2)[..], b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
        assert_eq!(&encode(&map, 3)[..], b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
        assert_eq!(&encode(&Reply::Null, 2)[..], b"$-1\r\n");
        assert_eq!(&encode(&Reply::Null, 3)[..], b"_\r\n");
        assert_eq!(&encode(&Reply::NullArray, 2)[..], b"*-1\r\n");
        assert_eq!(&encode(&Reply::Int(-3), 2)[..], b":-3\r\n");
        assert_eq!(&encode(&Reply::OK, 3)[..], b"+OK\r\n");
        assert_eq!(&encode(&Reply::err("ERR a\r\nb"), 2)[..], b"-ERR a  b\r\n");
    }
}
