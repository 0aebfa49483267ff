//! Configuration types: the TOML file an operator writes, with every default
//! written down once, here.
//!
//! Every key is optional. Unknown keys are an error naming the key, so a typo
//! never silently falls back to a default. Parse with any serde TOML reader,
//! e.g. `toml::from_str::<Config>(text)`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[tls]`
    pub tls: TlsConfig,
    /// `[listeners]`: absent means the loopback development set.
    pub listeners: ListenersConfig,
    /// `[smtp]`
    pub smtp: SmtpConfig,
    /// `[imap]`
    pub imap: ImapConfig,
    /// `[pop3]`
    pub pop3: Pop3Config,
    /// `[security]`
    pub security: SecurityConfig,
    /// `[delivery]`
    pub delivery: DeliveryConfig,
    /// `[dns]`
    pub dns: DnsConfig,
    /// `[log]`
    pub log: LogConfig,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Name used in greetings, `Received` headers and EHLO. Default: the
    /// machine's host name, or `localhost`.
    pub hostname: Option<String>,
    /// Where the database, certificate and admin socket live. Default `./umail-data`.
    pub data_dir: PathBuf,
    /// How long a graceful shutdown waits for in-flight transactions, seconds. Default 30.
    pub shutdown_grace_secs: u64,
    /// Largest number of concurrent sessions over all listeners. Default 2000.
    pub max_sessions: usize,
    /// Largest number of concurrent sessions from one client IP. Default 50.
    pub max_sessions_per_ip: usize,
    /// Memory the embedded database's page cache may grow to, bytes.
    /// Default 268435456 (256 MiB).
    pub database_cache_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: None,
            data_dir: PathBuf::from("./umail-data"),
            shutdown_grace_secs: 30,
            max_sessions: 2000,
            max_sessions_per_ip: 50,
            database_cache_bytes: 256 * 1024 * 1024,
        }
    }
}

/// `[tls]`: absent means a self-signed certificate generated in `data_dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `[listeners]`: each a list of bind addresses; an empty list disables it.
/// When the section is absent, the development set on loopback high ports is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersConfig {
    /// MX (port 25): no AUTH needed for local recipients, never relays.
    #[serde(default)]
    pub smtp: Vec<SocketAddr>,
    /// Submission with STARTTLS (port 587): AUTH required.
    #[serde(default)]
    pub submission: Vec<SocketAddr>,
    /// Submission with implicit TLS (port 465): AUTH required.
    #[serde(default)]
    pub submissions: Vec<SocketAddr>,
    /// IMAP with STARTTLS (port 143).
    #[serde(default)]
    pub imap: Vec<SocketAddr>,
    /// IMAP with implicit TLS (port 993).
    #[serde(default)]
    pub imaps: Vec<SocketAddr>,
    /// POP3 with STLS (port 110).
    #[serde(default)]
    pub pop3: Vec<SocketAddr>,
    /// POP3 with implicit TLS (port 995).
    #[serde(default)]
    pub pop3s: Vec<SocketAddr>,
    /// HTTP admin API.
    #[serde(default)]
    pub admin: Vec<SocketAddr>,
}

impl Default for ListenersConfig {
    /// The development set: loopback, high ports, so `umail serve` runs
    /// unprivileged next to any other mail server.
    fn default() -> Self {
        let a = |p: u16| vec![SocketAddr::from(([127, 0, 0, 1], p))];
        ListenersConfig {
            smtp: a(2525),
            submission: a(2587),
            submissions: a(2465),
            imap: a(2143),
            imaps: a(2993),
            pop3: a(2110),
            pop3s: a(2995),
            admin: a(2880),
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Largest message accepted, bytes (0 = unlimited). Default 50 MiB.
    pub max_message_size: u64,
    /// Most recipients per transaction. Default 100.
    pub max_recipients: usize,
    /// Most RSET commands per session before it is closed. Default 20.
    pub max_rset: usize,
    /// Most `Received` headers before a message is refused as a loop. Default 100.
    pub max_received_headers: usize,
    /// Longest command line, bytes including CRLF. Default 4096.
    pub max_command_line: usize,
    /// Longest line inside DATA, bytes including CRLF. Default 65536.
    pub max_data_line: usize,
    /// Most protocol errors per session before it is closed. Default 10.
    pub max_errors: usize,
    /// Idle timeout, seconds (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes). Default 300.
    pub idle_timeout_secs: u64,
    /// Answer VRFY. Default false.
    pub allow_vrfy: bool,
    /// Answer EXPN. Default false.
    pub allow_expn: bool,
    /// Offer AUTH on the MX listener too (after STARTTLS). Default false.
    pub auth_on_mx: bool,
    /// An authenticated sender may only use its own addresses and aliases in
    /// MAIL FROM. Default true.
    pub sender_must_match_auth: bool,
    /// Reply to an over-quota recipient with 452 4.2.2 (temporary) instead of
    /// 552 5.2.2. Default false.
    pub over_quota_temporary: bool,
    /// Text after the hostname in the 220 greeting. Default `ESMTP umail`.
    pub banner: String,
    /// Longest delay a submitter may ask for with `HOLDFOR`/`HOLDUNTIL`
    /// (FUTURERELEASE, RFC 4865: scheduled sending), seconds; 0 turns the
    /// extension off. Offered on the submission listeners only. Default
    /// 604800 (7 days).
    pub max_future_release_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_message_size: 52_428_800,
            max_recipients: 100,
            max_rset: 20,
            max_received_headers: 100,
            max_command_line: 4096,
            max_data_line: 65_536,
            max_errors: 10,
            idle_timeout_secs: 300,
            allow_vrfy: false,
            allow_expn: false,
            auth_on_mx: false,
            sender_must_match_auth: true,
            over_quota_temporary: false,
            banner: "ESMTP umail".to_string(),
            max_future_release_secs: 604_800,
        }
    }
}

/// `[imap]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    /// Idle timeout for a logged-in session, seconds (RFC 9051 §5.4: at least 30 minutes). Default 1800.
    pub idle_timeout_secs: u64,
    /// Idle timeout before login, seconds. Default 60.
    pub preauth_timeout_secs: u64,
    /// Allow LOGIN and plaintext AUTHENTICATE before TLS. Default false.
    pub plaintext_auth_without_tls: bool,
    /// Largest literal accepted outside APPEND, bytes. Default 65536.
    pub max_literal: u64,
    /// Largest APPEND, bytes (APPENDLIMIT). Default 50 MiB.
    pub append_limit: u64,
    /// Longest command line, bytes. Default 65536.
    pub max_line: usize,
    /// Failed LOGIN/AUTHENTICATE attempts before the connection is closed. Default 3.
    pub max_auth_failures: usize,
    /// Most concurrent logged-in IMAP sessions per account (0 = unlimited).
    /// Default 50: several devices with a few connections each.
    pub max_sessions_per_user: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            idle_timeout_secs: 1800,
            preauth_timeout_secs: 60,
            plaintext_auth_without_tls: false,
            max_literal: 65_536,
            append_limit: 52_428_800,
            max_line: 65_536,
            max_auth_failures: 3,
            max_sessions_per_user: 50,
        }
    }
}

/// What DELE followed by QUIT does in POP3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pop3DeleteAction {
    /// Remove the message.
    #[default]
    Expunge,
    /// Move it to Trash, where IMAP users can still recover it.
    Trash,
}

/// `[pop3]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Idle timeout, seconds (RFC 1939 §3: at least 10 minutes). Default 600.
    pub idle_timeout_secs: u64,
    /// Allow USER/PASS and plaintext AUTH before TLS. Default false.
    pub plaintext_auth_without_tls: bool,
    /// What DELE + QUIT does. Default `expunge`.
    pub delete_action: Pop3DeleteAction,
    /// Most concurrent POP3 sessions per account. Default 4.
    pub max_sessions_per_user: usize,
    /// Failed logins before the connection is closed. Default 3.
    pub max_auth_failures: usize,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            idle_timeout_secs: 600,
            plaintext_auth_without_tls: false,
            delete_action: Pop3DeleteAction::Expunge,
            max_sessions_per_user: 4,
            max_auth_failures: 3,
        }
    }
}

/// `[security]`: protections shared by all protocols.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Failed authentications from one IP within the window before that IP
    /// is refused for `auth_lockout_secs`. Default 10.
    pub auth_failure_limit: u32,
    /// The window, seconds. Default 600.
    pub auth_failure_window_secs: u64,
    /// How long an IP is refused, seconds. Default 900.
    pub auth_lockout_secs: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            auth_failure_limit: 10,
            auth_failure_window_secs: 600,
            auth_lockout_secs: 900,
        }
    }
}

/// How outbound mail leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// Straight to each recipient domain's MX.
    #[default]
    Direct,
    /// Everything through the smart host.
    Relay,
    /// Direct first; the smart host for what direct delivery could not deliver.
    DirectThenRelay,
}

/// A static route, checked before DNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Recipient domain.
    pub domain: String,
    /// `host:port` to deliver to.
    pub host: String,
    /// Require STARTTLS on this route. Default false (opportunistic).
    #[serde(default)]
    pub require_tls: bool,
    /// Verify the peer's certificate. Default false for static routes.
    #[serde(default)]
    pub verify_certificate: bool,
    /// AUTH user name.
    #[serde(default)]
    pub user: Option<String>,
    /// AUTH password.
    #[serde(default)]
    pub password: Option<String>,
}

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// `direct`, `relay` or `direct-then-relay`. Default `direct`.
    pub mode: DeliveryMode,
    /// Smart host URL, `smtp://user:pass@host:port`. Default none.
    pub relay: Option<String>,
    /// Static routes.
    pub route: Vec<RouteConfig>,
    /// Give up and bounce after this many seconds in the queue. Default 5 days.
    pub max_queue_age_secs: u64,
    /// Retry intervals in seconds; the last repeats. Default 60, 300, 900, 1800, 3600, 7200, 14400.
    pub retry_intervals_secs: Vec<u64>,
    /// Most concurrent outbound connections. Default 20.
    pub max_connections: usize,
    /// Most concurrent connections to one destination host. Default 5.
    pub max_connections_per_host: usize,
    /// A permanent (5xx) reply from the first MX fails the recipient; when
    /// false the next MX is tried. Default true.
    pub first_mx_5xx_is_final: bool,
    /// Send a "delayed" DSN once a message has waited this long, seconds
    /// (0 = never). Default 14400 (4 hours).
    pub delay_notify_secs: u64,
    /// How long a host that refused a connection is skipped, seconds. Default 60.
    pub remember_refused_secs: u64,
    /// TCP port for MX and implicit-MX delivery. Default 25; change it only
    /// for a test network or a provider that redirects outbound port 25.
    pub mx_port: u16,
    /// How long an idle outbound connection is kept for the next message to
    /// the same host, seconds. Default 10.
    pub connection_idle_secs: u64,
    /// SMTP client timeouts (`[delivery.timeouts]`).
    pub timeouts: ClientTimeoutsConfig,
}

/// `[delivery.timeouts]`: how long the SMTP client waits, in seconds. The
/// defaults are RFC 5321 §4.5.3.2's; a peer slower than these is treated as
/// a temporary failure and retried later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeoutsConfig {
    /// TCP connect. Default 30.
    pub connect_secs: u64,
    /// The initial 220 greeting. Default 300.
    pub greeting_secs: u64,
    /// EHLO, STARTTLS, AUTH, RSET and QUIT. Default 300.
    pub command_secs: u64,
    /// MAIL FROM. Default 300.
    pub mail_secs: u64,
    /// Each RCPT TO. Default 300.
    pub rcpt_secs: u64,
    /// The 354 reply to DATA. Default 120.
    pub data_init_secs: u64,
    /// Writing each block of message data. Default 180.
    pub data_block_secs: u64,
    /// The reply to the final dot (or last BDAT). Default 600.
    pub data_term_secs: u64,
}

impl Default for ClientTimeoutsConfig {
    fn default() -> Self {
        ClientTimeoutsConfig {
            connect_secs: 30,
            greeting_secs: 300,
            command_secs: 300,
            mail_secs: 300,
            rcpt_secs: 300,
            data_init_secs: 120,
            data_block_secs: 180,
            data_term_secs: 600,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Direct,
            relay: None,
            route: Vec::new(),
            max_queue_age_secs: 5 * 24 * 3600,
            retry_intervals_secs: vec![60, 300, 900, 1800, 3600, 7200, 14400],
            max_connections: 20,
            max_connections_per_host: 5,
            first_mx_5xx_is_final: true,
            delay_notify_secs: 14_400,
            remember_refused_secs: 60,
            mx_port: 25,
            connection_idle_secs: 10,
            timeouts: ClientTimeoutsConfig::default(),
        }
    }
}

/// `[dns]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers; empty means the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout, seconds. Default 0 = the resolver's default (5).
    pub timeout_secs: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`. Default `human`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `info,smtp.in=debug`. Default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.smtp.max_recipients, 100);
        assert_eq!(c.smtp.max_rset, 20);
        assert_eq!(c.listeners.smtp, vec!["127.0.0.1:2525".parse().unwrap()]);
    }

    #[test]
    fn listeners_section_lists_only_what_is_enabled() {
        let c: Config = toml::from_str("[listeners]\nsmtp = [\"0.0.0.0:25\"]\n").unwrap();
        assert_eq!(c.listeners.smtp.len(), 1);
        assert!(c.listeners.imap.is_empty());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<Config>("[smtp]\nmax_recipient = 5\n").unwrap_err();
        assert!(e.to_string().contains("max_recipient"), "{e}");
        let e = toml::from_str::<Config>("[smpt]\n").unwrap_err();
        assert!(e.to_string().contains("smpt"), "{e}");
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
[server]
hostname = "mail.example.com"
data_dir = "/var/lib/umail"

[tls]
cert = "/etc/umail/fullchain.pem"
key  = "/etc/umail/key.pem"

[listeners]
smtp        = ["0.0.0.0:25"]
submission  = ["0.0.0.0:587"]
submissions = ["0.0.0.0:465"]
imap        = ["0.0.0.0:143"]
imaps       = ["0.0.0.0:993"]
pop3        = ["0.0.0.0:110"]
pop3s       = ["0.0.0.0:995"]
admin       = ["127.0.0.1:8080"]

[smtp]
max_message_size = 52428800
max_recipients = 100
max_rset = 20
max_received_headers = 100

[delivery]
mode = "direct"

[[delivery.route]]
domain = "partner.example"
host = "127.0.0.1:2526"

[dns]
nameservers = ["127.0.0.1:5353"]
"#;
        let c: Config = toml::from_str(text).unwrap();
        assert_eq!(c.server.hostname.as_deref(), Some("mail.example.com"));
        assert_eq!(c.delivery.route[0].host, "127.0.0.1:2526");
        assert_eq!(c.delivery.mode, DeliveryMode::Direct);
    }
}
