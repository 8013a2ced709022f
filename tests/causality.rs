//! Causality: cutting a trace at time T changes no decision a causal policy
//! made before T, nor its reason or probability.

use pullahead::event::EventReader;
use pullahead::replay::{self, oracle::Foresight};

mod traces;

fn trace() -> Vec<u8> {
    traces::synth_trace(42, 6_000)
}

/// Decision lines of `policies` over the part of `trace` before `cut`.
fn decisions(trace: &[u8], cut: f64, policies: &[&str]) -> Vec<(f64, String)> {
    let events: Vec<_> = EventReader::new(trace, "t")
        .map(|e| e.unwrap())
        .filter(|e| e.ts < cut)
        .collect();
    let foresight = Foresight::from_events(events.iter().cloned().map(Ok)).unwrap();
    let opts = replay::Options {
        policies: policies.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    replay::replay(
        "t",
        events.into_iter().map(Ok),
        foresight,
        &opts,
        Some(&mut out),
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["ts"].as_f64().unwrap(), l.to_string())
        })
        .collect()
}

#[test]
fn causal_policies_decide_the_same_before_any_cut() {
    let trace = trace();
    let causal = ["none", "static", "popular", "predictive"];
    let full = decisions(&trace, f64::INFINITY, &causal);
    assert!(
        full.len() > 1_000,
        "the trace should make many decisions: {}",
        full.len()
    );
    let end = full.last().unwrap().0;
    for frac in [0.1, 0.33, 0.5, 0.9] {
        let cut = end * frac;
        let before: Vec<_> = full.iter().filter(|(ts, _)| *ts < cut).cloned().collect();
        let truncated = decisions(&trace, cut, &causal);
        assert!(!before.is_empty());
        assert_eq!(
            before, truncated,
            "decisions before {cut} changed when the trace was cut there"
        );
    }
}

#[test]
fn the_oracle_is_not_causal_and_the_check_notices() {
    // The same check fails for the oracle, so the test above can fail.
    let trace = trace();
    let full = decisions(&trace, f64::INFINITY, &["oracle"]);
    let cut = full.last().unwrap().0 * 0.5;
    let before: Vec<_> = full.iter().filter(|(ts, _)| *ts < cut).cloned().collect();
    assert_ne!(before, decisions(&trace, cut, &["oracle"]));
}
