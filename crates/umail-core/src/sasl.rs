//! SASL server mechanisms as sans-IO state machines.
//!
//! The protocol crates own the wire encoding (base64 lines in SMTP `AUTH`,
//! IMAP `AUTHENTICATE`, POP3 `AUTH`); this module owns the mechanisms:
//!
//! * `PLAIN` (RFC 4616) and `LOGIN` (draft-murchison-sasl-login): the
//!   password is checked by [`Directory::verify_password`], so stored hashes
//!   never leave the directory.
//! * `SCRAM-SHA-256` (RFC 7677, RFC 5802) without channel binding: the
//!   directory hands out salted verifiers ([`ScramCredentials`]), never a
//!   password. Unknown users get a made-up salt and fail at the end, so the
//!   exchange does not reveal which accounts exist.
//! * `CRAM-MD5` (RFC 2195): only for accounts that an operator gave a
//!   *legacy secret*. It needs the secret in a recoverable form on the
//!   server, which is why it is off by default: offer it only to old clients
//!   (Foxmail 4, Outlook Express) and only over TLS.
//!
//! [`SaslServer`] is the pure state machine; [`Authenticator`] drives it
//! against a [`Directory`] for protocol crates that just want a principal.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::directory::{Directory, DirectoryError};
use crate::model::Principal;

type HmacSha256 = Hmac<Sha256>;

/// Default PBKDF2 iteration count for new SCRAM verifiers (RFC 7677 asks for at least 4096).
pub const SCRAM_DEFAULT_ITERATIONS: u32 = 8192;

/// A SASL mechanism this module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// `PLAIN` (RFC 4616).
    Plain,
    /// `LOGIN`.
    Login,
    /// `SCRAM-SHA-256` (RFC 7677).
    ScramSha256,
    /// `CRAM-MD5` (RFC 2195), legacy.
    CramMd5,
}

impl Mechanism {
    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::CramMd5 => "CRAM-MD5",
        }
    }

    /// Parses a mechanism name, case-insensitively.
    pub fn parse(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::Login,
            Mechanism::ScramSha256,
            Mechanism::CramMd5,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// True when the mechanism sends the password in the clear (inside the
    /// SASL exchange), so protocols must require TLS before offering it.
    pub fn is_plaintext(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client's message does not follow the mechanism's syntax.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// The credentials are wrong, the user is unknown or the account is not usable.
    #[error("authentication failed")]
    InvalidCredentials,
    /// The client cancelled the exchange (`*`).
    #[error("authentication cancelled")]
    Cancelled,
    /// The client asked for something not supported (channel binding, authzid).
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The mechanism is not available for this account (no legacy secret).
    #[error("mechanism not available")]
    MechanismUnavailable,
}

/// Salted SCRAM-SHA-256 verifiers as stored for an account (RFC 5802 §3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredentials {
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: [u8; 32],
}

impl fmt::Debug for ScramCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl ScramCredentials {
    /// Derives verifiers from a password with a given salt and iteration count.
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        ScramCredentials {
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Derives verifiers with a fresh random salt and the default iteration count.
    pub fn generate(password: &str) -> ScramCredentials {
        let salt: [u8; 16] = rand::rng().random();
        Self::derive(password, &salt, SCRAM_DEFAULT_ITERATIONS)
    }

    /// The storage form: `SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>` (base64).
    pub fn to_storage(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }

    /// Parses the storage form.
    pub fn from_storage(s: &str) -> Option<ScramCredentials> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramCredentials {
            iterations: iter.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }
}

/// What the state machine needs next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge to the client (the protocol encodes it).
    Challenge(Vec<u8>),
    /// Check this password with the directory, then call
    /// [`SaslServer::password_checked`].
    VerifyPassword {
        /// The login name.
        authcid: String,
        /// The password.
        password: String,
    },
    /// Look up SCRAM verifiers for `username`, then call
    /// [`SaslServer::provide_scram`].
    NeedScramCredentials {
        /// The login name.
        username: String,
    },
    /// Look up the legacy secret for `username`, then call
    /// [`SaslServer::provide_secret`].
    NeedLegacySecret {
        /// The login name.
        username: String,
    },
    /// Authenticated as `authcid`. `additional` is the server's final data
    /// (SCRAM `v=`), sent with the success reply or as a last challenge.
    Success {
        /// The authenticated login name.
        authcid: String,
        /// Final server data for the client, if the mechanism has any.
        additional: Option<Vec<u8>>,
    },
    /// The exchange failed.
    Failure(SaslError),
}

#[derive(Debug)]
enum State {
    Start,
    PlainWantResponse,
    LoginWantUser,
    LoginWantPassword {
        user: String,
    },
    AwaitPasswordCheck {
        authcid: String,
    },
    ScramWantClientFirst,
    ScramAwaitCredentials {
        username: String,
        client_first_bare: String,
        gs2_header: String,
        client_nonce: String,
    },
    ScramWantClientFinal {
        username: String,
        expected: ScramExpectation,
    },
    CramAwaitSecret {
        username: String,
        digest: String,
        challenge: String,
    },
    CramWantResponse {
        challenge: String,
    },
    Done,
}

#[derive(Debug)]
struct ScramExpectation {
    auth_message_prefix: String,
    gs2_header: String,
    nonce: String,
    credentials: Option<ScramCredentials>,
}

/// A server-side SASL exchange for one mechanism.
#[derive(Debug)]
pub struct SaslServer {
    mechanism: Mechanism,
    hostname: String,
    state: State,
}

impl SaslServer {
    /// Starts an exchange. `hostname` appears in the CRAM-MD5 challenge.
    pub fn new(mechanism: Mechanism, hostname: &str) -> SaslServer {
        SaslServer {
            mechanism,
            hostname: hostname.to_string(),
            state: State::Start,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Feeds the client's (decoded) message: the initial response for the
    /// first call (`None` when the client sent none), then each answer to a
    /// challenge. A client `*` cancel is the protocol's business: call
    /// [`SaslServer::cancel`].
    pub fn handle_client(&mut self, input: Option<&[u8]>) -> Step {
        let state = std::mem::replace(&mut self.state, State::Done);
        match (state, self.mechanism) {
            (State::Start, Mechanism::Plain) => match input {
                None => {
                    // RFC 4616 §2: no initial response, so an empty challenge.
                    self.state = State::PlainWantResponse;
                    Step::Challenge(Vec::new())
                }
                Some(data) => self.plain(data),
            },
            (State::Start, Mechanism::Login) => match input {
                // RFC-less but universal: an initial response is the username.
                Some(data) if !data.is_empty() => self.login_user(data),
                _ => {
                    self.state = State::LoginWantUser;
                    Step::Challenge(b"Username:".to_vec())
                }
            },
            (State::LoginWantUser, Mechanism::Login) => self.login_user(input.unwrap_or_default()),
            (State::PlainWantResponse, _) => self.plain(input.unwrap_or_default()),
            (State::LoginWantPassword { user }, _) => {
                let password = match String::from_utf8(input.unwrap_or_default().to_vec()) {
                    Ok(p) => p,
                    Err(_) => return self.fail(SaslError::Malformed("password is not UTF-8")),
                };
                self.state = State::AwaitPasswordCheck {
                    authcid: user.clone(),
                };
                Step::VerifyPassword {
                    authcid: user,
                    password,
                }
            }
            (State::Start, Mechanism::ScramSha256) => match input {
                Some(data) if !data.is_empty() => self.scram_client_first(data),
                _ => {
                    self.state = State::ScramWantClientFirst;
                    Step::Challenge(Vec::new())
                }
            },
            (State::ScramWantClientFirst, _) => self.scram_client_first(input.unwrap_or_default()),
            (State::ScramWantClientFinal { username, expected }, _) => {
                self.scram_client_final(username, expected, input.unwrap_or_default())
            }
            (State::Start, Mechanism::CramMd5) => {
                if input.is_some_and(|i| !i.is_empty()) {
                    return self.fail(SaslError::Malformed("CRAM-MD5 takes no initial response"));
                }
                let nonce: u64 = rand::rng().random();
                let challenge = format!(
                    "<{}.{}@{}>",
                    nonce,
                    chrono::Utc::now().timestamp(),
                    self.hostname
                );
                self.state = State::CramWantResponse {
                    challenge: challenge.clone(),
                };
                Step::Challenge(challenge.into_bytes())
            }
            (State::CramWantResponse { challenge }, _) => {
                let text = match std::str::from_utf8(input.unwrap_or_default()) {
                    Ok(t) => t,
                    Err(_) => return self.fail(SaslError::Malformed("response is not UTF-8")),
                };
                let Some((user, digest)) = text.rsplit_once(' ') else {
                    return self.fail(SaslError::Malformed("expected 'user digest'"));
                };
                if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return self.fail(SaslError::Malformed("digest is not 32 hex digits"));
                }
                self.state = State::CramAwaitSecret {
                    username: user.to_string(),
                    digest: digest.to_ascii_lowercase(),
                    challenge,
                };
                Step::NeedLegacySecret {
                    username: user.to_string(),
                }
            }
            _ => self.fail(SaslError::Malformed("unexpected message")),
        }
    }

    fn fail(&mut self, e: SaslError) -> Step {
        self.state = State::Done;
        Step::Failure(e)
    }

    /// The client cancelled the exchange.
    pub fn cancel(&mut self) -> Step {
        self.fail(SaslError::Cancelled)
    }

    // RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
    fn plain(&mut self, data: &[u8]) -> Step {
        let mut parts = data.split(|b| *b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.fail(SaslError::Malformed(
                "PLAIN needs authzid NUL authcid NUL password",
            ));
        };
        let (Ok(authzid), Ok(authcid), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(password),
        ) else {
            return self.fail(SaslError::Malformed("PLAIN fields must be UTF-8"));
        };
        if authcid.is_empty() || password.is_empty() {
            return self.fail(SaslError::Malformed("empty user or password"));
        }
        // Acting as another user is not supported: authzid must be empty or the same user.
        if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid) {
            return self.fail(SaslError::Unsupported("authorization identity differs"));
        }
        self.state = State::AwaitPasswordCheck {
            authcid: authcid.to_string(),
        };
        Step::VerifyPassword {
            authcid: authcid.to_string(),
            password: password.to_string(),
        }
    }

    fn login_user(&mut self, data: &[u8]) -> Step {
        match std::str::from_utf8(data) {
            Ok(user) if !user.is_empty() => {
                self.state = State::LoginWantPassword {
                    user: user.to_string(),
                };
                Step::Challenge(b"Password:".to_vec())
            }
            _ => self.fail(SaslError::Malformed("bad LOGIN user name")),
        }
    }

    /// Reports the result of a [`Step::VerifyPassword`].
    pub fn password_checked(&mut self, ok: bool) -> Step {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitPasswordCheck { authcid } if ok => Step::Success {
                authcid,
                additional: None,
            },
            State::AwaitPasswordCheck { .. } => Step::Failure(SaslError::InvalidCredentials),
            _ => Step::Failure(SaslError::Malformed("no password check pending")),
        }
    }

    // RFC 5802 §7: client-first-message = gs2-header client-first-message-bare
    fn scram_client_first(&mut self, data: &[u8]) -> Step {
        let Ok(text) = std::str::from_utf8(data) else {
            return self.fail(SaslError::Malformed("client-first-message is not UTF-8"));
        };
        let mut fields = text.splitn(3, ',');
        let (Some(cbind), Some(authzid), Some(bare)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return self.fail(SaslError::Malformed("client-first-message"));
        };
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => {
                return self.fail(SaslError::Unsupported("channel binding"));
            }
            _ => return self.fail(SaslError::Malformed("gs2-cbind-flag")),
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return self.fail(SaslError::Malformed("gs2 authzid"));
        }
        let gs2_header = format!("{cbind},{authzid},");
        if bare.starts_with("m=") {
            return self.fail(SaslError::Unsupported("mandatory extension"));
        }
        let mut username = None;
        let mut nonce = None;
        for attr in bare.split(',') {
            if let Some(v) = attr.strip_prefix("n=") {
                username = decode_saslname(v);
                if username.is_none() {
                    return self.fail(SaslError::Malformed("saslname escaping"));
                }
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v.to_string());
            }
        }
        let (Some(username), Some(nonce)) = (username, nonce) else {
            return self.fail(SaslError::Malformed("missing n= or r="));
        };
        if username.is_empty()
            || nonce.is_empty()
            || !nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return self.fail(SaslError::Malformed("bad username or nonce"));
        }
        if let Some(a) = authzid.strip_prefix("a=") {
            match decode_saslname(a) {
                Some(a) if a.eq_ignore_ascii_case(&username) => {}
                _ => return self.fail(SaslError::Unsupported("authorization identity differs")),
            }
        }
        self.state = State::ScramAwaitCredentials {
            username: username.clone(),
            client_first_bare: bare.to_string(),
            gs2_header,
            client_nonce: nonce,
        };
        Step::NeedScramCredentials { username }
    }

    /// Answers a [`Step::NeedScramCredentials`]; `None` for an unknown user
    /// (the exchange continues with a made-up salt and fails at the end).
    pub fn provide_scram(&mut self, credentials: Option<ScramCredentials>) -> Step {
        let State::ScramAwaitCredentials {
            username,
            client_first_bare,
            gs2_header,
            client_nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Step::Failure(SaslError::Malformed("no SCRAM lookup pending"));
        };
        let server_nonce: [u8; 18] = rand::rng().random();
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let (salt, iterations) = match &credentials {
            Some(c) => (c.salt.clone(), c.iterations),
            // A stable fake salt per user name, so probing twice looks consistent.
            None => (
                Sha256::digest(format!("umail-fake-salt:{username}")).to_vec()[..16].to_vec(),
                SCRAM_DEFAULT_ITERATIONS,
            ),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        self.state = State::ScramWantClientFinal {
            username,
            expected: ScramExpectation {
                auth_message_prefix: format!("{client_first_bare},{server_first}"),
                gs2_header,
                nonce,
                credentials,
            },
        };
        Step::Challenge(server_first.into_bytes())
    }

    // RFC 5802 §3 and §7: client-final-message = channel-binding "," nonce ["," extensions] "," proof
    fn scram_client_final(
        &mut self,
        username: String,
        expected: ScramExpectation,
        data: &[u8],
    ) -> Step {
        let Ok(text) = std::str::from_utf8(data) else {
            return self.fail(SaslError::Malformed("client-final-message is not UTF-8"));
        };
        let Some((without_proof, proof_b64)) = text.rsplit_once(",p=") else {
            return self.fail(SaslError::Malformed("missing proof"));
        };
        let mut channel_binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel_binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        let expected_cb = B64.encode(expected.gs2_header.as_bytes());
        if channel_binding != Some(expected_cb.as_str()) {
            return self.fail(SaslError::Malformed("channel binding mismatch"));
        }
        if nonce != Some(expected.nonce.as_str()) {
            return self.fail(SaslError::Malformed("nonce mismatch"));
        }
        let Ok(proof) = B64.decode(proof_b64) else {
            return self.fail(SaslError::Malformed("proof is not base64"));
        };
        let Some(creds) = expected.credentials else {
            return self.fail(SaslError::InvalidCredentials);
        };
        if proof.len() != 32 {
            return self.fail(SaslError::InvalidCredentials);
        }
        let auth_message = format!("{},{without_proof}", expected.auth_message_prefix);
        let client_signature = hmac(&creds.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(computed.ct_eq(&creds.stored_key)) {
            return self.fail(SaslError::InvalidCredentials);
        }
        let server_signature = hmac(&creds.server_key, auth_message.as_bytes());
        self.state = State::Done;
        Step::Success {
            authcid: username,
            additional: Some(format!("v={}", B64.encode(server_signature)).into_bytes()),
        }
    }

    /// Answers a [`Step::NeedLegacySecret`].
    pub fn provide_secret(&mut self, secret: Option<&str>) -> Step {
        let State::CramAwaitSecret {
            username,
            digest,
            challenge,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Step::Failure(SaslError::Malformed("no secret lookup pending"));
        };
        let Some(secret) = secret else {
            return Step::Failure(SaslError::InvalidCredentials);
        };
        let expected = cram_md5_digest(secret, &challenge);
        if bool::from(expected.as_bytes().ct_eq(digest.as_bytes())) {
            Step::Success {
                authcid: username,
                additional: None,
            }
        } else {
            Step::Failure(SaslError::InvalidCredentials)
        }
    }
}

/// HMAC-MD5 of `challenge` keyed by `secret`, as lower-case hex (RFC 2195).
pub fn cram_md5_digest(secret: &str, challenge: &str) -> String {
    let mut mac = Hmac::<md5::Md5>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(challenge.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// RFC 5802 §5.1: "=2C" and "=3D" escape ',' and '='; any other '=' is an error.
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Result of one [`Authenticator::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send this challenge (raw bytes; the protocol encodes them).
    Challenge(Vec<u8>),
    /// Authenticated. `additional` is final server data (SCRAM) that the
    /// protocol sends with its success reply, or as a last challenge where
    /// the protocol cannot carry it.
    Success {
        /// The principal.
        principal: Principal,
        /// Final server data.
        additional: Option<Vec<u8>>,
    },
    /// Failed.
    Failure(SaslError),
}

/// Drives a [`SaslServer`] against a [`Directory`].
#[derive(Debug)]
pub struct Authenticator {
    server: SaslServer,
}

impl Authenticator {
    /// Starts an exchange.
    pub fn new(mechanism: Mechanism, hostname: &str) -> Authenticator {
        Authenticator {
            server: SaslServer::new(mechanism, hostname),
        }
    }

    /// The mechanism in use.
    pub fn mechanism(&self) -> Mechanism {
        self.server.mechanism()
    }

    /// Feeds one client message and resolves any directory lookups.
    pub async fn step(
        &mut self,
        input: Option<&[u8]>,
        directory: &dyn Directory,
    ) -> Result<AuthStep, DirectoryError> {
        let mut step = self.server.handle_client(input);
        loop {
            step = match step {
                Step::Challenge(c) => return Ok(AuthStep::Challenge(c)),
                Step::Failure(e) => return Ok(AuthStep::Failure(e)),
                Step::VerifyPassword { authcid, password } => {
                    match directory.verify_password(&authcid, &password).await? {
                        Some(principal) => {
                            // Consume the pending state so the machine ends cleanly.
                            let _ = self.server.password_checked(true);
                            return Ok(AuthStep::Success {
                                principal,
                                additional: None,
                            });
                        }
                        None => self.server.password_checked(false),
                    }
                }
                Step::NeedScramCredentials { username } => {
                    let creds = directory.scram_credentials(&username).await?;
                    self.server.provide_scram(creds)
                }
                Step::NeedLegacySecret { username } => {
                    let secret = directory.legacy_secret(&username).await?;
                    if secret.is_none() {
                        let _ = self.server.provide_secret(None);
                        return Ok(AuthStep::Failure(SaslError::InvalidCredentials));
                    }
                    self.server.provide_secret(secret.as_deref())
                }
                Step::Success {
                    authcid,
                    additional,
                } => {
                    return Ok(match directory.principal(&authcid).await? {
                        Some(p) if p.status == crate::model::AccountStatus::Enabled => {
                            AuthStep::Success {
                                principal: p,
                                additional,
                            }
                        }
                        _ => AuthStep::Failure(SaslError::InvalidCredentials),
                    });
                }
            };
        }
    }

    /// The client cancelled.
    pub fn cancel(&mut self) -> AuthStep {
        match self.server.cancel() {
            Step::Failure(e) => AuthStep::Failure(e),
            _ => AuthStep::Failure(SaslError::Cancelled),
        }
    }
}

/// Fuzzing entry point: the first byte picks a mechanism, the rest is split
/// at `\n` into client messages. No input may panic the state machine.
#[doc(hidden)]
pub fn fuzz_exchange(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mechanism = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
    ][usize::from(selector) % 4];
    let mut server = SaslServer::new(mechanism, "fuzz.example");
    let creds = ScramCredentials::derive("pw", b"fixed-salt", 4096);
    let mut messages = rest.split(|b| *b == b'\n');
    let mut step = server.handle_client(messages.next());
    for _ in 0..8 {
        step = match step {
            Step::Challenge(_) => match messages.next() {
                Some(m) => server.handle_client(Some(m)),
                None => return,
            },
            Step::VerifyPassword { password, .. } => server.password_checked(password == "pw"),
            Step::NeedScramCredentials { .. } => server.provide_scram(Some(creds.clone())),
            Step::NeedLegacySecret { .. } => server.provide_secret(Some("secret")),
            Step::Success { .. } | Step::Failure(_) => return,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_with_initial_response() {
        let mut s = SaslServer::new(Mechanism::Plain, "h");
        assert_eq!(
            s.handle_client(Some(b"\0alice@example.com\0secret")),
            Step::VerifyPassword {
                authcid: "alice@example.com".into(),
                password: "secret".into()
            }
        );
        assert!(matches!(s.password_checked(true), Step::Success { .. }));
    }

    #[test]
    fn plain_without_initial_response_sends_empty_challenge() {
        let mut s = SaslServer::new(Mechanism::Plain, "h");
        assert_eq!(s.handle_client(None), Step::Challenge(vec![]));
        assert!(matches!(
            s.handle_client(Some(b"\0bob\0pw")),
            Step::VerifyPassword { .. }
        ));
        assert_eq!(
            s.password_checked(false),
            Step::Failure(SaslError::InvalidCredentials)
        );
    }

    #[test]
    fn plain_rejects_malformed_and_foreign_authzid() {
        for bad in [
            &b"nonul"[..],
            b"\0user",
            b"\0user\0pw\0extra",
            b"\0\0pw",
            b"\0u\0",
        ] {
            let mut s = SaslServer::new(Mechanism::Plain, "h");
            assert!(
                matches!(
                    s.handle_client(Some(bad)),
                    Step::Failure(SaslError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let mut s = SaslServer::new(Mechanism::Plain, "h");
        assert_eq!(
            s.handle_client(Some(b"admin\0user\0pw")),
            Step::Failure(SaslError::Unsupported("authorization identity differs"))
        );
    }

    #[test]
    fn login_two_challenges() {
        let mut s = SaslServer::new(Mechanism::Login, "h");
        assert_eq!(
            s.handle_client(None),
            Step::Challenge(b"Username:".to_vec())
        );
        assert_eq!(
            s.handle_client(Some(b"alice")),
            Step::Challenge(b"Password:".to_vec())
        );
        assert_eq!(
            s.handle_client(Some(b"pw")),
            Step::VerifyPassword {
                authcid: "alice".into(),
                password: "pw".into()
            }
        );
    }

    /// A client side of SCRAM-SHA-256 written from RFC 5802 §3, to test the server.
    fn scram_client_final(
        password: &str,
        client_first_bare: &str,
        server_first: &str,
        gs2: &str,
    ) -> String {
        let mut salt = None;
        let mut iter = None;
        let mut nonce = None;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(B64.decode(v).unwrap());
            } else if let Some(v) = attr.strip_prefix("i=") {
                iter = Some(v.parse::<u32>().unwrap());
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v.to_string());
            }
        }
        let creds = ScramCredentials::derive(password, &salt.unwrap(), iter.unwrap());
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(
            password.as_bytes(),
            &creds.salt,
            creds.iterations,
            &mut salted,
        );
        let client_key = hmac(&salted, b"Client Key");
        let without_proof = format!("c={},r={}", B64.encode(gs2), nonce.unwrap());
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&creds.stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(sig.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn scram_sha256_full_exchange_and_wrong_password() {
        let stored = ScramCredentials::generate("correct horse");
        for (password, should_pass) in [("correct horse", true), ("wrong", false)] {
            let mut s = SaslServer::new(Mechanism::ScramSha256, "h");
            let bare = "n=alice@example.com,r=rOprNGfwEbeRWgbNEkqO";
            let step = s.handle_client(Some(format!("n,,{bare}").as_bytes()));
            assert_eq!(
                step,
                Step::NeedScramCredentials {
                    username: "alice@example.com".into()
                }
            );
            let Step::Challenge(server_first) = s.provide_scram(Some(stored.clone())) else {
                panic!()
            };
            let server_first = String::from_utf8(server_first).unwrap();
            assert!(server_first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
            let final_msg = scram_client_final(password, bare, &server_first, "n,,");
            let step = s.handle_client(Some(final_msg.as_bytes()));
            if should_pass {
                let Step::Success {
                    authcid,
                    additional,
                } = step
                else {
                    panic!("{step:?}")
                };
                assert_eq!(authcid, "alice@example.com");
                assert!(additional.unwrap().starts_with(b"v="));
            } else {
                assert_eq!(step, Step::Failure(SaslError::InvalidCredentials));
            }
        }
    }

    #[test]
    fn scram_unknown_user_fails_only_at_the_end() {
        let mut s = SaslServer::new(Mechanism::ScramSha256, "h");
        let bare = "n=ghost,r=abc";
        s.handle_client(Some(format!("n,,{bare}").as_bytes()));
        let Step::Challenge(sf) = s.provide_scram(None) else {
            panic!()
        };
        let final_msg = scram_client_final("x", bare, std::str::from_utf8(&sf).unwrap(), "n,,");
        assert_eq!(
            s.handle_client(Some(final_msg.as_bytes())),
            Step::Failure(SaslError::InvalidCredentials)
        );
    }

    #[test]
    fn scram_rejects_channel_binding_and_nonce_tampering() {
        let mut s = SaslServer::new(Mechanism::ScramSha256, "h");
        assert_eq!(
            s.handle_client(Some(b"p=tls-unique,,n=a,r=b")),
            Step::Failure(SaslError::Unsupported("channel binding"))
        );
        let mut s = SaslServer::new(Mechanism::ScramSha256, "h");
        s.handle_client(Some(b"n,,n=a,r=abc"));
        s.provide_scram(Some(ScramCredentials::generate("pw")));
        assert_eq!(
            s.handle_client(Some(b"c=biws,r=abcOTHER,p=AAAA")),
            Step::Failure(SaslError::Malformed("nonce mismatch"))
        );
    }

    #[test]
    fn scram_storage_round_trip() {
        let c = ScramCredentials::generate("pw");
        assert_eq!(ScramCredentials::from_storage(&c.to_storage()), Some(c));
        assert_eq!(ScramCredentials::from_storage("garbage"), None);
    }

    #[test]
    fn saslname_escapes() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(decode_saslname("a=b"), None);
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        // RFC 2195 §2 example.
        assert_eq!(
            cram_md5_digest(
                "tanstaaftanstaaf",
                "<1896.697170952@postoffice.reston.mci.net>"
            ),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
        let mut s = SaslServer::new(Mechanism::CramMd5, "mail.example.com");
        let Step::Challenge(ch) = s.handle_client(None) else {
            panic!()
        };
        let ch = String::from_utf8(ch).unwrap();
        let digest = cram_md5_digest("secret", &ch);
        assert_eq!(
            s.handle_client(Some(format!("tim {digest}").as_bytes())),
            Step::NeedLegacySecret {
                username: "tim".into()
            }
        );
        assert!(matches!(
            s.provide_secret(Some("secret")),
            Step::Success { .. }
        ));
    }

    #[test]
    fn cram_md5_without_secret_fails() {
        let mut s = SaslServer::new(Mechanism::CramMd5, "h");
        s.handle_client(None);
        s.handle_client(Some(b"tim 0123456789abcdef0123456789abcdef"));
        assert_eq!(
            s.provide_secret(None),
            Step::Failure(SaslError::InvalidCredentials)
        );
    }
}
