//! Administration API and `Directory` semantics.

use umail_core::{
    AccountStatus, Address, AdminRole, Directory, Domain, DomainStatus, ListMember, ListPolicy,
    MailStore, Protocol, Resolution, Unavailability,
};
use umail_store::{
    AdminError, DepartmentUpdate, DomainUpdate, NewDepartment, NewDomain, NewUser, Store,
    UserUpdate,
};

fn a(s: &str) -> Address {
    s.parse().expect("test address")
}

fn d(s: &str) -> Domain {
    s.parse().expect("test domain")
}

async fn store_with(domains: &[&str]) -> Store {
    let store = Store::open_in_memory().expect("open");
    for dom in domains {
        store
            .add_domain(NewDomain::new(d(dom)))
            .await
            .expect("add domain");
    }
    store
}

async fn user(store: &Store, addr: &str) {
    store
        .add_user(NewUser::new(a(addr), "correct horse"))
        .await
        .expect("add user");
}

fn local_addr(r: &Resolution) -> Option<String> {
    match r {
        Resolution::Local(p) => Some(p.account()),
        _ => None,
    }
}

// ----- domains -----

#[tokio::test]
async fn domain_add_get_list_update_remove() {
    let store = store_with(&["example.com"]).await;
    let info = store.get_domain(&d("example.com")).unwrap().unwrap();
    assert_eq!(info.status, DomainStatus::Active);
    assert!(info.created > 0);
    assert_eq!(
        store.add_domain(NewDomain::new(d("EXAMPLE.com"))).await,
        Err(AdminError::AlreadyExists("domain example.com".into()))
    );
    store
        .add_domain(NewDomain::new(d("b.example")))
        .await
        .unwrap();
    let names: Vec<String> = store
        .list_domains()
        .unwrap()
        .into_iter()
        .map(|d| d.domain.to_string())
        .collect();
    assert_eq!(names, ["b.example", "example.com"]);

    let updated = store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                max_users: Some(5),
                description: Some("main".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.max_users, 5);
    assert_eq!(updated.description, "main");
    assert_eq!(
        store
            .get_domain(&d("example.com"))
            .unwrap()
            .unwrap()
            .max_users,
        5
    );
    assert!(matches!(
        store
            .update_domain(&d("nope.example"), DomainUpdate::default())
            .await,
        Err(AdminError::NotFound(_))
    ));

    store.remove_domain(&d("b.example"), false).await.unwrap();
    assert!(store.get_domain(&d("b.example")).unwrap().is_none());
    assert!(matches!(
        store.remove_domain(&d("b.example"), false).await,
        Err(AdminError::NotFound(_))
    ));
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn domain_names_are_validated() {
    let store = store_with(&[]).await;
    // Single-label names are refused, except `localhost` (the bootstrap
    // domain of a machine without an FQDN).
    assert!(matches!(
        store.add_domain(NewDomain::new(d("intranet"))).await,
        Err(AdminError::Invalid(_))
    ));
    store
        .add_domain(NewDomain::new(d("localhost")))
        .await
        .unwrap();
    assert!(matches!(
        store.add_domain(NewDomain::new(d("[192.0.2.1]"))).await,
        Err(AdminError::Invalid(_))
    ));
    assert_eq!(store.list_domains().unwrap().len(), 1);
}

#[tokio::test]
async fn domain_remove_refuses_with_users_unless_forced() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    store
        .append(
            "alice@example.com",
            "INBOX",
            bytes::Bytes::from_static(b"Subject: x\r\n\r\nhi\r\n"),
            Default::default(),
            0,
        )
        .await
        .unwrap();
    store
        .add_alias(&a("sales@example.com"), &[a("alice@example.com")])
        .await
        .unwrap();
    store
        .add_list(&a("team@example.com"), "Team", ListPolicy::Public)
        .await
        .unwrap();
    store
        .add_domain_alias(&d("old.example"), &d("example.com"))
        .await
        .unwrap();
    store
        .grant_role(&a("alice@example.com"), AdminRole::System)
        .await
        .unwrap();

    assert!(matches!(
        store.remove_domain(&d("example.com"), false).await,
        Err(AdminError::InUse(_))
    ));
    assert!(store.get_user(&a("alice@example.com")).unwrap().is_some());

    store.remove_domain(&d("example.com"), true).await.unwrap();
    assert!(store.get_user(&a("alice@example.com")).unwrap().is_none());
    assert!(store.list_aliases(None).unwrap().is_empty());
    assert!(store.list_lists(None).unwrap().is_empty());
    assert!(store.list_domain_aliases().unwrap().is_empty());
    assert!(store.list_admins().unwrap().is_empty());
    assert!(matches!(
        store.quota_usage("alice@example.com").await,
        Err(umail_core::StoreError::NoSuchAccount(_))
    ));
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn domain_limits_cannot_drop_below_usage() {
    let store = store_with(&["example.com"]).await;
    user(&store, "a@example.com").await;
    user(&store, "b@example.com").await;
    let r = store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                max_users: Some(1),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(r, Err(AdminError::LimitReached(_))));
    // Users with unlimited quota block a total quota.
    let r = store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                quota_bytes: Some(1000),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(r, Err(AdminError::Invalid(_))));
    assert_eq!(
        store
            .get_domain(&d("example.com"))
            .unwrap()
            .unwrap()
            .quota_bytes,
        0
    );
}

// ----- domain aliases -----

#[tokio::test]
async fn domain_alias_add_list_remove_and_errors() {
    let store = store_with(&["new.example", "other.example"]).await;
    store
        .add_domain_alias(&d("old.example"), &d("new.example"))
        .await
        .unwrap();
    assert_eq!(
        store.list_domain_aliases().unwrap(),
        vec![(d("old.example"), d("new.example"))]
    );
    assert!(matches!(
        store
            .add_domain_alias(&d("old.example"), &d("other.example"))
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_domain_alias(&d("other.example"), &d("new.example"))
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_domain_alias(&d("x.example"), &d("missing.example"))
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store
            .add_domain_alias(&d("x.example"), &d("old.example"))
            .await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store
            .add_domain_alias(&d("x.example"), &d("x.example"))
            .await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store.add_domain(NewDomain::new(d("old.example"))).await,
        Err(AdminError::AlreadyExists(_))
    ));
    // Users cannot be created in an alias domain.
    assert!(matches!(
        store
            .add_user(NewUser::new(a("bob@old.example"), "pw"))
            .await,
        Err(AdminError::Invalid(_))
    ));
    store.remove_domain_alias(&d("old.example")).await.unwrap();
    assert!(matches!(
        store.remove_domain_alias(&d("old.example")).await,
        Err(AdminError::NotFound(_))
    ));
}

#[tokio::test]
async fn domain_alias_applies_in_resolve_login_and_send_as() {
    let store = store_with(&["new.example"]).await;
    user(&store, "bob@new.example").await;
    store
        .add_domain_alias(&d("old.example"), &d("new.example"))
        .await
        .unwrap();

    assert!(store.is_local_domain(&d("old.example")).await.unwrap());
    assert!(store.is_local_domain(&d("new.example")).await.unwrap());
    assert!(
        !store
            .is_local_domain(&d("elsewhere.example"))
            .await
            .unwrap()
    );

    let r = store.resolve(&a("Bob@OLD.example")).await.unwrap();
    assert_eq!(local_addr(&r).as_deref(), Some("bob@new.example"));
    assert_eq!(
        store.resolve(&a("nobody@old.example")).await.unwrap(),
        Resolution::Unknown
    );
    let p = store
        .verify_password("bob@old.example", "correct horse")
        .await
        .unwrap()
        .expect("login through the alias domain");
    assert_eq!(p.account(), "bob@new.example");
    assert!(store.may_send_as(&p, &a("bob@old.example")).await.unwrap());
    let settings = store
        .domain_settings(&d("old.example"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(settings.domain, d("new.example"));
}

// ----- users -----

#[tokio::test]
async fn user_add_get_list_and_errors() {
    let store = store_with(&["example.com", "other.example"]).await;
    let mut nu = NewUser::new(a("Alice@Example.com"), "pw-1");
    nu.display_name = "Alice".into();
    nu.protocols = vec![Protocol::Imap, Protocol::Smtp, Protocol::Imap];
    let info = store.add_user(nu).await.unwrap();
    assert_eq!(info.display_name, "Alice");
    assert_eq!(info.protocols, vec![Protocol::Smtp, Protocol::Imap]);
    assert_eq!(info.status, AccountStatus::Enabled);
    assert!(!info.has_legacy_secret);

    assert!(matches!(
        store
            .add_user(NewUser::new(a("alice@example.com"), "pw"))
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_user(NewUser::new(a("bob@missing.example"), "pw"))
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.add_user(NewUser::new(a("bob@example.com"), "")).await,
        Err(AdminError::Invalid(_))
    ));
    let mut bad_dept = NewUser::new(a("bob@example.com"), "pw");
    bad_dept.department = Some("Nowhere".into());
    assert!(matches!(
        store.add_user(bad_dept).await,
        Err(AdminError::Invalid(_))
    ));
    user(&store, "bob@example.com").await;
    user(&store, "carol@other.example").await;

    let got = store.get_user(&a("ALICE@example.com")).unwrap().unwrap();
    assert_eq!(got.address, a("Alice@Example.com"));
    assert_eq!(store.list_users(Some(&d("example.com"))).unwrap().len(), 2);
    assert_eq!(store.list_users(None).unwrap().len(), 3);
    assert!(store.get_user(&a("nobody@example.com")).unwrap().is_none());
}

#[tokio::test]
async fn user_limits_and_default_quota() {
    let store = store_with(&[]).await;
    let mut nd = NewDomain::new(d("small.example"));
    nd.max_users = 2;
    nd.default_user_quota = 1000;
    nd.quota_bytes = 2500;
    store.add_domain(nd).await.unwrap();
    let first = store
        .add_user(NewUser::new(a("a@small.example"), "pw"))
        .await
        .unwrap();
    assert_eq!(first.quota.bytes, 1000, "the domain's default quota");
    let mut big = NewUser::new(a("b@small.example"), "pw");
    big.quota_bytes = Some(2000);
    assert!(matches!(
        store.add_user(big).await,
        Err(AdminError::LimitReached(_))
    ));
    let mut unlimited = NewUser::new(a("b@small.example"), "pw");
    unlimited.quota_bytes = Some(0);
    assert!(matches!(
        store.add_user(unlimited).await,
        Err(AdminError::Invalid(_))
    ));
    let mut ok = NewUser::new(a("b@small.example"), "pw");
    ok.quota_bytes = Some(1500);
    store.add_user(ok).await.unwrap();
    assert!(matches!(
        store
            .add_user(NewUser::new(a("c@small.example"), "pw"))
            .await,
        Err(AdminError::LimitReached(_))
    ));
    // Raising one user's quota past the domain total is refused too.
    assert!(matches!(
        store
            .update_user(
                &a("a@small.example"),
                UserUpdate {
                    quota_bytes: Some(1001),
                    ..Default::default()
                }
            )
            .await,
        Err(AdminError::LimitReached(_))
    ));
    let stats = store.domain_stats(&d("small.example")).unwrap();
    assert_eq!(stats.users, 2);
    assert_eq!(stats.allocated_quota, 2500);
}

#[tokio::test]
async fn user_update_password_freeze_remove() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let alice = a("alice@example.com");

    let p = store
        .verify_password("alice@example.com", "correct horse")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.display_name, "");
    assert!(
        store
            .verify_password("alice@example.com", "wrong")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_password("nobody@example.com", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_password("not an address", "x")
            .await
            .unwrap()
            .is_none()
    );

    let info = store
        .update_user(
            &alice,
            UserUpdate {
                display_name: Some("Alice A.".into()),
                quota_bytes: Some(10_000),
                max_messages: Some(7),
                protocols: Some(vec![Protocol::Imap]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(info.display_name, "Alice A.");
    assert_eq!(info.quota.bytes, 10_000);
    assert_eq!(info.quota.messages, 7);
    let p = store.principal("alice@example.com").await.unwrap().unwrap();
    assert!(p.may_use(Protocol::Imap));
    assert!(!p.may_use(Protocol::Pop3));

    store.set_password(&alice, "new secret").await.unwrap();
    assert!(
        store
            .verify_password("alice@example.com", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .verify_password("alice@example.com", "new secret")
            .await
            .unwrap()
            .is_some()
    );
    let scram = store
        .scram_credentials("alice@example.com")
        .await
        .unwrap()
        .expect("scram verifiers");
    let expected =
        umail_core::sasl::ScramCredentials::derive("new secret", &scram.salt, scram.iterations);
    assert_eq!(scram, expected);

    store.freeze_user(&alice).await.unwrap();
    assert!(
        store
            .verify_password("alice@example.com", "new secret")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .scram_credentials("alice@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .principal("alice@example.com")
            .await
            .unwrap()
            .unwrap()
            .status,
        AccountStatus::Frozen
    );
    assert_eq!(
        store.resolve(&alice).await.unwrap(),
        Resolution::Unavailable(Unavailability::FrozenAccount)
    );
    store.unfreeze_user(&alice).await.unwrap();
    assert!(
        store
            .verify_password("alice@example.com", "new secret")
            .await
            .unwrap()
            .is_some()
    );

    assert!(matches!(
        store.set_password(&a("nobody@example.com"), "x").await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.freeze_user(&a("nobody@example.com")).await,
        Err(AdminError::NotFound(_))
    ));
    store.remove_user(&alice).await.unwrap();
    assert!(store.get_user(&alice).unwrap().is_none());
    assert!(matches!(
        store.remove_user(&alice).await,
        Err(AdminError::NotFound(_))
    ));
    assert_eq!(store.resolve(&alice).await.unwrap(), Resolution::Unknown);
}

#[tokio::test]
async fn legacy_secret_is_off_unless_set() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    assert_eq!(
        store.legacy_secret("alice@example.com").await.unwrap(),
        None
    );
    store
        .set_legacy_secret(&a("alice@example.com"), Some("tanstaaf"))
        .await
        .unwrap();
    assert_eq!(
        store
            .legacy_secret("alice@example.com")
            .await
            .unwrap()
            .as_deref(),
        Some("tanstaaf")
    );
    assert!(
        store
            .get_user(&a("alice@example.com"))
            .unwrap()
            .unwrap()
            .has_legacy_secret
    );
    store
        .set_legacy_secret(&a("alice@example.com"), None)
        .await
        .unwrap();
    assert_eq!(
        store.legacy_secret("alice@example.com").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn user_removal_deletes_mail_and_references() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    user(&store, "bob@example.com").await;
    let msg = bytes::Bytes::from_static(b"Subject: shared\r\n\r\nbody\r\n");
    let targets = vec![
        umail_core::DeliveryTarget {
            account: "alice@example.com".into(),
            mailbox: "INBOX".into(),
            flags: Default::default(),
        },
        umail_core::DeliveryTarget {
            account: "bob@example.com".into(),
            mailbox: "INBOX".into(),
            flags: Default::default(),
        },
    ];
    for r in store.deliver(msg.clone(), 0, &targets).await.unwrap() {
        r.unwrap();
    }
    store
        .add_alias(
            &a("both@example.com"),
            &[a("alice@example.com"), a("bob@example.com")],
        )
        .await
        .unwrap();
    store
        .add_alias(&a("al@example.com"), &[a("alice@example.com")])
        .await
        .unwrap();
    store
        .add_list(&a("team@example.com"), "Team", ListPolicy::Private)
        .await
        .unwrap();
    store
        .add_list_member(
            &a("team@example.com"),
            ListMember {
                address: a("alice@example.com"),
                can_send: true,
                can_receive: true,
            },
        )
        .await
        .unwrap();
    store
        .add_department(
            &d("example.com"),
            NewDepartment {
                name: "Sales".into(),
                parent: None,
                order: 0,
                leader: Some(a("alice@example.com")),
            },
        )
        .await
        .unwrap();
    store
        .grant_role(&a("alice@example.com"), AdminRole::System)
        .await
        .unwrap();

    store.remove_user(&a("alice@example.com")).await.unwrap();
    store.check_invariants().unwrap();
    assert_eq!(
        store
            .get_alias(&a("both@example.com"))
            .unwrap()
            .unwrap()
            .targets,
        vec![a("bob@example.com")]
    );
    assert!(store.get_alias(&a("al@example.com")).unwrap().is_none());
    assert!(
        store
            .list_members(&a("team@example.com"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.list_departments(&d("example.com")).unwrap()[0].leader,
        None
    );
    assert!(store.list_admins().unwrap().is_empty());
    // Bob's copy (same blob) is still readable.
    let inbox = store
        .mailbox("bob@example.com", "INBOX")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .message_content("bob@example.com", inbox.id, 1)
            .await
            .unwrap(),
        Some(msg)
    );
}

// ----- aliases -----

#[tokio::test]
async fn alias_add_list_remove_and_errors() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let sales = a("sales@example.com");
    let info = store
        .add_alias(&sales, &[a("alice@example.com")])
        .await
        .unwrap();
    assert_eq!(info.targets, vec![a("alice@example.com")]);
    let info = store
        .add_alias(
            &sales,
            &[a("ALICE@example.com"), a("partner@remote.example")],
        )
        .await
        .unwrap();
    assert_eq!(
        info.targets,
        vec![a("alice@example.com"), a("partner@remote.example")],
        "targets are merged without duplicates"
    );
    assert_eq!(
        store.list_aliases(Some(&d("example.com"))).unwrap().len(),
        1
    );
    assert!(
        store
            .list_aliases(Some(&d("other.example")))
            .unwrap()
            .is_empty()
    );

    assert!(matches!(
        store
            .add_alias(&a("alice@example.com"), &[a("x@remote.example")])
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_alias(&a("x@missing.example"), &[a("alice@example.com")])
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.add_alias(&sales, &[a("Sales@example.com")]).await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store.add_alias(&sales, &[]).await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store.add_user(NewUser::new(sales.clone(), "pw")).await,
        Err(AdminError::AlreadyExists(_))
    ));

    store
        .remove_alias(&sales, Some(&a("partner@remote.example")))
        .await
        .unwrap();
    assert_eq!(
        store.get_alias(&sales).unwrap().unwrap().targets,
        vec![a("alice@example.com")]
    );
    assert!(matches!(
        store
            .remove_alias(&sales, Some(&a("partner@remote.example")))
            .await,
        Err(AdminError::NotFound(_))
    ));
    store.remove_alias(&sales, None).await.unwrap();
    assert!(store.get_alias(&sales).unwrap().is_none());
    assert!(matches!(
        store.remove_alias(&sales, None).await,
        Err(AdminError::NotFound(_))
    ));
}

#[tokio::test]
async fn may_send_as_own_address_and_aliases_only() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    user(&store, "bob@example.com").await;
    store
        .add_alias(&a("sales@example.com"), &[a("alice@example.com")])
        .await
        .unwrap();
    store
        .add_alias(&a("ops@example.com"), &[a("bob@example.com")])
        .await
        .unwrap();
    let alice = store.principal("alice@example.com").await.unwrap().unwrap();
    assert!(
        store
            .may_send_as(&alice, &a("ALICE@example.com"))
            .await
            .unwrap()
    );
    assert!(
        store
            .may_send_as(&alice, &a("sales@example.com"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .may_send_as(&alice, &a("ops@example.com"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .may_send_as(&alice, &a("bob@example.com"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .may_send_as(&alice, &a("alice@elsewhere.example"))
            .await
            .unwrap()
    );
}

// ----- lists -----

#[tokio::test]
async fn list_add_members_and_errors() {
    let store = store_with(&[]).await;
    let mut nd = NewDomain::new(d("example.com"));
    nd.max_lists = 1;
    store.add_domain(nd).await.unwrap();
    user(&store, "alice@example.com").await;
    let team = a("team@example.com");
    store
        .add_list(&team, "Team", ListPolicy::Private)
        .await
        .unwrap();
    assert!(matches!(
        store
            .add_list(&a("two@example.com"), "Two", ListPolicy::Public)
            .await,
        Err(AdminError::LimitReached(_))
    ));
    assert!(matches!(
        store
            .add_list(&a("alice@example.com"), "X", ListPolicy::Public)
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.add_list(&team, "Again", ListPolicy::Public).await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.add_alias(&team, &[a("alice@example.com")]).await,
        Err(AdminError::AlreadyExists(_))
    ));

    let member = |addr: &str, send: bool, recv: bool| ListMember {
        address: a(addr),
        can_send: send,
        can_receive: recv,
    };
    store
        .add_list_member(&team, member("alice@example.com", true, true))
        .await
        .unwrap();
    store
        .add_list_member(&team, member("reader@remote.example", false, true))
        .await
        .unwrap();
    store
        .add_list_member(&team, member("Alice@example.com", false, true))
        .await
        .unwrap();
    let members = store.list_members(&team).unwrap();
    assert_eq!(members.len(), 2, "re-adding updates permissions");
    assert!(!members[0].can_send);
    assert!(matches!(
        store
            .add_list_member(&team, member("team@example.com", true, true))
            .await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store
            .add_list_member(&a("nolist@example.com"), member("x@y.example", true, true))
            .await,
        Err(AdminError::NotFound(_))
    ));
    store
        .remove_list_member(&team, &a("reader@remote.example"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .remove_list_member(&team, &a("reader@remote.example"))
            .await,
        Err(AdminError::NotFound(_))
    ));
    let list = store
        .update_list(&team, Some("The Team"), Some(ListPolicy::Public))
        .await
        .unwrap();
    assert_eq!(list.name, "The Team");
    assert_eq!(list.policy, ListPolicy::Public);

    store.remove_list(&team).await.unwrap();
    assert!(matches!(
        store.remove_list(&team).await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.list_members(&team),
        Err(AdminError::NotFound(_))
    ));
}

#[tokio::test]
async fn private_list_resolution_and_posting() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    user(&store, "bob@example.com").await;
    let team = a("team@example.com");
    store
        .add_list(&team, "Team", ListPolicy::Private)
        .await
        .unwrap();
    store
        .add_list_member(
            &team,
            ListMember {
                address: a("alice@example.com"),
                can_send: true,
                can_receive: false,
            },
        )
        .await
        .unwrap();
    store
        .add_list_member(
            &team,
            ListMember {
                address: a("bob@example.com"),
                can_send: false,
                can_receive: true,
            },
        )
        .await
        .unwrap();
    let Resolution::List(list) = store.resolve(&a("TEAM@example.com")).await.unwrap() else {
        panic!("expected a list");
    };
    assert!(list.may_post(Some(&a("alice@example.com"))));
    assert!(!list.may_post(Some(&a("bob@example.com"))));
    assert!(!list.may_post(Some(&a("stranger@remote.example"))));
    assert!(!list.may_post(None));
    let receivers: Vec<String> = list.receivers().map(|r| r.to_string()).collect();
    assert_eq!(receivers, ["bob@example.com"]);
}

#[tokio::test]
async fn everyone_list_is_automatic_unless_shadowed() {
    let store = store_with(&["example.com", "other.example"]).await;
    user(&store, "alice@example.com").await;
    user(&store, "bob@example.com").await;
    user(&store, "carol@example.com").await;
    user(&store, "dave@other.example").await;
    store.freeze_user(&a("carol@example.com")).await.unwrap();

    let Resolution::List(list) = store.resolve(&a("Everyone@example.com")).await.unwrap() else {
        panic!("expected the everyone list");
    };
    assert_eq!(list.policy, ListPolicy::Private);
    let receivers: Vec<String> = list.receivers().map(|r| r.to_string()).collect();
    assert_eq!(receivers, ["alice@example.com", "bob@example.com"]);
    assert!(list.may_post(Some(&a("bob@example.com"))));
    assert!(!list.may_post(Some(&a("dave@other.example"))));
    assert!(
        !list.may_post(Some(&a("carol@example.com"))),
        "frozen users may not post"
    );

    // A real alias named everyone wins.
    store
        .add_alias(
            &a("everyone@other.example"),
            &a_vec(&["dave@other.example"]),
        )
        .await
        .unwrap();
    assert_eq!(
        store.resolve(&a("everyone@other.example")).await.unwrap(),
        Resolution::Alias(a_vec(&["dave@other.example"]))
    );
    // Stored lists are listed; the automatic one is not.
    assert!(store.list_lists(None).unwrap().is_empty());
}

fn a_vec(v: &[&str]) -> Vec<Address> {
    v.iter().map(|s| a(s)).collect()
}

// ----- resolve -----

#[tokio::test]
async fn resolve_order_and_domain_status() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    store
        .add_alias(
            &a("info@example.com"),
            &a_vec(&["alice@example.com", "x@remote.example"]),
        )
        .await
        .unwrap();

    assert_eq!(
        local_addr(&store.resolve(&a("ALICE@Example.COM")).await.unwrap()).as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        store.resolve(&a("info@example.com")).await.unwrap(),
        Resolution::Alias(a_vec(&["alice@example.com", "x@remote.example"]))
    );
    assert_eq!(
        store.resolve(&a("ghost@example.com")).await.unwrap(),
        Resolution::Unknown
    );
    assert_eq!(
        store.resolve(&a("alice@remote.example")).await.unwrap(),
        Resolution::NotLocal
    );

    store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                status: Some(DomainStatus::Disabled),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for addr in ["alice@example.com", "info@example.com", "ghost@example.com"] {
        assert_eq!(
            store.resolve(&a(addr)).await.unwrap(),
            Resolution::Unavailable(Unavailability::DisabledDomain)
        );
    }
    assert!(
        store
            .verify_password("alice@example.com", "correct horse")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .domain_settings(&d("example.com"))
            .await
            .unwrap()
            .unwrap()
            .status,
        DomainStatus::Disabled
    );

    store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                status: Some(DomainStatus::Active),
                expires: Some(Some(umail_core::unix_now() - 10)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.resolve(&a("alice@example.com")).await.unwrap(),
        Resolution::Unavailable(Unavailability::ExpiredDomain)
    );
    assert_eq!(
        store
            .domain_settings(&d("example.com"))
            .await
            .unwrap()
            .unwrap()
            .status,
        DomainStatus::Expired
    );
    assert!(
        store
            .verify_password("alice@example.com", "correct horse")
            .await
            .unwrap()
            .is_none()
    );

    store
        .update_domain(
            &d("example.com"),
            DomainUpdate {
                expires: Some(Some(umail_core::unix_now() + 3600)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(local_addr(&store.resolve(&a("alice@example.com")).await.unwrap()).is_some());
}

// ----- departments -----

#[tokio::test]
async fn departments_tree_update_remove() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let dom = d("example.com");
    let dept = |name: &str, parent: Option<&str>, order: i64| NewDepartment {
        name: name.into(),
        parent: parent.map(str::to_string),
        order,
        leader: None,
    };
    store
        .add_department(&dom, dept("Sales", None, 2))
        .await
        .unwrap();
    store
        .add_department(&dom, dept("Engineering", None, 1))
        .await
        .unwrap();
    let north = store
        .add_department(&dom, dept("North", Some("Sales"), 0))
        .await
        .unwrap();
    assert_eq!(north.path, "Sales/North");
    assert!(matches!(
        store
            .add_department(&dom, dept("North", Some("Sales"), 0))
            .await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .add_department(&dom, dept("X", Some("Missing"), 0))
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.add_department(&dom, dept("a/b", None, 0)).await,
        Err(AdminError::Invalid(_))
    ));
    assert!(matches!(
        store
            .add_department(&d("missing.example"), dept("X", None, 0))
            .await,
        Err(AdminError::NotFound(_))
    ));
    let paths: Vec<String> = store
        .list_departments(&dom)
        .unwrap()
        .into_iter()
        .map(|d| d.path)
        .collect();
    assert_eq!(paths, ["Engineering", "Sales", "Sales/North"]);

    let updated = store
        .update_department(
            &dom,
            "Sales",
            DepartmentUpdate {
                order: Some(0),
                leader: Some(Some(a("alice@example.com"))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.leader, Some(a("alice@example.com")));
    assert!(matches!(
        store
            .update_department(
                &dom,
                "Sales",
                DepartmentUpdate {
                    leader: Some(Some(a("ghost@example.com"))),
                    ..Default::default()
                }
            )
            .await,
        Err(AdminError::Invalid(_))
    ));
    let paths: Vec<String> = store
        .list_departments(&dom)
        .unwrap()
        .into_iter()
        .map(|d| d.path)
        .collect();
    assert_eq!(paths, ["Sales", "Sales/North", "Engineering"]);

    store
        .update_user(
            &a("alice@example.com"),
            UserUpdate {
                department: Some(Some("Sales/North".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .grant_role(
            &a("alice@example.com"),
            AdminRole::Department {
                domain: dom.clone(),
                department: "Sales/North".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        store.remove_department(&dom, "Sales").await,
        Err(AdminError::InUse(_))
    ));
    store.remove_department(&dom, "Sales/North").await.unwrap();
    let alice = store.get_user(&a("alice@example.com")).unwrap().unwrap();
    assert_eq!(alice.department, None, "users stay, without department");
    assert!(alice.roles.is_empty(), "department admin role revoked");
    store.remove_department(&dom, "Sales").await.unwrap();
    assert!(matches!(
        store.remove_department(&dom, "Sales").await,
        Err(AdminError::NotFound(_))
    ));
    store.check_invariants().unwrap();
}

// ----- admins -----

#[tokio::test]
async fn roles_grant_revoke_list() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let alice = a("alice@example.com");
    store.grant_role(&alice, AdminRole::System).await.unwrap();
    store
        .grant_role(
            &alice,
            AdminRole::Domain {
                domain: d("example.com"),
            },
        )
        .await
        .unwrap();
    store.grant_role(&alice, AdminRole::System).await.unwrap();
    let p = store.principal("alice@example.com").await.unwrap().unwrap();
    assert!(p.is_system_admin());
    assert_eq!(p.roles.len(), 2);
    assert_eq!(
        store.list_admins().unwrap(),
        vec![(alice.clone(), p.roles.clone())]
    );

    assert!(matches!(
        store
            .grant_role(&a("ghost@example.com"), AdminRole::System)
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store
            .grant_role(
                &alice,
                AdminRole::Domain {
                    domain: d("missing.example")
                }
            )
            .await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store
            .grant_role(
                &alice,
                AdminRole::Department {
                    domain: d("example.com"),
                    department: "Nope".into()
                }
            )
            .await,
        Err(AdminError::NotFound(_))
    ));
    store.revoke_role(&alice, &AdminRole::System).await.unwrap();
    assert!(matches!(
        store.revoke_role(&alice, &AdminRole::System).await,
        Err(AdminError::NotFound(_))
    ));
    assert_eq!(
        store.roles(&alice).unwrap(),
        vec![AdminRole::Domain {
            domain: d("example.com")
        }]
    );
}

// ----- opening -----

#[tokio::test]
async fn second_open_is_locked_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("umail.redb");
    {
        let store = Store::open(&path).unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(umail_store::OpenError::Locked)
        ));
        store
            .add_domain(NewDomain::new(d("example.com")))
            .await
            .unwrap();
        user(&store, "alice@example.com").await;
    }
    let store = Store::open(&path).unwrap();
    assert!(store.get_user(&a("alice@example.com")).unwrap().is_some());
    assert!(
        store
            .verify_password("alice@example.com", "correct horse")
            .await
            .unwrap()
            .is_some()
    );
    store.check_invariants().unwrap();
}

// ----- backup -----

#[tokio::test]
async fn backup_is_a_consistent_openable_copy() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    store
        .append(
            "alice@example.com",
            "INBOX",
            bytes::Bytes::from_static(b"Subject: keep\r\n\r\nme\r\n"),
            Default::default(),
            5,
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup").join("umail.redb");
    let stats = store.backup(&dest).await.unwrap();
    assert!(stats.entries > 10 && stats.bytes > 0);
    assert!(matches!(
        store.backup(&dest).await,
        Err(AdminError::AlreadyExists(_))
    ));
    // Changes after the backup are not in it.
    user(&store, "bob@example.com").await;

    let copy = Store::open(&dest).unwrap();
    copy.check_invariants().unwrap();
    assert!(copy.get_user(&a("alice@example.com")).unwrap().is_some());
    assert!(copy.get_user(&a("bob@example.com")).unwrap().is_none());
    assert!(
        copy.verify_password("alice@example.com", "correct horse")
            .await
            .unwrap()
            .is_some()
    );
    let inbox = copy
        .mailbox("alice@example.com", "INBOX")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        copy.message_content("alice@example.com", inbox.id, 1)
            .await
            .unwrap(),
        Some(bytes::Bytes::from_static(b"Subject: keep\r\n\r\nme\r\n"))
    );
}

#[tokio::test]
async fn department_rename_moves_children_users_and_roles() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let dom = d("example.com");
    let dept = |name: &str, parent: Option<&str>| NewDepartment {
        name: name.into(),
        parent: parent.map(str::to_string),
        order: 0,
        leader: None,
    };
    store
        .add_department(&dom, dept("Sales", None))
        .await
        .unwrap();
    store
        .add_department(&dom, dept("North", Some("Sales")))
        .await
        .unwrap();
    store
        .add_department(&dom, dept("Deep", Some("Sales/North")))
        .await
        .unwrap();
    store
        .add_department(&dom, dept("Support", None))
        .await
        .unwrap();
    store
        .update_user(
            &a("alice@example.com"),
            UserUpdate {
                department: Some(Some("Sales/North/Deep".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    store
        .grant_role(
            &a("alice@example.com"),
            AdminRole::Department {
                domain: dom.clone(),
                department: "Sales/North".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        store.rename_department(&dom, "Sales", "Support").await,
        Err(AdminError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.rename_department(&dom, "Nope", "X").await,
        Err(AdminError::NotFound(_))
    ));
    assert!(matches!(
        store.rename_department(&dom, "Sales", "a/b").await,
        Err(AdminError::Invalid(_))
    ));
    let info = store
        .rename_department(&dom, "Sales", "Market")
        .await
        .unwrap();
    assert_eq!(info.path, "Market");
    let paths: Vec<(String, Option<String>)> = store
        .list_departments(&dom)
        .unwrap()
        .into_iter()
        .map(|d| (d.path, d.parent))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("Market".to_string(), None),
            ("Market/North".to_string(), Some("Market".to_string())),
            (
                "Market/North/Deep".to_string(),
                Some("Market/North".to_string())
            ),
            ("Support".to_string(), None),
        ]
    );
    let alice = store.get_user(&a("alice@example.com")).unwrap().unwrap();
    assert_eq!(alice.department.as_deref(), Some("Market/North/Deep"));
    assert_eq!(
        alice.roles,
        vec![AdminRole::Department {
            domain: dom.clone(),
            department: "Market/North".into()
        }]
    );
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn department_move_reparents_the_subtree_and_refuses_cycles() {
    let store = store_with(&["example.com"]).await;
    user(&store, "alice@example.com").await;
    let dom = d("example.com");
    for (name, parent) in [
        ("Sales", None),
        ("North", Some("Sales")),
        ("Deep", Some("Sales/North")),
        ("Ops", None),
    ] {
        store
            .add_department(
                &dom,
                NewDepartment {
                    name: name.into(),
                    parent: parent.map(str::to_string),
                    order: 0,
                    leader: None,
                },
            )
            .await
            .unwrap();
    }
    store
        .update_user(
            &a("alice@example.com"),
            UserUpdate {
                department: Some(Some("Sales/North/Deep".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (parent, why) in [("Sales/North", "itself"), ("Sales/North/Deep", "itself")] {
        match store
            .move_department(&dom, "Sales/North", Some(Some(parent)), None)
            .await
        {
            Err(AdminError::Invalid(m)) => assert!(m.contains(why), "{m}"),
            other => panic!("moving under {parent}: {other:?}"),
        }
    }
    assert!(matches!(
        store
            .move_department(&dom, "Sales/North", Some(Some("Nowhere")), None)
            .await,
        Err(AdminError::NotFound(_))
    ));
    // North moves from Sales to Ops and is renamed on the way.
    let info = store
        .move_department(&dom, "Sales/North", Some(Some("Ops")), Some("Field"))
        .await
        .unwrap();
    assert_eq!(
        (info.path.as_str(), info.parent.as_deref()),
        ("Ops/Field", Some("Ops"))
    );
    let alice = store.get_user(&a("alice@example.com")).unwrap().unwrap();
    assert_eq!(alice.department.as_deref(), Some("Ops/Field/Deep"));
    // And up to the top level.
    let info = store
        .move_department(&dom, "Ops/Field", Some(None), None)
        .await
        .unwrap();
    assert_eq!((info.path.as_str(), info.parent), ("Field", None));
    let paths: Vec<(String, Option<String>)> = store
        .list_departments(&dom)
        .unwrap()
        .into_iter()
        .map(|d| (d.path, d.parent))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("Field".to_string(), None),
            ("Field/Deep".to_string(), Some("Field".to_string())),
            ("Ops".to_string(), None),
            ("Sales".to_string(), None),
        ]
    );
    // One commit: a refused move leaves the leader change undone too.
    assert!(matches!(
        store
            .update_department(
                &dom,
                "Field",
                DepartmentUpdate {
                    leader: Some(Some(a("alice@example.com"))),
                    parent: Some(Some("Field/Deep".into())),
                    ..Default::default()
                },
            )
            .await,
        Err(AdminError::Invalid(_))
    ));
    let field = store
        .list_departments(&dom)
        .unwrap()
        .into_iter()
        .find(|d| d.path == "Field")
        .unwrap();
    assert_eq!(field.leader, None);
    store.check_invariants().unwrap();
}
