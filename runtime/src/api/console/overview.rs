//! The overview: what needs an operator first, then the tenant's transactions by kind and
//! state, then throughput and latency of the last fifteen minutes.

use std::collections::BTreeMap;

use axum::extract::State;
use maud::html;

use super::page::{self, Nav, Problem};
use super::session::Operator;
use super::{Console, figures, transactions};
use crate::store::{KINDS, TxQuery};

/// Transactions of each kind the counts read at most (the newest).
const COUNTED: i64 = 500;
/// Transactions the needs-attention list shows at most.
const ATTENTION_SHOWN: usize = 20;

pub async fn page(State(console): State<Console>, Operator { tenant, viewer }: Operator) -> Result<maud::Markup, Problem> {
    let app = &console.app;
    let attention = transactions::search(app, &tenant, &format!("needs_attention=true&limit={ATTENTION_SHOWN}")).await?;
    let attention = attention["items"].as_array().cloned().unwrap_or_default();
    let mut counts: Vec<(&str, BTreeMap<String, i64>, bool)> = Vec::new();
    for kind in KINDS {
        let query = TxQuery { kind: Some(kind.to_string()), ..TxQuery::default() };
        let rows = app.inner.store.search_tx(&tenant, &query, COUNTED).await?;
        let capped = rows.len() as i64 == COUNTED;
        let mut by_state = BTreeMap::new();
        for row in rows {
            *by_state.entry(row.state).or_default() += 1;
        }
        counts.push((kind, by_state, capped));
    }
    let series = console.figures.series(&tenant, crate::store::now_ms());
    let ended: Vec<u64> = series.iter().map(|b| u64::from(b.ended)).collect();
    let mean: Vec<u64> = series.iter().map(|b| b.mean_ms()).collect();
    let worst: Vec<u64> = series.iter().map(|b| b.max_ms).collect();
    let body = html! {
        h1 { "Overview" }
        section aria-labelledby="attention-heading" {
            h2 #attention-heading { "Needs attention" }
            @if attention.is_empty() {
                p.quiet #attention-empty { "Nothing needs an operator now." }
            } @else {
                (transactions::table("attention", "Transactions that need an operator", &attention))
                @if attention.len() == ATTENTION_SHOWN {
                    p { a href="/ui/transactions?needs_attention=true" { "All that need attention" } }
                }
            }
        }
        section aria-labelledby="counts-heading" {
            h2 #counts-heading { "By kind and state" }
            div.cards {
                @for (kind, by_state, capped) in &counts {
                    table.counts {
                        caption { (page::kind_name(kind)) @if *capped { " (the newest " (COUNTED) ")" } }
                        thead { tr { th scope="col" { "State" } th scope="col" { "Count" } } }
                        tbody {
                            @if by_state.is_empty() {
                                tr { td colspan="2" { "none" } }
                            }
                            @for (state, n) in by_state {
                                tr {
                                    td { a href={ "/ui/transactions?kind=" (page::encode(kind)) "&state=" (page::encode(state)) } { (page::state(state)) } }
                                    td.number { (n) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="figures-heading" {
            h2 #figures-heading { "The last 15 minutes" }
            p.hint { "Transactions of this tenant that ended on this coordinator, per 10 seconds; latency is from creation to the end." }
            div.cards {
                (figures::chart("throughput", "Transactions ended", &ended, "ended", true))
                (figures::chart("latency-mean", "Mean latency", &mean, "ms", false))
                (figures::chart("latency-max", "Slowest", &worst, "ms", false))
            }
        }
    };
    Ok(page::refreshing("Overview", &viewer, Nav::Overview, 10, body))
}
