//! The bundled hand-written traces, replayed through the real binary; every
//! figure is worked out by hand in `replay-data/README.md`.

use std::process::Command;

use serde_json::Value;

fn replay_json(file: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--json", file])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run pullahead");
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn policy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("no policy {name}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
}

#[test]
fn karpenter_small_matches_the_hand_worked_figures() {
    let r = replay_json("replay-data/karpenter-small.jsonl");
    assert_eq!(r["file"], "replay-data/karpenter-small.jsonl");
    assert_eq!(r["events"], 21);
    let none = policy(&r, "none");
    // web-1 binds at 50 to an empty node: web:1 0.5 + 2.0 s, then sidecar:1 0.5 + 1.0 s.
    close(f(&none["pull_wait_seconds"]["p95"]), 4.0);
    close(f(&none["pull_wait_seconds"]["total"]), 8.0);
    close(f(&none["oracle_capture"]), 0.0);
    let oracle = policy(&r, "oracle");
    // Node registered at 40, both images land by 43.5: web-1 at 50 waits nothing.
    close(f(&oracle["pull_wait_seconds"]["p50"]), 0.0);
    // web-3 binds 1 s after its node registers: web:1 lands at 113.5.
    close(f(&oracle["pull_wait_seconds"]["total"]), 2.5);
    close(f(&oracle["oracle_capture"]), 1.0);
    close(f(&oracle["lead_time_seconds"]["p50"]), 6.5);
    assert_eq!(oracle["wasted_bytes"], 0);
    assert_eq!(oracle["prefetched_bytes"], 750_000_000u64);
    let st = policy(&r, "static");
    // batch:1 (500 MB) is pulled onto both new nodes and never used.
    assert_eq!(st["wasted_bytes"], 1_000_000_000u64);
    assert_eq!(st["prefetched_bytes"], 1_750_000_000u64);
    // Three pulls share the node: web:1 lands at 115.5, 4.5 s after web-3 binds.
    close(f(&st["pull_wait_seconds"]["total"]), 4.5);
    close(f(&st["oracle_capture"]), 3.5 / 5.5);
    let pop = policy(&r, "popular");
    close(f(&pop["pull_wait_seconds"]["total"]), 6.5);
    close(f(&pop["oracle_capture"]), 1.5 / 5.5);
    close(f(&none["hit_ratio"]), 2.0 / 6.0);
    close(f(&oracle["hit_ratio"]), 4.0 / 6.0);
}

#[test]
fn ca_small_matches_the_hand_worked_figures() {
    let r = replay_json("replay-data/ca-small.jsonl");
    let none = policy(&r, "none");
    // agent 0.7 s; app 0.5 + 2.4 s; tool waits for app, then 0.5 + 0.4 s (base layer shared).
    close(f(&none["pull_wait_seconds"]["p50"]), 2.9);
    close(f(&none["pull_wait_seconds"]["p99"]), 3.8);
    close(f(&none["pull_wait_seconds"]["total"]), 7.4);
    let oracle = policy(&r, "oracle");
    // The DaemonSet pod binds 1 s after registration and its image lands at 61.1.
    close(f(&oracle["pull_wait_seconds"]["total"]), 0.1);
    close(f(&oracle["oracle_capture"]), 1.0);
    // base is fetched once: 25 + 300 + 50 MB.
    assert_eq!(oracle["prefetched_bytes"], 375_000_000u64);
    let st = policy(&r, "static");
    assert_eq!(st["wasted_bytes"], 400_000_000u64);
    close(f(&st["pull_wait_seconds"]["total"]), 0.3);
    close(f(&st["lead_time_seconds"]["p50"]), 4.1);
    close(f(&st["oracle_capture"]), 7.1 / 7.3);
    assert!(f(&st["wasted_bytes"]) > f(&oracle["wasted_bytes"]));
    close(f(&policy(&r, "popular")["oracle_capture"]), 0.0);
}

#[test]
fn decisions_file_lists_every_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--policy", "static,oracle", "--decisions"])
        .arg(&out)
        .arg("replay-data/ca-small.jsonl")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // static orders 4 images and the oracle 3, all at the registration at ts 60.
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0]["ts"], 60.0);
    assert_eq!(lines[0]["policy"], "static");
    assert_eq!(lines[0]["node"], "ng-1-b");
    assert_eq!(lines[0]["image"], "registry.example/infra/agent:1");
    assert_eq!(lines[0]["priority"], 4);
    assert_eq!(lines[0]["reason"], "static");
    assert_eq!(lines[6]["policy"], "oracle");
    assert_eq!(lines[6]["reason"], "oracle");
}
