//! MIME structure of a stored message for FETCH: part tree with byte
//! ranges, BODYSTRUCTURE/BODY, ENVELOPE, body sections and BINARY decoding.
//!
//! This is written by hand (rather than taken from mail-parser) because
//! IMAP needs exact byte ranges of every header and body and the raw,
//! undecoded header values (RFC 9051 §7.5.2).

use std::ops::Range;

use base64::Engine;

use crate::codec::{ResponseBuf, Section, SectionText};

/// Deepest MIME nesting parsed; deeper parts are treated as opaque.
const MAX_DEPTH: usize = 40;
/// Most parts parsed in one message.
const MAX_PARTS: usize = 5000;

/// One MIME entity.
#[derive(Debug, Clone)]
pub struct Part {
    /// Header bytes including the blank line that ends them.
    pub header: Range<usize>,
    /// Body bytes.
    pub body: Range<usize>,
    /// Lower-case media type.
    pub media_type: String,
    /// Lower-case media subtype.
    pub subtype: String,
    /// Content-Type parameters (names lower-case, RFC 2231 continuations joined).
    pub params: Vec<(String, Vec<u8>)>,
    /// Children of a multipart.
    pub children: Vec<Part>,
    /// The encapsulated message of a message/rfc822 part.
    pub message: Option<Box<Part>>,
}

impl Part {
    fn is_multipart(&self) -> bool {
        self.media_type == "multipart"
    }

    fn is_message(&self) -> bool {
        self.message.is_some()
    }
}

/// Finds the end of the header block of the entity `start..end`: the
/// body's start. The one header rule of the store's header-only reads
/// ([`umail_core::store::header_len`]), so that FETCH of header items from
/// a header-only read sees the same header as from the whole message.
fn split_header(data: &[u8], start: usize, end: usize) -> usize {
    start + umail_core::store::header_len(&data[start..end])
}

/// A header field: lower-case name and the byte range of the whole field
/// (name, colon, value with folding, line end).
#[derive(Debug, Clone)]
pub struct Field {
    /// Lower-case name.
    pub name: String,
    /// The complete field lines.
    pub range: Range<usize>,
    /// The value (after the colon), folded as in the message.
    pub value: Range<usize>,
}

/// The fields of a header block.
pub fn fields(data: &[u8], header: &Range<usize>) -> Vec<Field> {
    let mut out = Vec::new();
    let mut i = header.start;
    let end = header.end;
    while i < end {
        // Find the end of this field: a line end not followed by WSP.
        let mut j = i;
        let field_end = loop {
            match data[j..end].iter().position(|b| *b == b'\n') {
                Some(p) => {
                    let nl = j + p + 1;
                    if nl < end && matches!(data[nl], b' ' | b'\t') {
                        j = nl;
                        continue;
                    }
                    break nl;
                }
                None => break end,
            }
        };
        let line = &data[i..field_end];
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = &line[..colon];
            if !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic()) {
                out.push(Field {
                    name: String::from_utf8_lossy(name).to_ascii_lowercase(),
                    range: i..field_end,
                    value: i + colon + 1..field_end,
                });
            }
        }
        i = field_end;
        if out.len() > 10_000 {
            break;
        }
    }
    out
}

/// Unfolds a header value: CRLFs removed, leading/trailing whitespace trimmed.
pub fn unfold(v: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = v
        .iter()
        .copied()
        .filter(|b| *b != b'\r' && *b != b'\n')
        .collect();
    while out.first().is_some_and(|b| matches!(b, b' ' | b'\t')) {
        out.remove(0);
    }
    while out.last().is_some_and(|b| matches!(b, b' ' | b'\t')) {
        out.pop();
    }
    out
}

fn header_value(data: &[u8], fields: &[Field], name: &str) -> Option<Vec<u8>> {
    fields
        .iter()
        .find(|f| f.name == name)
        .map(|f| unfold(&data[f.value.clone()]))
}

/// Splits `value; a=b; c="d"` into the main value and parameters
/// (RFC 2045 §5.1), joining RFC 2231 continuations.
fn parse_params(v: &[u8]) -> (String, Vec<(String, Vec<u8>)>) {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < v.len() {
            match v[*i] {
                b' ' | b'\t' => *i += 1,
                b'(' => {
                    // RFC 822 comment
                    let mut depth = 0;
                    while *i < v.len() {
                        match v[*i] {
                            b'(' => depth += 1,
                            b')' => {
                                depth -= 1;
                                if depth == 0 {
                                    *i += 1;
                                    break;
                                }
                            }
                            b'\\' => *i += 1,
                            _ => {}
                        }
                        *i += 1;
                    }
                }
                _ => break,
            }
        }
    };
    skip_ws(&mut i);
    let start = i;
    while i < v.len() && v[i] != b';' {
        i += 1;
    }
    let main = String::from_utf8_lossy(&v[start..i])
        .trim()
        .to_ascii_lowercase();
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    while i < v.len() && v[i] == b';' {
        i += 1;
        skip_ws(&mut i);
        let ns = i;
        while i < v.len() && !matches!(v[i], b'=' | b';' | b' ' | b'\t') {
            i += 1;
        }
        let name = String::from_utf8_lossy(&v[ns..i]).to_ascii_lowercase();
        skip_ws(&mut i);
        if i >= v.len() || v[i] != b'=' {
            while i < v.len() && v[i] != b';' {
                i += 1;
            }
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < v.len() && v[i] == b'"' {
            i += 1;
            while i < v.len() && v[i] != b'"' {
                if v[i] == b'\\' && i + 1 < v.len() {
                    i += 1;
                }
                value.push(v[i]);
                i += 1;
            }
            i += 1;
        } else {
            while i < v.len() && !matches!(v[i], b';' | b' ' | b'\t') {
                value.push(v[i]);
                i += 1;
            }
        }
        skip_ws(&mut i);
        while i < v.len() && v[i] != b';' {
            i += 1;
        }
        if !name.is_empty() && raw.len() < 100 {
            raw.push((name, value));
        }
    }
    (main, join_2231(raw))
}

/// RFC 2231 §3: `name*0`, `name*1*`... are joined into one parameter,
/// `name*` when any segment is extended (the value keeps its
/// `charset'lang'` prefix and percent-encoding), `name` otherwise.
fn join_2231(raw: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    type Segments = Vec<(u32, bool, Vec<u8>)>;
    let mut groups: Vec<(String, Segments)> = Vec::new();
    for (name, value) in raw {
        let base = name.trim_end_matches('*');
        if let Some((b, idx)) = base.rsplit_once('*')
            && let Ok(n) = idx.parse::<u32>()
        {
            let extended = name.ends_with('*');
            match groups.iter_mut().find(|(g, _)| g == b) {
                Some((_, segs)) => segs.push((n, extended, value)),
                None => groups.push((b.to_string(), vec![(n, extended, value)])),
            }
            continue;
        }
        out.push((name, value));
    }
    for (name, mut segs) in groups {
        segs.sort_by_key(|s| s.0);
        let extended = segs.iter().any(|s| s.1);
        let value: Vec<u8> = segs.into_iter().flat_map(|s| s.2).collect();
        out.push((if extended { format!("{name}*") } else { name }, value));
    }
    out
}

/// Parses the message `data` into its part tree.
pub fn parse(data: &[u8]) -> Part {
    let mut budget = MAX_PARTS;
    parse_entity(data, 0..data.len(), 0, false, &mut budget)
}

fn parse_entity(
    data: &[u8],
    range: Range<usize>,
    depth: usize,
    digest: bool,
    budget: &mut usize,
) -> Part {
    *budget = budget.saturating_sub(1);
    let body_start = split_header(data, range.start, range.end);
    let header = range.start..body_start;
    let fields = fields(data, &header);
    let (mut media_type, mut subtype, mut params) =
        match header_value(data, &fields, "content-type") {
            Some(v) => {
                let (main, params) = parse_params(&v);
                match main.split_once('/') {
                    Some((t, s)) if !t.is_empty() && !s.is_empty() => {
                        // NULs are dropped here as in the written
                        // BODYSTRUCTURE, so that what is shown as
                        // MESSAGE/RFC822 is parsed as one.
                        let clean = |v: &str| v.trim().replace('\0', "");
                        (clean(t), clean(s), params)
                    }
                    _ => ("text".to_string(), "plain".to_string(), params),
                }
            }
            None if digest => ("message".to_string(), "rfc822".to_string(), Vec::new()),
            None => ("text".to_string(), "plain".to_string(), Vec::new()),
        };
    // RFC 2045 §5.2: the default is text/plain; charset=us-ascii.
    if media_type == "text" && !params.iter().any(|(n, _)| n == "charset") {
        params.insert(0, ("charset".to_string(), b"US-ASCII".to_vec()));
    }
    let body = body_start..range.end;
    let mut part = Part {
        header,
        body: body.clone(),
        media_type: String::new(),
        subtype: String::new(),
        params,
        children: Vec::new(),
        message: None,
    };
    if depth < MAX_DEPTH && *budget > 0 {
        if media_type == "multipart" {
            let boundary = part
                .params
                .iter()
                .find(|(n, _)| n == "boundary")
                .map(|(_, v)| v.clone());
            if let Some(b) = boundary.filter(|b| !b.is_empty()) {
                let is_digest = subtype == "digest";
                for r in split_multipart(data, body.clone(), &b) {
                    if *budget == 0 {
                        break;
                    }
                    part.children
                        .push(parse_entity(data, r, depth + 1, is_digest, budget));
                }
            }
        } else if media_type == "message" && (subtype == "rfc822" || subtype == "global") {
            part.message = Some(Box::new(parse_entity(
                data,
                body.clone(),
                depth + 1,
                false,
                budget,
            )));
        }
    }
    if media_type == "multipart" && part.children.is_empty() {
        // A multipart without parts (or beyond the depth or part limit):
        // `body-type-mpart` needs at least one body, so show it as text.
        media_type = "text".into();
        subtype = "plain".into();
    }
    if media_type == "message" && part.message.is_none() {
        // message/rfc822 or message/global beyond the limits: an opaque
        // part, since `body-type-msg` needs an envelope and a body.
        if subtype == "rfc822" || subtype == "global" {
            media_type = "application".into();
            subtype = "octet-stream".into();
        }
    }
    part.media_type = media_type;
    part.subtype = subtype;
    part
}

/// The ranges of the body parts of a multipart (RFC 2046 §5.1.1): the CRLF
/// before a delimiter belongs to the delimiter.
fn split_multipart(data: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut current_start: Option<usize> = None;
    let mut line_start = body.start;
    while line_start < body.end {
        let line_end = data[line_start..body.end]
            .iter()
            .position(|b| *b == b'\n')
            .map(|p| line_start + p + 1)
            .unwrap_or(body.end);
        let line = &data[line_start..line_end];
        if line.starts_with(&delim) {
            let rest = &line[delim.len()..];
            let closing = rest.starts_with(b"--");
            let after = if closing { &rest[2..] } else { rest };
            if after.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(s) = current_start.take() {
                    let mut e = line_start;
                    if e > s && data[e - 1] == b'\n' {
                        e -= 1;
                        if e > s && data[e - 1] == b'\r' {
                            e -= 1;
                        }
                    }
                    parts.push(s..e.max(s));
                }
                if closing {
                    return parts;
                }
                current_start = Some(line_end);
                if parts.len() >= MAX_PARTS {
                    return parts;
                }
            }
        }
        line_start = line_end;
    }
    if let Some(s) = current_start {
        parts.push(s..body.end);
    }
    parts
}

/// Resolves a part path (RFC 9051 §6.4.5 part specifier).
pub fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let mut cur = root;
    for (i, &n) in path.iter().enumerate() {
        let container = match (&cur.message, i) {
            (Some(m), i) if i > 0 => m.as_ref(),
            _ => cur,
        };
        if container.is_multipart() {
            cur = container.children.get((n as usize).checked_sub(1)?)?;
        } else if n == 1 {
            cur = container;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// The bytes of `BODY[section]` (before any partial), or `None` for a
/// section that does not exist.
pub fn section_bytes(data: &[u8], root: &Part, section: &Section) -> Option<Vec<u8>> {
    let node = resolve(root, &section.part)?;
    // The message a HEADER/TEXT specifier applies to: the root for an empty
    // path, the encapsulated message of a message/rfc822 part otherwise.
    let message = if section.part.is_empty() {
        Some(root)
    } else {
        node.message.as_deref()
    };
    Some(match &section.text {
        None => {
            if section.part.is_empty() {
                data.to_vec()
            } else {
                data[node.body.clone()].to_vec()
            }
        }
        Some(SectionText::Mime) => data[node.header.clone()].to_vec(),
        Some(SectionText::Header) => message.map(|m| data[m.header.clone()].to_vec())?,
        Some(SectionText::Text) => message.map(|m| data[m.body.clone()].to_vec())?,
        Some(SectionText::HeaderFields(names)) | Some(SectionText::HeaderFieldsNot(names)) => {
            let m = message?;
            let not = matches!(section.text, Some(SectionText::HeaderFieldsNot(_)));
            let mut out = Vec::new();
            for f in fields(data, &m.header) {
                let listed = names.iter().any(|n| n.eq_ignore_ascii_case(&f.name));
                if listed != not {
                    out.extend_from_slice(&data[f.range.clone()]);
                    if !out.ends_with(b"\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            // RFC 9051 §6.4.5: the blank line is included.
            out.extend_from_slice(b"\r\n");
            out
        }
    })
}

/// Why BINARY could not decode a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryError {
    /// No such part.
    NoPart,
    /// Unknown Content-Transfer-Encoding (RFC 3516 §4.3 `UNKNOWN-CTE`).
    UnknownCte,
}

/// The decoded content of `BINARY[part]` (RFC 3516 §4.2).
pub fn binary_bytes(data: &[u8], root: &Part, part: &[u32]) -> Result<Vec<u8>, BinaryError> {
    if part.is_empty() {
        return Ok(data.to_vec());
    }
    let node = resolve(root, part).ok_or(BinaryError::NoPart)?;
    let raw = &data[node.body.clone()];
    if node.is_multipart() || node.is_message() {
        return Ok(raw.to_vec());
    }
    let fields = fields(data, &node.header);
    let cte = header_value(data, &fields, "content-transfer-encoding")
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_lowercase())
        .unwrap_or_default();
    match cte.as_str() {
        "" | "7bit" | "8bit" | "binary" => Ok(raw.to_vec()),
        "base64" => {
            let clean: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'))
                .collect();
            base64::engine::GeneralPurpose::new(
                &base64::alphabet::STANDARD,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
                    .with_decode_allow_trailing_bits(true),
            )
            .decode(&clean[..clean.len() - usize::from(clean.len() % 4 == 1)])
            .map_err(|_| BinaryError::UnknownCte)
        }
        "quoted-printable" => Ok(decode_qp(raw)),
        _ => Err(BinaryError::UnknownCte),
    }
}

fn decode_qp(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    while i < raw.len() {
        let b = raw[i];
        if b == b'=' {
            if raw[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if raw[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            if i + 2 < raw.len()
                && let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2]))
            {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

fn count_lines(b: &[u8]) -> usize {
    let n = b.iter().filter(|c| **c == b'\n').count();
    if !b.is_empty() && !b.ends_with(b"\n") {
        n + 1
    } else {
        n
    }
}

/// Strings inside BODYSTRUCTURE and ENVELOPE: the grammar's `string` holds
/// no NUL (RFC 9051 §9 `CHAR8 = %x01-ff`; literal8 is for BINARY only), so
/// NULs of malformed headers are dropped instead of sent as `~{n}`.
trait GrammarStrings {
    fn text(&mut self, s: &[u8]) -> &mut Self;
    fn ntext(&mut self, s: Option<&[u8]>) -> &mut Self;
}

impl GrammarStrings for ResponseBuf {
    fn text(&mut self, s: &[u8]) -> &mut Self {
        if s.contains(&0) {
            let clean: Vec<u8> = s.iter().copied().filter(|b| *b != 0).collect();
            self.string(&clean)
        } else {
            self.string(s)
        }
    }

    fn ntext(&mut self, s: Option<&[u8]>) -> &mut Self {
        match s {
            Some(s) => self.text(s),
            None => self.raw(b"NIL"),
        }
    }
}

fn write_params(r: &mut ResponseBuf, params: &[(String, Vec<u8>)]) {
    if params.is_empty() {
        r.raw("NIL");
        return;
    }
    r.raw("(");
    for (i, (n, v)) in params.iter().enumerate() {
        if i > 0 {
            r.raw(" ");
        }
        r.text(n.to_ascii_uppercase().as_bytes()).raw(" ").text(v);
    }
    r.raw(")");
}

/// Writes `BODYSTRUCTURE` (`extended`) or `BODY` for a part
/// (RFC 9051 §7.5.2 `body` grammar).
pub fn write_body_structure(r: &mut ResponseBuf, data: &[u8], part: &Part, extended: bool) {
    let fields = fields(data, &part.header);
    let get = |name: &str| header_value(data, &fields, name);
    r.raw("(");
    if part.is_multipart() {
        // body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        for child in &part.children {
            write_body_structure(r, data, child, extended);
        }
        r.raw(" ")
            .text(part.subtype.to_ascii_uppercase().as_bytes());
        if extended {
            r.raw(" ");
            write_params(r, &part.params);
            write_ext_common(r, &get);
        }
        r.raw(")");
        return;
    }
    let body = &data[part.body.clone()];
    r.text(part.media_type.to_ascii_uppercase().as_bytes())
        .raw(" ")
        .text(part.subtype.to_ascii_uppercase().as_bytes())
        .raw(" ");
    // body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP body-fld-octets
    write_params(r, &part.params);
    r.raw(" ");
    r.ntext(get("content-id").as_deref()).raw(" ");
    r.ntext(get("content-description").as_deref()).raw(" ");
    let enc = get("content-transfer-encoding")
        .map(|v| String::from_utf8_lossy(&v).trim().to_ascii_uppercase())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "7BIT".into());
    r.text(enc.as_bytes()).raw(format!(" {}", body.len()));
    if let Some(msg) = &part.message {
        // body-type-msg: envelope SP body SP body-fld-lines
        r.raw(" ");
        write_envelope(r, data, msg);
        r.raw(" ");
        write_body_structure(r, data, msg, extended);
        r.raw(format!(" {}", count_lines(body)));
    } else if part.media_type == "text" {
        r.raw(format!(" {}", count_lines(body)));
    }
    if extended {
        // body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        r.raw(" ").ntext(get("content-md5").as_deref());
        write_ext_common(r, &get);
    }
    r.raw(")");
}

fn write_ext_common(r: &mut ResponseBuf, get: &dyn Fn(&str) -> Option<Vec<u8>>) {
    // body-fld-dsp = "(" string SP body-fld-param ")" / nil
    r.raw(" ");
    match get("content-disposition") {
        Some(v) => {
            let (main, params) = parse_params(&v);
            if main.is_empty() {
                r.raw("NIL");
            } else {
                r.raw("(")
                    .text(main.to_ascii_uppercase().as_bytes())
                    .raw(" ");
                write_params(r, &params);
                r.raw(")");
            }
        }
        None => {
            r.raw("NIL");
        }
    }
    // body-fld-lang = nstring / "(" string *(SP string) ")"
    r.raw(" ");
    match get("content-language") {
        Some(v) => {
            let langs: Vec<Vec<u8>> = String::from_utf8_lossy(&v)
                .split(',')
                .map(|l| l.trim().as_bytes().to_vec())
                .filter(|l| !l.is_empty())
                .collect();
            match langs.len() {
                0 => {
                    r.raw("NIL");
                }
                1 => {
                    r.text(&langs[0]);
                }
                _ => {
                    r.raw("(");
                    for (i, l) in langs.iter().enumerate() {
                        if i > 0 {
                            r.raw(" ");
                        }
                        r.text(l);
                    }
                    r.raw(")");
                }
            }
        }
        None => {
            r.raw("NIL");
        }
    }
    // body-fld-loc = nstring
    r.raw(" ").ntext(get("content-location").as_deref());
}

/// One address of an envelope (RFC 9051 §7.5.2 `address`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvAddress {
    /// Display name.
    pub name: Option<Vec<u8>>,
    /// Local part, or the group name for a group start.
    pub mailbox: Option<Vec<u8>>,
    /// Domain; `None` marks group syntax.
    pub host: Option<Vec<u8>>,
}

fn strip_comments(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut in_quote = false;
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'\\' && i + 1 < s.len() {
            if depth == 0 {
                out.push(b);
                out.push(s[i + 1]);
            }
            i += 2;
            continue;
        }
        if !in_quote && b == b'(' {
            depth += 1;
        } else if !in_quote && b == b')' && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            if b == b'"' {
                in_quote = !in_quote;
            }
            out.push(b);
        }
        i += 1;
    }
    out
}

fn unquote(s: &[u8]) -> Vec<u8> {
    let s = s.trim_ascii();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => {}
            b'\\' if i + 1 < s.len() => {
                i += 1;
                out.push(s[i]);
            }
            b => out.push(b),
        }
        i += 1;
    }
    // Collapse runs of whitespace left by folding.
    let mut collapsed = Vec::with_capacity(out.len());
    for b in out {
        if b.is_ascii_whitespace() {
            if collapsed.last().is_some_and(|l: &u8| *l != b' ') {
                collapsed.push(b' ');
            }
        } else {
            collapsed.push(b);
        }
    }
    while collapsed.last() == Some(&b' ') {
        collapsed.pop();
    }
    collapsed
}

fn mailbox_of(spec: &[u8], name: Option<Vec<u8>>) -> Option<EnvAddress> {
    let spec = spec.trim_ascii();
    // Drop an obsolete route "@a,@b:".
    let spec = match spec.iter().position(|b| *b == b':') {
        Some(p) if spec.starts_with(b"@") => &spec[p + 1..],
        _ => spec,
    };
    if spec.is_empty() {
        return None;
    }
    let (local, host) = match spec.iter().rposition(|b| *b == b'@') {
        Some(p) => (unquote(&spec[..p]), spec[p + 1..].trim_ascii().to_vec()),
        // RFC 9051 §7.5.2: a missing host is not group syntax; use a placeholder.
        None => (unquote(spec), b"MISSING_DOMAIN".to_vec()),
    };
    Some(EnvAddress {
        name: name.filter(|n| !n.is_empty()),
        mailbox: Some(local),
        host: Some(host),
    })
}

/// Parses an address list header value (RFC 5322 §3.4) into envelope
/// addresses, with group start/end markers.
pub fn parse_addresses(value: &[u8]) -> Vec<EnvAddress> {
    let v = strip_comments(value);
    let mut out = Vec::new();
    let mut i = 0;
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut in_group = false;
    let push_entry = |entry: &[u8], out: &mut Vec<EnvAddress>| {
        let entry = entry.trim_ascii();
        if entry.is_empty() {
            return;
        }
        // name-addr: [display-name] "<" addr-spec ">"
        let mut q = false;
        let lt = entry.iter().enumerate().find_map(|(i, b)| {
            if *b == b'"' {
                q = !q;
            }
            (!q && *b == b'<').then_some(i)
        });
        if let Some(lt) = lt {
            let gt = entry[lt..]
                .iter()
                .position(|b| *b == b'>')
                .map(|p| lt + p)
                .unwrap_or(entry.len());
            let name = unquote(&entry[..lt]);
            if let Some(a) = mailbox_of(&entry[lt + 1..gt], Some(name)) {
                out.push(a);
            }
        } else if let Some(a) = mailbox_of(entry, None) {
            out.push(a);
        }
    };
    while i < v.len() {
        let b = v[i];
        match b {
            b'\\' => {
                i += 1;
            }
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b':' if !in_quote && !in_angle && !in_group => {
                // group start
                out.push(EnvAddress {
                    name: None,
                    mailbox: Some(unquote(&v[start..i])),
                    host: None,
                });
                in_group = true;
                start = i + 1;
            }
            b';' if !in_quote && !in_angle && in_group => {
                push_entry(&v[start..i], &mut out);
                out.push(EnvAddress {
                    name: None,
                    mailbox: None,
                    host: None,
                });
                in_group = false;
                start = i + 1;
            }
            b',' if !in_quote && !in_angle => {
                push_entry(&v[start..i], &mut out);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
        if out.len() > 10_000 {
            return out;
        }
    }
    if start < v.len() {
        push_entry(&v[start..], &mut out);
    }
    if in_group {
        out.push(EnvAddress {
            name: None,
            mailbox: None,
            host: None,
        });
    }
    out
}

fn write_addresses(r: &mut ResponseBuf, list: Option<Vec<EnvAddress>>) {
    match list {
        Some(list) if !list.is_empty() => {
            r.raw("(");
            for a in list {
                // address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"
                r.raw("(");
                r.ntext(a.name.as_deref()).raw(" NIL ");
                r.ntext(a.mailbox.as_deref()).raw(" ");
                r.ntext(a.host.as_deref()).raw(")");
            }
            r.raw(")");
        }
        _ => {
            r.raw("NIL");
        }
    }
}

/// Writes the ENVELOPE of a message entity (RFC 9051 §7.5.2).
pub fn write_envelope(r: &mut ResponseBuf, data: &[u8], msg: &Part) {
    let fields = fields(data, &msg.header);
    let get = |name: &str| header_value(data, &fields, name);
    let addrs = |name: &str| get(name).map(|v| parse_addresses(&v));
    r.raw("(");
    r.ntext(get("date").as_deref()).raw(" ");
    r.ntext(get("subject").as_deref()).raw(" ");
    let from = addrs("from");
    // RFC 9051 §7.5.2: sender and reply-to default to from.
    let sender = addrs("sender")
        .filter(|l| !l.is_empty())
        .or_else(|| from.clone());
    let reply_to = addrs("reply-to")
        .filter(|l| !l.is_empty())
        .or_else(|| from.clone());
    write_addresses(r, from);
    r.raw(" ");
    write_addresses(r, sender);
    r.raw(" ");
    write_addresses(r, reply_to);
    for h in ["to", "cc", "bcc"] {
        r.raw(" ");
        write_addresses(r, addrs(h));
    }
    r.raw(" ").ntext(get("in-reply-to").as_deref());
    r.raw(" ").ntext(get("message-id").as_deref());
    r.raw(")");
}

/// The fuzzing entry point for "arbitrary MIME in → BODYSTRUCTURE /
/// ENVELOPE out": parses `data` as a stored message, writes BODY,
/// BODYSTRUCTURE and ENVELOPE in both string modes (IMAP4rev1 and UTF-8)
/// and checks each against the RFC 9051 grammar with [`crate::grammar`],
/// then extracts every body section and BINARY part it can name.
///
/// # Panics
///
/// When the output does not match the grammar: that is the finding the
/// fuzzer looks for. Any other panic is a bug too.
pub fn fuzz_mime(data: &[u8]) {
    let root = parse(data);
    for utf8 in [false, true] {
        for extended in [false, true] {
            let mut r = ResponseBuf::new();
            r.utf8 = utf8;
            write_body_structure(&mut r, data, &root, extended);
            let out = r.take();
            if let Err(e) = crate::grammar::check_body(&out, extended, utf8) {
                panic!(
                    "bad {} (utf8 {utf8}): {e}: {:?}",
                    if extended { "BODYSTRUCTURE" } else { "BODY" },
                    String::from_utf8_lossy(&out)
                );
            }
        }
        let mut r = ResponseBuf::new();
        r.utf8 = utf8;
        write_envelope(&mut r, data, &root);
        let out = r.take();
        if let Err(e) = crate::grammar::check_envelope(&out, utf8) {
            panic!(
                "bad ENVELOPE (utf8 {utf8}): {e}: {:?}",
                String::from_utf8_lossy(&out)
            );
        }
    }
    let mut paths = Vec::new();
    part_paths(&root, &mut Vec::new(), &mut paths);
    for path in paths {
        let texts = [
            None,
            Some(SectionText::Header),
            Some(SectionText::Text),
            Some(SectionText::Mime),
            Some(SectionText::HeaderFields(vec![
                "Subject".into(),
                "From".into(),
            ])),
            Some(SectionText::HeaderFieldsNot(vec!["To".into()])),
        ];
        for text in texts {
            let section = Section {
                part: path.clone(),
                text,
            };
            let _ = section_bytes(data, &root, &section);
        }
        let _ = binary_bytes(data, &root, &path);
    }
}

/// Part numbers of every leaf and container of a message, as FETCH names
/// them (at most 256).
fn part_paths(part: &Part, path: &mut Vec<u32>, out: &mut Vec<Vec<u32>>) {
    if out.len() >= 256 {
        return;
    }
    out.push(path.clone());
    let children: Vec<&Part> = match &part.message {
        Some(m) if m.is_multipart() => m.children.iter().collect(),
        Some(m) => vec![m.as_ref()],
        None => part.children.iter().collect(),
    };
    for (i, c) in children.into_iter().enumerate() {
        path.push(u32::try_from(i + 1).unwrap_or(u32::MAX));
        part_paths(c, path, out);
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(msg: &[u8], extended: bool) -> String {
        let root = parse(msg);
        let mut r = ResponseBuf::new();
        write_body_structure(&mut r, msg, &root, extended);
        String::from_utf8(r.take()).unwrap()
    }

    #[test]
    fn simple_text_message() {
        let msg = b"Subject: hi\r\n\r\nhello\r\nworld\r\n";
        assert_eq!(
            bs(msg, true),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 14 2 NIL NIL NIL NIL)"
        );
        assert_eq!(
            bs(msg, false),
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 14 2)"
        );
    }

    const NESTED: &[u8] = b"From: a@example.com\r\n\
Subject: nested\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
preamble\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
plain\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
<b>x=3D1</b>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
Content-Disposition: attachment; filename*0*=utf-8''%E4%B8%AD; filename*1=.eml\r\n\
\r\n\
From: \"B, Bob\" <b@example.org>\r\n\
To: group: c@x.org, d@y.org;\r\n\
Subject: =?UTF-8?B?5Lit5paH?=\r\n\
\r\n\
inner body\r\n\
--outer\r\n\
Content-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
Content-Language: en, zh\r\n\
\r\n\
AAEC\r\n\
--outer--\r\n\
epilogue\r\n";

    #[test]
    fn nested_multipart_with_message_rfc822() {
        let expected = concat!(
            "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)",
            "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 12 1 NIL NIL NIL NIL)",
            " \"ALTERNATIVE\" (\"BOUNDARY\" \"inner\") NIL NIL NIL)",
            "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 105 ",
            "(NIL \"=?UTF-8?B?5Lit5paH?=\" ((\"B, Bob\" NIL \"b\" \"example.org\")) ((\"B, Bob\" NIL \"b\" \"example.org\")) ((\"B, Bob\" NIL \"b\" \"example.org\")) ",
            "((NIL NIL \"group\" NIL)(NIL NIL \"c\" \"x.org\")(NIL NIL \"d\" \"y.org\")(NIL NIL NIL NIL)) NIL NIL NIL NIL) ",
            "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 10 1 NIL NIL NIL NIL) 5 ",
            "NIL (\"ATTACHMENT\" (\"FILENAME*\" \"utf-8''%E4%B8%AD.eml\")) NIL NIL)",
            "(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"a.bin\") NIL NIL \"BASE64\" 4 NIL NIL (\"en\" \"zh\") NIL)",
            " \"MIXED\" (\"BOUNDARY\" \"outer\") NIL NIL NIL)"
        );
        assert_eq!(bs(NESTED, true), expected);
    }

    #[test]
    fn sections_of_nested_message() {
        let root = parse(NESTED);
        let sec = |part: Vec<u32>, text: Option<SectionText>| {
            String::from_utf8(section_bytes(NESTED, &root, &Section { part, text }).unwrap())
                .unwrap()
        };
        assert_eq!(sec(vec![1, 1], None), "plain");
        assert_eq!(sec(vec![1, 2], None), "<b>x=3D1</b>");
        assert_eq!(sec(vec![2, 1], None), "inner body");
        assert_eq!(sec(vec![2], Some(SectionText::Text)), "inner body");
        assert_eq!(
            sec(
                vec![2],
                Some(SectionText::HeaderFields(vec!["SUBJECT".into()]))
            ),
            "Subject: =?UTF-8?B?5Lit5paH?=\r\n\r\n"
        );
        assert!(sec(vec![3], Some(SectionText::Mime)).starts_with("Content-Type: application"));
        assert!(sec(vec![], Some(SectionText::Header)).ends_with("boundary=\"outer\"\r\n\r\n"));
        assert!(
            section_bytes(
                NESTED,
                &root,
                &Section {
                    part: vec![4],
                    text: None
                }
            )
            .is_none()
        );
        assert_eq!(binary_bytes(NESTED, &root, &[3]).unwrap(), vec![0, 1, 2]);
        assert_eq!(binary_bytes(NESTED, &root, &[1, 2]).unwrap(), b"<b>x=1</b>");
    }

    #[test]
    fn envelope_of_simple_message() {
        let msg = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nFrom: Fred Foobar <foobar@Blurdybloop.example>\r\nSubject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu.example\r\nMessage-Id: <B27397-0100000@Blurdybloop.example>\r\n\r\nbody\r\n";
        let root = parse(msg);
        let mut r = ResponseBuf::new();
        write_envelope(&mut r, msg, &root);
        assert_eq!(
            String::from_utf8(r.take()).unwrap(),
            "(\"Mon, 7 Feb 1994 21:52:25 -0800\" \"afternoon meeting\" ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((NIL NIL \"mooch\" \"owatagu.siam.edu.example\")) NIL NIL NIL \"<B27397-0100000@Blurdybloop.example>\")"
        );
    }

    #[test]
    fn hostile_structures_do_not_panic() {
        let mut deep = Vec::new();
        for i in 0..200 {
            deep.extend(
                format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n").bytes(),
            );
        }
        let root = parse(&deep);
        let mut r = ResponseBuf::new();
        write_body_structure(&mut r, &deep, &root, true);
        assert!(!r.is_empty());
        for m in [
            &b""[..],
            b"\r\n",
            b"a",
            b"Content-Type: multipart/mixed\r\n\r\n",
            b"X: y\r\n folded",
        ] {
            let root = parse(m);
            write_body_structure(&mut r, m, &root, true);
            write_envelope(&mut r, m, &root);
        }
        assert_eq!(
            parse_addresses(b"\"unterminated <a@b"),
            parse_addresses(b"\"unterminated <a@b")
        );
    }
}
