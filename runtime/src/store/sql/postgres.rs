//! PostgreSQL's batch writer: a batch goes as typed arrays (binary), unpacked with `UNNEST` by
//! one statement whose parts are set-based — no JSON for the server to parse, which was its
//! largest cost per write, and one round trip per batch.

use std::collections::HashMap;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

use crate::store::{Result, StoreError};
use crate::store::commit::{AuditRow, BatchWriter, ReplyRow, Write, events_json};

/// Writes batches through connections of its own, one per committer at most.
pub(crate) struct PostgresWriter {
    options: PgConnectOptions,
    /// Open connections between batches, each with when it was last used. A committer takes
    /// one for a batch and puts it back unless it may be broken (then it is closed, and the
    /// next batch opens another). No pool: sqlx's pings a connection when it is taken and again
    /// when it is given back, two round trips beside the batch's one; here only a connection
    /// idle for `super::IDLE_CHECK` is pinged first (the database may have restarted meanwhile).
    idle: Mutex<Vec<(PgConnection, Instant)>>,
}

/// Longest wait for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl PostgresWriter {
    /// Connects once, so a database that cannot be reached fails the store's opening.
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let writer = PostgresWriter { options: PgConnectOptions::from_str(url)?, idle: Mutex::new(Vec::new()) };
        let first = writer.connection().await?;
        writer.put_back(first);
        Ok(writer)
    }

    /// An idle connection that answers, or a new one set up for the writer (`WRITER_SESSION`).
    async fn connection(&self) -> Result<PgConnection> {
        loop {
            let Some((mut conn, used)) = self.idle.lock().unwrap().pop() else { break };
            if used.elapsed() < super::IDLE_CHECK || conn.ping().await.is_ok() {
                return Ok(conn);
            }
        }
        let connect = async {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            sqlx::query(WRITER_SESSION).execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(StoreError::Database(format!("no connection to PostgreSQL within {} s", CONNECT_TIMEOUT.as_secs()))),
        }
    }

    fn put_back(&self, conn: PgConnection) {
        self.idle.lock().unwrap().push((conn, Instant::now()));
    }
}

#[async_trait::async_trait]
impl BatchWriter for PostgresWriter {
    async fn apply(&self, all: &Arc<Vec<Write>>, range: Range<usize>) -> Result<Vec<Result<i64>>> {
        let mut conn = self.connection().await?;
        let applied = apply_postgres(&mut conn, &all[range]).await;
        // A statement the database refused leaves its connection as good as it was; any other
        // failure may have broken it.
        if matches!(applied, Ok(_) | Err(sqlx::Error::Database(_))) {
            self.put_back(conn);
        }
        Ok(applied?)
    }

    /// One per core, two to four: with two, one batch is assembled while another commits; more
    /// only pay where there are cores for them. (On 2 cores, 2 committers ran 3-15% more sagas
    /// than 4 in process and through the API, and a fleet 13-24% more transactions: 4 made
    /// smaller batches that contended for the same cores.)
    fn committers(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 4)
    }
}

/// A whole batch in one statement, so in one round trip and one implicit transaction: the new
/// transactions, the revision-checked updates, a journal entry for each of them that took
/// effect (numbered from the `last_seq` it returned), the audit entries (standalone ones
/// always, those riding on a write only when it took effect) and the remembered replies. It
/// answers the ids that took effect with their `last_seq`, and the batch keys of the replies
/// stored. (Five round trips — `BEGIN`, three statements, `COMMIT` — were most of a commit's
/// latency at one client.)
///
/// The statement reads the table through its primary key alone, so its plan does not depend on
/// how many rows the table holds, and the writer plans it once per connection
/// (`WRITER_SESSION`). Updates are therefore `INSERT … ON CONFLICT (id) DO UPDATE … WHERE` the
/// revision matches — an `UPDATE … FROM UNNEST` joins, and a plan made while the table was
/// nearly empty scanned all of it for every batch once it had grown (250 ms a batch). A save
/// whose row is gone would be inserted instead: `missing` catches it (an inserted row keeps the
/// revision it was offered; an updated one is a revision further) and fails the statement with
/// `NO_TRANSACTION`, so nothing of the batch is written and the save alone is a conflict.
const APPLY: &str = "
WITH ins AS (
    INSERT INTO transactions (tenant_id, id, kind, name, state, doc, rev, owner, lease_until, created_at, updated_at, last_seq)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[],
                         $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])
    ON CONFLICT (id) DO NOTHING
    RETURNING id, last_seq),
upd AS (
    INSERT INTO transactions AS t (tenant_id, id, state, doc, rev, owner, lease_until, updated_at, last_seq, kind, name, created_at)
    SELECT v.*, '', '', 0
    FROM UNNEST($13::text[], $14::text[], $15::text[], $16::text[], $17::int8[], $18::text[], $19::int8[], $20::int8[], $21::int8[])
         AS v(tenant_id, id, state, doc, rev, owner, lease_until, updated_at, n)
    ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, doc = EXCLUDED.doc, rev = t.rev + 1, owner = EXCLUDED.owner,
        lease_until = EXCLUDED.lease_until, updated_at = EXCLUDED.updated_at, last_seq = t.last_seq + EXCLUDED.last_seq
    WHERE t.tenant_id = EXCLUDED.tenant_id AND t.rev = EXCLUDED.rev
    RETURNING t.id, t.rev, t.last_seq),
missing AS (
    SELECT CAST('wasmtx: a save found no transaction ' || u.id AS int8) AS last_seq
    FROM upd AS u JOIN UNNEST($14::text[], $17::int8[]) AS s(id, rev) ON s.id = u.id
    WHERE u.rev = s.rev),
done AS (SELECT id, last_seq FROM ins UNION ALL SELECT id, last_seq FROM upd),
entries AS (
    INSERT INTO journal (tx_id, seq, at, events)
    SELECT e.tx_id, d.last_seq - e.n + 1, e.at, e.events
    FROM UNNEST($22::text[], $23::int8[], $24::int8[], $25::text[]) AS e(tx_id, n, at, events)
    JOIN done AS d ON d.id = e.tx_id),
audited AS (
    INSERT INTO audit (id, tenant_id, at, actor, action, detail)
    SELECT a.id, a.tenant_id, a.at, a.actor, a.action, a.detail
    FROM UNNEST($26::text[], $27::text[], $28::int8[], $29::text[], $30::text[], $31::text[], $32::text[])
         AS a(id, tenant_id, at, actor, action, detail, tx_id)
    WHERE a.tx_id IS NULL OR a.tx_id IN (SELECT id FROM done)),
replied AS (
    INSERT INTO idempotency (tenant_id, key, request_hash, status, response, created_at)
    SELECT r.tenant_id, r.key, r.request_hash, r.status, r.response, r.created_at
    FROM UNNEST($33::text[], $34::text[], $35::text[], $36::int8[], $37::text[], $38::int8[])
         AS r(tenant_id, key, request_hash, status, response, created_at)
    ON CONFLICT (tenant_id, key) DO NOTHING
    RETURNING tenant_id, key)
SELECT id, last_seq FROM done
UNION ALL SELECT NULL, last_seq FROM missing
UNION ALL SELECT b.batch_key, 0 FROM replied JOIN UNNEST($39::text[], $33::text[], $34::text[]) AS b(batch_key, tenant_id, key)
    USING (tenant_id, key)";

/// What `APPLY` fails with when a save found no row to update.
const NO_TRANSACTION: &str = "wasmtx: a save found no transaction";

/// The writer's sessions: `APPLY`'s plan made once (planning it anew for each batch, as the
/// readers' `force_custom_plan` does, took a quarter of a millisecond of a commit at one client).
const WRITER_SESSION: &str = "SET plan_cache_mode = force_generic_plan";

/// Applies `writes` on PostgreSQL: one statement over typed arrays (`APPLY`).
async fn apply_postgres(conn: &mut PgConnection, writes: &[Write]) -> Result<Vec<Result<i64>>, sqlx::Error> {
    let inserts: Vec<&Write> = writes.iter().filter(|w| matches!(w, Write::Insert(..))).collect();
    let saves: Vec<&Write> = writes.iter().filter(|w| matches!(w, Write::Save(..))).collect();
    let (ins, upd) = (Columns::of(&inserts), Columns::of(&saves));
    let changes: Vec<(&Write, String)> =
        writes.iter().filter(|w| !w.events().is_empty()).map(|w| (w, events_json(w.events()))).collect();
    let audits: Vec<(&AuditRow, Option<&str>)> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Audit(a) => Some((a, None)),
            Write::Reply(_) => None,
            Write::Insert(row, _, audit) | Write::Save(row, _, audit) => audit.as_ref().map(|a| (a, Some(row.id.as_str()))),
        })
        .collect();
    let audit = |f: fn(&AuditRow) -> &str| audits.iter().map(|(a, _)| f(a)).collect::<Vec<&str>>();
    let replies: Vec<&ReplyRow> = writes.iter().filter_map(|w| if let Write::Reply(r) = w { Some(r) } else { None }).collect();
    let reply = |f: fn(&ReplyRow) -> &str| replies.iter().map(|r| f(r)).collect::<Vec<&str>>();
    let rows = sqlx::query(APPLY)
        .bind(&ins.tenant).bind(&ins.id).bind(&ins.kind).bind(&ins.name).bind(&ins.state).bind(&ins.doc).bind(&ins.rev)
        .bind(&ins.owner).bind(&ins.lease_until).bind(&ins.created_at).bind(&ins.updated_at).bind(&ins.n)
        .bind(&upd.tenant).bind(&upd.id).bind(&upd.state).bind(&upd.doc).bind(&upd.rev).bind(&upd.owner)
        .bind(&upd.lease_until).bind(&upd.updated_at).bind(&upd.n)
        .bind(changes.iter().map(|(w, _)| w.row().id.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|(w, _)| w.events().len() as i64).collect::<Vec<_>>())
        .bind(changes.iter().map(|(w, _)| w.row().updated_at_ms).collect::<Vec<_>>())
        .bind(changes.iter().map(|(_, events)| events.as_str()).collect::<Vec<_>>())
        .bind(audit(|a| &a.id)).bind(audit(|a| &a.tenant)).bind(audits.iter().map(|(a, _)| a.at_ms).collect::<Vec<_>>())
        .bind(audit(|a| &a.actor)).bind(audit(|a| &a.action)).bind(audit(|a| &a.detail))
        .bind(audits.iter().map(|(_, tx)| *tx).collect::<Vec<_>>())
        .bind(reply(|r| &r.tenant)).bind(reply(|r| &r.key)).bind(reply(|r| &r.request_hash))
        .bind(replies.iter().map(|r| r.status).collect::<Vec<_>>()).bind(reply(|r| &r.body))
        .bind(replies.iter().map(|r| r.created_at_ms).collect::<Vec<_>>()).bind(reply(|r| &r.batch_key))
        .fetch_all(conn)
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // Alone, a save whose transaction is gone is the conflict it is; in a batch, the
        // committer retries the batch's writes one by one, which finds it.
        Err(sqlx::Error::Database(e)) if writes.len() == 1 && e.message().contains(NO_TRANSACTION) => {
            return Ok(vec![writes[0].result(None)]);
        }
        Err(e) => return Err(e),
    };
    let mut took_effect = HashMap::with_capacity(rows.len());
    for row in rows {
        took_effect.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    // Ids are distinct within a batch, so an id that took effect names one write.
    Ok(writes.iter().map(|w| w.result(took_effect.get(w.key()).copied())).collect())
}

/// Transaction rows column by column, for `UNNEST`.
struct Columns<'a> {
    tenant: Vec<&'a str>,
    id: Vec<&'a str>,
    kind: Vec<&'a str>,
    name: Vec<&'a str>,
    state: Vec<&'a str>,
    doc: Vec<&'a str>,
    rev: Vec<i64>,
    owner: Vec<Option<&'a str>>,
    lease_until: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    n: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(writes: &[&'a Write]) -> Self {
        let rows = || writes.iter().map(|w| w.row());
        Columns {
            tenant: rows().map(|r| r.tenant.as_str()).collect(),
            id: rows().map(|r| r.id.as_str()).collect(),
            kind: rows().map(|r| r.kind.as_str()).collect(),
            name: rows().map(|r| r.name.as_str()).collect(),
            state: rows().map(|r| r.state.as_str()).collect(),
            doc: rows().map(|r| r.doc.as_str()).collect(),
            rev: rows().map(|r| r.rev).collect(),
            owner: rows().map(|r| r.owner.as_deref()).collect(),
            lease_until: rows().map(|r| r.lease_until_ms).collect(),
            created_at: rows().map(|r| r.created_at_ms).collect(),
            updated_at: rows().map(|r| r.updated_at_ms).collect(),
            n: writes.iter().map(|w| w.events().len() as i64).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_fails_with_the_marker_the_writer_looks_for() {
        assert!(APPLY.contains(&format!("'{NO_TRANSACTION} '")));
    }
}
