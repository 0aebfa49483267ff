//! Command-line definitions and the management commands' front end: each
//! command becomes an [`AdminRequest`], sent to a running server's admin
//! socket or executed directly against the database.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use umail_core::config::Config;

use crate::admin::{AdminRequest, DomainLimits, RoleSpec, UserFields, UserRow};
use crate::admin_socket;

/// umail: an embeddable enterprise mail server.
#[derive(Debug, Parser)]
#[command(name = "umail", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Every key is optional.
    #[arg(long, short = 'c', global = true, env = "UMAIL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides `server.data_dir`).
    #[arg(long, global = true, env = "UMAIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print management results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Applies command-line overrides to the loaded configuration.
    pub fn apply_overrides(&self, mut config: Config) -> Config {
        if let Some(dir) = &self.data_dir {
            config.server.data_dir = dir.clone();
        }
        config
    }
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mail server.
    Serve,
    /// Manage hosted domains.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Manage user accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage address aliases.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Manage mailing lists.
    #[command(subcommand)]
    List(ListCmd),
    /// Manage departments (the organisation tree).
    #[command(subcommand)]
    Department(DepartmentCmd),
    /// Manage administrator roles.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// The outbound queue.
    #[command(subcommand)]
    Queue(crate::delivery::QueueCmd),
    /// Remote POP3 accounts collected on a schedule (MultiPOP, DomainPOP).
    #[command(subcommand)]
    Fetch(crate::collect::FetchCmd),
    /// Import mail from another server.
    #[command(subcommand)]
    Import(crate::collect::ImportCmd),
    /// Load generators that report throughput and latency.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Write a verified backup (database snapshot, TLS files, manifest with
    /// checksums) to a new directory; the server may keep running.
    Backup {
        /// Directory to create (or an empty one).
        dir: PathBuf,
    },
    /// Restore a backup into the data directory; the server must be stopped.
    Restore {
        /// A directory written by `umail backup`.
        dir: PathBuf,
        /// Replace an existing database (it is kept as
        /// `umail.redb.before-restore-TIMESTAMP`).
        #[arg(long)]
        force: bool,
    },
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Deliver messages over SMTP with concurrent connections.
    Smtp(crate::bench::SmtpBenchArgs),
    /// Read whole mailboxes over POP3 with concurrent clients.
    Pop3(crate::collect::Pop3BenchArgs),
    /// A mix of IMAP commands, or many idle IMAP connections.
    Imap(crate::bench_imap::ImapBenchArgs),
    /// Outbound delivery to a local sink.
    Delivery(crate::delivery::DeliveryBenchArgs),
}

#[derive(Debug, Args)]
pub struct DomainLimitArgs {
    /// Most users (0 = unlimited).
    #[arg(long)]
    max_users: Option<u64>,
    /// Total storage of the domain, e.g. 10G (0 = unlimited).
    #[arg(long, value_parser = parse_size)]
    quota: Option<u64>,
    /// Default quota of new users, e.g. 1G (0 = unlimited).
    #[arg(long, value_parser = parse_size)]
    default_quota: Option<u64>,
    /// Most mailing lists (0 = unlimited).
    #[arg(long)]
    max_lists: Option<u64>,
    /// Expiry date YYYY-MM-DD, or `never`.
    #[arg(long, value_parser = parse_expiry)]
    expires: Option<Expiry>,
}

/// A parsed `--expires` value.
#[derive(Debug, Clone, Copy)]
pub struct Expiry(pub Option<i64>);

impl DomainLimitArgs {
    fn into_limits(self) -> DomainLimits {
        DomainLimits {
            max_users: self.max_users,
            quota: self.quota,
            default_quota: self.default_quota,
            max_lists: self.max_lists,
            expires: self.expires.map(|e| e.0),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum DomainCmd {
    /// Host a new domain (Chinese IDN names are accepted).
    Add {
        /// The domain name.
        domain: String,
        #[command(flatten)]
        limits: DomainLimitArgs,
    },
    /// List hosted domains.
    List,
    /// Show one domain.
    Show { domain: String },
    /// Change a domain's status or limits.
    Set {
        domain: String,
        /// active, disabled or expired.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        limits: DomainLimitArgs,
    },
    /// Stop hosting a domain. Refused while it has users unless --force,
    /// which deletes them and their mail.
    Remove {
        domain: String,
        #[arg(long)]
        force: bool,
    },
    /// Domain aliases: mail to ALIAS goes to the same local part at TARGET.
    #[command(subcommand)]
    Alias(DomainAliasCmd),
    /// DKIM signing keys of a domain.
    #[command(subcommand)]
    Dkim(crate::delivery::DkimCmd),
}

#[derive(Debug, Subcommand)]
pub enum DomainAliasCmd {
    /// Make ALIAS an alias of TARGET.
    Add { alias: String, target: String },
    /// List domain aliases.
    List,
    /// Remove a domain alias.
    Remove { alias: String },
}

#[derive(Debug, Args)]
pub struct UserFieldArgs {
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Storage quota, e.g. 1G (0 = unlimited).
    #[arg(long, value_parser = parse_size)]
    quota: Option<u64>,
    /// Most stored messages (0 = unlimited).
    #[arg(long)]
    max_messages: Option<u64>,
    /// Department name.
    #[arg(long)]
    department: Option<String>,
    /// Allowed protocols, comma-separated: smtp,imap,pop3,webmail.
    #[arg(long)]
    protocols: Option<String>,
}

impl UserFieldArgs {
    fn into_fields(self) -> Result<UserFields> {
        let protocols = match self.protocols {
            None => None,
            Some(list) => Some(
                list.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        umail_core::Protocol::parse(s.trim())
                            .with_context(|| format!("unknown protocol `{}`", s.trim()))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        Ok(UserFields {
            display_name: self.name,
            quota: self.quota,
            max_messages: self.max_messages,
            department: self.department,
            protocols,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create an account.
    Add {
        address: String,
        /// The password; `-` reads it from standard input.
        #[arg(long)]
        password: String,
        #[command(flatten)]
        fields: UserFieldArgs,
    },
    /// List accounts, optionally of one domain.
    List { domain: Option<String> },
    /// Show one account.
    Show { address: String },
    /// Change an account.
    Set {
        address: String,
        /// New password; `-` reads it from standard input.
        #[arg(long)]
        password: Option<String>,
        #[command(flatten)]
        fields: UserFieldArgs,
    },
    /// Freeze: no login, sending or receiving; data kept.
    Freeze { address: String },
    /// Undo freeze.
    Unfreeze { address: String },
    /// Delete an account and all its mail.
    Remove { address: String },
    /// Create accounts from a CSV file: address,password[,name[,quota[,department]]].
    /// Every row is checked before any account is created.
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
    /// Deliver mail for ALIAS to each TARGET (local or remote).
    Add {
        alias: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// List aliases, optionally of one domain.
    List { domain: Option<String> },
    /// Show one alias and its targets.
    Show { alias: String },
    /// Remove an alias.
    Remove { alias: String },
}

#[derive(Debug, Subcommand)]
pub enum ListCmd {
    /// Create a mailing list.
    Add {
        address: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Anyone may post (default: only members with send permission).
        #[arg(long)]
        public: bool,
    },
    /// List mailing lists, optionally of one domain.
    List { domain: Option<String> },
    /// Show a list and its members.
    Show { address: String },
    /// Delete a mailing list.
    Remove { address: String },
    /// Change a list's posting policy.
    Set {
        address: String,
        /// private or public.
        #[arg(long)]
        policy: String,
    },
    /// Manage members.
    #[command(subcommand)]
    Members(MembersCmd),
}

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Add (or update) a member.
    Add {
        list: String,
        member: String,
        /// The member may post but does not receive.
        #[arg(long, conflicts_with = "receive_only")]
        send_only: bool,
        /// The member receives but may not post.
        #[arg(long)]
        receive_only: bool,
    },
    /// Remove a member.
    Remove { list: String, member: String },
    /// Show members.
    Show { list: String },
}

#[derive(Debug, Subcommand)]
pub enum DepartmentCmd {
    /// Create a department.
    Add {
        domain: String,
        name: String,
        /// Parent department.
        #[arg(long)]
        parent: Option<String>,
        /// Display order (smaller first).
        #[arg(long, default_value_t = 0)]
        order: i64,
        /// The department leader (a user of the domain).
        #[arg(long)]
        leader: Option<String>,
    },
    /// Show the department tree of a domain.
    List { domain: String },
    /// Show one department and its users.
    Show { domain: String, name: String },
    /// Change a department.
    Set {
        domain: String,
        name: String,
        /// Display order.
        #[arg(long)]
        order: Option<i64>,
        /// New leader (`-` clears it).
        #[arg(long)]
        leader: Option<String>,
        /// Move under another department (its path; `-` for the top level).
        /// Sub-departments, users and department administrators follow.
        #[arg(long)]
        parent: Option<String>,
        /// New name (the last path component).
        #[arg(long)]
        rename: Option<String>,
    },
    /// Delete a department; its users stay, without a department.
    Remove { domain: String, name: String },
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Give a user an administrator role.
    Grant {
        address: String,
        /// system, domain or department.
        #[arg(long)]
        role: String,
        /// The domain (domain and department roles).
        #[arg(long)]
        domain: Option<String>,
        /// The department (department role).
        #[arg(long)]
        department: Option<String>,
    },
    /// Take a role away.
    Revoke {
        address: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        department: Option<String>,
    },
    /// List administrators.
    List,
}

/// Parses sizes such as `1G`, `500M`, `64K` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(format!("unknown size unit in `{s}` (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 1G, 500M, 1048576)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Expiry(None));
    }
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date (YYYY-MM-DD) or `never`"))?;
    let ts = date
        .and_hms_opt(0, 0, 0)
        .map(|d| d.and_utc().timestamp())
        .ok_or_else(|| format!("`{s}` is out of range"))?;
    Ok(Expiry(Some(ts)))
}

fn read_password(arg: String) -> Result<String> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("empty password on standard input");
    }
    Ok(p)
}

fn role_spec(role: &str, domain: Option<String>, department: Option<String>) -> Result<RoleSpec> {
    Ok(RoleSpec {
        role: role.to_string(),
        domain,
        department,
    })
}

/// Turns a management command into a request.
pub fn to_request(command: Command) -> Result<AdminRequest> {
    use AdminRequest as R;
    Ok(match command {
        Command::Serve
        | Command::Bench(_)
        | Command::Import(_)
        | Command::Backup { .. }
        | Command::Restore { .. } => {
            bail!("not a management command")
        }
        Command::Fetch(cmd) => R::Collect(crate::collect::fetch_request(cmd)?),
        Command::Queue(cmd) => R::Delivery(crate::delivery::queue_request(cmd)?),
        Command::Domain(cmd) => match cmd {
            DomainCmd::Add { domain, limits } => R::DomainAdd {
                domain,
                limits: limits.into_limits(),
            },
            DomainCmd::List => R::DomainList,
            DomainCmd::Show { domain } => R::DomainShow { domain },
            DomainCmd::Set {
                domain,
                status,
                limits,
            } => R::DomainSet {
                domain,
                status,
                limits: limits.into_limits(),
            },
            DomainCmd::Remove { domain, force } => R::DomainRemove { domain, force },
            DomainCmd::Alias(a) => match a {
                DomainAliasCmd::Add { alias, target } => R::DomainAliasAdd { alias, target },
                DomainAliasCmd::List => R::DomainAliasList,
                DomainAliasCmd::Remove { alias } => R::DomainAliasRemove { alias },
            },
            DomainCmd::Dkim(cmd) => R::Delivery(crate::delivery::dkim_request(cmd)?),
        },
        Command::User(cmd) => match cmd {
            UserCmd::Add {
                address,
                password,
                fields,
            } => R::UserAdd {
                address,
                password: read_password(password)?,
                fields: fields.into_fields()?,
            },
            UserCmd::List { domain } => R::UserList { domain },
            UserCmd::Show { address } => R::UserShow { address },
            UserCmd::Set {
                address,
                password,
                fields,
            } => R::UserSet {
                address,
                password: password.map(read_password).transpose()?,
                fields: fields.into_fields()?,
            },
            UserCmd::Freeze { address } => R::UserFreeze {
                address,
                frozen: true,
            },
            UserCmd::Unfreeze { address } => R::UserFreeze {
                address,
                frozen: false,
            },
            UserCmd::Remove { address } => R::UserRemove { address },
            UserCmd::Import { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                R::UserImport {
                    rows: parse_user_csv(&text)?,
                }
            }
        },
        Command::Alias(cmd) => match cmd {
            AliasCmd::Add { alias, targets } => R::AliasAdd { alias, targets },
            AliasCmd::List { domain } => R::AliasList { domain },
            AliasCmd::Show { alias } => R::AliasShow { alias },
            AliasCmd::Remove { alias } => R::AliasRemove { alias },
        },
        Command::List(cmd) => match cmd {
            ListCmd::Add {
                address,
                name,
                public,
            } => R::ListAdd {
                address,
                name,
                public,
            },
            ListCmd::List { domain } => R::ListList { domain },
            ListCmd::Show { address } => R::ListShow { address },
            ListCmd::Remove { address } => R::ListRemove { address },
            ListCmd::Set { address, policy } => R::ListSetPolicy { address, policy },
            ListCmd::Members(m) => match m {
                MembersCmd::Add {
                    list,
                    member,
                    send_only,
                    receive_only,
                } => R::ListMemberAdd {
                    list,
                    member,
                    can_send: !receive_only,
                    can_receive: !send_only,
                },
                MembersCmd::Remove { list, member } => R::ListMemberRemove { list, member },
                MembersCmd::Show { list } => R::ListShow { address: list },
            },
        },
        Command::Department(cmd) => match cmd {
            DepartmentCmd::Add {
                domain,
                name,
                parent,
                order,
                leader,
            } => R::DepartmentAdd {
                domain,
                name,
                parent,
                order,
                leader,
            },
            DepartmentCmd::List { domain } => R::DepartmentList { domain },
            DepartmentCmd::Show { domain, name } => R::DepartmentShow { domain, name },
            DepartmentCmd::Set {
                domain,
                name,
                order,
                leader,
                parent,
                rename,
            } => R::DepartmentSet {
                domain,
                name,
                order,
                leader,
                parent,
                rename,
            },
            DepartmentCmd::Remove { domain, name } => R::DepartmentRemove { domain, name },
        },
        Command::Admin(cmd) => match cmd {
            AdminCmd::Grant {
                address,
                role,
                domain,
                department,
            } => R::AdminGrant {
                address,
                role: role_spec(&role, domain, department)?,
            },
            AdminCmd::Revoke {
                address,
                role,
                domain,
                department,
            } => R::AdminRevoke {
                address,
                role: role_spec(&role, domain, department)?,
            },
            AdminCmd::List => R::AdminList,
        },
    })
}

/// Splits one CSV line into fields (RFC 4180 quoting).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.is_empty() && !was_quoted => {
                in_quotes = true;
                was_quoted = true;
            }
            (',', false) => {
                fields.push(if was_quoted {
                    std::mem::take(&mut field)
                } else {
                    std::mem::take(&mut field).trim().to_string()
                });
                was_quoted = false;
            }
            (c, _) => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".to_string());
    }
    fields.push(if was_quoted {
        field
    } else {
        field.trim().to_string()
    });
    Ok(fields)
}

/// Parses the bulk-import CSV. A first line starting with `address` is a
/// header; blank lines and lines starting with `#` are skipped.
pub fn parse_user_csv(text: &str) -> Result<Vec<UserRow>> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_start_matches('\u{feff}').trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let fields = split_csv_line(line).map_err(|e| anyhow::anyhow!("line {line_no}: {e}"))?;
        if rows.is_empty() && fields[0].eq_ignore_ascii_case("address") {
            continue;
        }
        if fields.len() < 2 || fields.len() > 5 {
            bail!(
                "line {line_no}: expected address,password[,name[,quota[,department]]], found {} fields",
                fields.len()
            );
        }
        let get = |n: usize| fields.get(n).filter(|s| !s.is_empty()).cloned();
        let quota = match get(3) {
            Some(q) => Some(parse_size(&q).map_err(|e| anyhow::anyhow!("line {line_no}: {e}"))?),
            None => None,
        };
        rows.push(UserRow {
            line: line_no,
            address: fields[0].clone(),
            password: fields[1].clone(),
            display_name: get(2),
            quota,
            department: get(4),
        });
    }
    if rows.is_empty() {
        bail!("no users in the file");
    }
    Ok(rows)
}

/// Runs a management command: through the admin socket of a running server,
/// or directly on the database.
pub async fn run(command: Command, config: &Config, json: bool) -> Result<()> {
    let request = to_request(command)?;
    let data_dir = &config.server.data_dir;
    let socket = data_dir.join(admin_socket::SOCKET_NAME);
    let output = if crate::serve::socket_is_live(&socket) {
        admin_socket::send(&socket, &request).await?
    } else {
        if !crate::database_path(data_dir).exists() && !request.creates_data() {
            bail!(
                "no database in {} (run `umail serve` once, or pass --data-dir)",
                data_dir.display()
            );
        }
        crate::create_private_dir(data_dir)?;
        let store = crate::open_store(data_dir)?;
        if matches!(request, AdminRequest::Collect(_)) {
            crate::collect::use_database(&store, config);
        }
        crate::handlers::execute(&store, request).await
    };
    match output {
        Ok(out) => {
            out.print(json);
            Ok(())
        }
        Err(message) => bail!("{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("500m"), Ok(500 << 20));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn csv_rows_with_quotes_header_and_comments() {
        let text = "address,password,name,quota,department\n\
                    # migrated from the old server\n\
                    alice@example.com,pw1,\"Smith, Alice\",1G,Sales\n\
                    \n\
                    bob@example.com,\"p\"\"w\"\n";
        let rows = parse_user_csv(text).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].display_name.as_deref(), Some("Smith, Alice"));
        assert_eq!(rows[0].quota, Some(1 << 30));
        assert_eq!(rows[0].department.as_deref(), Some("Sales"));
        assert_eq!(rows[1].password, "p\"w");
        assert_eq!(rows[1].line, 5);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = parse_user_csv("a@b.c\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = parse_user_csv("a@b.c,pw\nx@y.z,pw,n,12Q\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_user_csv("a@b.c,\"pw\n").unwrap_err().to_string();
        assert!(e.contains("unterminated"), "{e}");
    }
}
