//! The figures the overview charts: per tenant, how many transactions ended on this
//! coordinator in each ten seconds of the last fifteen minutes, and how long they took from
//! creation to their end. Taken from the engines' own announcements as they happen, kept in a
//! small ring per tenant (bounded in buckets and in tenants), and drawn as SVG on the server.
//! Per tenant because `/metrics` is process-wide: one tenant must not see another's activity.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use maud::{Markup, html};

use crate::api::AppState;
use crate::txn::recovery::AbortOnDrop;

/// Width of one bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets kept: fifteen minutes.
pub const BUCKETS: usize = 90;
/// Tenants with a ring; the one quiet the longest makes room for a new one.
const MAX_TENANTS: usize = 1_000;

/// One bucket's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    /// The bucket's number (its start / `BUCKET_MS`).
    pub index: i64,
    pub ended: u32,
    pub total_ms: u64,
    pub max_ms: u64,
}

impl Bucket {
    pub fn mean_ms(&self) -> u64 {
        if self.ended == 0 { 0 } else { self.total_ms / u64::from(self.ended) }
    }
}

/// The rings of every tenant seen, and the task that fills them.
pub struct Figures {
    rings: Mutex<HashMap<String, VecDeque<Bucket>>>,
    _listener: Mutex<Option<AbortOnDrop>>,
}

impl Figures {
    /// Figures filled from `app`'s engines from now on.
    pub fn listen(app: &AppState) -> Arc<Figures> {
        let figures = Arc::new(Figures { rings: Mutex::default(), _listener: Mutex::new(None) });
        // The engines announce on one channel: subscribing to one hears all three.
        let mut announced = app.inner.sagas.subscribe();
        let weak = Arc::downgrade(&figures);
        let task = tokio::spawn(async move {
            while let Some(p) = crate::txn::journal::next_announced(&mut announced).await {
                let Some(figures) = weak.upgrade() else { return };
                if p.terminal {
                    let now = crate::store::now_ms();
                    figures.record(&p.tenant, now, (now - p.created_at_ms).max(0) as u64);
                }
            }
        });
        *figures._listener.lock().unwrap() = Some(AbortOnDrop(task));
        figures
    }

    /// A transaction of `tenant` ended at `now_ms`, `took_ms` after it was created.
    pub fn record(&self, tenant: &str, now_ms: i64, took_ms: u64) {
        let index = now_ms.div_euclid(BUCKET_MS);
        let mut rings = self.rings.lock().unwrap();
        if !rings.contains_key(tenant) && rings.len() >= MAX_TENANTS {
            let quietest = rings.iter().min_by_key(|(_, r)| r.back().map_or(i64::MIN, |b| b.index)).map(|(t, _)| t.clone());
            if let Some(quietest) = quietest {
                rings.remove(&quietest);
            }
        }
        let ring = rings.entry(tenant.to_string()).or_default();
        if ring.back().is_none_or(|b| b.index < index) {
            ring.push_back(Bucket { index, ..Bucket::default() });
        }
        // An announcement late by a bucket (a slow receiver) still counts where it belongs.
        if let Some(bucket) = ring.iter_mut().rev().find(|b| b.index == index) {
            bucket.ended += 1;
            bucket.total_ms += took_ms;
            bucket.max_ms = bucket.max_ms.max(took_ms);
        }
        while ring.front().is_some_and(|b| b.index <= index - BUCKETS as i64) {
            ring.pop_front();
        }
    }

    /// The last `BUCKETS` buckets of `tenant` up to `now_ms`, oldest first, empty ones included.
    pub fn series(&self, tenant: &str, now_ms: i64) -> Vec<Bucket> {
        let last = now_ms.div_euclid(BUCKET_MS);
        let rings = self.rings.lock().unwrap();
        let ring = rings.get(tenant);
        (last - BUCKETS as i64 + 1..=last)
            .map(|index| ring.and_then(|r| r.iter().find(|b| b.index == index)).copied().unwrap_or(Bucket { index, ..Bucket::default() }))
            .collect()
    }
}

/// A bar chart of `values` (one per bucket, oldest first), titled and described for screen
/// readers; the largest value and the unit label the axis. `summed`: the caption says the
/// total (a count adds up; a latency does not).
pub fn chart(id: &str, title: &str, values: &[u64], unit: &str, summed: bool) -> Markup {
    const W: f64 = 360.0;
    const H: f64 = 80.0;
    let max = values.iter().copied().max().unwrap_or(0);
    let total: u64 = values.iter().sum();
    let width = W / values.len().max(1) as f64;
    let summary = if max == 0 { format!("{title}: nothing in the last 15 minutes") } else { format!("{title}: at most {max} {unit} per 10 seconds in the last 15 minutes") };
    let title_id = format!("{id}-title");
    html! {
        figure.chart {
            svg id=(id) viewBox={ "0 0 " (W) " " (H + 14.0) } role="img" aria-labelledby=(title_id) preserveAspectRatio="none" {
                title id=(title_id) { (summary) }
                line.axis x1="0" y1=(H) x2=(W) y2=(H) {}
                @for (i, v) in values.iter().enumerate() {
                    @if *v > 0 {
                        @let h = (*v as f64 / max as f64 * (H - 4.0)).max(1.0);
                        rect.bar x=(format!("{:.1}", i as f64 * width + 0.5)) y=(format!("{:.1}", H - h)) width=(format!("{:.1}", (width - 1.0).max(0.5))) height=(format!("{h:.1}")) {
                            title { (v) " " (unit) }
                        }
                    }
                }
                text.label x="2" y="10" { (max) " " (unit) }
                text.label x="2" y=(H + 12.0) { "−15 min" }
                text.label.end x=(W - 2.0) y=(H + 12.0) { "now" }
            }
            figcaption { (title) @if summed { " " span.total { "(" (total) " in all)" } } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> Figures {
        Figures { rings: Mutex::default(), _listener: Mutex::new(None) }
    }

    #[test]
    fn ends_fall_in_ten_second_buckets_and_old_ones_leave_the_ring() {
        let f = figures();
        let t0 = 1_800_000_000_000;
        f.record("acme", t0, 40);
        f.record("acme", t0 + 1_000, 60);
        f.record("acme", t0 + BUCKET_MS, 10);
        f.record("other", t0, 5);
        let series = f.series("acme", t0 + BUCKET_MS);
        assert_eq!(series.len(), BUCKETS);
        let (before, last) = (series[BUCKETS - 2], series[BUCKETS - 1]);
        assert_eq!((before.ended, before.mean_ms(), before.max_ms), (2, 50, 60));
        assert_eq!((last.ended, last.max_ms), (1, 10));
        assert_eq!(f.series("acme", t0 + BUCKET_MS * BUCKETS as i64 + BUCKET_MS).iter().map(|b| b.ended).sum::<u32>(), 0, "fifteen minutes later nothing is left");
        f.record("acme", t0 + BUCKET_MS * 200, 1);
        assert_eq!(f.rings.lock().unwrap()["acme"].len(), 1, "the ring keeps only its window");
        assert_eq!(f.series("nobody", t0).iter().map(|b| b.ended).sum::<u32>(), 0);
    }

    #[test]
    fn the_rings_are_bounded_in_tenants() {
        let f = figures();
        for t in 0..MAX_TENANTS + 10 {
            f.record(&format!("t{t}"), 1_000_000 + t as i64 * BUCKET_MS, 1);
        }
        let rings = f.rings.lock().unwrap();
        assert_eq!(rings.len(), MAX_TENANTS);
        assert!(!rings.contains_key("t0") && rings.contains_key(&format!("t{}", MAX_TENANTS + 9)), "the quietest went");
    }

    #[test]
    fn a_chart_has_one_bar_per_busy_bucket_and_says_what_it_shows() {
        let svg = chart("c", "Ended", &[0, 3, 0, 6], "ended", true).into_string();
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("at most 6 ended per 10 seconds"), "{svg}");
        assert!(!svg.contains("style="), "no inline style: the CSP forbids it");
    }
}
