//! The management handlers: one function per [`AdminRequest`], run against
//! the store whether the request came from the CLI directly, the admin
//! socket or the HTTP API.

use umail_core::{AccountStatus, Address, AdminRole, Domain, DomainStatus, ListMember, ListPolicy};
use umail_store::{
    AdminError, DepartmentUpdate, DomainInfo, DomainUpdate, NewDepartment, NewDomain, NewUser,
    Store, UserInfo, UserUpdate,
};

use crate::admin::{AdminReply, AdminRequest, DomainLimits, Output, RoleSpec, UserFields, UserRow};

fn address(s: &str) -> Result<Address, String> {
    Address::parse(s.trim()).map_err(|e| format!("`{s}` is not a valid address: {e}"))
}

fn domain(s: &str) -> Result<Domain, String> {
    Domain::parse(s.trim()).map_err(|e| format!("`{s}` is not a valid domain: {e}"))
}

fn admin_err(e: AdminError) -> String {
    e.to_string()
}

fn done(message: impl Into<String>) -> AdminReply {
    Ok(Output::Done {
        message: message.into(),
    })
}

fn fmt_time(ts: Option<i64>) -> String {
    match ts.and_then(|t| chrono::DateTime::from_timestamp(t, 0)) {
        Some(t) => t.format("%Y-%m-%d").to_string(),
        None => "never".to_string(),
    }
}

/// Bytes in the unit an operator would type back (`1G`, `500M`), or `unlimited`.
fn fmt_size(bytes: u64) -> String {
    if bytes == 0 {
        return "unlimited".to_string();
    }
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

fn fmt_count(n: u64) -> String {
    if n == 0 {
        "unlimited".to_string()
    } else {
        n.to_string()
    }
}

fn status_name(s: DomainStatus) -> &'static str {
    match s {
        DomainStatus::Active => "active",
        DomainStatus::Disabled => "disabled",
        DomainStatus::Expired => "expired",
    }
}

fn parse_status(s: &str) -> Result<DomainStatus, String> {
    match s.to_ascii_lowercase().as_str() {
        "active" => Ok(DomainStatus::Active),
        "disabled" => Ok(DomainStatus::Disabled),
        "expired" => Ok(DomainStatus::Expired),
        _ => Err(format!(
            "`{s}` is not a domain status (active, disabled, expired)"
        )),
    }
}

fn parse_policy(s: &str) -> Result<ListPolicy, String> {
    match s.to_ascii_lowercase().as_str() {
        "private" => Ok(ListPolicy::Private),
        "public" => Ok(ListPolicy::Public),
        _ => Err(format!("`{s}` is not a list policy (private, public)")),
    }
}

fn role(spec: &RoleSpec) -> Result<AdminRole, String> {
    let need_domain = || {
        spec.domain
            .as_deref()
            .ok_or_else(|| format!("the {} role needs --domain", spec.role))
            .and_then(domain)
    };
    match spec.role.to_ascii_lowercase().as_str() {
        "system" => Ok(AdminRole::System),
        "domain" => Ok(AdminRole::Domain {
            domain: need_domain()?,
        }),
        "department" => Ok(AdminRole::Department {
            domain: need_domain()?,
            department: spec
                .department
                .clone()
                .ok_or("the department role needs --department")?,
        }),
        other => Err(format!(
            "`{other}` is not a role (system, domain, department)"
        )),
    }
}

fn role_text(r: &AdminRole) -> String {
    match r {
        AdminRole::System => "system".to_string(),
        AdminRole::Domain { domain } => format!("domain:{domain}"),
        AdminRole::Department { domain, department } => format!("department:{domain}/{department}"),
    }
}

fn domain_record(info: &DomainInfo, stats: Option<umail_store::DomainStats>) -> Output {
    let now = umail_core::unix_now();
    let mut fields = vec![
        ("domain".to_string(), info.domain.to_string()),
        ("unicode".to_string(), info.domain.to_unicode()),
        (
            "status".to_string(),
            status_name(info.effective_status(now)).to_string(),
        ),
        ("expires".to_string(), fmt_time(info.expires)),
        ("max_users".to_string(), fmt_count(info.max_users)),
        ("quota".to_string(), fmt_size(info.quota_bytes)),
        (
            "default_user_quota".to_string(),
            fmt_size(info.default_user_quota),
        ),
        ("max_lists".to_string(), fmt_count(info.max_lists)),
        ("created".to_string(), fmt_time(Some(info.created))),
    ];
    if let Some(s) = stats {
        fields.push(("users".to_string(), s.users.to_string()));
        fields.push(("aliases".to_string(), s.aliases.to_string()));
        fields.push(("lists".to_string(), s.lists.to_string()));
        fields.push(("departments".to_string(), s.departments.to_string()));
        fields.push(("stored_bytes".to_string(), s.usage.bytes.to_string()));
        fields.push(("stored_messages".to_string(), s.usage.messages.to_string()));
    }
    Output::Record { fields }
}

fn user_record(u: &UserInfo) -> Output {
    let fields = vec![
        ("address".to_string(), u.address.to_string()),
        ("name".to_string(), u.display_name.clone()),
        (
            "status".to_string(),
            match u.status {
                AccountStatus::Enabled => "enabled",
                AccountStatus::Frozen => "frozen",
            }
            .to_string(),
        ),
        ("quota".to_string(), fmt_size(u.quota.bytes)),
        ("max_messages".to_string(), fmt_count(u.quota.messages)),
        ("used_bytes".to_string(), u.usage.bytes.to_string()),
        ("used_messages".to_string(), u.usage.messages.to_string()),
        (
            "protocols".to_string(),
            u.protocols
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "department".to_string(),
            u.department.clone().unwrap_or_default(),
        ),
        (
            "roles".to_string(),
            u.roles.iter().map(role_text).collect::<Vec<_>>().join(","),
        ),
        ("created".to_string(), fmt_time(Some(u.created))),
    ];
    Output::Record { fields }
}

fn domain_update(status: Option<DomainStatus>, limits: DomainLimits) -> DomainUpdate {
    DomainUpdate {
        status,
        expires: limits.expires,
        max_users: limits.max_users,
        quota_bytes: limits.quota,
        default_user_quota: limits.default_quota,
        max_lists: limits.max_lists,
        ..DomainUpdate::default()
    }
}

fn new_user(address: Address, password: String, fields: UserFields) -> NewUser {
    let mut user = NewUser::new(address, password);
    if let Some(n) = fields.display_name {
        user.display_name = n;
    }
    user.quota_bytes = fields.quota;
    if let Some(m) = fields.max_messages {
        user.max_messages = m;
    }
    user.department = fields.department;
    if let Some(p) = fields.protocols {
        user.protocols = p;
    }
    user
}

/// Runs one request against the store.
pub async fn execute(store: &Store, request: AdminRequest) -> AdminReply {
    use AdminRequest as R;
    match request {
        R::DomainAdd { domain: d, limits } => {
            let d = domain(&d)?;
            let mut spec = NewDomain::new(d);
            spec.max_users = limits.max_users.unwrap_or(0);
            spec.quota_bytes = limits.quota.unwrap_or(0);
            spec.default_user_quota = limits.default_quota.unwrap_or(0);
            spec.max_lists = limits.max_lists.unwrap_or(0);
            spec.expires = limits.expires.flatten();
            let info = store.add_domain(spec).await.map_err(admin_err)?;
            done(format!("added domain {}", info.domain))
        }
        R::DomainList => {
            let now = umail_core::unix_now();
            let rows = store
                .list_domains()
                .map_err(admin_err)?
                .into_iter()
                .map(|d| {
                    let users = store.domain_stats(&d.domain).map(|s| s.users).unwrap_or(0);
                    vec![
                        d.domain.to_string(),
                        d.domain.to_unicode(),
                        status_name(d.effective_status(now)).to_string(),
                        users.to_string(),
                        fmt_count(d.max_users),
                        fmt_size(d.quota_bytes),
                        fmt_time(d.expires),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "domain",
                    "unicode",
                    "status",
                    "users",
                    "max_users",
                    "quota",
                    "expires",
                ],
                rows,
            ))
        }
        R::DomainShow { domain: d } => {
            let d = domain(&d)?;
            let info = store
                .get_domain(&d)
                .map_err(admin_err)?
                .ok_or_else(|| format!("not found: domain {d}"))?;
            let stats = store.domain_stats(&d).ok();
            Ok(domain_record(&info, stats))
        }
        R::DomainSet {
            domain: d,
            status,
            limits,
        } => {
            let d = domain(&d)?;
            let status = status.as_deref().map(parse_status).transpose()?;
            let info = store
                .update_domain(&d, domain_update(status, limits))
                .await
                .map_err(admin_err)?;
            Ok(domain_record(&info, None))
        }
        R::DomainRemove { domain: d, force } => {
            let d = domain(&d)?;
            store.remove_domain(&d, force).await.map_err(admin_err)?;
            done(format!("removed domain {d}"))
        }
        R::DomainAliasAdd { alias, target } => {
            let (a, t) = (domain(&alias)?, domain(&target)?);
            store.add_domain_alias(&a, &t).await.map_err(admin_err)?;
            done(format!("{a} is now an alias of {t}"))
        }
        R::DomainAliasList => {
            let rows = store
                .list_domain_aliases()
                .map_err(admin_err)?
                .into_iter()
                .map(|(a, t)| vec![a.to_string(), t.to_string()])
                .collect();
            Ok(table(&["alias", "target"], rows))
        }
        R::DomainAliasRemove { alias } => {
            let a = domain(&alias)?;
            store.remove_domain_alias(&a).await.map_err(admin_err)?;
            done(format!("removed domain alias {a}"))
        }
        R::UserAdd {
            address: a,
            password,
            fields,
        } => {
            let a = address(&a)?;
            let info = store
                .add_user(new_user(a, password, fields))
                .await
                .map_err(admin_err)?;
            done(format!("added user {}", info.address))
        }
        R::UserList { domain: d } => {
            let d = d.as_deref().map(domain).transpose()?;
            let rows = store
                .list_users(d.as_ref())
                .map_err(admin_err)?
                .into_iter()
                .map(|u| {
                    vec![
                        u.address.to_string(),
                        u.display_name.clone(),
                        match u.status {
                            AccountStatus::Enabled => "enabled",
                            AccountStatus::Frozen => "frozen",
                        }
                        .to_string(),
                        fmt_size(u.quota.bytes),
                        u.usage.bytes.to_string(),
                        u.department.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "address",
                    "name",
                    "status",
                    "quota",
                    "used_bytes",
                    "department",
                ],
                rows,
            ))
        }
        R::UserShow { address: a } => {
            let a = address(&a)?;
            let u = store
                .get_user(&a)
                .map_err(admin_err)?
                .ok_or_else(|| format!("not found: user {a}"))?;
            Ok(user_record(&u))
        }
        R::UserSet {
            address: a,
            password,
            fields,
        } => {
            let a = address(&a)?;
            let update = UserUpdate {
                display_name: fields.display_name,
                quota_bytes: fields.quota,
                max_messages: fields.max_messages,
                protocols: fields.protocols,
                department: fields.department.map(|d| {
                    if d.is_empty() || d == "-" {
                        None
                    } else {
                        Some(d)
                    }
                }),
                status: None,
            };
            let changes_fields = update != UserUpdate::default();
            if password.is_none() && !changes_fields {
                return Err("nothing to change: give --password or a field to set".to_string());
            }
            if changes_fields {
                store.update_user(&a, update).await.map_err(admin_err)?;
            }
            if let Some(p) = password {
                store.set_password(&a, &p).await.map_err(admin_err)?;
            }
            let u = store
                .get_user(&a)
                .map_err(admin_err)?
                .ok_or_else(|| format!("not found: user {a}"))?;
            Ok(user_record(&u))
        }
        R::UserFreeze { address: a, frozen } => {
            let a = address(&a)?;
            if frozen {
                store.freeze_user(&a).await.map_err(admin_err)?;
                done(format!("froze {a}"))
            } else {
                store.unfreeze_user(&a).await.map_err(admin_err)?;
                done(format!("unfroze {a}"))
            }
        }
        R::UserRemove { address: a } => {
            let a = address(&a)?;
            store.remove_user(&a).await.map_err(admin_err)?;
            done(format!("removed user {a} and all its mail"))
        }
        R::UserImport { rows } => import_users(store, rows).await,
        R::AliasAdd { alias, targets } => {
            let a = address(&alias)?;
            let targets = targets
                .iter()
                .map(|t| address(t))
                .collect::<Result<Vec<_>, _>>()?;
            let info = store.add_alias(&a, &targets).await.map_err(admin_err)?;
            done(format!(
                "{} -> {}",
                info.address,
                info.targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        R::AliasList { domain: d } => {
            let d = d.as_deref().map(domain).transpose()?;
            let rows = store
                .list_aliases(d.as_ref())
                .map_err(admin_err)?
                .into_iter()
                .map(|a| {
                    vec![
                        a.address.to_string(),
                        a.targets
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]
                })
                .collect();
            Ok(table(&["alias", "targets"], rows))
        }
        R::AliasShow { alias } => {
            let a = address(&alias)?;
            let info = store
                .get_alias(&a)
                .map_err(admin_err)?
                .ok_or_else(|| format!("not found: alias {a}"))?;
            let rows = info.targets.iter().map(|t| vec![t.to_string()]).collect();
            Ok(table(&["target"], rows))
        }
        R::AliasRemove { alias } => {
            let a = address(&alias)?;
            store.remove_alias(&a, None).await.map_err(admin_err)?;
            done(format!("removed alias {a}"))
        }
        R::ListAdd {
            address: a,
            name,
            public,
        } => {
            let a = address(&a)?;
            let policy = if public {
                ListPolicy::Public
            } else {
                ListPolicy::Private
            };
            let name = name.unwrap_or_else(|| a.local_part().to_string());
            let list = store.add_list(&a, &name, policy).await.map_err(admin_err)?;
            done(format!("added mailing list {}", list.address))
        }
        R::ListList { domain: d } => {
            let d = d.as_deref().map(domain).transpose()?;
            let rows = store
                .list_lists(d.as_ref())
                .map_err(admin_err)?
                .into_iter()
                .map(|l| {
                    vec![
                        l.address.to_string(),
                        l.name.clone(),
                        policy_name(l.policy).to_string(),
                        l.members.len().to_string(),
                    ]
                })
                .collect();
            Ok(table(&["list", "name", "policy", "members"], rows))
        }
        R::ListShow { address: a } => {
            let a = address(&a)?;
            let list = store
                .get_list(&a)
                .map_err(admin_err)?
                .ok_or_else(|| format!("not found: list {a}"))?;
            let mut rows = vec![vec![
                list.address.to_string(),
                format!("({}, {})", list.name, policy_name(list.policy)),
                String::new(),
            ]];
            rows.extend(list.members.iter().map(|m| {
                vec![
                    m.address.to_string(),
                    if m.can_send { "yes" } else { "no" }.to_string(),
                    if m.can_receive { "yes" } else { "no" }.to_string(),
                ]
            }));
            Ok(table(&["member", "send", "receive"], rows))
        }
        R::ListRemove { address: a } => {
            let a = address(&a)?;
            store.remove_list(&a).await.map_err(admin_err)?;
            done(format!("removed mailing list {a}"))
        }
        R::ListSetPolicy { address: a, policy } => {
            let a = address(&a)?;
            let policy = parse_policy(&policy)?;
            let list = store
                .update_list(&a, None, Some(policy))
                .await
                .map_err(admin_err)?;
            done(format!(
                "{} is now {}",
                list.address,
                policy_name(list.policy)
            ))
        }
        R::ListMemberAdd {
            list,
            member,
            can_send,
            can_receive,
        } => {
            let (l, m) = (address(&list)?, address(&member)?);
            store
                .add_list_member(
                    &l,
                    ListMember {
                        address: m.clone(),
                        can_send,
                        can_receive,
                    },
                )
                .await
                .map_err(admin_err)?;
            done(format!("{m} is a member of {l}"))
        }
        R::ListMemberRemove { list, member } => {
            let (l, m) = (address(&list)?, address(&member)?);
            store.remove_list_member(&l, &m).await.map_err(admin_err)?;
            done(format!("removed {m} from {l}"))
        }
        R::DepartmentAdd {
            domain: d,
            name,
            parent,
            order,
            leader,
        } => {
            let d = domain(&d)?;
            let leader = leader.as_deref().map(address).transpose()?;
            let info = store
                .add_department(
                    &d,
                    NewDepartment {
                        name,
                        parent,
                        order,
                        leader,
                    },
                )
                .await
                .map_err(admin_err)?;
            done(format!("added department {} in {}", info.path, info.domain))
        }
        R::DepartmentList { domain: d } => {
            let d = domain(&d)?;
            let rows = store
                .list_departments(&d)
                .map_err(admin_err)?
                .into_iter()
                .map(|dep| {
                    let depth = dep.path.matches('/').count();
                    vec![
                        format!("{}{}", "  ".repeat(depth), dep.name),
                        dep.path.clone(),
                        dep.order.to_string(),
                        dep.leader.map(|l| l.to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            Ok(table(&["department", "path", "order", "leader"], rows))
        }
        R::DepartmentShow { domain: d, name } => {
            let d = domain(&d)?;
            let dep = store
                .list_departments(&d)
                .map_err(admin_err)?
                .into_iter()
                .find(|dep| dep.path == name)
                .ok_or_else(|| format!("not found: department {name} in {d}"))?;
            let users: Vec<String> = store
                .list_users(Some(&d))
                .map_err(admin_err)?
                .into_iter()
                .filter(|u| u.department.as_deref() == Some(dep.path.as_str()))
                .map(|u| u.address.to_string())
                .collect();
            Ok(Output::Record {
                fields: vec![
                    ("department".to_string(), dep.path.clone()),
                    ("domain".to_string(), dep.domain.to_string()),
                    ("parent".to_string(), dep.parent.clone().unwrap_or_default()),
                    ("order".to_string(), dep.order.to_string()),
                    (
                        "leader".to_string(),
                        dep.leader.map(|l| l.to_string()).unwrap_or_default(),
                    ),
                    ("users".to_string(), users.join(", ")),
                ],
            })
        }
        R::DepartmentSet {
            domain: d,
            name,
            order,
            leader,
            parent,
            rename,
        } => {
            let d = domain(&d)?;
            let leader = match leader.as_deref() {
                None => None,
                Some("-") | Some("") => Some(None),
                Some(l) => Some(Some(address(l)?)),
            };
            let parent = match parent.as_deref() {
                None => None,
                Some("-") | Some("") => Some(None),
                Some(p) => Some(Some(p.trim_matches('/').to_string())),
            };
            if order.is_none() && leader.is_none() && parent.is_none() && rename.is_none() {
                return Err(
                    "nothing to change: give --order, --leader, --parent or --rename".to_string(),
                );
            }
            let update = DepartmentUpdate {
                order,
                leader,
                parent,
                name: rename,
            };
            let info = store
                .update_department(&d, &name, update)
                .await
                .map_err(admin_err)?;
            done(format!(
                "updated department {} in {}",
                info.path, info.domain
            ))
        }
        R::DepartmentRemove { domain: d, name } => {
            let d = domain(&d)?;
            store
                .remove_department(&d, &name)
                .await
                .map_err(admin_err)?;
            done(format!(
                "removed department {name} from {d}; its users keep their accounts"
            ))
        }
        R::AdminGrant {
            address: a,
            role: spec,
        } => {
            let a = address(&a)?;
            let r = role(&spec)?;
            store.grant_role(&a, r.clone()).await.map_err(admin_err)?;
            done(format!("{a} now has the {} role", role_text(&r)))
        }
        R::AdminRevoke {
            address: a,
            role: spec,
        } => {
            let a = address(&a)?;
            let r = role(&spec)?;
            store.revoke_role(&a, &r).await.map_err(admin_err)?;
            done(format!("{a} no longer has the {} role", role_text(&r)))
        }
        R::Collect(req) => crate::collect::execute(store, req).await,
        R::Delivery(req) => crate::delivery::execute(store, req).await,
        R::Backup { path } => {
            let stats = store.backup(&path).await.map_err(admin_err)?;
            done(format!(
                "database snapshot written to {} ({} entries, {} bytes)",
                path.display(),
                stats.entries,
                stats.bytes
            ))
        }
        R::AdminList => {
            let rows = store
                .list_admins()
                .map_err(admin_err)?
                .into_iter()
                .map(|(a, roles)| {
                    vec![
                        a.to_string(),
                        roles.iter().map(role_text).collect::<Vec<_>>().join(", "),
                    ]
                })
                .collect();
            Ok(table(&["administrator", "roles"], rows))
        }
    }
}

fn policy_name(p: ListPolicy) -> &'static str {
    match p {
        ListPolicy::Private => "private",
        ListPolicy::Public => "public",
    }
}

fn table(columns: &[&str], rows: Vec<Vec<String>>) -> Output {
    Output::Table {
        columns: columns.iter().map(|c| c.to_string()).collect(),
        rows,
    }
}

/// Checks every row, then creates the accounts; if creation fails part of
/// the way (a concurrent change), the accounts created so far are removed
/// again, so an import either happens whole or not at all.
async fn import_users(store: &Store, rows: Vec<UserRow>) -> AdminReply {
    let mut users = Vec::with_capacity(rows.len());
    let mut seen = std::collections::HashSet::new();
    let mut per_domain: std::collections::HashMap<Domain, u64> = std::collections::HashMap::new();
    for row in rows {
        let at = |e: String| format!("line {}: {e}", row.line);
        let a = address(&row.address).map_err(at)?;
        if !seen.insert(a.lookup_key()) {
            return Err(at(format!("{a} appears twice in the file")));
        }
        if row.password.is_empty() {
            return Err(at("empty password".to_string()));
        }
        let info = store
            .get_domain(a.domain())
            .map_err(|e| at(e.to_string()))?
            .ok_or_else(|| at(format!("domain {} is not hosted here", a.domain())))?;
        if store.get_user(&a).map_err(|e| at(e.to_string()))?.is_some() {
            return Err(at(format!("user {a} already exists")));
        }
        if let Some(dep) = &row.department {
            let exists = store
                .list_departments(a.domain())
                .map_err(|e| at(e.to_string()))?
                .iter()
                .any(|d| d.path == *dep);
            if !exists {
                return Err(at(format!(
                    "department {dep} does not exist in {}",
                    a.domain()
                )));
            }
        }
        let count = per_domain.entry(a.domain().clone()).or_insert(0);
        *count += 1;
        if info.max_users != 0 {
            let existing = store
                .domain_stats(a.domain())
                .map_err(|e| at(e.to_string()))?
                .users;
            if existing + *count > info.max_users {
                return Err(at(format!(
                    "domain {} allows {} users; the import would exceed it",
                    a.domain(),
                    info.max_users
                )));
            }
        }
        let fields = UserFields {
            display_name: row.display_name,
            quota: row.quota,
            max_messages: None,
            department: row.department,
            protocols: None,
        };
        users.push((row.line, new_user(a, row.password, fields)));
    }
    let mut created: Vec<Address> = Vec::with_capacity(users.len());
    for (line, user) in users {
        let a = user.address.clone();
        if let Err(e) = store.add_user(user).await {
            for undo in &created {
                if let Err(undo_err) = store.remove_user(undo).await {
                    tracing::error!(target: "admin", user = %undo, error = %undo_err, "could not undo a partial import");
                }
            }
            return Err(format!("line {line}: {e}; no account was created"));
        }
        created.push(a);
    }
    done(format!("imported {} users", created.len()))
}
