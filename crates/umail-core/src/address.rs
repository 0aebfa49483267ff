//! Mail addresses and domains as RFC 5321 defines them, with SMTPUTF8 and IDNA.
//!
//! * A [`Domain`] is always held as its ASCII form (IDNA A-labels, lower case),
//!   so `例子.中国` and `xn--fsqu00a.xn--fiqs8s` are the same value. The
//!   Unicode form is produced on demand with [`Domain::to_unicode`].
//! * An [`Address`] keeps its local part exactly as given (RFC 5321 §2.4: the
//!   local part may be case sensitive) and offers [`Address::lookup_key`] for
//!   the case-insensitive lookups every mail system does in practice.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid domain or address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The input was empty.
    #[error("empty address")]
    Empty,
    /// There is no `@` separating local part and domain.
    #[error("missing '@' between local part and domain")]
    MissingAt,
    /// The local part is empty.
    #[error("empty local part")]
    EmptyLocalPart,
    /// The local part is longer than 64 octets (RFC 5321 §4.5.3.1.1).
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    /// The local part has a character or dot placement RFC 5321 §4.1.2 forbids.
    #[error("invalid local part: {0}")]
    InvalidLocalPart(&'static str),
    /// The local part contains non-ASCII characters but SMTPUTF8 was not allowed.
    #[error("non-ASCII local part requires SMTPUTF8")]
    Utf8NotAllowed,
    /// The domain is empty.
    #[error("empty domain")]
    EmptyDomain,
    /// The domain is longer than 255 octets (RFC 5321 §4.5.3.1.2).
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// A label is empty or longer than 63 octets.
    #[error("domain label empty or longer than 63 octets")]
    InvalidLabelLength,
    /// A label has a character outside letters, digits and hyphen, or starts or ends with a hyphen.
    #[error("invalid domain label: {0}")]
    InvalidLabel(String),
    /// IDNA conversion of an internationalised domain failed.
    #[error("invalid internationalised domain name")]
    Idna,
    /// An address literal (`[192.0.2.1]`, `[IPv6:...]`) is malformed.
    #[error("invalid address literal")]
    InvalidLiteral,
    /// The whole address is longer than 254 octets in the path (RFC 5321 §4.5.3.1.3).
    #[error("address too long")]
    TooLong,
}

/// A domain name in its canonical ASCII form (lower case, IDNA A-labels),
/// or an address literal such as `[192.0.2.1]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain(String);

impl Domain {
    /// Parses a domain given in ASCII or Unicode form. Internationalised
    /// names are converted to A-labels (UTS #46 processing); everything is
    /// lower-cased. Address literals are accepted and normalised.
    pub fn parse(input: &str) -> Result<Domain, AddressError> {
        if input.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        if input.starts_with('[') {
            return parse_literal(input).map(Domain);
        }
        // A single trailing dot is the DNS root, not part of a mail domain.
        let input = input.strip_suffix('.').unwrap_or(input);
        let ascii = if input.is_ascii() {
            input.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(input).map_err(|_| AddressError::Idna)?
        };
        validate_ascii_domain(&ascii)?;
        Ok(Domain(ascii))
    }

    /// The canonical ASCII form (A-labels, lower case).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Unicode form for display: A-labels are decoded to U-labels.
    pub fn to_unicode(&self) -> String {
        if self.is_literal() {
            return self.0.clone();
        }
        let (unicode, result) = idna::domain_to_unicode(&self.0);
        match result {
            Ok(()) => unicode,
            Err(_) => self.0.clone(),
        }
    }

    /// True when this is an address literal rather than a name.
    pub fn is_literal(&self) -> bool {
        self.0.starts_with('[')
    }

    /// True when any label is an IDNA A-label (`xn--`).
    pub fn is_internationalized(&self) -> bool {
        self.0.split('.').any(|l| l.starts_with("xn--"))
    }

    /// True when `self` is `other` or a subdomain of it.
    pub fn is_within(&self, other: &Domain) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.ends_with(&other.0)
                && self.0.as_bytes()[self.0.len() - other.0.len() - 1] == b'.')
    }
}

fn validate_ascii_domain(ascii: &str) -> Result<(), AddressError> {
    if ascii.is_empty() {
        return Err(AddressError::EmptyDomain);
    }
    // RFC 5321 §4.5.3.1.2
    if ascii.len() > 255 {
        return Err(AddressError::DomainTooLong);
    }
    for label in ascii.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(AddressError::InvalidLabelLength);
        }
        // RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str]
        let bytes = label.as_bytes();
        let ok_chars = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        if !ok_chars || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(AddressError::InvalidLabel(label.to_string()));
        }
    }
    Ok(())
}

// RFC 5321 §4.1.3 address literals.
fn parse_literal(input: &str) -> Result<String, AddressError> {
    let inner = input
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or(AddressError::InvalidLiteral)?;
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        let ip: Ipv6Addr = v6.parse().map_err(|_| AddressError::InvalidLiteral)?;
        return Ok(format!("[IPv6:{ip}]"));
    }
    let ip: Ipv4Addr = inner.parse().map_err(|_| AddressError::InvalidLiteral)?;
    Ok(format!("[{ip}]"))
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

impl Serialize for Domain {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Domain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Domain::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A mailbox address `local@domain` (RFC 5321 §4.1.2 `Mailbox`).
///
/// The local part is stored unquoted (the quoted form `"john doe"` is held as
/// `john doe`) and re-quoted on display when it needs to be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses an address, allowing a UTF-8 local part (SMTPUTF8, RFC 6531).
    pub fn parse(input: &str) -> Result<Address, AddressError> {
        Self::parse_with(input, true)
    }

    /// Parses an address; `allow_utf8` decides whether non-ASCII local parts
    /// are accepted (they are only legal in an SMTPUTF8 transaction).
    pub fn parse_with(input: &str, allow_utf8: bool) -> Result<Address, AddressError> {
        if input.is_empty() {
            return Err(AddressError::Empty);
        }
        // RFC 5321 §4.5.3.1.3: path is at most 256 octets including the angle brackets.
        if input.len() > 254 {
            return Err(AddressError::TooLong);
        }
        let at = input.rfind('@').ok_or(AddressError::MissingAt)?;
        let (local_raw, domain_raw) = (&input[..at], &input[at + 1..]);
        let local = parse_local_part(local_raw, allow_utf8)?;
        let domain = Domain::parse(domain_raw)?;
        Ok(Address { local, domain })
    }

    /// Builds an address from an already unquoted local part and a domain,
    /// validating the local part's characters.
    pub fn new(local: &str, domain: Domain) -> Result<Address, AddressError> {
        validate_unquoted_local(local, true)?;
        Ok(Address {
            local: local.to_string(),
            domain,
        })
    }

    /// The local part, unquoted, exactly as given.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// The key used for case-insensitive lookups: the local part lower-cased
    /// (Unicode-aware) and the canonical domain.
    pub fn lookup_key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain.as_str())
    }

    /// True when the local part or domain needs SMTPUTF8 to be transmitted.
    /// (An IDN domain can travel as A-labels; only a non-ASCII local part needs it.)
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }

    /// The address with the domain in Unicode form, for display to people.
    pub fn to_unicode(&self) -> String {
        format!("{}@{}", quote_local(&self.local), self.domain.to_unicode())
    }

    /// Returns the same address with another domain (used for domain aliases).
    pub fn with_domain(&self, domain: Domain) -> Address {
        Address {
            local: self.local.clone(),
            domain,
        }
    }
}

fn is_atext(c: char, allow_utf8: bool) -> bool {
    // RFC 5322 §3.2.3 atext; RFC 6531 §3.3 adds UTF8-non-ascii.
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (allow_utf8 && !c.is_ascii())
}

fn parse_local_part(raw: &str, allow_utf8: bool) -> Result<String, AddressError> {
    if raw.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    let local = if let Some(inner) = raw.strip_prefix('"') {
        // RFC 5321 §4.1.2 Quoted-string
        let inner = inner
            .strip_suffix('"')
            .ok_or(AddressError::InvalidLocalPart("unterminated quoted string"))?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    // quoted-pairSMTP = %d92 %d32-126
                    let next = chars
                        .next()
                        .ok_or(AddressError::InvalidLocalPart("dangling backslash"))?;
                    if !(' '..='~').contains(&next) {
                        return Err(AddressError::InvalidLocalPart("invalid quoted pair"));
                    }
                    out.push(next);
                }
                '"' => return Err(AddressError::InvalidLocalPart("unescaped quote")),
                c if c.is_ascii() => {
                    // qtextSMTP = %d32-33 / %d35-91 / %d93-126
                    if !(' '..='~').contains(&c) {
                        return Err(AddressError::InvalidLocalPart("control character"));
                    }
                    out.push(c);
                }
                c => {
                    if !allow_utf8 {
                        return Err(AddressError::Utf8NotAllowed);
                    }
                    out.push(c);
                }
            }
        }
        if out.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        out
    } else {
        validate_unquoted_local(raw, allow_utf8)?;
        raw.to_string()
    };
    // RFC 5321 §4.5.3.1.1
    if quote_local(&local).len() > 64 {
        return Err(AddressError::LocalPartTooLong);
    }
    Ok(local)
}

fn validate_unquoted_local(raw: &str, allow_utf8: bool) -> Result<(), AddressError> {
    if raw.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    // Dot-string = Atom *("." Atom)
    for atom in raw.split('.') {
        if atom.is_empty() {
            return Err(AddressError::InvalidLocalPart(
                "leading, trailing or double dot",
            ));
        }
        for c in atom.chars() {
            if !c.is_ascii() && !allow_utf8 {
                return Err(AddressError::Utf8NotAllowed);
            }
            if !is_atext(c, allow_utf8) {
                return Err(AddressError::InvalidLocalPart(
                    "character not allowed outside quotes",
                ));
            }
        }
    }
    Ok(())
}

fn is_dot_string(local: &str) -> bool {
    !local.is_empty()
        && local
            .split('.')
            .all(|a| !a.is_empty() && a.chars().all(|c| is_atext(c, true)))
}

/// Quotes a local part when it is not a Dot-string (RFC 5321 §4.1.2).
fn quote_local(local: &str) -> String {
    if is_dot_string(local) {
        return local.to_string();
    }
    let mut out = String::with_capacity(local.len() + 2);
    out.push('"');
    for c in local.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", quote_local(&self.local), self.domain)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Address::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The reverse path of `MAIL FROM`: an address, or the null path `<>` used by
/// bounces and other automatic replies (RFC 5321 §4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReversePath {
    /// `MAIL FROM:<>`
    Null,
    /// `MAIL FROM:<addr>`
    Address(Address),
}

impl ReversePath {
    /// The address, if not null.
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Address(a) => write!(f, "<{a}>"),
        }
    }
}

/// Fuzzing entry point: parsing never panics, and an address that parses
/// prints back to text that parses to the same address.
#[doc(hidden)]
pub fn fuzz_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Domain::parse(text);
    if let Ok(a) = Address::parse(text) {
        let printed = a.to_string();
        let again = Address::parse(&printed)
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(a, again, "round trip of {text:?}");
        let _ = a.to_unicode();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_address_round_trips() {
        let a = Address::parse("Alice.Smith@Example.COM").unwrap();
        assert_eq!(a.local_part(), "Alice.Smith");
        assert_eq!(a.domain().as_str(), "example.com");
        assert_eq!(a.to_string(), "Alice.Smith@example.com");
        assert_eq!(a.lookup_key(), "alice.smith@example.com");
    }

    #[test]
    fn chinese_domain_is_stored_as_punycode() {
        let a = Address::parse("张三@例子.中国").unwrap();
        assert_eq!(a.domain().as_str(), "xn--fsqu00a.xn--fiqs8s");
        assert_eq!(a.domain().to_unicode(), "例子.中国");
        assert_eq!(a.to_unicode(), "张三@例子.中国");
        assert!(a.needs_smtputf8());
        let b = Address::parse("张三@xn--fsqu00a.xn--fiqs8s").unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn utf8_local_part_needs_smtputf8() {
        assert_eq!(
            Address::parse_with("张三@example.com", false),
            Err(AddressError::Utf8NotAllowed)
        );
        assert!(Address::parse_with("zhang@例子.中国", false).is_ok());
    }

    #[test]
    fn quoted_local_parts() {
        let a = Address::parse(r#""john doe"@example.com"#).unwrap();
        assert_eq!(a.local_part(), "john doe");
        assert_eq!(a.to_string(), r#""john doe"@example.com"#);
        let b = Address::parse(r#""a\"b"@example.com"#).unwrap();
        assert_eq!(b.local_part(), "a\"b");
        assert_eq!(b.to_string(), r#""a\"b"@example.com"#);
        // a quoted dot-string is the same address as the unquoted one
        assert_eq!(
            Address::parse(r#""abc"@example.com"#).unwrap(),
            Address::parse("abc@example.com").unwrap()
        );
    }

    #[test]
    fn malformed_addresses_have_specific_errors() {
        use AddressError::*;
        let cases: &[(&str, AddressError)] = &[
            ("", Empty),
            ("alice", MissingAt),
            ("@example.com", EmptyLocalPart),
            ("alice@", EmptyDomain),
            (
                ".alice@example.com",
                InvalidLocalPart("leading, trailing or double dot"),
            ),
            (
                "al..ice@example.com",
                InvalidLocalPart("leading, trailing or double dot"),
            ),
            (
                "al ice@example.com",
                InvalidLocalPart("character not allowed outside quotes"),
            ),
            ("alice@-example.com", InvalidLabel("-example".into())),
            ("alice@exa_mple.com", InvalidLabel("exa_mple".into())),
            ("alice@example..com", InvalidLabelLength),
            (
                r#""abc@example.com"#,
                InvalidLocalPart("unterminated quoted string"),
            ),
            ("alice@[300.1.1.1]", InvalidLiteral),
        ];
        for (input, err) in cases {
            assert_eq!(Address::parse(input).as_ref().err(), Some(err), "{input}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(Address::parse(&long_local), Err(LocalPartTooLong));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert_eq!(Address::parse(&long_label), Err(InvalidLabelLength));
    }

    #[test]
    fn address_literals() {
        let a = Address::parse("postmaster@[192.0.2.1]").unwrap();
        assert!(a.domain().is_literal());
        let b = Address::parse("postmaster@[IPv6:2001:db8::1]").unwrap();
        assert_eq!(b.domain().as_str(), "[IPv6:2001:db8::1]");
    }

    #[test]
    fn subdomain_check() {
        let parent = Domain::parse("example.com").unwrap();
        assert!(
            Domain::parse("mail.example.com")
                .unwrap()
                .is_within(&parent)
        );
        assert!(parent.is_within(&parent));
        assert!(!Domain::parse("badexample.com").unwrap().is_within(&parent));
    }

    proptest::proptest! {
        #[test]
        fn display_then_parse_is_identity(local in "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-z0-9]{1,8}){0,2}",
                                          domain in "[a-z][a-z0-9]{0,10}(\\.[a-z][a-z0-9]{0,10}){1,3}") {
            let a = Address::parse(&format!("{local}@{domain}")).unwrap();
            let b = Address::parse(&a.to_string()).unwrap();
            proptest::prop_assert_eq!(a, b);
        }

        #[test]
        fn quoted_locals_round_trip(local in "[ -~]{1,30}") {
            let quoted = format!("\"{}\"@example.com", local.replace('\\', "\\\\").replace('"', "\\\""));
            let a = Address::parse(&quoted).unwrap();
            proptest::prop_assert_eq!(a.local_part(), local.as_str());
            let b = Address::parse(&a.to_string()).unwrap();
            proptest::prop_assert_eq!(a, b);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Address::parse(&s);
        }
    }
}
