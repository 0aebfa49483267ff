//! DKIM signing of outbound mail (RFC 6376) with mail-auth, key
//! generation for `umail domain dkim generate`, and [`DkimKeySource`]: where
//! the queue runner reads the keys.

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::generate::DkimKeyPair;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

/// Header fields signed (RFC 6376 §5.4.1 recommendations).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "References",
];

/// A domain's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    /// Signing domain (`d=`).
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// RSA private key, PKCS#1 DER.
    pub private_key: Vec<u8>,
}

/// DKIM failures.
#[derive(Debug, thiserror::Error)]
#[error("DKIM: {0}")]
pub struct DkimError(String);

impl DkimError {
    /// An error with this description (for [`DkimKeySource`]
    /// implementations whose own errors are of another type).
    pub fn new(description: impl Into<String>) -> DkimError {
        DkimError(description.into())
    }
}

/// Where the queue runner finds the signing keys: umail's store, an
/// integrator's key service, or a fixed list (`Vec<DkimKey>`).
///
/// The runner re-reads the keys at most once every
/// [`DKIM_CACHE`](crate::delivery::DKIM_CACHE); a domain without a key is
/// sent unsigned, and so is everything while the source fails.
#[async_trait::async_trait]
pub trait DkimKeySource: Send + Sync {
    /// Every domain's signing key, at most one per domain.
    async fn signing_keys(&self) -> Result<Vec<DkimKey>, DkimError>;
}

#[async_trait::async_trait]
impl DkimKeySource for Vec<DkimKey> {
    async fn signing_keys(&self) -> Result<Vec<DkimKey>, DkimError> {
        Ok(self.clone())
    }
}

/// A fresh RSA-2048 key: the private key (PKCS#1 DER) and the DNS TXT
/// record value to publish at `selector._domainkey.domain`.
pub fn generate() -> Result<(Vec<u8>, String), DkimError> {
    let pair = DkimKeyPair::generate_rsa(2048).map_err(|e| DkimError(e.to_string()))?;
    let txt = format!("v=DKIM1; k=rsa; p={}", pair.encoded_public_key());
    Ok((pair.private_key().to_vec(), txt))
}

/// The TXT record for an existing private key.
pub fn txt_record(private_key: &[u8]) -> Result<String, DkimError> {
    use base64::Engine;
    let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
        private_key.to_vec(),
    )))
    .map_err(|e| DkimError(e.to_string()))?;
    Ok(format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(key.public_key())
    ))
}

/// Signs `message`; returns the `DKIM-Signature:` header field (with CRLF)
/// to put in front of it.
pub fn sign(key: &DkimKey, message: &[u8]) -> Result<Vec<u8>, DkimError> {
    let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(
        key.private_key.clone(),
    )))
    .map_err(|e| DkimError(e.to_string()))?;
    let sig = DkimSigner::from_key(rsa)
        .domain(key.domain.clone())
        .selector(key.selector.clone())
        .headers(SIGNED_HEADERS.iter().copied())
        .sign(message)
        .map_err(|e| DkimError(e.to_string()))?;
    Ok(sig.to_header().into_bytes())
}

/// The domain of the first `From:` address, lower case: whose key signs.
pub fn signing_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    let from = parsed.from()?.first()?.address()?.to_string();
    from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_and_sign() {
        let (private_key, txt) = generate().unwrap();
        assert!(txt.starts_with("v=DKIM1; k=rsa; p=MII"));
        assert_eq!(txt_record(&private_key).unwrap(), txt);
        let key = DkimKey {
            domain: "example.com".into(),
            selector: "umail".into(),
            private_key,
        };
        let header = sign(&key, b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n").unwrap();
        let h = String::from_utf8(header).unwrap();
        assert!(h.starts_with("DKIM-Signature:"), "{h}");
        assert!(h.contains("d=example.com") && h.contains("s=umail") && h.ends_with("\r\n"));
    }

    #[tokio::test]
    async fn signature_verifies_against_the_published_record() {
        use std::borrow::Borrow;
        use std::collections::HashMap;
        use std::hash::Hash;
        use std::sync::Mutex;
        use std::time::Instant;

        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::common::verify::DomainKey;
        use mail_auth::{
            AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
        };

        /// The "DNS": the TXT record we tell operators to publish.
        struct Zone(Mutex<HashMap<Box<str>, Txt>>);
        impl ResolverCache<Box<str>, Txt> for Zone {
            fn get<Q>(&self, name: &Q) -> Option<Txt>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.0.lock().unwrap().get(name).cloned()
            }
            fn remove<Q>(&self, name: &Q) -> Option<Txt>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.0.lock().unwrap().remove(name)
            }
            fn insert(&self, key: Box<str>, value: Txt, _: Instant) {
                self.0.lock().unwrap().insert(key, value);
            }
        }

        let (private_key, txt) = generate().unwrap();
        let key = DkimKey {
            domain: "example.com".into(),
            selector: "umail".into(),
            private_key,
        };
        let message = b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: signed\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <s@example.com>\r\n\r\nHello,\r\n\r\nbody text.\r\n";
        assert_eq!(signing_domain(message).as_deref(), Some("example.com"));
        let mut signed = sign(&key, message).unwrap();
        signed.extend_from_slice(message);

        let zone = Zone(Mutex::new(HashMap::new()));
        let record = Txt::from(DomainKey::parse(txt.as_bytes()).unwrap());
        for name in [
            "umail._domainkey.example.com.",
            "umail._domainkey.example.com",
        ] {
            zone.insert(name.into(), record.clone(), Instant::now());
        }
        let authenticator = MessageAuthenticator::new_system_conf()
            .or_else(|_| MessageAuthenticator::new_cloudflare())
            .unwrap();
        let parsed = AuthenticatedMessage::parse(&signed).unwrap();
        let out = authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&zone))
            .await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].result(), &DkimResult::Pass);

        // A changed body no longer verifies.
        let mut tampered = signed.clone();
        let n = tampered.len();
        tampered[n - 4] = b'X';
        let parsed = AuthenticatedMessage::parse(&tampered).unwrap();
        let out = authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&zone))
            .await;
        assert_ne!(out[0].result(), &DkimResult::Pass);
    }
}
