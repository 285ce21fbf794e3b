//! Finding transactions: `GET /v1/search` over every kind of a tenant's transactions, by kind,
//! state, name, creation time and whether they need an operator's attention, newest first,
//! with cursors that stay stable while transactions are created.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Tenant;
use super::error::ApiError;
use super::{AppState, openapi};
use crate::store::{TxQuery, TxRow};
use crate::text::{self, MAX_ID_LEN};
use crate::txn::Record;

/// Items of one page unless the caller asks for another number; at most `MAX_LIMIT`.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Transactions one request reads at most while filtering for `needs_attention`; a page that
/// reaches it ends early, with a cursor to go on from.
const MAX_SCAN: usize = 2_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SearchQuery {
    /// `saga`, `2pc` or `transaction` (managed); all kinds without it.
    kind: Option<String>,
    state: Option<String>,
    /// The transaction's (or saga's) name, exactly.
    name: Option<String>,
    /// RFC 3339, or milliseconds since the epoch: created strictly after.
    created_after: Option<String>,
    /// RFC 3339, or milliseconds since the epoch: created strictly before.
    created_before: Option<String>,
    /// `true`: only those an operator should look at (failed; a compensation or 2PC decision
    /// still retried after 3 tries; leases that keep expiring).
    needs_attention: Option<bool>,
    /// 1-500, default 50.
    limit: Option<usize>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
}

/// A page of transactions, newest first. Each item is its kind's document with `kind`.
#[utoipa::path(get, path = "/v1/search", tag = "operations", params(SearchQuery),
    responses(
        (status = 200, description = "A page; `next_cursor` unless it is the last", body = openapi::SearchPage),
        (status = 400, description = "A bad parameter or cursor", body = openapi::ErrorBody),
        (status = 401, description = "Missing or wrong key", body = openapi::ErrorBody),
        (status = 500, description = "The server's own fault", body = openapi::ErrorBody),
        (status = 503, description = "The store does not answer", body = openapi::ErrorBody)))]
pub(super) async fn search(
    State(s): State<AppState>,
    Tenant(tenant, _actor): Tenant,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| bad(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(format!("limit must be from 1 to {MAX_LIMIT}")));
    }
    if let Some(kind) = &q.kind
        && !crate::store::KINDS.contains(&kind.as_str())
    {
        return Err(bad(format!("unknown kind {kind:?}: saga, 2pc or transaction")));
    }
    // Text reaches the store as it came: none may carry what a store cannot hold (NUL).
    if let Some(state) = &q.state {
        text::check("state", state, 64).map_err(bad)?;
    }
    if let Some(name) = &q.name {
        text::check("name", name, 256).map_err(bad)?;
    }
    let attention = q.needs_attention.unwrap_or(false);
    let mut query = TxQuery {
        kind: q.kind,
        state: q.state,
        name: q.name,
        created_after_ms: q.created_after.as_deref().map(instant).transpose()?,
        created_before_ms: q.created_before.as_deref().map(instant).transpose()?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let mut items = Vec::new();
    let (mut scanned, mut last, mut more) = (0, None, false);
    loop {
        // One more than needed tells whether another page follows.
        let batch = if attention { 200 } else { limit - items.len() + 1 };
        let rows = s.inner.store.search_tx(&tenant, &query, batch as i64).await?;
        let full = rows.len() == batch;
        for row in rows {
            if items.len() == limit {
                more = true;
                break;
            }
            scanned += 1;
            last = Some((row.created_at_ms, row.id.clone()));
            // Alert deliveries are stored beside transactions; they are not transactions.
            if !crate::store::KINDS.contains(&row.kind.as_str()) {
                continue;
            }
            let doc = document(&s, &tenant, row).await?;
            if !attention || doc["needs_attention"] == true {
                items.push(doc);
            }
        }
        if more || !full {
            break;
        }
        if scanned >= MAX_SCAN {
            more = true;
            break;
        }
        query.after = last.clone();
    }
    let mut page = json!({ "items": items });
    if more && let Some(cursor) = last {
        page["next_cursor"] = json!(encode_cursor(&cursor));
    }
    Ok(Json(page))
}

/// A stored transaction as its kind's document, with its kind.
pub(super) async fn document(s: &AppState, tenant: &str, row: TxRow) -> Result<Value, ApiError> {
    let kind = row.kind.clone();
    let mut doc = match kind.as_str() {
        "saga" => Record::from_row(row).map(|r: crate::saga::Saga| r.document())?,
        "2pc" => Record::from_row(row).map(|r: crate::tpc::Tpc| r.document())?,
        _ => {
            let m: crate::manager::Managed = Record::from_row(row)?;
            s.inner.manager.document(tenant, &m).await?
        }
    };
    doc["kind"] = json!(kind);
    Ok(doc)
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// RFC 3339 or milliseconds since the epoch.
fn instant(text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad(format!("{text:?} is neither an RFC 3339 timestamp nor milliseconds since the epoch")))
}

/// A cursor is opaque to callers: the position's creation time and id, hex-encoded.
fn encode_cursor((at, id): &(i64, String)) -> String {
    format!("{at}:{id}").bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    let invalid = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "the cursor is not one this server gave out");
    if cursor.len() % 2 != 0 || cursor.len() > 512 {
        return Err(invalid());
    }
    // Pairs of bytes, not of characters: a cursor with a multi-byte character is refused, not
    // sliced inside it.
    let hex = |pair: &[u8]| match pair {
        [hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok(),
        _ => None,
    };
    let bytes: Vec<u8> = cursor.as_bytes().chunks(2).map(hex).collect::<Option<_>>().ok_or_else(invalid)?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (at, id) = text.split_once(':').ok_or_else(invalid)?;
    crate::text::check("id", id, MAX_ID_LEN).map_err(|_| invalid())?;
    Ok((at.parse().map_err(|_| invalid())?, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let position = (1_764_590_000_123, "saga-0193".to_string());
        assert_eq!(decode_cursor(&encode_cursor(&position)).unwrap(), position);
        let nul = encode_cursor(&(1, "a\0b".to_string()));
        // "aéa" is 4 bytes with the "é" across the second pair.
        for garbage in ["zz", "abc", "", "3a", &"00".repeat(300), &nul, "aéa", "a\u{e9}a0", "+a"] {
            assert!(decode_cursor(garbage).is_err(), "{garbage}");
        }
        assert_eq!(instant("2026-12-01T10:00:00Z").unwrap(), 1_796_119_200_000);
        assert_eq!(instant("1796119200000").unwrap(), 1_796_119_200_000);
        assert!(instant("yesterday").is_err());
    }
}
