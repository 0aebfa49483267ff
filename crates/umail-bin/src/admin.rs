//! The management handlers. The CLI, the admin socket and the HTTP admin
//! API all build an [`AdminRequest`] and call [`crate::handlers::execute`]: one set of
//! handlers, several transports.

use serde::{Deserialize, Serialize};

/// Optional domain limits; `None` leaves a value unchanged (or at its default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DomainLimits {
    /// Most users (0 = unlimited).
    pub max_users: Option<u64>,
    /// Total storage in bytes (0 = unlimited).
    pub quota: Option<u64>,
    /// Default quota of new users in bytes.
    pub default_quota: Option<u64>,
    /// Most mailing lists (0 = unlimited).
    pub max_lists: Option<u64>,
    /// Expiry: `Some(None)` clears it, `Some(Some(ts))` sets it.
    pub expires: Option<Option<i64>>,
}

/// Optional account fields; `None` leaves a value unchanged (or at its default).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserFields {
    /// Display name.
    pub display_name: Option<String>,
    /// Quota in bytes.
    pub quota: Option<u64>,
    /// Most stored messages.
    pub max_messages: Option<u64>,
    /// Department name.
    pub department: Option<String>,
    /// Allowed protocols.
    pub protocols: Option<Vec<umail_core::Protocol>>,
}

/// One row of a bulk user import.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRow {
    /// Line number in the file, for error messages.
    pub line: usize,
    /// Address.
    pub address: String,
    /// Password.
    pub password: String,
    /// Display name.
    pub display_name: Option<String>,
    /// Quota in bytes.
    pub quota: Option<u64>,
    /// Department.
    pub department: Option<String>,
}

/// An administrator role as typed by the operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleSpec {
    /// `system`, `domain` or `department`.
    pub role: String,
    /// The domain for domain and department roles.
    pub domain: Option<String>,
    /// The department for department roles.
    pub department: Option<String>,
}

/// A management request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum AdminRequest {
    DomainAdd {
        domain: String,
        limits: DomainLimits,
    },
    DomainList,
    DomainShow {
        domain: String,
    },
    DomainSet {
        domain: String,
        status: Option<String>,
        limits: DomainLimits,
    },
    DomainRemove {
        domain: String,
        force: bool,
    },
    DomainAliasAdd {
        alias: String,
        target: String,
    },
    DomainAliasList,
    DomainAliasRemove {
        alias: String,
    },
    UserAdd {
        address: String,
        password: String,
        fields: UserFields,
    },
    UserList {
        domain: Option<String>,
    },
    UserShow {
        address: String,
    },
    UserSet {
        address: String,
        password: Option<String>,
        fields: UserFields,
    },
    UserFreeze {
        address: String,
        frozen: bool,
    },
    UserRemove {
        address: String,
    },
    UserImport {
        rows: Vec<UserRow>,
    },
    AliasAdd {
        alias: String,
        targets: Vec<String>,
    },
    AliasList {
        domain: Option<String>,
    },
    AliasShow {
        alias: String,
    },
    AliasRemove {
        alias: String,
    },
    ListAdd {
        address: String,
        name: Option<String>,
        public: bool,
    },
    ListList {
        domain: Option<String>,
    },
    ListShow {
        address: String,
    },
    ListRemove {
        address: String,
    },
    ListSetPolicy {
        address: String,
        policy: String,
    },
    ListMemberAdd {
        list: String,
        member: String,
        can_send: bool,
        can_receive: bool,
    },
    ListMemberRemove {
        list: String,
        member: String,
    },
    DepartmentAdd {
        domain: String,
        name: String,
        parent: Option<String>,
        order: i64,
        leader: Option<String>,
    },
    DepartmentList {
        domain: String,
    },
    DepartmentShow {
        domain: String,
        name: String,
    },
    DepartmentSet {
        domain: String,
        name: String,
        order: Option<i64>,
        leader: Option<String>,
        /// New parent path, `-` for the top level.
        #[serde(default)]
        parent: Option<String>,
        /// New name (last path component).
        #[serde(default)]
        rename: Option<String>,
    },
    DepartmentRemove {
        domain: String,
        name: String,
    },
    AdminGrant {
        address: String,
        role: RoleSpec,
    },
    AdminRevoke {
        address: String,
        role: RoleSpec,
    },
    AdminList,
    Collect(crate::collect::CollectRequest),
    Delivery(crate::delivery::DeliveryRequest),
    /// Write a database snapshot to a new file (`umail backup`; local
    /// transports only: the HTTP API refuses it, since it writes a path
    /// of the caller's choosing).
    Backup {
        path: std::path::PathBuf,
    },
}

impl AdminRequest {
    /// A short name for logs (never includes passwords).
    pub fn name(&self) -> &'static str {
        use AdminRequest::*;
        match self {
            DomainAdd { .. } => "domain add",
            DomainList => "domain list",
            DomainShow { .. } => "domain show",
            DomainSet { .. } => "domain set",
            DomainRemove { .. } => "domain remove",
            DomainAliasAdd { .. } => "domain alias add",
            DomainAliasList => "domain alias list",
            DomainAliasRemove { .. } => "domain alias remove",
            UserAdd { .. } => "user add",
            UserList { .. } => "user list",
            UserShow { .. } => "user show",
            UserSet { .. } => "user set",
            UserFreeze { .. } => "user freeze",
            UserRemove { .. } => "user remove",
            UserImport { .. } => "user import",
            AliasAdd { .. } => "alias add",
            AliasList { .. } => "alias list",
            AliasShow { .. } => "alias show",
            AliasRemove { .. } => "alias remove",
            ListAdd { .. } => "list add",
            ListList { .. } => "list list",
            ListShow { .. } => "list show",
            ListRemove { .. } => "list remove",
            ListSetPolicy { .. } => "list set",
            ListMemberAdd { .. } => "list members add",
            ListMemberRemove { .. } => "list members remove",
            DepartmentAdd { .. } => "department add",
            DepartmentList { .. } => "department list",
            DepartmentShow { .. } => "department show",
            DepartmentSet { .. } => "department set",
            DepartmentRemove { .. } => "department remove",
            AdminGrant { .. } => "admin grant",
            AdminRevoke { .. } => "admin revoke",
            AdminList => "admin list",
            Collect(_) => "fetch",
            Delivery(_) => "queue/dkim",
            Backup { .. } => "backup",
        }
    }

    /// True for requests that may run on a fresh data directory.
    pub fn creates_data(&self) -> bool {
        matches!(self, AdminRequest::DomainAdd { .. })
    }
}

/// What a handler returns, rendered as text or JSON by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// A confirmation.
    Done {
        /// What was done.
        message: String,
    },
    /// Rows with named columns.
    Table {
        /// Column names.
        columns: Vec<String>,
        /// Rows of cells.
        rows: Vec<Vec<String>>,
    },
    /// Named fields of one object.
    Record {
        /// `(name, value)` pairs.
        fields: Vec<(String, String)>,
    },
}

/// A handler's result: output, or a one-line error.
pub type AdminReply = Result<Output, String>;

impl Output {
    /// Human-readable rendering.
    pub fn to_text(&self) -> String {
        match self {
            Output::Done { message } => format!("{message}\n"),
            Output::Record { fields } => {
                let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                fields
                    .iter()
                    .map(|(k, v)| format!("{k:width$}  {v}\n"))
                    .collect()
            }
            Output::Table { columns, rows } => {
                let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
                for row in rows {
                    for (i, cell) in row.iter().enumerate() {
                        if let Some(w) = widths.get_mut(i) {
                            *w = (*w).max(cell.chars().count());
                        }
                    }
                }
                let line = |cells: &[String]| {
                    let mut s = String::new();
                    for (i, c) in cells.iter().enumerate() {
                        let w = widths.get(i).copied().unwrap_or(0);
                        if i + 1 == cells.len() {
                            s.push_str(c);
                        } else {
                            s.push_str(c);
                            s.push_str(&" ".repeat(w - c.chars().count() + 2));
                        }
                    }
                    s.push('\n');
                    s
                };
                let mut out = line(columns);
                for row in rows {
                    out.push_str(&line(row));
                }
                out
            }
        }
    }

    /// JSON rendering (one document).
    /// Prints the output as text or, with `json`, as JSON.
    pub fn print(&self, json: bool) {
        print!("{}", if json { self.to_json() } else { self.to_text() });
    }

    pub fn to_json(&self) -> String {
        let value = match self {
            Output::Done { message } => serde_json::json!({ "message": message }),
            Output::Record { fields } => serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            ),
            Output::Table { columns, rows } => serde_json::Value::Array(
                rows.iter()
                    .map(|row| {
                        serde_json::Value::Object(
                            columns
                                .iter()
                                .zip(row)
                                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        };
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )
    }
}
