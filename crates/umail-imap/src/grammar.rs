//! A strict checker for the response productions that [`crate::mime`]
//! writes: `body` (BODY and BODYSTRUCTURE) and `envelope` (RFC 9051 §9).
//! The fuzz target `imap_mime` and the tests parse the server's output
//! back with it, so that no message, however malformed, makes the server
//! write something a client's parser would reject.
//!
//! Stricter than the ABNF where the ABNF is ambiguous the way clients are
//! strict: a `"TEXT"` part must carry `body-fld-lines`, and a `"MESSAGE"
//! "RFC822"` / `"GLOBAL"` part must carry an envelope and a body.

/// Why the output does not match the grammar, with the byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrammarError {
    /// Offset in the checked bytes.
    pub at: usize,
    /// What was expected there.
    pub expected: String,
}

impl std::fmt::Display for GrammarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at byte {}: expected {}", self.at, self.expected)
    }
}

impl std::error::Error for GrammarError {}

type G<T> = Result<T, GrammarError>;

/// Deepest nesting followed; deeper output is rejected.
const MAX_NESTING: usize = 200;

struct P<'a> {
    b: &'a [u8],
    i: usize,
    utf8: bool,
    depth: usize,
}

impl P<'_> {
    fn err<T>(&self, what: &str) -> G<T> {
        Err(GrammarError {
            at: self.i,
            expected: what.to_string(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, s: &[u8]) -> bool {
        if self.b[self.i..].starts_with(s) {
            self.i += s.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, s: &[u8]) -> G<()> {
        if self.eat(s) {
            Ok(())
        } else {
            self.err(&format!("{:?}", String::from_utf8_lossy(s)))
        }
    }

    fn sp(&mut self) -> G<()> {
        self.expect(b" ")
    }

    fn enter(&mut self) -> G<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err("less nesting");
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// `number` / `number64`: digits.
    fn number(&mut self) -> G<u64> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or_else(|| self.err("a number"), Ok)
    }

    /// `string = quoted / literal`; returns the value.
    fn string(&mut self) -> G<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => self.err("a string"),
        }
    }

    /// `quoted = DQUOTE *QUOTED-CHAR DQUOTE`; QUOTED-CHAR is a TEXT-CHAR
    /// (`%x01-7F` but CR, LF) other than `"` and `\`, an escaped `"` or
    /// `\`, or (with UTF8=ACCEPT / IMAP4rev2) a UTF-8 multi-byte character.
    fn quoted(&mut self) -> G<Vec<u8>> {
        self.expect(b"\"")?;
        let start = self.i;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("a closing quote"),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(c);
                            self.i += 1;
                        }
                        _ => return self.err("a quoted-special after \\"),
                    }
                }
                Some(0 | b'\r' | b'\n') => return self.err("a TEXT-CHAR"),
                Some(c) if c < 0x80 => {
                    out.push(c);
                    self.i += 1;
                }
                Some(_) => {
                    if !self.utf8 {
                        return self.err("7-bit text (UTF-8 is not enabled)");
                    }
                    let rest = &self.b[self.i..];
                    let len = match rest[0] {
                        0xc2..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf4 => 4,
                        _ => return self.err("a UTF-8 lead byte"),
                    };
                    if rest.len() < len || std::str::from_utf8(&rest[..len]).is_err() {
                        return self.err("a UTF-8 character");
                    }
                    out.extend_from_slice(&rest[..len]);
                    self.i += len;
                }
            }
        }
        let _ = start;
        Ok(out)
    }

    /// `literal = "{" number64 "}" CRLF *CHAR8` (no `+` from a server, no
    /// NUL: literal8 is not allowed here).
    fn literal(&mut self) -> G<Vec<u8>> {
        self.expect(b"{")?;
        let n = self.number()?;
        self.expect(b"}\r\n")?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if self.b.len() - self.i < n {
            return self.err("literal data of the announced length");
        }
        let data = &self.b[self.i..self.i + n];
        if let Some(p) = data.iter().position(|c| *c == 0) {
            self.i += p;
            return self.err("CHAR8 (no NUL in a literal)");
        }
        self.i += n;
        Ok(data.to_vec())
    }

    fn nil(&mut self) -> bool {
        self.eat(b"NIL")
    }

    fn nstring(&mut self) -> G<Option<Vec<u8>>> {
        if self.nil() {
            Ok(None)
        } else {
            self.string().map(Some)
        }
    }

    /// `body-fld-param = "(" string SP string *(SP string SP string) ")" / nil`
    fn params(&mut self) -> G<()> {
        if self.nil() {
            return Ok(());
        }
        self.expect(b"(")?;
        loop {
            self.string()?;
            self.sp()?;
            self.string()?;
            if self.eat(b")") {
                return Ok(());
            }
            self.sp()?;
        }
    }

    /// `body-fld-dsp = "(" string SP body-fld-param ")" / nil`
    fn disposition(&mut self) -> G<()> {
        if self.nil() {
            return Ok(());
        }
        self.expect(b"(")?;
        self.string()?;
        self.sp()?;
        self.params()?;
        self.expect(b")")
    }

    /// `body-fld-lang = nstring / "(" string *(SP string) ")"`
    fn language(&mut self) -> G<()> {
        if self.eat(b"(") {
            loop {
                self.string()?;
                if self.eat(b")") {
                    return Ok(());
                }
                self.sp()?;
            }
        }
        self.nstring().map(|_| ())
    }

    /// `body-extension = nstring / number / number64 / "(" body-extension
    /// *(SP body-extension) ")"`
    fn extension(&mut self) -> G<()> {
        self.enter()?;
        if self.eat(b"(") {
            loop {
                self.extension()?;
                if self.eat(b")") {
                    break;
                }
                self.sp()?;
            }
        } else if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.number()?;
        } else {
            self.nstring()?;
        }
        self.leave();
        Ok(())
    }

    /// `[SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc *(SP body-extension)]]]`
    fn ext_tail(&mut self) -> G<()> {
        if !self.eat(b" ") {
            return Ok(());
        }
        self.disposition()?;
        if !self.eat(b" ") {
            return Ok(());
        }
        self.language()?;
        if !self.eat(b" ") {
            return Ok(());
        }
        self.nstring()?;
        while self.eat(b" ") {
            self.extension()?;
        }
        Ok(())
    }

    /// `address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"`
    fn address(&mut self) -> G<()> {
        self.expect(b"(")?;
        self.nstring()?;
        self.sp()?;
        self.nstring()?;
        self.sp()?;
        self.nstring()?;
        self.sp()?;
        self.nstring()?;
        self.expect(b")")
    }

    /// `env-from` etc.: `"(" 1*address ")" / nil`
    fn addresses(&mut self) -> G<()> {
        if self.nil() {
            return Ok(());
        }
        self.expect(b"(")?;
        self.address()?;
        while !self.eat(b")") {
            self.address()?;
        }
        Ok(())
    }

    /// `envelope = "(" env-date SP env-subject SP env-from SP env-sender SP
    /// env-reply-to SP env-to SP env-cc SP env-bcc SP env-in-reply-to SP
    /// env-message-id ")"`
    fn envelope(&mut self) -> G<()> {
        self.expect(b"(")?;
        self.nstring()?;
        self.sp()?;
        self.nstring()?;
        for _ in 0..6 {
            self.sp()?;
            self.addresses()?;
        }
        self.sp()?;
        self.nstring()?;
        self.sp()?;
        self.nstring()?;
        self.expect(b")")
    }

    /// `body = "(" (body-type-1part / body-type-mpart) ")"`
    fn body(&mut self, extended: bool) -> G<()> {
        self.enter()?;
        self.expect(b"(")?;
        if self.peek() == Some(b'(') {
            // body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
            while self.peek() == Some(b'(') {
                self.body(extended)?;
            }
            self.sp()?;
            self.string()?;
            if extended {
                // body-ext-mpart = body-fld-param [SP body-fld-dsp ...]
                self.sp()?;
                self.params()?;
                self.ext_tail()?;
            }
        } else {
            let media = self.string()?;
            self.sp()?;
            let subtype = self.string()?;
            // body-fields = body-fld-param SP body-fld-id SP body-fld-desc
            //               SP body-fld-enc SP body-fld-octets
            self.sp()?;
            self.params()?;
            self.sp()?;
            self.nstring()?;
            self.sp()?;
            self.nstring()?;
            self.sp()?;
            self.string()?;
            self.sp()?;
            self.number()?;
            let is = |v: &[u8], s: &str| v.eq_ignore_ascii_case(s.as_bytes());
            if is(&media, "MESSAGE") && (is(&subtype, "RFC822") || is(&subtype, "GLOBAL")) {
                // body-type-msg: SP envelope SP body SP body-fld-lines
                self.sp()?;
                self.envelope()?;
                self.sp()?;
                self.body(extended)?;
                self.sp()?;
                self.number()?;
            } else if is(&media, "TEXT") {
                // body-type-text: SP body-fld-lines
                self.sp()?;
                self.number()?;
            }
            if extended {
                // body-ext-1part = body-fld-md5 [SP body-fld-dsp ...]
                self.sp()?;
                self.nstring()?;
                self.ext_tail()?;
            }
        }
        self.expect(b")")?;
        self.leave();
        Ok(())
    }

    fn end(&self) -> G<()> {
        if self.i == self.b.len() {
            Ok(())
        } else {
            self.err("the end of the output")
        }
    }
}

/// Checks that `output` is exactly one `body` (RFC 9051 §9): with
/// extension data when `extended` (BODYSTRUCTURE), without (BODY).
/// `utf8`: the session has UTF8=ACCEPT or IMAP4rev2 enabled, so quoted
/// strings may hold UTF-8.
pub fn check_body(output: &[u8], extended: bool, utf8: bool) -> Result<(), GrammarError> {
    let mut p = P {
        b: output,
        i: 0,
        utf8,
        depth: 0,
    };
    p.body(extended)?;
    p.end()
}

/// Checks that `output` is exactly one `envelope` (RFC 9051 §9).
pub fn check_envelope(output: &[u8], utf8: bool) -> Result<(), GrammarError> {
    let mut p = P {
        b: output,
        i: 0,
        utf8,
        depth: 0,
    };
    p.envelope()?;
    p.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rfc_examples_and_rejects_damage() {
        // RFC 9051 §7.5.2 example (BODYSTRUCTURE of a multipart).
        let ok = br#"(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73) "MIXED")"#;
        check_body(ok, false, false).unwrap();
        assert!(
            check_body(ok, true, false).is_err(),
            "extension data missing"
        );
        let ext = b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 3 1 NIL (\"ATTACHMENT\" (\"FILENAME\" {3}\r\na\"b)) (\"en\" \"zh\") NIL)";
        check_body(ext, true, false).unwrap();
        for bad in [
            &b"(\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 3)"[..], // no lines
            b"( \"MIXED\")",                                     // mpart without a body
            b"(\"APPLICATION\" \"X\" NIL NIL NIL \"7BIT\" 3) ",  // trailing byte
            b"(\"A\" \"B\" NIL NIL NIL \"7BIT\" {2}\r\n\0x)",    // NUL in literal / number
            b"(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 3)",  // no envelope
            "(\"A\" \"\u{4e2d}\" NIL NIL NIL \"7BIT\" 3)".as_bytes(), // 8-bit quoted in rev1
        ] {
            assert!(
                check_body(bad, false, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        check_body(
            "(\"A\" \"\u{4e2d}\" NIL NIL NIL \"7BIT\" 3)".as_bytes(),
            false,
            true,
        )
        .unwrap();
        let env = br#"("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev2 WG mtg summary and minutes" (("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu")) ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL "<B27397-0100000@cac.washington.edu>")"#;
        check_envelope(env, false).unwrap();
        assert!(check_envelope(&env[..env.len() - 1], false).is_err());
        assert!(check_envelope(b"(NIL NIL () NIL NIL NIL NIL NIL NIL NIL)", false).is_err());
    }
}
