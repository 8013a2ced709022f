//! Scores: the per-policy figures of a replay, as a table or JSON.

use serde::Serialize;

use super::sim::Outcome;

/// Pull-wait figures, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WaitStats {
    /// Sum over all pods.
    pub total: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
}

/// Lead-time figures, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LeadStats {
    /// Median time between a prefetched image landing and its first pod
    /// binding; `null` when nothing prefetched was used.
    pub p50: Option<f64>,
}

/// One policy's scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyReport {
    /// The policy.
    pub policy: String,
    /// Pods bound.
    pub pods: u64,
    /// How long pods waited for their images after binding.
    pub pull_wait_seconds: WaitStats,
    /// Share of (pod, image) needs found present at binding; `null` without
    /// any need.
    pub hit_ratio: Option<f64>,
    /// Bytes prefetch pulls moved.
    pub prefetched_bytes: u64,
    /// Prefetched bytes no pod on the node used.
    pub wasted_bytes: u64,
    /// Lead time of used prefetches.
    pub lead_time_seconds: LeadStats,
    /// (W_none − W_policy) / (W_none − W_oracle); `null` when the oracle
    /// saves nothing over `none`.
    pub oracle_capture: Option<f64>,
    /// Needs found present at binding.
    pub hits: u64,
    /// Needs whose prefetch was still in flight at binding.
    pub inflight: u64,
    /// Needs nobody had fetched.
    pub misses: u64,
    /// Bytes kubelet pulled itself.
    pub kubelet_bytes: u64,
    /// Orders the policy issued.
    pub orders: u64,
    /// Orders for images already on, or coming to, the node.
    pub orders_duplicate: u64,
    /// Orders for nodes that never came or had gone.
    pub orders_dropped: u64,
    /// Orders kept out of a node's plan by `--max-images-per-node`, or
    /// pushed out of it by better ones before their pull started.
    pub orders_capped: u64,
    /// Each pod's wait, for charts; not part of the JSON report.
    #[serde(skip)]
    pub detail: WaitDetail,
}

/// Every scored pod's pull wait: what the HTML report draws.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitDetail {
    /// The waits in seconds, sorted.
    pub sorted: Vec<f64>,
    /// (time the pod was bound, seconds it waited), in the simulator's
    /// order; empty unless the simulator kept bind times.
    pub by_bind: Vec<(f64, f64)>,
}

/// The scores of one replay.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The trace replayed.
    pub file: String,
    /// Events read.
    pub events: u64,
    /// Seconds from the first event to the last.
    pub span_seconds: f64,
    /// The first event's time; charts count from it.
    #[serde(skip)]
    pub first_ts: f64,
    /// Images pulled without a known size (they used `--default-image-bytes`).
    pub default_sized_images: u64,
    /// One entry per policy, in the order asked for.
    pub policies: Vec<PolicyReport>,
}

/// The `q` quantile of sorted `v` by nearest rank: the smallest value with
/// at least `q` of the values at or below it.
pub fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// `x`'s bits as an integer that orders as [`f64::total_cmp`] orders `x`
/// (the transform `total_cmp` itself applies); it is its own inverse.
fn total_order_key(x: i64) -> i64 {
    x ^ (((x >> 63) as u64) >> 1) as i64
}

fn sorted(v: Vec<f64>) -> Vec<f64> {
    // Values that `total_cmp` calls equal have the same bits, so an
    // unstable sort gives the same list, sooner; sorting the integer keys
    // spares `total_cmp`'s transform in every comparison. Both collects
    // reuse the list's memory.
    let mut keys: Vec<i64> = v
        .into_iter()
        .map(|x| total_order_key(x.to_bits() as i64))
        .collect();
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| f64::from_bits(total_order_key(k) as u64))
        .collect()
}

/// Turns each policy's outcome into its scores. `outcomes` carries whether
/// each was asked for; `none` and `oracle` are always there.
pub fn build(
    file: &str,
    events: u64,
    (first_ts, span_seconds): (f64, f64),
    default_sized_images: u64,
    outcomes: Vec<(String, bool, Outcome)>,
) -> Report {
    // Sorted before summing, so that equal sets of waits give equal totals.
    let outcomes = outcomes
        .into_iter()
        .map(|(n, shown, mut o)| {
            let by_bind = std::mem::take(&mut o.wait_binds)
                .into_iter()
                .zip(o.waits.iter().copied())
                .collect::<Vec<_>>();
            o.waits = sorted(std::mem::take(&mut o.waits));
            (n, shown, o, by_bind)
        })
        .collect::<Vec<_>>();
    let total_wait = |name: &str| {
        outcomes
            .iter()
            .find(|(n, _, _, _)| n == name)
            .map(|(_, _, o, _)| o.waits.iter().sum::<f64>())
    };
    let w_none = total_wait("none");
    let w_oracle = total_wait("oracle");
    let policies = outcomes
        .into_iter()
        .filter(|(_, shown, _, _)| *shown)
        .map(|(policy, _, o, by_bind)| {
            let waits = o.waits;
            // `+ 0.0` turns the empty sum's -0.0 into 0.0 for the report.
            let total: f64 = waits.iter().sum::<f64>() + 0.0;
            let needs = o.hits + o.inflight + o.misses;
            let oracle_capture = match (w_none, w_oracle) {
                (Some(n), Some(best)) if n - best > 1e-9 => Some((n - total) / (n - best)),
                _ => None,
            };
            PolicyReport {
                policy,
                pods: o.pods,
                pull_wait_seconds: WaitStats {
                    total,
                    p50: nearest_rank(&waits, 0.50).unwrap_or(0.0),
                    p95: nearest_rank(&waits, 0.95).unwrap_or(0.0),
                    p99: nearest_rank(&waits, 0.99).unwrap_or(0.0),
                },
                hit_ratio: (needs > 0).then(|| o.hits as f64 / needs as f64),
                prefetched_bytes: o.prefetched_bytes,
                wasted_bytes: o.wasted_bytes,
                lead_time_seconds: LeadStats {
                    p50: nearest_rank(&sorted(o.lead_times), 0.50),
                },
                oracle_capture,
                hits: o.hits,
                inflight: o.inflight,
                misses: o.misses,
                kubelet_bytes: o.kubelet_bytes,
                orders: o.orders,
                orders_duplicate: o.orders_duplicate,
                orders_dropped: o.orders_dropped,
                orders_capped: o.orders_capped,
                detail: WaitDetail {
                    sorted: waits,
                    by_bind,
                },
            }
        })
        .collect();
    Report {
        file: file.to_string(),
        events,
        span_seconds,
        first_ts,
        default_sized_images,
        policies,
    }
}

const GB: f64 = 1e9;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

/// Renders `report` as a fixed-width table.
pub fn table(report: &Report) -> String {
    let mut s = format!(
        "{}: {} events over {:.0} s; {} images without a known size\n",
        report.file, report.events, report.span_seconds, report.default_sized_images
    );
    s.push_str(&format!(
        "{:<11} {:>7} {:>9} {:>9} {:>9} {:>12} {:>6} {:>10} {:>9} {:>9} {:>8}\n",
        "policy",
        "pods",
        "wait p50",
        "wait p95",
        "wait p99",
        "wait total",
        "hit%",
        "prefetchGB",
        "wastedGB",
        "lead p50",
        "capture"
    ));
    for p in &report.policies {
        let w = &p.pull_wait_seconds;
        s.push_str(&format!(
            "{:<11} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>12.1} {:>6} {:>10.3} {:>9.3} {:>9} {:>8}\n",
            p.policy,
            p.pods,
            w.p50,
            w.p95,
            w.p99,
            w.total,
            opt(p.hit_ratio.map(|h| h * 100.0), 1),
            p.prefetched_bytes as f64 / GB,
            p.wasted_bytes as f64 / GB,
            opt(p.lead_time_seconds.p50, 1),
            opt(p.oracle_capture, 3),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The integer-keyed sort gives the list `total_cmp` gives, bit for bit,
    /// signed zeros, infinities, NaNs and subnormals included.
    #[test]
    fn sorted_orders_as_total_cmp() {
        let mut v = vec![
            3.5,
            -0.0,
            0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            f64::MIN_POSITIVE / 4.0,
            -f64::MIN_POSITIVE / 4.0,
            -2.0,
            1e300,
            -1e-300,
            0.1,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.push(f64::from_bits(x));
        }
        let mut want = v.clone();
        want.sort_by(f64::total_cmp);
        let got = sorted(v);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn nearest_rank_matches_the_definition() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(nearest_rank(&v, 0.5), Some(2.0));
        assert_eq!(nearest_rank(&v, 0.95), Some(4.0));
        assert_eq!(nearest_rank(&v, 0.0), Some(1.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
