//! Alerts: per-tenant webhooks for what needs an operator. A tenant sets
//! `PUT /v1/settings/alerts {url, events, secret}`; when a journal announces one of the
//! events, a delivery is stored (kind `alert`, before anything is sent) and POSTed to the
//! URL through the tenant's outbound policy, signed (`X-Wasmtx-Signature: sha256=<HMAC-SHA256
//! of the body with the secret>`) and carrying its id (`X-Wasmtx-Delivery`, the same on every
//! retry, so receivers can drop repeats). Until a 2xx it is retried with backoff (at most
//! `MAX_ATTEMPTS` tries, then `failed`); a delivery whose coordinator died is claimed by
//! another after its lease, like any transaction.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{Change, Progress};
use crate::outbound::NoAnswer;
use crate::participant::Invoker;
use std::sync::Arc;

use crate::store::{Lease, NewEvent, Store, StoreError};
use crate::txn::{Clock, Record, Transition};

/// The events a tenant may subscribe to.
pub const EVENTS: &[&str] = &["failed", "compensation_failed", "decision_unacknowledged", "policy_fallback"];
/// The store kind of deliveries.
pub const KIND: &str = "alert";
/// Tries of one delivery before it is given up (`failed`).
pub const MAX_ATTEMPTS: u32 = 10;
const SETTING: &str = "alerts";
const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 64 << 10;

/// A tenant's webhook (`PUT /v1/settings/alerts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Where deliveries are POSTed (the tenant's outbound policy applies).
    pub url: String,
    /// Any of `failed`, `compensation_failed`, `decision_unacknowledged`, `policy_fallback`.
    pub events: Vec<String>,
    /// Signs each body (HMAC-SHA256); 16-256 characters.
    pub secret: String,
}

impl AlertSettings {
    pub fn validate(&self) -> Result<(), String> {
        crate::txn::spec::validate_target("alerts", &None, &Some(self.url.clone()))?;
        if let Some(e) = self.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
            return Err(format!("unknown alert event {e:?}: one of {}", EVENTS.join(", ")));
        }
        if self.events.is_empty() || self.events.len() > EVENTS.len() {
            return Err("events must name at least one event".into());
        }
        if !(16..=256).contains(&self.secret.len()) {
            return Err("secret must be 16 to 256 characters".into());
        }
        Ok(())
    }
}

/// What a journal's announcement is as an alert event, if it is one.
pub fn event_of(p: &Progress) -> Option<&'static str> {
    match p.event.kind.as_str() {
        "compensation_failed" => Some("compensation_failed"),
        // The 2PC engine's alert: a decision some participant never acknowledged.
        "alert" => Some("decision_unacknowledged"),
        "policy_fallback" => Some("policy_fallback"),
        _ if p.terminal && p.state == "failed" => Some("failed"),
        _ => None,
    }
}

/// Where a delivery is: sent until a 2xx (`delivered`) or until it runs out of tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

crate::txn::tx_state!(DeliveryState);

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryState> {
        [DeliveryState::Pending, DeliveryState::Delivered, DeliveryState::Failed].into_iter().find(|d| d.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != DeliveryState::Pending
    }
}

impl Transition for DeliveryState {
    fn can_become(self, to: DeliveryState) -> bool {
        use DeliveryState::*;
        matches!((self, to), (Pending, Pending) | (Pending, Delivered) | (Pending, Failed))
    }
}

type Stored = Record<DeliveryState, Delivery>;

/// A stored delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    url: String,
    event: String,
    payload: Value,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// HMAC-SHA256 of `body` with `secret`, hex.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[derive(Clone)]
pub struct Alerts {
    store: Store,
    invoker: Invoker,
    node_id: String,
    lease: Duration,
    clock: Arc<dyn Clock>,
}

impl Alerts {
    pub fn new(store: Store, invoker: Invoker, node_id: String, lease: Duration) -> Alerts {
        Alerts { store, invoker, node_id, lease, clock: Arc::new(crate::txn::SystemClock) }
    }

    pub async fn settings(&self, tenant: &str) -> Result<Option<AlertSettings>, StoreError> {
        let text = self.store.setting(tenant, SETTING).await?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub async fn set_settings(&self, tenant: &str, settings: &AlertSettings) -> Result<(), StoreError> {
        self.store.put_setting(tenant, SETTING, &serde_json::to_string(settings).expect("settings serialise")).await
    }

    /// Stores and sends a delivery of `p`, if its tenant subscribed to its event.
    pub async fn raise(&self, p: &Progress) -> Result<(), StoreError> {
        let Some(event) = event_of(p) else { return Ok(()) };
        let Some(settings) = self.settings(&p.tenant).await? else { return Ok(()) };
        if !settings.events.iter().any(|e| e == event) {
            return Ok(());
        }
        // A failure's delivery is named after the write that failed the transaction, so the
        // census raising it again after a crash (see `reconcile`) finds it raised.
        let id = match event {
            "failed" => format!("alert-failed-{}-r{}", p.tx_id, p.rev),
            _ => format!("alert-{}", self.clock.new_id()),
        };
        let now = self.clock.now_ms();
        let payload = json!({
            "delivery_id": id, "event": event, "transaction_id": p.tx_id, "state": p.state,
            "detail": {"kind": p.event.kind, "step": p.event.step, "detail": p.event.detail},
            "at": crate::txn::rfc3339(now),
        });
        let delivery = Delivery { url: settings.url, event: event.into(), payload, attempts: 0, last_error: None };
        let mut rec = Stored::create(&p.tenant, KIND, id, event, DeliveryState::Pending, delivery, now);
        rec.row.doc = serde_json::to_string(&rec.doc).expect("deliveries serialise");
        (rec.row.owner, rec.row.lease_until_ms) = (Some(self.node_id.clone()), now + self.lease.as_millis() as i64);
        // Durable before anything is sent: a crash from here on is retried by a claim.
        match self.store.insert_tx(&rec.row, &[NewEvent::new("alert_raised", None, json!({"event": event, "of": p.tx_id}))], None).await {
            Err(StoreError::Conflict { .. }) => return Ok(()),
            inserted => inserted?,
        }
        self.deliver(rec).await;
        Ok(())
    }

    /// Raises the `failed` alert of transactions that failed lately (`failed`, written since
    /// `since_ms`) if it was not raised: the process that failed them may have died between
    /// that write and storing the delivery. Raised ones are found by their id.
    pub async fn reconcile(&self, failed: &[crate::store::TxRow], since_ms: i64) -> Result<(), StoreError> {
        for row in failed.iter().filter(|r| r.updated_at_ms >= since_ms) {
            let id = format!("alert-failed-{}-r{}", row.id, row.rev);
            if self.store.get_tx(&row.tenant, KIND, &id).await?.is_some() {
                continue;
            }
            let p = Progress::new(Change {
                tenant: row.tenant.clone(),
                tx_id: row.id.clone(),
                state: "failed",
                terminal: true,
                created_at_ms: row.created_at_ms,
                rev: row.rev,
                event: NewEvent::new("failed", None, json!({"raised_by": "census"})),
            });
            self.raise(&p).await?;
        }
        Ok(())
    }

    /// Claims deliveries whose retry is due (or whose coordinator died) and sends them.
    pub async fn recover_expired(&self, own: bool) -> usize {
        let now = self.clock.now_ms();
        let lease = Lease { owner: self.node_id.clone(), until_ms: now + self.lease.as_millis() as i64 };
        let claimed = match self.store.claim_expired(KIND, &["pending"], &lease, now, 64, own).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("claiming alert deliveries failed: {e}");
                return 0;
            }
        };
        let n = claimed.len();
        for row in claimed {
            match Stored::from_row(row) {
                Ok(rec) => {
                    let me = self.clone();
                    tokio::spawn(async move { me.deliver(rec).await });
                }
                Err(e) => tracing::warn!("corrupt alert delivery left as it is: {e}"),
            }
        }
        n
    }

    /// One try of a delivery; records the outcome (delivered, retry later, or given up).
    async fn deliver(&self, mut rec: Stored) {
        let secret = match self.settings(&rec.row.tenant).await {
            Ok(Some(s)) => s.secret,
            _ => String::new(),
        };
        let delivery = &rec.doc;
        let body = serde_json::to_vec(&delivery.payload).expect("payloads serialise");
        let signed = format!("sha256={}", signature(&secret, &body));
        let headers = [("x-wasmtx-signature", signed.as_str()), ("x-wasmtx-delivery", rec.row.id.as_str()), ("x-wasmtx-event", delivery.event.as_str())];
        let answer = self.invoker.post_json_as(&rec.row.tenant, &delivery.url, &headers, &delivery.payload, TIMEOUT, MAX_ANSWER).await;
        let (next, event) = rec.doc.settle(answer);
        if let Err(e) = rec.state.become_(next) {
            tracing::warn!(delivery = %rec.row.id, "alert delivery not recorded: {e}");
            return;
        }
        let now = self.clock.now_ms();
        rec.row.state = next.as_str().into();
        rec.row.ended = next.is_terminal();
        rec.row.doc = serde_json::to_string(&rec.doc).expect("deliveries serialise");
        rec.row.updated_at_ms = now;
        // The next try is due when the lease runs out: 1 s, 2 s, 4 s, … at most 10 minutes.
        let backoff = 1000i64 << rec.doc.attempts.min(10).saturating_sub(1);
        (rec.row.owner, rec.row.lease_until_ms) = match rec.row.ended {
            true => (None, 0),
            false => (Some(self.node_id.clone()), now + backoff.min(600_000)),
        };
        let kind = if rec.row.ended { format!("alert_{}", next.as_str()) } else { "alert_retry".into() };
        if let Err(e) = self.store.save_tx(&rec.row, &[NewEvent::new(&kind, None, event)], None).await {
            tracing::warn!(delivery = %rec.row.id, "recording an alert delivery failed: {e}");
        }
    }
}

impl Delivery {
    /// Counts a try and judges its answer: delivered on a 2xx, else another try later, or
    /// given up after `MAX_ATTEMPTS`. Returns the next state and the journal entry's detail.
    fn settle(&mut self, answer: Result<(u16, String), NoAnswer>) -> (DeliveryState, Value) {
        self.attempts += 1;
        match answer {
            Ok((status, _)) if (200..300).contains(&status) => (DeliveryState::Delivered, json!({"attempt": self.attempts, "status": status})),
            outcome => {
                let why = match outcome {
                    Ok((status, _)) => format!("answered {status}"),
                    Err(NoAnswer::Refused(e) | NoAnswer::Unclear(e)) => e,
                };
                self.last_error = Some(why.clone());
                let next = if self.attempts >= MAX_ATTEMPTS { DeliveryState::Failed } else { DeliveryState::Pending };
                (next, json!({"attempt": self.attempts, "error": why}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_move_only_as_the_table_says() {
        use DeliveryState::*;
        crate::txn::transition::assert_table(&[Pending, Delivered, Failed], &[(Pending, Pending), (Pending, Delivered), (Pending, Failed)]);
    }

    #[test]
    fn settings_are_checked_and_events_recognised() {
        let good = AlertSettings { url: "https://ops.example.com/hook".into(), events: vec!["failed".into()], secret: "0123456789abcdef".into() };
        assert!(good.validate().is_ok());
        for bad in [
            AlertSettings { url: "ftp://x".into(), ..good.clone() },
            AlertSettings { events: vec!["exploded".into()], ..good.clone() },
            AlertSettings { events: vec![], ..good.clone() },
            AlertSettings { secret: "short".into(), ..good.clone() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let p = |kind: &str, state: &'static str, terminal: bool| Progress::new(Change {
            tenant: "t".into(), tx_id: "saga-1".into(), state, terminal, created_at_ms: 0, rev: 1, event: NewEvent::new(kind, None, json!({})),
        });
        assert_eq!(event_of(&p("saga_failed", "failed", true)), Some("failed"));
        assert_eq!(event_of(&p("compensation_failed", "compensating", false)), Some("compensation_failed"));
        assert_eq!(event_of(&p("alert", "failed", false)), Some("decision_unacknowledged"));
        assert_eq!(event_of(&p("step_completed", "running", false)), None);
        let mut d = Delivery { url: "https://ops.example.com/hook".into(), event: "failed".into(), payload: json!({}), attempts: 0, last_error: None };
        assert_eq!(d.settle(Err(NoAnswer::Unclear("reset".into()))).0, DeliveryState::Pending);
        assert_eq!(d.settle(Ok((500, String::new()))).0, DeliveryState::Pending);
        assert_eq!(d.last_error.as_deref(), Some("answered 500"));
        assert_eq!(d.settle(Ok((204, String::new()))).0, DeliveryState::Delivered);
        d.attempts = MAX_ATTEMPTS - 1;
        assert_eq!(d.settle(Ok((404, String::new()))).0, DeliveryState::Failed, "the last try given up");
        // RFC 4231, test case 2.
        assert_eq!(signature("Jefe", b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
