//! A reference reading of SIP messages written from RFC 3261's grammar, sharing
//! no code or structure with the extractors: it splits the message into lines,
//! unfolds headers, splits names from values and parses `name-addr` / `addr-spec`
//! and the Request-Line the way the ABNF of RFC 3261 section 25 reads, and only
//! then applies the limits the extractors are specified to have (`keys.rs` and
//! `callid.rs` docs): the 256-byte key window, at most 8 leading CR/LF before a
//! Request-Line, and a Request-URI user that stops at `;`, `?` or `>`.
//!
//! Escapes are not decoded (`%75se%72` stays as it is): the extractors hash the
//! bytes on the wire, so two spellings of one user are two keys.
//!
//! Where the grammar rejects a message the oracle says so ([`Verdict::Invalid`])
//! instead of guessing; the caller then needs an expectation derived by hand.

/// Longest key the extractors look into (`keys::KEY_MAX`, restated from its docs).
const KEY_WINDOW: usize = 256;
/// Leading CR/LF the Request-URI extractor skips (`keys.rs` docs).
const LEAD_MAX: usize = 8;

/// What the grammar says about one key of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key, as bytes of the message, or `None`: the message has none (or it
    /// lies outside the window the extractor is specified to examine).
    Key(Option<Vec<u8>>),
    /// The grammar rejects the part the key comes from; the reason.
    Invalid(&'static str),
}

/// A header after unfolding: its name, and its value's bytes each with the offset
/// it has in the message (so folds and windows are measured on the wire).
struct Field {
    name: Vec<u8>,
    value: Vec<(u8, usize)>,
}

/// RFC 3261 25.1: `token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")`.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The message's physical lines after the leading CR/LF (RFC 3261 7.5), each as
/// (offset of its first byte, its bytes without the line end). Lines end at LF;
/// a CR right before the LF belongs to the line end (bare LF is accepted, as the
/// extractors are specified to).
fn lines(msg: &[u8]) -> Vec<(usize, &[u8])> {
    let mut at = msg
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(msg.len());
    let mut out = Vec::new();
    while at < msg.len() {
        let end = msg[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(msg.len(), |p| at + p);
        let mut line = &msg[at..end];
        if end < msg.len() && line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        out.push((at, line));
        at = end + 1;
    }
    out
}

/// The header fields of the first message (RFC 3261 7.3.1): every line after the
/// start line up to the first empty one; a line starting with SP/HT continues the
/// field before it (the fold counts as one SP). A line without `:`, or whose name
/// is not a token, is no field.
fn fields(msg: &[u8]) -> Vec<Field> {
    let mut logical: Vec<Vec<(u8, usize)>> = Vec::new();
    // Where the line before ends (its CR or LF): a fold's offset on the wire.
    let mut line_end = 0;
    for (i, (off, line)) in lines(msg).into_iter().enumerate() {
        let this_end = off + line.len();
        if i == 0 {
            line_end = this_end;
            continue;
        }
        if line.is_empty() {
            break;
        }
        let bytes = line.iter().enumerate().map(|(k, &b)| (b, off + k));
        if is_wsp(line[0]) {
            // A continuation of the start line is not a header; skip it.
            if let Some(prev) = logical.last_mut() {
                prev.push((b' ', line_end));
                prev.extend(bytes);
            }
        } else {
            logical.push(bytes.collect());
        }
        line_end = this_end;
    }
    logical
        .into_iter()
        .filter_map(|l| {
            let colon = l.iter().position(|&(b, _)| b == b':')?;
            let name: Vec<u8> = trim(&l[..colon]).iter().map(|&(b, _)| b).collect();
            if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
                return None;
            }
            Some(Field {
                name: name.to_ascii_lowercase(),
                value: trim(&l[colon + 1..]).to_vec(),
            })
        })
        .collect()
}

fn trim(v: &[(u8, usize)]) -> &[(u8, usize)] {
    let ws = |&(b, _): &(u8, usize)| is_wsp(b);
    let start = v.iter().position(|c| !ws(c)).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !ws(c)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// The value of the first field named `long` or `compact` with a non-empty value
/// (an empty one is skipped, as the extractors are specified to).
fn value<'a>(fields: &'a [Field], long: &[u8], compact: &[u8]) -> Option<&'a [(u8, usize)]> {
    fields
        .iter()
        .find(|f| (f.name == long || f.name == compact) && !f.value.is_empty())
        .map(|f| &f.value[..])
}

/// The message bytes from the first to the last offset of `chars`.
fn wire(msg: &[u8], chars: &[(u8, usize)]) -> Vec<u8> {
    match (chars.first(), chars.last()) {
        (Some(&(_, a)), Some(&(_, b))) => msg[a..=b].to_vec(),
        _ => Vec::new(),
    }
}

/// A message read once, for several questions about it.
pub struct Message<'a> {
    msg: &'a [u8],
    fields: Vec<Field>,
}

pub fn read(msg: &[u8]) -> Message<'_> {
    Message {
        msg,
        fields: fields(msg),
    }
}

/// The Call-ID (`Call-ID` / `i`), trimmed, folds kept as they are on the wire.
pub fn call_id(msg: &[u8]) -> Option<Vec<u8>> {
    read(msg).call_id()
}

impl Message<'_> {
    pub fn call_id(&self) -> Option<Vec<u8>> {
        self.header(b"call-id", b"i").map(|(_, v)| v)
    }

    /// The first non-empty value of the header named `long` or `compact` (lower
    /// case), read as the Call-ID is: where it starts in the message, and its bytes.
    pub fn header(&self, long: &[u8], compact: &[u8]) -> Option<(usize, Vec<u8>)> {
        value(&self.fields, long, compact).map(|v| (v[0].1, wire(self.msg, v)))
    }
}

/// The User-Agent (it has no compact form), trimmed, folds kept as they are
/// on the wire.
pub fn user_agent(msg: &[u8]) -> Option<Vec<u8>> {
    value(&fields(msg), b"user-agent", b"").map(|v| wire(msg, v))
}

/// The URI of the first From (`f`) or To (`t`) field, RFC 3261 20.20 / 20.39:
/// `( name-addr / addr-spec ) *( SEMI param )` with
/// `name-addr = [ display-name ] LAQUOT addr-spec RAQUOT` and
/// `display-name = *(token LWS) / quoted-string`. The URI of a name-addr is every
/// byte between the angle brackets (the extractor is specified to take them as
/// they are); an addr-spec ends at the first `;` (its parameters are the
/// header's) or whitespace. The URI must end within the first 256 bytes of the
/// value: `>` for a name-addr, the terminator (or the value's end) for an addr-spec.
pub fn header_uri(msg: &[u8], long: &[u8], compact: &[u8]) -> Verdict {
    read(msg).header_uri(long, compact)
}

impl Message<'_> {
    /// [`header_uri`] of this message.
    pub fn header_uri(&self, long: &[u8], compact: &[u8]) -> Verdict {
        header_uri_of(self.msg, &self.fields, long, compact)
    }
}

fn header_uri_of(msg: &[u8], fields: &[Field], long: &[u8], compact: &[u8]) -> Verdict {
    let Some(v) = value(fields, long, compact) else {
        return Verdict::Key(None);
    };
    let base = v[0].1;
    let in_window = |off: usize| off - base < KEY_WINDOW;
    let mut i = 0;
    let laquot = if v[0].0 == b'"' {
        // quoted-string = SWS DQUOTE *(qdtext / quoted-pair) DQUOTE
        i = 1;
        loop {
            match v.get(i) {
                None => return Verdict::Invalid("unterminated quoted-string"),
                Some((b'"', _)) => break,
                Some((b'\\', _)) => i += 2,
                Some(_) => i += 1,
            }
        }
        i += 1;
        while v.get(i).is_some_and(|&(b, _)| is_wsp(b)) {
            i += 1;
        }
        match v.get(i) {
            Some((b'<', _)) => Some(i),
            _ => return Verdict::Invalid("quoted display-name without LAQUOT"),
        }
    } else {
        // *(token LWS) then "<", or else the whole thing is an addr-spec.
        while v
            .get(i)
            .is_some_and(|&(b, _)| is_token_char(b) || is_wsp(b))
        {
            i += 1;
        }
        match v.get(i) {
            Some((b'<', _)) => Some(i),
            _ => None,
        }
    };
    match laquot {
        Some(l) => {
            let Some(r) = v[l..].iter().position(|&(b, _)| b == b'>').map(|p| l + p) else {
                return Verdict::Invalid("LAQUOT without RAQUOT");
            };
            if !in_window(v[r].1) {
                return Verdict::Key(None);
            }
            Verdict::Key(Some(wire(msg, &v[l + 1..r])))
        }
        None => {
            let end = v
                .iter()
                .position(|&(b, _)| b == b';' || is_wsp(b))
                .unwrap_or(v.len());
            // addr-spec = SIP-URI / SIPS-URI / absoluteURI: all begin with a scheme,
            // `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`.
            let spec: Vec<u8> = v[..end].iter().map(|&(b, _)| b).collect();
            let scheme = spec.iter().position(|&b| b == b':').map(|c| &spec[..c]);
            let valid = scheme.is_some_and(|s| {
                s.first().is_some_and(u8::is_ascii_alphabetic)
                    && s.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            });
            if !valid {
                return Verdict::Invalid("addr-spec without a scheme");
            }
            // The end of an addr-spec must be seen: its terminator, or the end of a
            // value that fits the window whole.
            let stop = v.get(end).map_or(v[end - 1].1 + 1, |&(_, o)| o);
            if stop - base > KEY_WINDOW || (end < v.len() && !in_window(stop)) {
                return Verdict::Key(None);
            }
            Verdict::Key(Some(wire(msg, &v[..end])))
        }
    }
}

pub fn from_uri(msg: &[u8]) -> Verdict {
    header_uri(msg, b"from", b"f")
}

pub fn to_uri(msg: &[u8]) -> Verdict {
    header_uri(msg, b"to", b"t")
}

/// The user part of the Request-URI, RFC 3261 25.1:
/// `Request-Line = Method SP Request-URI SP SIP-Version CRLF`, `Method = token`,
/// `SIP-URI = "sip:" [ userinfo ] hostport ...`, `userinfo = ( user /
/// telephone-subscriber ) [ ":" password ] "@"`. `@` appears in a SIP URI only
/// after the userinfo (hostport, parameters and headers cannot hold one), so the
/// userinfo is what precedes the first `@`; the user is the userinfo before any
/// `:`. The scheme is not checked against `scheme = ALPHA *(...)`: the extractor is
/// specified to take everything up to `:` as the scheme. Specified limits on top:
/// a `Status-Line` (starts with `SIP/`) has none; more than 8 leading CR/LF, none;
/// a user holding `;`, `?` or `>` (legal `user-unreserved` characters, but also
/// what starts parameters of a user-less URI) counts as none; the `@` must lie in
/// the first 256 bytes of the start line.
pub fn request_user(msg: &[u8]) -> Verdict {
    let lead = msg
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if lead > LEAD_MAX {
        return Verdict::Key(None);
    }
    let line = &msg[lead..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len())];
    if line.starts_with(b"SIP/") {
        return Verdict::Key(None);
    }
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(uri)) = (parts.next(), parts.next()) else {
        return Verdict::Invalid("no SP after the Method");
    };
    if method.is_empty() || !method.iter().all(|&b| is_token_char(b)) {
        return Verdict::Invalid("Method is not a token");
    }
    // Offsets inside the start line.
    let uri_at = method.len() + 1;
    let Some(colon) = uri.iter().position(|&b| b == b':') else {
        return Verdict::Key(None);
    };
    let rest = &uri[colon + 1..];
    let Some(at) = rest.iter().position(|&b| b == b'@') else {
        return Verdict::Key(None);
    };
    if uri[..colon].contains(&b'@') {
        return Verdict::Key(None);
    }
    let userinfo = &rest[..at];
    let user = &userinfo[..userinfo
        .iter()
        .position(|&b| b == b':')
        .unwrap_or(userinfo.len())];
    if user.is_empty() || user.iter().any(|b| b";?>".contains(b)) {
        return Verdict::Key(None);
    }
    if uri_at + colon + 1 + at >= KEY_WINDOW {
        return Verdict::Key(None);
    }
    Verdict::Key(Some(user.to_vec()))
}
