//! The stores themselves: many writers' changes share commits, yet each write keeps its own
//! outcome — a stale revision or a taken id fails that write alone — events are numbered per
//! transaction without gaps, and plugin versions without gaps under concurrent uploads; and
//! what only Redis has (its durability check, retention by expiry, indexes kept a superset).

mod common;

use serde_json::json;
use wasmtx::store::{Audit, NewEvent, Store, StoreError, TxRow, now_ms};

fn row(id: &str, rev: i64, state: &str) -> TxRow {
    TxRow {
        tenant: "t".into(),
        id: id.into(),
        kind: "saga".into(),
        name: "n".into(),
        state: state.into(),
        doc: json!({"state": state}).to_string(),
        rev,
        owner: None,
        lease_until_ms: 0,
        created_at_ms: now_ms(),
        updated_at_ms: now_ms(),
        ended: false,
    }
}

fn events(n: usize) -> Vec<NewEvent> {
    (0..n).map(|i| NewEvent::new(&format!("e{i}"), None, json!({ "i": i }))).collect()
}

on_every_durable_store!(concurrent_writes_share_commits_and_keep_their_own_outcomes, |url: String| async move {
    let store = Store::open(&url).await.unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("tx-{i}")).collect();
    let inserted = futures::future::join_all(ids.iter().map(|id| {
        let store = store.clone();
        async move { store.insert_tx(&row(id, 0, "pending"), &events(2), None).await }
    }))
    .await;
    assert!(inserted.iter().all(Result::is_ok), "{inserted:?}");

    // One writer presents a revision that is not the stored one; one inserts an id that exists.
    let saved = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let store = store.clone();
        let rev = if i == 7 { 5 } else { 0 };
        async move { store.save_tx(&row(id, rev, "running"), &events(i % 3), None).await }
    }))
    .await;
    let duplicate = store.insert_tx(&row("tx-3", 0, "pending"), &events(1), None).await;
    assert!(matches!(duplicate, Err(StoreError::Conflict { .. })), "{duplicate:?}");
    for (i, result) in saved.iter().enumerate() {
        match i {
            7 => assert!(matches!(result, Err(StoreError::Conflict { .. })), "{result:?}"),
            _ => assert_eq!(result.as_ref().unwrap(), &1, "write {i}"),
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let stored = store.get_tx("t", "saga", id).await.unwrap().unwrap();
        let seqs: Vec<i64> = store.events(id).await.unwrap().iter().map(|e| e.seq).collect();
        if i == 7 {
            assert_eq!((stored.state.as_str(), stored.rev, seqs), ("pending", 0, vec![1, 2]), "the failed write left nothing");
        } else {
            assert_eq!((stored.state.as_str(), stored.rev), ("running", 1));
            assert_eq!(seqs, (1..=2 + (i % 3) as i64).collect::<Vec<_>>(), "events of {id} numbered without gaps");
        }
    }
    assert!(store.get_tx("other-tenant", "saga", "tx-1").await.unwrap().is_none(), "reads stay per tenant");
});

on_every_durable_store!(audit_entries_share_commits_with_transaction_writes, |url: String| async move {
    let store = Store::open(&url).await.unwrap();
    let writes = (0..20).map(|i| {
        let store = store.clone();
        async move { store.insert_tx(&row(&format!("a-{i}"), 0, "pending"), &events(1), None).await }
    });
    let audits = (0..20).map(|i| {
        let store = store.clone();
        async move { store.audit("t", "key-1", "created", &json!({ "n": i })).await }
    });
    let (w, a) = futures::future::join(futures::future::join_all(writes), futures::future::join_all(audits)).await;
    assert!(w.iter().all(Result::is_ok) && a.iter().all(Result::is_ok), "{w:?} {a:?}");
    let log = store.audit_log("t", 100).await.unwrap();
    assert_eq!(log.len(), 20);
    let mut seen: Vec<i64> = log.iter().map(|(_, actor, action, detail)| {
        assert_eq!((actor.as_str(), action.as_str()), ("key-1", "created"));
        detail["n"].as_i64().unwrap()
    }).collect();
    seen.sort();
    assert_eq!(seen, (0..20).collect::<Vec<_>>());
    assert!(store.audit_log("someone-else", 100).await.unwrap().is_empty());
});

on_every_store!(a_writes_audit_entry_is_written_only_when_the_write_takes_effect, |url: String| async move {
    // Riders on one batch: six writers race for one revision, each with its own entry, beside
    // an insert of a taken id and an insert of a new one.
    let store = Store::open(&url).await.unwrap();
    let asked = |i: usize| Audit { actor: format!("key:{i}"), action: "saga_execute".into(), detail: json!({ "id": "race", "i": i }) };
    store.insert_tx(&row("race", 0, "pending"), &events(1), Some(&asked(100))).await.unwrap();
    let writers = (0..6).map(|i| {
        let (store, audit) = (store.clone(), asked(i));
        async move { store.save_tx(&row("race", 0, "running"), &events(1), Some(&audit)).await }
    });
    let insert = |id: &'static str, i: usize| {
        let (store, audit) = (store.clone(), asked(i));
        async move { store.insert_tx(&row(id, 0, "pending"), &events(1), Some(&audit)).await }
    };
    let (results, taken, fresh) = futures::join!(futures::future::join_all(writers), insert("race", 200), insert("fresh", 300));
    assert!(matches!(taken, Err(StoreError::Conflict { .. })), "{taken:?}");
    fresh.unwrap();
    let won: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let mut recorded: Vec<(String, i64)> =
        store.audit_log("t", 100).await.unwrap().into_iter().map(|(_, actor, _, detail)| (actor, detail["i"].as_i64().unwrap())).collect();
    recorded.sort();
    let mut expected = vec![("key:100".to_string(), 100), (format!("key:{}", won[0]), won[0] as i64), ("key:300".to_string(), 300)];
    expected.sort();
    assert_eq!(recorded, expected, "exactly the writes that took effect are audited");
    assert!(store.audit_log("other-tenant", 100).await.unwrap().is_empty());
});

on_every_store!(a_save_of_a_transaction_that_is_not_stored_is_a_conflict_and_stores_nothing, |url: String| async move {
    // Alone, and among writes that share its batch: the others take effect, the save of the
    // missing row neither fails them nor creates the row.
    let store = Store::open(&url).await.unwrap();
    let alone = store.save_tx(&row("gone", 0, "running"), &events(1), None).await;
    assert!(matches!(alone, Err(StoreError::Conflict { .. })), "{alone:?}");
    let ids: Vec<String> = (0..12).map(|i| format!("kept-{i}")).collect();
    for id in &ids {
        store.insert_tx(&row(id, 0, "pending"), &events(1), None).await.unwrap();
    }
    let asked = Audit { actor: "key:1".into(), action: "saga_execute".into(), detail: json!({ "id": "gone" }) };
    let saves = ids.iter().map(|id| id.as_str()).chain(["gone"]).map(|id| {
        let (store, asked) = (store.clone(), asked.clone());
        async move { (id, store.save_tx(&row(id, 0, "running"), &events(2), Some(&asked).filter(|_| id == "gone")).await) }
    });
    for (id, result) in futures::future::join_all(saves).await {
        match id {
            "gone" => assert!(matches!(result, Err(StoreError::Conflict { .. })), "{result:?}"),
            _ => assert_eq!(result.unwrap(), 1, "{id}"),
        }
    }
    assert!(store.get_tx("t", "saga", "gone").await.unwrap().is_none(), "the save created no row");
    assert!(store.events("gone").await.unwrap().is_empty(), "nor a journal entry");
    assert!(store.audit_log("t", 100).await.unwrap().is_empty(), "nor an audit entry");
    for id in &ids {
        let seqs: Vec<i64> = store.events(id).await.unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3], "{id}");
    }
});

on_every_store!(a_save_naming_another_tenants_transaction_is_a_conflict_and_changes_nothing, |url: String| async move {
    // Alone and beside a save of the tenant's own that shares its batch.
    let store = Store::open(&url).await.unwrap();
    store.insert_tx(&row("theirs", 0, "pending"), &events(1), None).await.unwrap();
    store.insert_tx(&row("mine", 0, "pending"), &events(1), None).await.unwrap();
    let intruder = TxRow { tenant: "intruder".into(), ..row("theirs", 0, "running") };
    let asked = Audit { actor: "key:9".into(), action: "saga_execute".into(), detail: json!({ "id": "theirs" }) };
    let alone = store.save_tx(&intruder, &events(1), Some(&asked)).await;
    assert!(matches!(alone, Err(StoreError::Conflict { .. })), "{alone:?}");
    let (one, own) = (events(1), row("mine", 0, "running"));
    let (theirs, mine) = futures::join!(store.save_tx(&intruder, &one, Some(&asked)), store.save_tx(&own, &one, None));
    assert!(matches!(theirs, Err(StoreError::Conflict { .. })), "{theirs:?}");
    assert_eq!(mine.unwrap(), 1);
    let stored = store.get_tx("t", "saga", "theirs").await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.rev), ("pending", 0), "the other tenant's save changed nothing");
    assert_eq!(store.events("theirs").await.unwrap().len(), 1, "nor wrote a journal entry");
    assert!(store.get_tx("intruder", "saga", "theirs").await.unwrap().is_none());
    assert!(store.audit_log("intruder", 100).await.unwrap().is_empty(), "nor an audit entry");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_writes_go_on_after_the_stores_connections_were_cut() {
    // As after a database restart: every connection the store holds is closed by the server.
    // The group committer's own connections are not a pool's; one that has been idle is
    // checked before a batch goes out on it, so no write fails for it.
    let (url, _) = common::fresh_store_url("postgres").await;
    let store = Store::open(&url).await.unwrap();
    store.insert_tx(&row("before", 0, "pending"), &events(1), None).await.unwrap();
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&url).await.unwrap();
    let cut = sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert!(cut.len() >= 2, "the store's reader and writer connections were cut ({} of them)", cut.len());
    admin.close().await;
    // Idle past the writer's check (what is tested is the idle time, not an ordering).
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    store.save_tx(&row("before", 0, "running"), &events(1), None).await.unwrap();
    store.insert_tx(&row("after", 0, "pending"), &events(1), None).await.unwrap();
    let stored = store.get_tx("t", "saga", "before").await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.rev), ("running", 1));
}

on_every_store!(the_first_reply_remembered_for_a_key_wins_and_its_writer_is_told, |url: String| async move {
    let store = Store::open(&url).await.unwrap();
    let reply = |n: i64| wasmtx::store::IdempotentReply { request_hash: format!("h{n}"), status: 201, body: json!({ "n": n }) };
    let racing = (0..6).map(|n| {
        let (store, reply) = (store.clone(), reply(n));
        async move { store.remember_reply("t", "order-1", &reply, now_ms()).await.unwrap() }
    });
    let stored = futures::future::join_all(racing).await;
    let won: Vec<i64> = (0..6).filter(|&n| stored[n as usize]).collect();
    assert_eq!(won.len(), 1, "{stored:?}");
    let kept = store.idempotent_reply("t", "order-1").await.unwrap().unwrap();
    assert_eq!((kept.request_hash, kept.body), (format!("h{}", won[0]), json!({ "n": won[0] })));
    assert!(store.remember_reply("other-tenant", "order-1", &reply(9), now_ms()).await.unwrap(), "keys are per tenant");
});

on_every_store!(replies_remembered_beside_transaction_writes_are_each_stored_once, |url: String| async move {
    // Replies share batches with transaction writes: each distinct key is stored with its own
    // answer, a key stored before answers `false` and keeps its first answer, and the
    // transactions written beside them are not disturbed.
    let store = Store::open(&url).await.unwrap();
    let reply = |n: i64| wasmtx::store::IdempotentReply { request_hash: format!("h{n}"), status: 201, body: json!({ "n": n }) };
    assert!(store.remember_reply("t", "taken", &reply(100), now_ms()).await.unwrap());
    let replies = (0..20).map(|n| {
        let (store, reply) = (store.clone(), reply(n));
        async move { store.remember_reply("t", &format!("key-{n}"), &reply, now_ms()).await.unwrap() }
    });
    let second = reply(101);
    let again = store.remember_reply("t", "taken", &second, now_ms());
    let writes = (0..20).map(|n| {
        let store = store.clone();
        async move { store.insert_tx(&row(&format!("tx-{n}"), 0, "pending"), &events(1), None).await.unwrap() }
    });
    let (stored, again, _) = futures::join!(futures::future::join_all(replies), again, futures::future::join_all(writes));
    assert!(stored.iter().all(|&s| s), "{stored:?}");
    assert!(!again.unwrap(), "a key that has an answer keeps it");
    for n in 0..20 {
        let kept = store.idempotent_reply("t", &format!("key-{n}")).await.unwrap().unwrap();
        assert_eq!((kept.request_hash, kept.status, kept.body), (format!("h{n}"), 201, json!({ "n": n })));
        assert_eq!(store.get_tx("t", "saga", &format!("tx-{n}")).await.unwrap().unwrap().rev, 0);
    }
    assert_eq!(store.idempotent_reply("t", "taken").await.unwrap().unwrap().body, json!({ "n": 100 }));
    assert!(store.idempotent_reply("other-tenant", "key-1").await.unwrap().is_none(), "keys are per tenant");
});

on_every_durable_store!(two_writers_of_one_revision_one_wins, |url: String| async move {
    // Submitted together they can land in one batch; set-based statements must still apply
    // exactly one of them.
    let store = Store::open(&url).await.unwrap();
    store.insert_tx(&row("race", 0, "pending"), &events(1), None).await.unwrap();
    let writers = (0..6).map(|i| {
        let store = store.clone();
        async move { store.save_tx(&row("race", 0, &format!("state-{i}")), &events(1), None).await }
    });
    let results = futures::future::join_all(writers).await;
    let won: Vec<usize> = results.iter().enumerate().filter(|(_, r)| r.is_ok()).map(|(i, _)| i).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(StoreError::Conflict { .. }))));
    let stored = store.get_tx("t", "saga", "race").await.unwrap().unwrap();
    assert_eq!((stored.rev, stored.state), (1, format!("state-{}", won[0])));
    let seqs: Vec<i64> = store.events("race").await.unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2]);
});

#[tokio::test]
async fn an_in_memory_sqlite_database_is_refused_with_the_reason() {
    // The committer writes through its own connection, which a private in-memory database
    // would not share: every write would vanish or fail.
    for url in ["sqlite::memory:", "sqlite://file.db?mode=memory"] {
        let err = Store::open(url).await.unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{url}: {err:?}");
        assert!(err.to_string().contains("sqlite://PATH"), "{err}");
    }
}

on_every_sql_store!(history_written_as_event_rows_is_migrated_into_journal_entries, |url: String| async move {
    // A database from before migration 7 kept one row per event; put such rows back, undo
    // the migration's record, and open the store again: the history reads as it was written.
    let store = Store::open(&url).await.unwrap();
    // Two events, so `last_seq` is 2 as it would be for the two rows put back below.
    store.insert_tx(&row("old", 0, "pending"), &events(2), None).await.unwrap();
    drop(store);
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    for statement in [
        "DROP TABLE journal",
        "CREATE TABLE events (tx_id TEXT NOT NULL, seq BIGINT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL,
             step TEXT, detail TEXT NOT NULL, PRIMARY KEY (tx_id, seq))",
        "INSERT INTO events VALUES ('old', 1, 1000, 'saga_created', NULL, '{\"saga_name\":\"n\"}'),
             ('old', 2, 2000, 'step_started', 'pay', '{\"attempt\":1}')",
        "DELETE FROM wasmtx_migrations WHERE version = 7",
    ] {
        sqlx::query(statement).execute(&db).await.unwrap();
    }
    db.close().await;

    let store = Store::open(&url).await.unwrap();
    let history = store.events("old").await.unwrap();
    let seen: Vec<_> = history.iter().map(|e| (e.seq, e.at_ms, e.kind.as_str(), e.step.as_deref(), e.detail.clone())).collect();
    assert_eq!(
        seen,
        [
            (1, 1000, "saga_created", None, json!({ "saga_name": "n" })),
            (2, 2000, "step_started", Some("pay"), json!({ "attempt": 1 })),
        ]
    );
    // New writes continue the numbering after the migrated entries.
    let mut next = row("old", 0, "running");
    next.updated_at_ms = 3000;
    store.save_tx(&next, &events(2), None).await.unwrap();
    let kinds: Vec<(i64, String)> = store.events("old").await.unwrap().into_iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(kinds, [(1, "saga_created".into()), (2, "step_started".into()), (3, "e0".into()), (4, "e1".into())]);
});

on_every_sql_store!(a_write_the_database_refuses_fails_alone_and_its_batch_neighbours_commit, |url: String| async move {
    // Break one transaction's event numbering behind the store's back, so that its next write
    // collides with a journal entry it already has: the database refuses that batch, and the
    // committer must retry the writes one by one so that only the broken one fails.
    let store = Store::open(&url).await.unwrap();
    let ids: Vec<String> = (0..20).map(|i| format!("ok-{i}")).collect();
    for id in ids.iter().chain(std::iter::once(&"broken".to_string())) {
        store.insert_tx(&row(id, 0, "pending"), &events(1), None).await.unwrap();
    }
    sqlx::any::install_default_drivers();
    let db = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE transactions SET last_seq = 0 WHERE id = 'broken'").execute(&db).await.unwrap();
    db.close().await;

    let writes = ids.iter().map(|id| id.as_str()).chain(std::iter::once("broken")).map(|id| {
        let store = store.clone();
        async move { (id, store.save_tx(&row(id, 0, "running"), &events(1), None).await) }
    });
    for (id, result) in futures::future::join_all(writes).await {
        match id {
            "broken" => assert!(
                matches!(result, Err(StoreError::Database(_))),
                "{id}: {result:?}"
            ),
            _ => assert_eq!(result.unwrap(), 1, "{id}"),
        }
    }
    let broken = store.get_tx("t", "saga", "broken").await.unwrap().unwrap();
    assert_eq!((broken.state.as_str(), broken.rev), ("pending", 0), "the refused write changed nothing");
    for id in &ids {
        let stored = store.get_tx("t", "saga", id).await.unwrap().unwrap();
        assert_eq!((stored.state.as_str(), stored.rev), ("running", 1), "{id}");
        assert_eq!(store.events(id).await.unwrap().len(), 2, "{id}");
    }
});

on_every_store!(concurrent_uploads_number_versions_without_gaps_or_duplicates, |url: String| async move {
    let store = Store::open(&url).await.unwrap();
    let uploads = (0..24).map(|i| {
        let store = store.clone();
        async move {
            let digest = format!("digest-{}", i % 12); // every digest twice
            store.put_plugin("t", "payment", &digest, digest.as_bytes(), &["execute"], now_ms()).await.unwrap()
        }
    });
    let results = futures::future::join_all(uploads).await;
    assert_eq!(results.iter().filter(|(_, new)| *new).count(), 12, "the second upload of the same bytes is not a version");
    let versions = store.plugin_versions("t", "payment").await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let digests: std::collections::HashSet<_> = versions.iter().map(|v| v.digest.clone()).collect();
    assert_eq!(digests.len(), 12);
    for (row, _) in &results {
        assert_eq!(versions.iter().find(|v| v.digest == row.digest).unwrap().version, row.version, "each upload was told its version");
    }
    let newest = store.plugin("t", "payment", None).await.unwrap().unwrap();
    assert_eq!((newest.version, store.component_bytes(&newest.digest).await.unwrap().unwrap()), (12, newest.digest.clone().into_bytes()));
    assert_eq!(store.latest_plugins("t").await.unwrap().len(), 1);
    assert!(store.plugin("other", "payment", None).await.unwrap().is_none(), "another tenant sees none of them");
});

fn raw(url: &str) -> redis::Client {
    let without_prefix = url.split('?').next().unwrap();
    redis::Client::open(without_prefix).unwrap()
}

fn prefix(url: &str) -> String {
    url.split("prefix=").nth(1).unwrap().split('&').next().unwrap().to_string()
}

#[tokio::test]
async fn a_redis_that_could_lose_acknowledged_writes_is_refused_with_what_to_set() {
    let volatile = common::redis::server_with(&["--appendonly", "no"]);
    let refused = Store::open(&volatile).await.unwrap_err().to_string();
    assert!(refused.contains("appendonly no") && refused.contains("appendfsync always") && refused.contains("durability=everysec"), "{refused}");

    let everysec = common::redis::server_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
    let refused = Store::open(&everysec).await.unwrap_err().to_string();
    assert!(refused.contains("appendfsync everysec"), "{refused}");
    let accepted = Store::open(&format!("{everysec}&durability=everysec")).await.unwrap();
    accepted.ping().await.unwrap();
    let refused = Store::open(&format!("{volatile}&durability=everysec")).await.unwrap_err().to_string();
    assert!(refused.contains("appendonly no"), "everysec does not excuse no AOF at all: {refused}");
}

#[tokio::test]
async fn on_redis_ended_transactions_and_replies_expire_after_the_retention_and_running_ones_stay() {
    let url = format!("{}&retention=1s", common::redis::standalone_url());
    let store = Store::open(&url).await.unwrap();
    // Created an hour ago: once its row has expired, its list entry is stale for any reader.
    let ended = TxRow { ended: true, created_at_ms: now_ms() - 3_600_000, ..row("done", 0, "completed") };
    store.insert_tx(&ended, &events(2), None).await.unwrap();
    store.insert_tx(&row("busy", 0, "running"), &events(1), None).await.unwrap();
    store.insert_tx(&TxRow { ended: true, ..row("resumed", 0, "failed") }, &events(1), None).await.unwrap();
    // An operator resumes the failed one before it expires: kept again.
    store.save_tx(&row("resumed", 0, "running"), &events(1), None).await.unwrap();
    let reply = wasmtx::store::IdempotentReply { request_hash: "h".into(), status: 201, body: json!({}) };
    store.remember_reply("t", "order-1", &reply, now_ms()).await.unwrap();
    assert!(store.idempotent_reply("t", "order-1").await.unwrap().is_some());

    let mut conn = raw(&url).get_multiplexed_async_connection().await.unwrap();
    let keys = wasmtx::store::redis::Keys::new(&prefix(&url));
    let ttl: i64 = redis::cmd("PTTL").arg(keys.tx("done")).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 1000, "{ttl}");
    for id in ["busy", "resumed"] {
        let ttl: i64 = redis::cmd("PTTL").arg(keys.tx(id)).query_async(&mut conn).await.unwrap();
        assert_eq!(ttl, -1, "{id} never expires while it runs");
    }
    // Expiry is Redis's clock, not an event this process can await.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.get_tx("t", "saga", "done").await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the ended transaction did not expire");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(store.events("done").await.unwrap().is_empty(), "its journal went with it");
    let listed: Vec<String> = store.list_tx("t", "saga", None, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&"busy".to_string()) && listed.contains(&"resumed".to_string()));
    assert!(store.idempotent_reply("t", "order-1").await.unwrap().is_none(), "the reply expired too");
    let listed: i64 = redis::cmd("ZCARD").arg(keys.listed(wasmtx::store::redis::Keys::bucket("done"), "t", "saga")).query_async(&mut conn).await.unwrap();
    assert!(listed <= 1, "the list dropped the expired entry when it met it");
}

/// A Redis store of its own prefix, and a raw connection to its server: to leave index
/// entries as a writer does between its two writes, or as a crash between them does.
struct RawRedis {
    store: Store,
    keys: wasmtx::store::redis::Keys,
    conn: redis::aio::MultiplexedConnection,
}

impl RawRedis {
    async fn open() -> RawRedis {
        let url = common::redis::standalone_url();
        let store = Store::open(&url).await.unwrap();
        let conn = raw(&url).get_multiplexed_async_connection().await.unwrap();
        RawRedis { store, keys: wasmtx::store::redis::Keys::new(&prefix(&url)), conn }
    }

    /// `key`, an index of tenant `t` in the bucket of `id`, with `id` scored `score`.
    async fn add_entry(&mut self, key: &str, id: &str, score: i64) {
        let tenants = self.keys.tenants_in(wasmtx::store::redis::Keys::bucket(id));
        let _: () = redis::cmd("SADD").arg(tenants).arg("t").query_async(&mut self.conn).await.unwrap();
        let _: () = redis::cmd("ZADD").arg(key).arg(score).arg(id).query_async(&mut self.conn).await.unwrap();
    }

    async fn has_entry(&mut self, key: &str, id: &str) -> bool {
        redis::cmd("ZSCORE").arg(key).arg(id).query_async::<Option<f64>>(&mut self.conn).await.unwrap().is_some()
    }

    /// Tenant `t`'s index of `state` (of sagas) in the bucket of `id`.
    fn in_state(&self, id: &str, state: &str) -> String {
        self.keys.in_state(wasmtx::store::redis::Keys::bucket(id), "t", "saga", state)
    }

    /// Tenant `t`'s list of sagas in the bucket of `id`.
    fn listed(&self, id: &str) -> String {
        self.keys.listed(wasmtx::store::redis::Keys::bucket(id), "t", "saga")
    }
}

#[tokio::test]
async fn on_redis_an_index_entry_without_its_row_is_never_claimed_and_is_cleaned_by_the_claim() {
    // What a coordinator killed between indexing and writing a row leaves behind.
    let mut redis = RawRedis::open().await;
    redis.add_entry(&redis.in_state("ghost", "running"), "ghost", 1).await;
    // And one whose row moved on without the entry being removed.
    let store = redis.store.clone();
    store.insert_tx(&row("moved", 0, "running"), &events(1), None).await.unwrap();
    store.save_tx(&TxRow { ended: true, ..row("moved", 0, "completed") }, &events(1), None).await.unwrap();
    redis.add_entry(&redis.in_state("moved", "running"), "moved", 2).await;
    store.insert_tx(&row("real", 0, "running"), &events(1), None).await.unwrap();
    assert_eq!(store.count_active("t").await.unwrap(), 3, "a superset until someone looks");

    let lease = wasmtx::store::Lease { owner: "node-a".into(), until_ms: now_ms() + 60_000 };
    let claimed = store.claim_expired("saga", &["running", "compensating"], &lease, now_ms(), 64, false).await.unwrap();
    assert_eq!(claimed.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), vec!["real"]);
    assert_eq!(store.count_active("t").await.unwrap(), 1, "the claim removed both stale entries");
    let again = store.claim_expired("saga", &["running"], &wasmtx::store::Lease { owner: "node-b".into(), ..lease.clone() }, now_ms(), 64, false).await.unwrap();
    assert!(again.is_empty(), "a live lease is not claimed again");
}

#[tokio::test]
async fn on_redis_a_reader_beside_a_create_leaves_its_list_entry_and_drops_only_stale_ones() {
    // A create writes the list entry, then the row: a search or a purge that runs between
    // the two must not take the entry, or the transaction would never be listed again.
    let mut redis = RawRedis::open().await;
    let (now, hour_ago) = (now_ms(), now_ms() - 3_600_000);
    for (id, created) in [("coming", now), ("crashed", hour_ago)] {
        redis.add_entry(&redis.listed(id), id, created).await;
    }
    let store = redis.store.clone();
    assert!(store.list_tx("t", "saga", None, 10).await.unwrap().is_empty(), "no row, nothing listed");
    assert_eq!(store.purge_ended("t", "saga", &["completed"], now + 1, 10).await.unwrap(), 0);
    assert!(redis.has_entry(&redis.listed("coming"), "coming").await, "the entry of a create in progress stays");
    assert!(!redis.has_entry(&redis.listed("crashed"), "crashed").await, "an hour-old entry without a row was left by a crash");
    // The create's row lands: it is listed.
    store.insert_tx(&TxRow { created_at_ms: now, ..row("coming", 0, "running") }, &events(1), None).await.unwrap();
    let listed: Vec<String> = store.list_tx("t", "saga", None, 10).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(listed, vec!["coming"]);
}

#[tokio::test]
async fn on_redis_a_claim_of_every_entry_leaves_the_state_entries_of_writes_in_progress() {
    // A coordinator that starts claims every entry of its own; it meets another's writes
    // between a state entry (scored by the lease the writer holds) and the row: a create,
    let mut redis = RawRedis::open().await;
    redis.add_entry(&redis.in_state("coming", "running"), "coming", now_ms() + 30_000).await;
    // and a change of state between its new state's entry and its row.
    let store = redis.store.clone();
    store.insert_tx(&TxRow { owner: Some("node-b".into()), lease_until_ms: now_ms() + 30_000, ..row("moving", 0, "running") }, &events(1), None).await.unwrap();
    redis.add_entry(&redis.in_state("moving", "compensating"), "moving", now_ms() + 30_000).await;
    let lease = wasmtx::store::Lease { owner: "node-a".into(), until_ms: now_ms() + 30_000 };
    // One state at a time, so the row still running is elsewhere for the claim of the other.
    for state in ["running", "compensating"] {
        let claimed = store.claim_expired("saga", &[state], &lease, now_ms(), 64, true).await.unwrap();
        assert!(claimed.is_empty(), "nothing of node-a's, nothing expired: {:?}", claimed.iter().map(|r| &r.id).collect::<Vec<_>>());
    }
    for (id, state) in [("coming", "running"), ("moving", "compensating")] {
        assert!(redis.has_entry(&redis.in_state(id, state), id).await, "{id}: the entry of a write in progress stays, so the transaction stays claimable");
    }
}

/// A "Redis" that answers every command with bytes that are no RESP reply, or with an error
/// reply, or closes the connection: opening a store on it fails with an error, in bounded
/// time, and never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_answers_garbage_is_refused_with_an_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cases = [&b"\x00\xffnot resp at all\r\n"[..], b"-ERR unknown command\r\n", b"", b"$999999999999\r\n"];
    // Each case in its own task: a refusal may take the store's whole open timeout.
    let checks = cases.map(|answer| tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // Answer whatever comes the same way; an empty answer hangs up.
                    while socket.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        if answer.is_empty() {
                            return;
                        }
                        let _ = socket.write_all(answer).await;
                    }
                });
            }
        });
        let opened = tokio::time::timeout(std::time::Duration::from_secs(40), Store::open(&url)).await;
        match opened {
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Ok(Ok(_)) => panic!("a store opened on garbage ({answer:?})"),
            Err(_) => panic!("opening a store on garbage ({answer:?}) never ended"),
        }
    }));
    for check in checks {
        check.await.unwrap();
    }
}

on_every_store!(a_tenants_live_keys_are_listed_newest_first_without_revoked_or_others, |url: String| async move {
    use wasmtx::store::{KeyRow, TenantRow};
    let store = Store::open(&url).await.unwrap();
    let key = |id: &str, tenant: &str, at: i64| KeyRow { key_id: id.into(), tenant_id: tenant.into(), salt: "s".into(), hash: "h".into(), created_at_ms: at };
    for tenant in ["acme", "globex"] {
        let row = TenantRow { tenant_id: tenant.into(), limits: json!({}), allowed_hosts: json!([]), created_at_ms: 1 };
        assert!(store.create_tenant(&row, &key(&format!("{tenant}-k1"), tenant, 1)).await.unwrap());
    }
    store.add_key(&key("acme-k2", "acme", 2)).await.unwrap();
    store.add_key(&key("acme-k3", "acme", 3)).await.unwrap();
    assert!(store.revoke_key("acme", "acme-k2", 4).await.unwrap());
    let ids: Vec<String> = store.live_keys("acme").await.unwrap().into_iter().map(|k| k.key_id).collect();
    assert_eq!(ids, ["acme-k3", "acme-k1"], "live ones, newest first, none of another tenant's");
    assert!(store.live_keys("nobody").await.unwrap().is_empty());
});

#[test]
fn sqlite_writes_do_not_wait_for_tokios_blocking_threads() {
    // One blocking thread, held as a DNS lookup that its name server never answers holds one:
    // the SQLite writer has a thread of its own, so a durable write still goes through.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).max_blocking_threads(1).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("wasmtx.db").display())).await.unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (taken, blocked) = tokio::sync::oneshot::channel();
        let lookup = tokio::task::spawn_blocking(move || {
            let _ = taken.send(());
            let _ = held.recv();
        });
        blocked.await.unwrap();
        let (beside, started) = (row("beside-a-stuck-lookup", 0, "pending"), events(1));
        let written = tokio::time::timeout(std::time::Duration::from_secs(30), store.insert_tx(&beside, &started, None)).await;
        release.send(()).unwrap();
        lookup.await.unwrap();
        assert!(matches!(written, Ok(Ok(_))), "the write waited for the blocking pool: {written:?}");
        assert!(store.get_tx("t", "saga", "beside-a-stuck-lookup").await.unwrap().is_some());
    });
}
