//! The Redis backend: one Redis server (`redis://[user:pass@]host:port[/db]`) or a Redis
//! Cluster (`redis+cluster://[user:pass@]host:port,host:port,…`), with the same guarantees as
//! PostgreSQL.
//!
//! - **Writes are revision-checked scripts.** A transaction's row (a hash) and its journal (a
//!   list) share a hash tag, so one Lua script compares the revision, writes the row and
//!   appends the journal entry atomically on one slot (`lua/save_tx.lua`).
//! - **Indexes span transactions**, so they are split into buckets ([`keys`]); a bucket's index
//!   keys share a tag. An index can never be in the same script as the row it points to, so it
//!   is kept a superset of the truth: an entry is written *before* the row that needs it and
//!   removed *after* the row has left it, and readers check each entry against its row. A
//!   crash between the two leaves an entry too many (cleaned by the next reader), never a
//!   transaction nobody can find or claim. A reader must not take an entry from a writer
//!   between its two writes: a search or purge drops an entry without a row only once it is
//!   older than a create can take ([`ROW_PENDING_MS`]), and a claim of every entry (at a
//!   coordinator's start) leaves alone an entry whose lease is not over.
//! - **Claims** visit every bucket's index of the claimable states and take each candidate
//!   with a script on its own row that checks state and lease again, so two coordinators can
//!   never both win one.
//! - **Durability is checked at open**: every master must run `appendonly yes` with
//!   `appendfsync always`, since an acknowledged write that a crash loses can be a 2PC
//!   decision. `?durability=everysec` accepts `everysec` (up to about a second of
//!   acknowledged writes can be lost if the Redis host crashes).
//! - **Group commit comes from Redis itself**: writes travel over one multiplexed connection
//!   per node, pipelined as they come, and with `appendfsync always` Redis fsyncs once per
//!   event-loop turn for every client's writes of that turn, each with its own reply.
//! - **Retention** (`?retention=7d`, the default; `0` keeps forever): a transaction that
//!   reaches an end state expires with its journal after that long, and so do idempotency
//!   replies; a transaction that leaves its end state (an operator resumes it) is kept again.
//!
//! `?prefix=NAME` (default `wasmtx`) starts every key, so several stores can share a Redis.

mod keys;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use std::sync::LazyLock;

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::aio::ConnectionLike;
use redis::{AsyncCommands, Script};
use serde_json::Value;

pub use keys::{BUCKETS, Keys};

use super::{
    ACTIVE, Audit, AuditStore, Backend, EventRow, IdempotencyStore, IdempotentReply, Inspect, KeyRow, Lease, NewEvent,
    PluginRow, PluginStore, Result, Retention, SettingStore, StoreError, TenantRow, TenantStore, TxQuery, TxRow, TxStore,
};

const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Database(format!("redis: {e}"))
    }
}

fn invalid(url: &str, why: &str) -> StoreError {
    StoreError::Database(format!("invalid Redis URL {url:?}: {why}"))
}

/// What a Redis URL says: the nodes, whether they form a cluster, and the store's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// `redis://…` URLs of the server, or of the cluster's seed nodes.
    pub nodes: Vec<String>,
    pub cluster: bool,
    pub prefix: String,
    /// How long ended transactions and idempotency replies are kept; 0 = forever.
    pub retention_ms: i64,
    /// `?durability=everysec`: accept `appendfsync everysec`.
    pub allow_everysec: bool,
}

impl Location {
    /// Whether `url` names a Redis store.
    pub fn handles(url: &str) -> bool {
        ["redis://", "rediss://", "redis+cluster://", "rediss+cluster://"].iter().any(|s| url.starts_with(s))
    }

    pub fn parse(url: &str) -> Result<Location> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid(url, "no scheme"))?;
        let (scheme, cluster) = match scheme.strip_suffix("+cluster") {
            Some(s) => (s, true),
            None => (scheme, false),
        };
        let (address, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut location = Location { nodes: vec![], cluster, prefix: "wasmtx".into(), retention_ms: DEFAULT_RETENTION_MS, allow_everysec: false };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "prefix" if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
                    location.prefix = value.into()
                }
                "prefix" => return Err(invalid(url, "prefix must be letters, digits, '-', '_' or '.'")),
                "retention" => location.retention_ms = duration_ms(value).ok_or_else(|| invalid(url, "retention must be like 0, 90s, 30m, 12h or 7d"))?,
                "durability" if value == "everysec" => location.allow_everysec = true,
                "durability" if value == "always" => location.allow_everysec = false,
                "durability" => return Err(invalid(url, "durability must be always or everysec")),
                other => return Err(invalid(url, &format!("unknown parameter {other:?} (prefix, retention, durability)"))),
            }
        }
        let (auth, hosts) = match address.rsplit_once('@') {
            Some((auth, hosts)) => (format!("{auth}@"), hosts),
            None => (String::new(), address),
        };
        if cluster {
            let hosts = hosts.trim_end_matches('/');
            if hosts.contains('/') {
                return Err(invalid(url, "a cluster has only database 0; give host:port,host:port,…"));
            }
            location.nodes = hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{scheme}://{auth}{h}")).collect();
        } else {
            location.nodes = vec![format!("{scheme}://{auth}{hosts}")];
        }
        if location.nodes.is_empty() || location.nodes.iter().any(|n| n.ends_with("://") || n.ends_with('@')) {
            return Err(invalid(url, "no host"));
        }
        Ok(location)
    }
}

/// `0`, `90s`, `30m`, `12h`, `7d` (or bare milliseconds) in milliseconds.
fn duration_ms(text: &str) -> Option<i64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = digits.parse().ok()?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// A connection to the server or the cluster; cheap to clone (multiplexed).
#[derive(Clone)]
enum Conn {
    One(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a redis::Pipeline, offset: usize, count: usize) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Scripts {
    insert_tx: Script,
    save_tx: Script,
    claim_tx: Script,
    renew_lease: Script,
    index_add: Script,
    index_drop: Script,
    put_plugin: Script,
    get_plugin: Script,
    create_tenant: Script,
    revoke_key: Script,
    live_key: Script,
    remember_reply: Script,
    purge_tx: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    insert_tx: Script::new(include_str!("lua/insert_tx.lua")),
    save_tx: Script::new(include_str!("lua/save_tx.lua")),
    claim_tx: Script::new(include_str!("lua/claim_tx.lua")),
    renew_lease: Script::new(include_str!("lua/renew_lease.lua")),
    index_add: Script::new(include_str!("lua/index_add.lua")),
    index_drop: Script::new(include_str!("lua/index_drop.lua")),
    put_plugin: Script::new(include_str!("lua/put_plugin.lua")),
    get_plugin: Script::new(include_str!("lua/get_plugin.lua")),
    create_tenant: Script::new(include_str!("lua/create_tenant.lua")),
    revoke_key: Script::new(include_str!("lua/revoke_key.lua")),
    live_key: Script::new(include_str!("lua/live_key.lua")),
    remember_reply: Script::new(include_str!("lua/remember_reply.lua")),
    purge_tx: Script::new(include_str!("lua/purge_tx.lua")),
});

/// The fields of a row hash, in the order `row_of` reads them.
const ROW_FIELDS: &[&str] = &["t", "k", "n", "s", "d", "r", "o", "l", "c", "u", "e"];

pub struct RedisStore {
    conn: Conn,
    keys: Keys,
    retention_ms: i64,
    cluster: bool,
    /// The state each transaction had when this process last wrote or read it: a save that
    /// keeps the state needs no index change, and one known to change it indexes first
    /// instead of being refused once. Only a hint — the save script checks the truth.
    known: std::sync::Mutex<HashMap<String, String>>,
}

/// How long opening the store (connecting, checking the servers) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long connecting to a Redis node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may wait for its reply; every command here is short (no blocking
/// commands), so only a server in trouble takes this long.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnection attempts (with backoff) before a command fails.
const CONNECT_RETRIES: usize = 3;

/// How long after its creation time a list entry may still wait for its row: a create writes
/// the entry first and the row a moment later, so a reader that finds no row drops the entry
/// only once it is older than this (left by a crash between the two, or by a row that
/// expired), never while a create is between its two writes.
const ROW_PENDING_MS: i64 = 10 * 60 * 1000;

/// Whether a list entry without a row, for a transaction created at `created_at_ms`, is
/// stale rather than a create in progress.
fn orphaned(created_at_ms: i64) -> bool {
    created_at_ms < super::now_ms() - ROW_PENDING_MS
}

/// Transactions whose state `RedisStore::known` keeps, at most.
const MAX_KNOWN: usize = 100_000;

impl RedisStore {
    /// Connects, checks every master's persistence settings, and records the bucket count;
    /// a server that does not answer as Redis does within `OPEN_TIMEOUT` is an error.
    pub async fn open(url: &str) -> Result<RedisStore> {
        let location = Location::parse(url)?;
        match tokio::time::timeout(OPEN_TIMEOUT, Self::open_at(location)).await {
            Ok(opened) => opened,
            Err(_) => Err(StoreError::Database(format!("the Redis store did not answer as Redis does within {} s", OPEN_TIMEOUT.as_secs()))),
        }
    }

    async fn open_at(location: Location) -> Result<RedisStore> {
        // A server that does not answer, or answers what is no reply, fails the command in
        // bounded time instead of holding it (and the engine behind it) forever.
        let conn = match location.cluster {
            false => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(CONNECT_TIMEOUT)
                    .set_response_timeout(RESPONSE_TIMEOUT)
                    .set_number_of_retries(CONNECT_RETRIES);
                Conn::One(redis::Client::open(location.nodes[0].as_str())?.get_connection_manager_with_config(config).await?)
            }
            true => {
                let client = redis::cluster::ClusterClientBuilder::new(location.nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(CONNECT_RETRIES as u32)
                    .build()?;
                Conn::Cluster(client.get_async_connection().await?)
            }
        };
        let store = RedisStore {
            conn,
            keys: Keys::new(&location.prefix),
            retention_ms: location.retention_ms,
            cluster: location.cluster,
            known: Default::default(),
        };
        store.check_durability(&location).await?;
        let mut conn = store.conn.clone();
        let meta = store.keys.meta();
        let _: bool = conn.hset_nx(&meta, "buckets", BUCKETS).await?;
        let buckets: u32 = conn.hget(&meta, "buckets").await?;
        if buckets != BUCKETS {
            return Err(StoreError::Database(format!("this Redis store was created with {buckets} index buckets; this build uses {BUCKETS}")));
        }
        Ok(store)
    }

    /// Refuses a Redis that could lose an acknowledged write (see the module's notes).
    async fn check_durability(&self, location: &Location) -> Result<()> {
        let masters = match &self.conn {
            Conn::One(_) => vec![location.nodes[0].clone()],
            Conn::Cluster(_) => self.masters(location).await?,
        };
        for node in masters {
            let mut conn = redis::Client::open(node.as_str())?.get_multiplexed_async_connection().await?;
            let settings: HashMap<String, String> = redis::cmd("CONFIG").arg("GET").arg("appendonly").arg("appendfsync").query_async(&mut conn).await?;
            let appendonly = settings.get("appendonly").map_or("?", String::as_str);
            let appendfsync = settings.get("appendfsync").map_or("?", String::as_str);
            let durable = appendonly == "yes" && (appendfsync == "always" || (location.allow_everysec && appendfsync == "everysec"));
            if !durable {
                let host = node.rsplit('@').next().unwrap_or(&node);
                return Err(StoreError::Database(format!(
                    "Redis at {host} runs with appendonly {appendonly}, appendfsync {appendfsync}: a write it acknowledged \
                     could be lost in a crash, and with it a 2PC decision or a step's outcome. Set `appendonly yes` and \
                     `appendfsync always` (in redis.conf, or CONFIG SET then CONFIG REWRITE) on every master, or accept \
                     losing up to a second of acknowledged writes with `?durability=everysec` in the URL"
                )));
            }
        }
        Ok(())
    }

    /// The `redis://` URLs of the cluster's masters, with the seed URL's credentials.
    async fn masters(&self, location: &Location) -> Result<Vec<String>> {
        let mut conn = self.conn.clone();
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut conn).await?;
        let seed = &location.nodes[0];
        let (scheme, rest) = seed.split_once("://").unwrap_or(("redis", seed));
        let auth = rest.rsplit_once('@').map(|(a, _)| format!("{a}@")).unwrap_or_default();
        Ok(nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let master = fields.get(2)?.split(',').any(|f| f == "master") && !fields[2].contains("fail");
                let address = fields.get(1)?.split('@').next()?;
                master.then(|| format!("{scheme}://{auth}{address}"))
            })
            .collect())
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Remembers (or, for an ended or unknown one, forgets) the state of `row`.
    fn learn(&self, id: &str, row: Option<&TxRow>) {
        let mut known = self.known.lock().unwrap();
        match row.filter(|r| !r.ended) {
            Some(row) => {
                if known.len() >= MAX_KNOWN {
                    known.clear();
                }
                known.insert(id.to_string(), row.state.clone());
            }
            None => {
                known.remove(id);
            }
        }
    }

    fn known_state(&self, id: &str) -> Option<String> {
        self.known.lock().unwrap().get(id).cloned()
    }

    fn retention_for(&self, ended: bool) -> i64 {
        if ended { self.retention_ms } else { 0 }
    }

    /// Adds a transaction to bucket indexes: the tenant's list (with `list`) and its state's
    /// index (with `state`); returns the state index score.
    async fn index(&self, row: Indexed<'_>, list: bool, state: Option<&str>) -> Result<Option<String>> {
        let bucket = Keys::bucket(row.id);
        let mut call = SCRIPTS.index_add.key(self.keys.tenants_in(bucket));
        if list {
            call.key(self.keys.listed(bucket, row.tenant, row.kind));
        }
        if let Some(state) = state {
            call.key(self.keys.in_state(bucket, row.tenant, row.kind, state));
        }
        call.arg(row.tenant).arg(row.id).arg(row.created_at_ms).arg(row.lease_until_ms).arg(list as u8).arg(state.is_some() as u8);
        let score: String = call.invoke_async(&mut self.conn()).await?;
        Ok((!score.is_empty()).then_some(score))
    }

    /// Removes `id` from its tenant's index of `state` if its score there is at most `max`.
    async fn unindex(&self, tenant: &str, kind: &str, id: &str, state: &str, max: &str) -> Result<()> {
        let key = self.keys.in_state(Keys::bucket(id), tenant, kind, state);
        let _: i64 = SCRIPTS.index_drop.key(key).arg(id).arg(max).invoke_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn rows(&self, ids: &[String]) -> Result<Vec<Option<TxRow>>> {
        try_join_all(ids.iter().map(|id| self.row(id))).await
    }

    async fn row(&self, id: &str) -> Result<Option<TxRow>> {
        let fields: Vec<Option<String>> = redis::cmd("HMGET").arg(self.keys.tx(id)).arg(ROW_FIELDS).query_async(&mut self.conn()).await?;
        row_of(id, &fields)
    }

    /// Every bucket's tenants.
    async fn tenants_by_bucket(&self) -> Result<Vec<Vec<String>>> {
        try_join_all((0..BUCKETS).map(|b| async move {
            let tenants: Vec<String> = self.conn().smembers(self.keys.tenants_in(b)).await?;
            Ok::<_, StoreError>(tenants)
        }))
        .await
    }

    /// The ids of every transaction of `kind` (for `Inspect`).
    async fn ids_of_kind(&self, kind: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for (bucket, tenants) in self.tenants_by_bucket().await?.into_iter().enumerate() {
            for tenant in tenants {
                let listed: Vec<String> = self.conn().zrange(self.keys.listed(bucket as u32, &tenant, kind), 0, -1).await?;
                ids.extend(listed);
            }
        }
        Ok(ids)
    }

    /// Rows of `kind` that still exist (for `Inspect`).
    async fn rows_of_kind(&self, kind: &str) -> Result<Vec<TxRow>> {
        let ids = self.ids_of_kind(kind).await?;
        Ok(self.rows(&ids).await?.into_iter().flatten().filter(|r| r.kind == kind).collect())
    }

    /// A tenant's transactions that match `query`, newest first (ties by id, descending): a
    /// merge of every bucket's list of every kind asked for, `page` entries at a time, each
    /// list read from the cursor on; entries whose row is gone (expired) are dropped from
    /// their list on the way.
    async fn newest(&self, tenant: &str, query: &TxQuery, limit: usize) -> Result<Vec<TxRow>> {
        struct Cursor {
            key: String,
            offset: isize,
            buffer: VecDeque<(i64, String)>,
            done: bool,
        }
        let page: isize = (limit.clamp(16, 512)) as isize;
        let kinds: Vec<&str> = match &query.kind {
            Some(kind) => vec![kind.as_str()],
            None => super::KINDS.to_vec(),
        };
        // Scores (creation times) to read between: the cursor's is included, for its ties.
        let newest = query.after.as_ref().map(|(at, _)| *at).into_iter().chain(query.created_before_ms.map(|t| t - 1)).min();
        let max = newest.map_or("+inf".to_string(), |t| t.to_string());
        let min = query.created_after_ms.map_or("-inf".to_string(), |t| (t + 1).to_string());
        let mut cursors: Vec<Cursor> = (0..BUCKETS)
            .flat_map(|b| kinds.iter().map(move |k| (b, *k)))
            .map(|(b, k)| Cursor { key: self.keys.listed(b, tenant, k), offset: 0, buffer: VecDeque::new(), done: false })
            .collect();
        let mut found = Vec::new();
        while found.len() < limit {
            let refills = cursors.iter_mut().filter(|c| c.buffer.is_empty() && !c.done).map(|c| {
                let (max, min) = (&max, &min);
                async move {
                    let entries: Vec<(String, f64)> = self.conn().zrevrangebyscore_limit_withscores(&c.key, max, min, c.offset, page).await?;
                    c.offset += entries.len() as isize;
                    c.done = (entries.len() as isize) < page;
                    c.buffer.extend(entries.into_iter().map(|(id, score)| (score as i64, id)));
                    Ok::<_, StoreError>(())
                }
            });
            try_join_all(refills).await?;
            // The next candidates in global order, as many as could still be wanted.
            let mut batch = Vec::new();
            while batch.len() < limit - found.len() {
                let Some(next) = cursors.iter_mut().filter(|c| !c.buffer.is_empty()).max_by(|a, b| a.buffer[0].cmp(&b.buffer[0])) else {
                    break;
                };
                let (score, id) = next.buffer.pop_front().expect("not empty");
                batch.push((next.key.clone(), score, id));
                if next.buffer.is_empty() && !next.done {
                    break; // refill it before going on, or order could be lost
                }
            }
            if batch.is_empty() {
                break;
            }
            let ids: Vec<String> = batch.iter().map(|(_, _, id)| id.clone()).collect();
            for ((key, created_at_ms, id), row) in batch.iter().zip(self.rows(&ids).await?) {
                match row {
                    None if orphaned(*created_at_ms) => {
                        let _: i64 = self.conn().zrem(key, id).await?;
                    }
                    None => {}
                    Some(row) if row.tenant == tenant && query.matches(&row) => found.push(row),
                    Some(_) => {}
                }
            }
        }
        Ok(found)
    }

    /// Takes one candidate of a claim if its row agrees, and mends the index entry it came
    /// from when the row says otherwise.
    async fn claim_one(&self, candidate: &Candidate, kind: &str, states: &[&str], lease: &Lease, now_ms: i64, own: bool) -> Result<Option<TxRow>> {
        let mut call = SCRIPTS.claim_tx.key(self.keys.tx(&candidate.id));
        call.arg(kind).arg(&lease.owner).arg(lease.until_ms).arg(now_ms).arg(own as u8);
        for s in states {
            call.arg(*s);
        }
        let answer: Vec<Option<String>> = call.invoke_async(&mut self.conn()).await?;
        let tag = answer.first().cloned().flatten().unwrap_or_default();
        match tag.as_str() {
            "claimed" => {
                let row = row_of(&candidate.id, &answer[1..])?;
                self.learn(&candidate.id, row.as_ref());
                Ok(row)
            }
            "held" => {
                // Its lease was renewed since the entry was scored: score it by the lease now.
                let until: i64 = answer.get(1).cloned().flatten().and_then(|l| l.parse().ok()).unwrap_or(0);
                if until > candidate.score {
                    let entry = Indexed { tenant: &candidate.tenant, kind, id: &candidate.id, created_at_ms: 0, lease_until_ms: until };
                    self.index(entry, false, Some(&candidate.state)).await?;
                }
                Ok(None)
            }
            // Gone or elsewhere, but scored by a lease not yet over (only a claim of every
            // entry, at start, meets these): a writer at work — a create between its entry and
            // its row, a change of state between its new entry and its row. Left alone: once
            // the lease is over, a claim that finds the same cleans it.
            _ if candidate.score >= now_ms => Ok(None),
            // Gone (expired) or no longer in that state: the entry is stale.
            _ => {
                let max = candidate.score.to_string();
                self.unindex(&candidate.tenant, kind, &candidate.id, &candidate.state, &max).await?;
                Ok(None)
            }
        }
    }
}

/// An index entry a claim may take.
struct Candidate {
    tenant: String,
    state: String,
    id: String,
    score: i64,
}

/// What an index entry is made of: where it goes, and its scores (creation in the list,
/// lease in a state index).
#[derive(Clone, Copy)]
struct Indexed<'a> {
    tenant: &'a str,
    kind: &'a str,
    id: &'a str,
    created_at_ms: i64,
    lease_until_ms: i64,
}

impl<'a> Indexed<'a> {
    fn of(row: &'a TxRow) -> Indexed<'a> {
        Indexed { tenant: &row.tenant, kind: &row.kind, id: &row.id, created_at_ms: row.created_at_ms, lease_until_ms: row.lease_until_ms }
    }
}

/// A row from its hash fields (`ROW_FIELDS` order); `None` if the row does not exist.
fn row_of(id: &str, fields: &[Option<String>]) -> Result<Option<TxRow>> {
    if fields.len() < ROW_FIELDS.len() || fields[0].is_none() {
        return Ok(None);
    }
    let text = |i: usize| fields[i].clone().unwrap_or_default();
    let number = |i: usize| -> Result<i64> {
        text(i).parse().map_err(|_| StoreError::Corrupt { id: id.into(), reason: format!("field {} is not a number", ROW_FIELDS[i]) })
    };
    Ok(Some(TxRow {
        tenant: text(0),
        id: id.into(),
        kind: text(1),
        name: text(2),
        state: text(3),
        doc: text(4),
        rev: number(5)?,
        owner: Some(text(6)).filter(|o| !o.is_empty()),
        lease_until_ms: number(7)?,
        created_at_ms: number(8)?,
        updated_at_ms: number(9)?,
        ended: text(10) == "1",
    }))
}

fn events_json(events: &[NewEvent]) -> String {
    serde_json::to_string(events).expect("events serialise")
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    super::parse_stored(text).map_err(|e| StoreError::Corrupt { id: what.into(), reason: e.to_string() })
}

impl RedisStore {
    /// Appends the audit entry of a transaction's write that took effect. The trail is a list
    /// of its own (another slot on a cluster), so the entry follows the write instead of
    /// sharing its script; the write stands if the entry cannot be written (logged).
    async fn audit_written(&self, row: &TxRow, audit: Option<&Audit>) {
        let Some(a) = audit else { return };
        if let Err(e) = AuditStore::audit(self, &row.tenant, &a.actor, &a.action, &a.detail).await {
            tracing::error!(tenant = %row.tenant, transaction_id = %row.id, action = %a.action, "recording an audit entry failed: {e}");
        }
    }
}

#[async_trait]
impl TxStore for RedisStore {
    async fn insert_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<()> {
        // The index first: if this process dies before the row is written, an entry too many.
        let score = self.index(Indexed::of(row), true, (!row.ended).then_some(row.state.as_str())).await?;
        let mut call = SCRIPTS.insert_tx.key(self.keys.tx(&row.id));
        call.key(self.keys.journal(&row.id))
            .arg(&row.tenant)
            .arg(&row.kind)
            .arg(&row.name)
            .arg(&row.state)
            .arg(&row.doc)
            .arg(row.owner.as_deref().unwrap_or(""))
            .arg(row.lease_until_ms)
            .arg(row.created_at_ms)
            .arg(row.updated_at_ms)
            .arg(events_json(events))
            .arg(events.len())
            .arg(row.ended as u8)
            .arg(self.retention_for(row.ended))
            .arg(score.unwrap_or_default());
        let inserted: i64 = call.invoke_async(&mut self.conn()).await?;
        match inserted {
            1 => {
                self.learn(&row.id, Some(row));
                self.audit_written(row, audit).await;
                Ok(())
            }
            _ => Err(StoreError::Conflict { kind: "transaction", id: row.id.clone() }),
        }
    }

    async fn save_tx(&self, row: &TxRow, events: &[NewEvent], audit: Option<&Audit>) -> Result<i64> {
        let conflict = || StoreError::Conflict { kind: "transaction", id: row.id.clone() };
        let (count, events) = (events.len(), events_json(events));
        let save = |score: Option<String>| {
            let mut call = SCRIPTS.save_tx.key(self.keys.tx(&row.id));
            call.key(self.keys.journal(&row.id))
                .arg(&row.tenant)
                .arg(row.rev)
                .arg(&row.state)
                .arg(&row.doc)
                .arg(row.owner.as_deref().unwrap_or(""))
                .arg(row.lease_until_ms)
                .arg(row.updated_at_ms)
                .arg(&events)
                .arg(count)
                .arg(row.ended as u8)
                .arg(self.retention_for(row.ended))
                .arg(score.unwrap_or_default());
            async move { call.invoke_async::<Vec<redis::Value>>(&mut self.conn()).await }
        };
        // Most saves keep the state. One that moves it to a state that needs indexing indexes
        // it first — when this process knows the state changes, or when the script refuses a
        // save that did not.
        let index_first = !row.ended && self.known_state(&row.id).is_none_or(|s| s != row.state);
        let score = match index_first {
            true => self.index(Indexed::of(row), false, Some(&row.state)).await?,
            false => None,
        };
        let mut answer = save(score).await?;
        if int_at(&answer, 0) == Some(-2) {
            let score = self.index(Indexed::of(row), false, Some(&row.state)).await?;
            answer = save(score).await?;
        }
        let rev = int_at(&answer, 0).ok_or_else(|| StoreError::Database("redis: unexpected answer to save_tx".into()))?;
        if rev < 0 {
            self.learn(&row.id, None);
            return Err(conflict());
        }
        self.learn(&row.id, Some(row));
        let (old_state, old_score) = (text_at(&answer, 1), text_at(&answer, 2));
        if old_state != row.state && !old_score.is_empty() {
            self.unindex(&row.tenant, &row.kind, &row.id, &old_state, &old_score).await?;
        }
        self.audit_written(row, audit).await;
        Ok(rev)
    }

    async fn get_tx(&self, tenant: &str, kind: &str, id: &str) -> Result<Option<TxRow>> {
        let row = self.row(id).await?;
        self.learn(id, row.as_ref());
        Ok(row.filter(|r| r.tenant == tenant && r.kind == kind))
    }

    async fn search_tx(&self, tenant: &str, query: &TxQuery, limit: i64) -> Result<Vec<TxRow>> {
        self.newest(tenant, query, limit.max(0) as usize).await
    }

    async fn events(&self, id: &str) -> Result<Vec<EventRow>> {
        #[derive(serde::Deserialize)]
        struct Entry {
            seq: i64,
            at: i64,
            events: Vec<NewEvent>,
        }
        let entries: Vec<String> = self.conn().lrange(self.keys.journal(id), 0, -1).await?;
        let mut history = Vec::new();
        for entry in entries {
            let entry: Entry = decode(id, &entry)?;
            history.extend(entry.events.into_iter().zip(entry.seq..).map(|(e, seq)| EventRow { seq, at_ms: entry.at, kind: e.kind, step: e.step, detail: e.detail }));
        }
        Ok(history)
    }

    async fn count_active(&self, tenant: &str) -> Result<i64> {
        let counts = try_join_all((0..BUCKETS).map(|b| async move {
            let mut pipe = redis::pipe();
            for (kind, states) in ACTIVE {
                for state in *states {
                    pipe.zcard(self.keys.in_state(b, tenant, kind, state));
                }
            }
            let counts: Vec<i64> = pipe.query_async(&mut self.conn()).await?;
            Ok::<_, StoreError>(counts.into_iter().sum::<i64>())
        }))
        .await?;
        Ok(counts.into_iter().sum())
    }

    async fn claim_expired(&self, kind: &str, states: &[&str], lease: &Lease, now_ms: i64, limit: i64, own: bool) -> Result<Vec<TxRow>> {
        let limit = limit.max(0) as usize;
        let mut lookups = Vec::new();
        for (bucket, tenants) in self.tenants_by_bucket().await?.into_iter().enumerate() {
            for tenant in tenants {
                for state in states {
                    lookups.push((self.keys.in_state(bucket as u32, &tenant, kind, state), tenant.clone(), state.to_string()));
                }
            }
        }
        // With `own`, every entry (this node's own leases may not have expired); otherwise
        // the expired ones, oldest lease first.
        let max = if own { "+inf".to_string() } else { (now_ms - 1).to_string() };
        let found = try_join_all(lookups.iter().map(|(key, tenant, state)| {
            let max = max.clone();
            async move {
                let entries: Vec<(String, f64)> = self.conn().zrangebyscore_limit_withscores(key, "-inf", max, 0, limit.max(1) as isize * 4).await?;
                Ok::<_, StoreError>(entries.into_iter().map(|(id, score)| Candidate { tenant: tenant.clone(), state: state.clone(), id, score: score as i64 }).collect::<Vec<_>>())
            }
        }))
        .await?;
        let mut candidates: Vec<Candidate> = found.into_iter().flatten().collect();
        candidates.sort_by_key(|c| c.score);
        let mut claimed = Vec::new();
        let mut rest = candidates.as_slice();
        while claimed.len() < limit && !rest.is_empty() {
            let (now, later) = rest.split_at((limit - claimed.len()).min(rest.len()));
            rest = later;
            let taken = try_join_all(now.iter().map(|c| self.claim_one(c, kind, states, lease, now_ms, own))).await?;
            claimed.extend(taken.into_iter().flatten());
        }
        Ok(claimed)
    }

    async fn renew_lease(&self, id: &str, lease: &Lease) -> Result<bool> {
        let renewed: i64 = SCRIPTS.renew_lease.key(self.keys.tx(id)).arg(&lease.owner).arg(lease.until_ms).invoke_async(&mut self.conn()).await?;
        Ok(renewed == 1)
    }
}

fn int_at(answer: &[redis::Value], i: usize) -> Option<i64> {
    match answer.get(i)? {
        redis::Value::Int(n) => Some(*n),
        other => redis::from_redis_value::<i64>(other).ok(),
    }
}

fn text_at(answer: &[redis::Value], i: usize) -> String {
    answer.get(i).and_then(|v| redis::from_redis_value::<String>(v).ok()).unwrap_or_default()
}

#[async_trait]
impl PluginStore for RedisStore {
    async fn put_plugin(&self, tenant: &str, name: &str, digest: &str, bytes: &[u8], exports: &[&str], now_ms: i64) -> Result<(PluginRow, bool)> {
        // Bytes and name first, the version last: a version never names what is not there.
        let _: bool = self.conn().set_nx(self.keys.component(digest), bytes).await?;
        let _: i64 = self.conn().sadd(self.keys.plugin_names(tenant), name).await?;
        let row = PluginRow {
            tenant: tenant.into(),
            name: name.into(),
            version: 0,
            digest: digest.into(),
            exports: exports.iter().map(|e| e.to_string()).collect(),
            created_at_ms: now_ms,
        };
        let (versions, digests) = self.keys.plugin(tenant, name);
        let body = serde_json::to_string(&row).expect("rows serialise");
        let (version, stored, new): (i64, String, i64) =
            SCRIPTS.put_plugin.key(versions).key(digests).arg(digest).arg(body).invoke_async(&mut self.conn()).await?;
        let row: PluginRow = decode(name, &stored)?;
        Ok((PluginRow { version, ..row }, new == 1))
    }

    async fn plugin(&self, tenant: &str, name: &str, version: Option<i64>) -> Result<Option<PluginRow>> {
        let (versions, _) = self.keys.plugin(tenant, name);
        let version = version.map(|v| v.to_string()).unwrap_or_default();
        let found: Vec<redis::Value> = SCRIPTS.get_plugin.key(versions).arg(version).invoke_async(&mut self.conn()).await?;
        let (Some(number), text) = (int_at(&found, 0), text_at(&found, 1)) else {
            return Ok(None);
        };
        let row: PluginRow = decode(name, &text)?;
        Ok(Some(PluginRow { version: number, ..row }))
    }

    async fn plugin_versions(&self, tenant: &str, name: &str) -> Result<Vec<PluginRow>> {
        let (versions, _) = self.keys.plugin(tenant, name);
        let all: HashMap<i64, String> = self.conn().hgetall(versions).await?;
        let mut rows = all.into_iter().map(|(v, text)| decode::<PluginRow>(name, &text).map(|r| PluginRow { version: v, ..r })).collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(|r| r.version);
        Ok(rows)
    }

    async fn latest_plugins(&self, tenant: &str) -> Result<Vec<PluginRow>> {
        let mut names: Vec<String> = self.conn().smembers(self.keys.plugin_names(tenant)).await?;
        names.sort();
        let rows = try_join_all(names.iter().map(|n| self.plugin(tenant, n, None))).await?;
        Ok(rows.into_iter().flatten().collect())
    }

    async fn component_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn().get(self.keys.component(digest)).await?)
    }
}

#[async_trait]
impl TenantStore for RedisStore {
    async fn create_tenant(&self, tenant: &TenantRow, key: &KeyRow) -> Result<bool> {
        let (rows, keys, _) = self.keys.tenants();
        let created: i64 = SCRIPTS
            .create_tenant
            .key(rows)
            .key(keys)
            .arg(&tenant.tenant_id)
            .arg(serde_json::to_string(tenant).expect("rows serialise"))
            .arg(&key.key_id)
            .arg(serde_json::to_string(key).expect("rows serialise"))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(created == 1)
    }

    async fn add_key(&self, key: &KeyRow) -> Result<()> {
        let (_, keys, _) = self.keys.tenants();
        let _: i64 = self.conn().hset(keys, &key.key_id, serde_json::to_string(key).expect("rows serialise")).await?;
        Ok(())
    }

    async fn revoke_key(&self, tenant: &str, key_id: &str, _now_ms: i64) -> Result<bool> {
        let (_, keys, revoked) = self.keys.tenants();
        let done: i64 = SCRIPTS.revoke_key.key(keys).key(revoked).arg(key_id).arg(tenant).invoke_async(&mut self.conn()).await?;
        Ok(done == 1)
    }

    async fn live_keys(&self, tenant: &str) -> Result<Vec<KeyRow>> {
        let (_, keys, revoked) = self.keys.tenants();
        let all: HashMap<String, String> = self.conn().hgetall(keys).await?;
        let gone: std::collections::HashSet<String> = self.conn().smembers(revoked).await?;
        let mut live: Vec<KeyRow> = all
            .iter()
            .filter(|(id, _)| !gone.contains(*id))
            .map(|(id, k)| decode::<KeyRow>(id, k))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|k| k.tenant_id == tenant)
            .collect();
        live.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(a.key_id.cmp(&b.key_id)));
        Ok(live)
    }

    async fn live_key(&self, key_id: &str) -> Result<Option<KeyRow>> {
        let (_, keys, revoked) = self.keys.tenants();
        let key: Option<String> = SCRIPTS.live_key.key(keys).key(revoked).arg(key_id).invoke_async(&mut self.conn()).await?;
        key.map(|k| decode(key_id, &k)).transpose()
    }

    async fn tenant(&self, tenant: &str) -> Result<Option<TenantRow>> {
        let (rows, _, _) = self.keys.tenants();
        let row: Option<String> = self.conn().hget(rows, tenant).await?;
        row.map(|r| decode(tenant, &r)).transpose()
    }

    async fn tenant_ids(&self) -> Result<Vec<String>> {
        let (rows, _, _) = self.keys.tenants();
        let mut ids: Vec<String> = self.conn().hkeys(rows).await?;
        ids.sort();
        Ok(ids)
    }

    async fn has_tenants(&self) -> Result<bool> {
        let (rows, _, _) = self.keys.tenants();
        let n: i64 = self.conn().hlen(rows).await?;
        Ok(n > 0)
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn idempotent_reply(&self, tenant: &str, key: &str) -> Result<Option<IdempotentReply>> {
        let (reply, _) = self.keys.reply(tenant, key);
        let text: Option<String> = self.conn().get(reply).await?;
        text.map(|t| decode(key, &t)).transpose()
    }

    async fn remember_reply(&self, tenant: &str, key: &str, reply: &IdempotentReply, now_ms: i64) -> Result<bool> {
        let (at, register) = self.keys.reply(tenant, key);
        let body = serde_json::to_string(reply).expect("replies serialise");
        let stored: i64 = SCRIPTS.remember_reply.key(at).key(register).arg(body).arg(key).arg(now_ms).arg(self.retention_ms).invoke_async(&mut self.conn()).await?;
        Ok(stored == 1)
    }
}

#[async_trait]
impl SettingStore for RedisStore {
    async fn setting(&self, tenant: &str, key: &str) -> Result<Option<String>> {
        Ok(self.conn().hget(self.keys.settings(tenant), key).await?)
    }

    async fn put_setting(&self, tenant: &str, key: &str, value: &str) -> Result<()> {
        let _: i64 = self.conn().hset(self.keys.settings(tenant), key, value).await?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for RedisStore {
    async fn audit(&self, tenant: &str, actor: &str, action: &str, detail: &Value) -> Result<()> {
        let entry = serde_json::json!([super::now_ms(), actor, action, detail]).to_string();
        let _: i64 = self.conn().lpush(self.keys.audit(tenant), entry).await?;
        Ok(())
    }

    async fn audit_log(&self, tenant: &str, limit: i64) -> Result<Vec<(i64, String, String, Value)>> {
        if limit <= 0 {
            return Ok(vec![]);
        }
        let entries: Vec<String> = self.conn().lrange(self.keys.audit(tenant), 0, limit as isize - 1).await?;
        entries.iter().map(|e| decode(tenant, e)).collect()
    }
}

/// Ended transactions and idempotency replies expire by themselves on Redis (`?retention=`,
/// set on each key when it is written); both can be purged sooner (a tenant's own
/// retention), and audit entries are trimmed from the old end.
#[async_trait]
impl Retention for RedisStore {
    /// Ended transactions also expire by themselves after the store's `retention`; a
    /// tenant's shorter retention deletes them sooner. Candidates are the tenant's
    /// transactions created before the cutoff (one written last before it was created before
    /// it), oldest first, in each bucket; each is deleted only if it is still ended, last
    /// written before the cutoff, and unchanged since it was read.
    async fn purge_ended(&self, tenant: &str, kind: &str, states: &[&str], before_ms: i64, limit: i64) -> Result<u64> {
        let mut purged = 0;
        for bucket in 0..BUCKETS {
            let listed = self.keys.listed(bucket, tenant, kind);
            let entries: Vec<(String, f64)> =
                self.conn().zrangebyscore_limit_withscores(&listed, "-inf", format!("({before_ms}"), 0, limit.max(0) as isize).await?;
            for (id, created_at_ms) in entries {
                match self.row(&id).await? {
                    // Expired already: only its list entry was left.
                    None if orphaned(created_at_ms as i64) => {
                        let _: i64 = self.conn().zrem(&listed, &id).await?;
                    }
                    Some(row) if row.tenant == tenant && row.updated_at_ms < before_ms && states.contains(&row.state.as_str()) => {
                        let deleted: i64 = SCRIPTS.purge_tx.key(self.keys.tx(&id)).key(self.keys.journal(&id)).arg(row.rev).invoke_async(&mut self.conn()).await?;
                        if deleted == 1 {
                            let _: i64 = self.conn().zrem(&listed, &id).await?;
                            self.learn(&id, None);
                            purged += 1;
                        }
                    }
                    None | Some(_) => {}
                }
            }
        }
        Ok(purged)
    }

    /// Replies expire by themselves after the store's `retention`; a tenant's shorter
    /// retention deletes them sooner, through its register.
    async fn purge_replies(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let (_, register) = self.keys.reply(tenant, "");
        let keys: Vec<String> = self.conn().zrangebyscore_limit(&register, "-inf", format!("({before_ms}"), 0, limit.max(0) as isize).await?;
        let mut purged = 0;
        for key in &keys {
            let n: u64 = self.conn().del(self.keys.reply(tenant, key).0).await?;
            let _: i64 = self.conn().zrem(&register, key).await?;
            purged += n;
        }
        Ok(purged)
    }

    async fn purge_audit(&self, tenant: &str, before_ms: i64, limit: i64) -> Result<u64> {
        let key = self.keys.audit(tenant);
        let mut purged = 0;
        while purged < limit.max(0) as u64 {
            // The list is newest first: its last entry is the oldest.
            let Some(oldest): Option<String> = self.conn().lindex(&key, -1).await? else { break };
            let at = serde_json::from_str::<Value>(&oldest).ok().and_then(|v| v[0].as_i64()).unwrap_or(i64::MAX);
            if at >= before_ms {
                break;
            }
            let removed: i64 = self.conn().lrem(&key, -1, &oldest).await?;
            purged += removed.max(0) as u64;
            if removed == 0 {
                break;
            }
        }
        Ok(purged)
    }
}

#[async_trait]
impl Inspect for RedisStore {
    async fn state_counts(&self) -> Result<Vec<(String, String, i64)>> {
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for kind in super::KINDS {
            for row in self.rows_of_kind(kind).await? {
                *counts.entry((row.kind, row.state)).or_default() += 1;
            }
        }
        Ok(counts.into_iter().map(|((k, s), n)| (k, s, n)).collect())
    }

    async fn states_of_kind(&self, kind: &str) -> Result<Vec<(String, String)>> {
        Ok(self.rows_of_kind(kind).await?.into_iter().map(|r| (r.id, r.state)).collect())
    }

    async fn journal_events(&self, kind: &str, event: &str) -> Result<Vec<(String, i64, NewEvent)>> {
        let mut found = Vec::new();
        for row in self.rows_of_kind(kind).await? {
            for e in self.events(&row.id).await? {
                if e.kind == event {
                    found.push((row.id.clone(), e.at_ms, NewEvent { kind: e.kind, step: e.step, detail: e.detail }));
                }
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Backend for RedisStore {
    fn kind(&self) -> &'static str {
        if self.cluster { "redis-cluster" } else { "redis" }
    }

    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_server_or_a_cluster_with_options() {
        let one = Location::parse("redis://:pw@10.0.0.1:6380/2?prefix=shop&retention=12h").unwrap();
        assert_eq!(one.nodes, vec!["redis://:pw@10.0.0.1:6380/2"]);
        assert!(!one.cluster);
        assert_eq!((one.prefix.as_str(), one.retention_ms, one.allow_everysec), ("shop", 12 * 3_600_000, false));
        let many = Location::parse("redis+cluster://u:p@h1:7000,h2:7001/?durability=everysec&retention=0").unwrap();
        assert_eq!(many.nodes, vec!["redis://u:p@h1:7000", "redis://u:p@h2:7001"]);
        assert!(many.cluster && many.allow_everysec && many.retention_ms == 0);
        assert_eq!(Location::parse("redis://h").unwrap().retention_ms, 7 * 86_400_000);
        for bad in ["redis://", "redis://h?retention=soon", "redis://h?prefix=a{b}", "redis://h?durability=never", "redis://h?x=1", "redis+cluster://h1:1/3"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
        assert!(Location::handles("rediss+cluster://h") && !Location::handles("postgres://h"));
    }
}
