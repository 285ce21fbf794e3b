//! Group commit: the journal writes of many concurrent transactions share one database
//! transaction, so durable throughput is not one fsync per state change.
//!
//! Writers queue a `Write`; a committer task takes what is queued (at most `MAX_BATCH`, with
//! no artificial wait: the commit in progress is the batching window; where several
//! committers run, a batch smaller than `PARALLEL_MIN` waits for the commits in flight, up to
//! `WAIT_BESIDE`, rather than commit beside them), applies it — insert the new transactions,
//! update the revised ones where the revision still matches, append each write's events as
//! one journal entry, the audit entries and the replies remembered for `Idempotency-Key`s —
//! then commits once and answers each writer. How a batch reaches a database is its backend's
//! `BatchWriter` (on PostgreSQL rows travel as typed arrays, unpacked by set-based statements;
//! on SQLite, which runs in-process, cached prepared statements apply them row by row on a
//! blocking thread).
//! A write is acknowledged only after its commit. A revision conflict fails that write alone;
//! a database error fails the batch, whose writes are then retried one by one so that one bad
//! write never takes its neighbours down with it.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::{NewEvent, Result, StoreError, TxRow};

/// Most writes committed together.
const MAX_BATCH: usize = 512;
/// Writes waiting for a committer; beyond this, writers wait to queue (back-pressure).
const QUEUE: usize = 8192;
/// Fewest writes a commit starts with beside one in flight; fewer wait for the commit in flight
/// to end, gathering what arrives meanwhile. Under a light load (a coordinator of a fleet sees
/// a share of the clients) two committers otherwise each committed a handful of writes at a
/// time, and PostgreSQL paid its cost per statement and per commit for every handful; under a
/// heavy one a batch this big is queued at once and commits beside the other. (On 2 cores: a
/// fleet of 3 ran 17% more transactions with 32 than with 1, the sagas of `bench saga` at 256
/// clients 3% more; never waiting beside a commit in flight cost those sagas 9%.)
const PARALLEL_MIN: usize = 32;
/// Longest a smaller batch waits for the commits in flight, counted from the last of them
/// started: one still running after this is presumed stuck (a connection gone silent), and
/// batches commit beside it, without waiting for it again, rather than stall every writer.
const WAIT_BESIDE: std::time::Duration = std::time::Duration::from_millis(50);

/// One change to commit: a revision-checked change of a transaction with its history
/// events, an audit entry, or the answer remembered for an `Idempotency-Key`.
pub(crate) enum Write {
    /// A new transaction (revision 0), with the audit entry of who asked for it; conflicts if
    /// the id exists (and then writes no entry).
    Insert(TxRow, Vec<NewEvent>, Option<AuditRow>),
    /// A new revision of a stored transaction, with the audit entry of who asked for it;
    /// conflicts unless the stored revision is `row.rev` (and then writes no entry).
    Save(TxRow, Vec<NewEvent>, Option<AuditRow>),
    /// Who did what, appended (API requests write one each; batching them spares a commit per
    /// request).
    Audit(AuditRow),
    /// The answer to a keyed create, stored unless the key has one already (the first
    /// remembered wins). Batched like the rest: on its own it was a commit per keyed create,
    /// and on SQLite a second writer contending with the committer for the file's lock.
    Reply(ReplyRow),
}

/// An answer remembered for a tenant's `Idempotency-Key`.
pub(crate) struct ReplyRow {
    /// What a batch holds at most once: the tenant and the key, spelt as no transaction id is
    /// (and without NUL, which PostgreSQL's text refuses: the batch key travels with the row).
    pub batch_key: String,
    pub tenant: String,
    pub key: String,
    pub request_hash: String,
    pub status: i64,
    pub body: String,
    pub created_at_ms: i64,
}

impl ReplyRow {
    pub(crate) fn new(tenant: &str, key: &str, reply: &crate::store::IdempotentReply, now_ms: i64) -> Self {
        ReplyRow {
            batch_key: format!("reply\u{1f}{tenant}\u{1f}{key}"),
            tenant: tenant.to_string(),
            key: key.to_string(),
            request_hash: reply.request_hash.clone(),
            status: i64::from(reply.status),
            body: reply.body.to_string(),
            created_at_ms: now_ms,
        }
    }
}

/// An entry of the audit trail.
pub(crate) struct AuditRow {
    pub id: String,
    pub tenant: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub detail: String,
}

impl AuditRow {
    /// `actor` did `action` (`detail`), in `tenant`'s trail, as written now.
    pub(crate) fn new(tenant: &str, actor: &str, action: &str, detail: &serde_json::Value) -> Self {
        AuditRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant: tenant.to_string(),
            at_ms: crate::store::now_ms(),
            actor: actor.to_string(),
            action: action.to_string(),
            detail: detail.to_string(),
        }
    }

    /// The entry that rides on a write of one of `tenant`'s transactions.
    pub(crate) fn riding(tenant: &str, entry: &crate::store::Audit) -> Self {
        AuditRow::new(tenant, &entry.actor, &entry.action, &entry.detail)
    }
}

impl Write {
    /// The audit entry this write appends, given whether it took effect: its own (an entry
    /// always does), or the one that rides on a transaction's write that was not refused.
    pub(crate) fn audit_row(&self, took_effect: bool) -> Option<&AuditRow> {
        match self {
            Write::Audit(a) => Some(a),
            Write::Reply(_) => None,
            Write::Insert(_, _, audit) | Write::Save(_, _, audit) => audit.as_ref().filter(|_| took_effect),
        }
    }

    /// What a batch holds at most once.
    pub(crate) fn key(&self) -> &str {
        match self {
            Write::Insert(row, ..) | Write::Save(row, ..) => &row.id,
            Write::Audit(a) => &a.id,
            Write::Reply(r) => &r.batch_key,
        }
    }

    /// The transaction row (inserts and saves only).
    pub(crate) fn row(&self) -> &TxRow {
        match self {
            Write::Insert(row, ..) | Write::Save(row, ..) => row,
            Write::Audit(_) | Write::Reply(_) => unreachable!("only inserts and saves have a transaction row"),
        }
    }

    pub(crate) fn events(&self) -> &[NewEvent] {
        match self {
            Write::Insert(_, events, _) | Write::Save(_, events, _) => events,
            Write::Audit(_) | Write::Reply(_) => &[],
        }
    }

    /// This write's result once the database has said whether it took effect — `last_seq`: the
    /// transaction's last event number after it; `None`: its id or revision was taken. (An
    /// audit entry always takes effect; a reply answers 1 when it was stored, 0 when the key
    /// had one.)
    pub(crate) fn result(&self, last_seq: Option<i64>) -> Result<i64> {
        match (self, last_seq) {
            (Write::Audit(_), _) => Ok(0),
            (Write::Reply(_), stored) => Ok(i64::from(stored.is_some())),
            (Write::Insert(row, ..) | Write::Save(row, ..), None) => Err(StoreError::Conflict { kind: "transaction", id: row.id.clone() }),
            (Write::Insert(row, ..), Some(_)) => Ok(row.rev),
            (Write::Save(row, ..), Some(_)) => Ok(row.rev + 1),
        }
    }

    /// `result`, and the journal entry to append when the write took effect.
    pub(crate) fn outcome(&self, last_seq: Option<i64>) -> (Result<i64>, Option<JournalEntry<'_>>) {
        let entry = match (self, last_seq) {
            (Write::Insert(row, events, _) | Write::Save(row, events, _), Some(last_seq)) => JournalEntry::of(row, events, last_seq),
            _ => None,
        };
        (self.result(last_seq), entry)
    }
}

struct Job {
    write: Write,
    /// The revision written, or why not.
    reply: oneshot::Sender<Result<i64>>,
}

/// Writes batches to one database: the one part of group commit that knows the driver.
#[async_trait::async_trait]
pub(crate) trait BatchWriter: Send + Sync + 'static {
    /// Applies `all[range]` (distinct ids) in one database transaction. The outer error is the
    /// database's; the inner results are per write (`Write::outcome` decides each).
    async fn apply(&self, all: &Arc<Vec<Write>>, range: Range<usize>) -> Result<Vec<Result<i64>>>;

    /// Committer tasks to run: one for a database with one writer anyway, several where one
    /// batch can be assembled while another commits.
    fn committers(&self) -> usize;
}

/// The queue in front of the committer tasks. Cheap to clone.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the committers: one for SQLite (it has one writer anyway), several for Postgres,
    /// so one batch is assembled while another commits.
    pub(crate) fn start(db: Arc<dyn BatchWriter>) -> GroupCommit {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let jobs = Arc::new(Mutex::new(jobs));
        let committing = Arc::new(Committing::default());
        for _ in 0..db.committers() {
            tokio::spawn(run(db.clone(), jobs.clone(), committing.clone()));
        }
        GroupCommit { queue }
    }

    /// Queues `write` and waits for its commit; returns the revision now stored.
    pub(crate) async fn submit(&self, write: Write) -> Result<i64> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { write, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The commits in flight, shared by the committers: when each started.
#[derive(Default)]
struct Committing {
    started: std::sync::Mutex<Vec<tokio::time::Instant>>,
    /// Told whenever a commit ends.
    ended: Notify,
}

impl Committing {
    /// Counts a commit in flight until the guard drops, however the commit ends (a panic too).
    fn begin(&self) -> InFlight<'_> {
        let at = tokio::time::Instant::now();
        self.started.lock().unwrap().push(at);
        InFlight(self, at)
    }

    /// How long a batch smaller than `PARALLEL_MIN` waits: until `WAIT_BESIDE` after the last
    /// commit in flight started; `None` when none is in flight. (A commit older than that is
    /// presumed stuck for good: no later batch waits for it.)
    fn wait_until(&self) -> Option<tokio::time::Instant> {
        self.started.lock().unwrap().iter().max().map(|started| *started + WAIT_BESIDE)
    }
}

/// One commit in flight (see `Committing::begin`).
struct InFlight<'a>(&'a Committing, tokio::time::Instant);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut started = self.0.started.lock().unwrap();
        if let Some(i) = started.iter().position(|at| *at == self.1) {
            started.swap_remove(i);
        }
        drop(started);
        self.0.ended.notify_waiters();
    }
}

/// A batch being assembled: its jobs, each id at most once; a job whose id it holds already
/// is `held` for the next.
#[derive(Default)]
struct Batch {
    jobs: Vec<Job>,
    ids: HashSet<String>,
}

impl Batch {
    fn add(&mut self, job: Job, held: &mut Vec<Job>) {
        if self.ids.insert(job.write.key().to_string()) {
            self.jobs.push(job);
        } else {
            held.push(job);
        }
    }

    /// Takes what is queued, up to `MAX_BATCH`, without waiting.
    fn take_queued(&mut self, queue: &mut mpsc::Receiver<Job>, held: &mut Vec<Job>) {
        while self.jobs.len() < MAX_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            self.add(job, held);
        }
    }
}

async fn run(db: Arc<dyn BatchWriter>, jobs: Arc<Mutex<mpsc::Receiver<Job>>>, committing: Arc<Committing>) {
    // A write for a transaction already in the batch waits for the next one: within a batch
    // every id appears once, so set-based statements cannot apply two revisions at once.
    let mut held: Vec<Job> = Vec::new();
    loop {
        // Held writes first, in their order, still at most one per id.
        let mut batch = Batch::default();
        for job in std::mem::take(&mut held) {
            batch.add(job, &mut held);
        }
        // With held writes in hand, never wait for the queue: another committer may be
        // parked on it (holding the lock) while these writes' writers wait for them.
        let mut queue = match batch.jobs.is_empty() {
            true => Some(jobs.lock().await),
            false => jobs.try_lock().ok(),
        };
        if let Some(queue) = queue.as_mut() {
            if batch.jobs.is_empty() {
                match queue.recv().await {
                    Some(job) => batch.add(job, &mut held),
                    None => return,
                }
            }
            batch.take_queued(queue, &mut held);
            // Beside a commit in flight, only a batch worth a commit of its own starts; a
            // smaller one gathers what arrives until the commits in flight end (they are the
            // batching window), or `WAIT_BESIDE` after the last of them started.
            while batch.jobs.len() < PARALLEL_MIN {
                let ended = committing.ended.notified();
                let mut ended = std::pin::pin!(ended);
                ended.as_mut().enable();
                let Some(give_up_at) = committing.wait_until().filter(|at| *at > tokio::time::Instant::now()) else { break };
                tokio::select! {
                    () = &mut ended => {}
                    () = tokio::time::sleep_until(give_up_at) => break,
                    job = queue.recv() => match job {
                        Some(job) => batch.add(job, &mut held),
                        None => break,
                    },
                }
                batch.take_queued(queue, &mut held);
            }
        }
        // Counted before the queue is let go, so the next committer sees this commit.
        let in_flight = committing.begin();
        drop(queue);
        let batch = batch.jobs;
        let (writes, replies): (Vec<Write>, Vec<_>) = batch.into_iter().map(|j| (j.write, j.reply)).unzip();
        let writes = Arc::new(writes);
        let started = std::time::Instant::now();
        let applied = db.apply(&writes, 0..writes.len()).await;
        tracing::debug!(target: "wasmtx::store::commit", writes = writes.len(), micros = started.elapsed().as_micros() as u64, "group commit");
        crate::metrics::Metrics::global().record_commit(writes.len(), started.elapsed());
        let results = match applied {
            Ok(results) => results,
            Err(e) if writes.len() == 1 => vec![Err(e)],
            Err(e) => {
                tracing::warn!("group commit of {} writes failed ({e}); committing them one by one", writes.len());
                let mut one_by_one = Vec::with_capacity(writes.len());
                for i in 0..writes.len() {
                    one_by_one.push(db.apply(&writes, i..i + 1).await.and_then(|mut r| r.remove(0)));
                }
                one_by_one
            }
        };
        drop(in_flight);
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// One row of the journal: the events of one write, numbered from `seq` on. A write's events
/// share a row — a saga's step completion and the next step's start are one entry — which
/// spares the database a row and an index entry per event.
pub(crate) struct JournalEntry<'a> {
    pub(crate) tx_id: &'a str,
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) events: String,
}

impl<'a> JournalEntry<'a> {
    /// The entry of `events` (none if there are none) whose last is numbered `last_seq`.
    fn of(row: &'a TxRow, events: &[NewEvent], last_seq: i64) -> Option<Self> {
        if events.is_empty() {
            return None;
        }
        Some(JournalEntry {
            tx_id: &row.id,
            seq: last_seq - events.len() as i64 + 1,
            at: row.updated_at_ms,
            events: events_json(events),
        })
    }
}

/// A write's events as its journal entry stores them: one JSON array.
pub(crate) fn events_json(events: &[NewEvent]) -> String {
    serde_json::to_string(events).expect("events serialise")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A database whose first commit lasts until it is released; it logs each commit's size
    /// and how many others were in flight when it started.
    #[derive(Default)]
    struct Recorder {
        first: Mutex<Option<oneshot::Receiver<()>>>,
        in_flight: AtomicUsize,
        log: StdMutex<Vec<(usize, usize)>>,
    }

    #[async_trait::async_trait]
    impl BatchWriter for Recorder {
        async fn apply(&self, _all: &Arc<Vec<Write>>, range: Range<usize>) -> Result<Vec<Result<i64>>> {
            let beside = self.in_flight.fetch_add(1, Ordering::SeqCst);
            self.log.lock().unwrap().push((range.len(), beside));
            let first = self.first.lock().await.take();
            if let Some(released) = first {
                let _ = released.await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok(range.map(|_| Ok(0)).collect())
        }

        fn committers(&self) -> usize {
            2
        }
    }

    fn submit(commits: &GroupCommit) -> tokio::task::JoinHandle<Result<i64>> {
        let commits = commits.clone();
        let entry = AuditRow::new("t", "test", "wrote", &serde_json::json!({}));
        tokio::spawn(async move { commits.submit(Write::Audit(entry)).await })
    }

    /// Returns once every task is blocked: with the clock paused, a sleep ends only when
    /// nothing else can run (and, being shorter than `WAIT_BESIDE`, before that passes).
    async fn until_idle() {
        tokio::time::sleep(WAIT_BESIDE / 10).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_handful_of_writes_waits_for_the_commit_in_flight_and_a_full_batch_commits_beside_it() {
        for (queued, beside) in [(5, false), (PARALLEL_MIN + 8, true)] {
            let (release, first_commit) = oneshot::channel();
            let db = Arc::new(Recorder { first: Mutex::new(Some(first_commit)), ..Default::default() });
            let commits = GroupCommit::start(db.clone());
            let first = submit(&commits);
            until_idle().await;
            let rest: Vec<_> = (0..queued).map(|_| submit(&commits)).collect();
            until_idle().await;
            let while_first_commits = db.log.lock().unwrap().clone();
            let expected = if beside { vec![(1, 0), (queued, 1)] } else { vec![(1, 0)] };
            assert_eq!(while_first_commits, expected, "{queued} writes queued behind a commit in flight");
            release.send(()).unwrap();
            first.await.unwrap().unwrap();
            for write in rest {
                write.await.unwrap().unwrap();
            }
            // The handful went in one commit once the first had ended.
            let expected = if beside { vec![(1, 0), (queued, 1)] } else { vec![(1, 0), (queued, 0)] };
            assert_eq!(*db.log.lock().unwrap(), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_behind_a_commit_that_never_ends_commit_beside_it_after_a_while() {
        let (_never_released, first_commit) = oneshot::channel();
        let db = Arc::new(Recorder { first: Mutex::new(Some(first_commit)), ..Default::default() });
        let commits = GroupCommit::start(db.clone());
        let stuck_since = tokio::time::Instant::now();
        let _stuck = submit(&commits);
        until_idle().await;
        let rest: Vec<_> = (0..3).map(|_| submit(&commits)).collect();
        until_idle().await;
        assert_eq!(*db.log.lock().unwrap(), vec![(1, 0)], "a handful waits for the commit in flight at first");
        for write in rest {
            let committed = tokio::time::timeout(WAIT_BESIDE * 100, write).await;
            committed.expect("committed beside the stuck commit, not stalled behind it").unwrap().unwrap();
        }
        assert!(stuck_since.elapsed() >= WAIT_BESIDE, "after {:?}", stuck_since.elapsed());
        assert_eq!(*db.log.lock().unwrap(), vec![(1, 0), (3, 1)]);
        // The stuck commit is not waited for again.
        let later = tokio::time::Instant::now();
        submit(&commits).await.unwrap().unwrap();
        assert_eq!(later.elapsed(), std::time::Duration::ZERO);
    }
}
