//! `run --dry-run --events` and `replay` plan through one path: for every
//! policy `run` offers, on every bundled trace, both write the same orders,
//! line for line; and both commands take the same policy settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");
const POLICIES: [&str; 5] = ["nominated", "popular", "static", "predictive", "none"];
fn bundled() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("replay-data");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "bundled traces: {files:?}");
    files
}

fn pullahead(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("PULLAHEAD_CONFIG")
        .env_remove("PULLAHEAD_POLICY")
        .env_remove("PULLAHEAD_MODEL")
        .env_remove("KUBECONFIG")
        .env("RUST_LOG", "error");
    c
}

fn ok(mut c: Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn run_and_replay_order_the_same_for_every_policy_on_every_bundled_trace() {
    let dir = tempfile::tempdir().unwrap();
    let mut totals: BTreeMap<&str, usize> = BTreeMap::new();
    for file in bundled() {
        // Whole files: the debug binary plans all of them, six times each,
        // in about ten seconds.
        let trace_arg = file.to_str().unwrap();
        let replayed = dir.path().join(format!(
            "replay-{}",
            file.file_name().unwrap().to_str().unwrap()
        ));
        ok(pullahead(&[
            "replay",
            trace_arg,
            "--json",
            "--policy",
            &POLICIES.join(","),
            "--decisions",
            replayed.to_str().unwrap(),
        ]));
        let mut by_policy: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in read_lines(&replayed) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let p = v["policy"].as_str().unwrap().to_string();
            by_policy.entry(p).or_default().push(line);
        }
        for policy in POLICIES {
            // A fresh name each time: `run --decisions` appends.
            let stem = file.file_stem().unwrap().to_str().unwrap();
            let ran = dir.path().join(format!("run-{stem}-{policy}.jsonl"));
            ok(pullahead(&[
                "run",
                "--dry-run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--events",
                trace_arg,
                "--policy",
                policy,
                "--decisions",
                ran.to_str().unwrap(),
            ]));
            let run_lines = read_lines(&ran);
            let replay_lines = by_policy.remove(policy).unwrap_or_default();
            assert_eq!(
                run_lines.len(),
                replay_lines.len(),
                "{}: {policy}: number of orders",
                file.display()
            );
            for (k, (a, b)) in run_lines.iter().zip(&replay_lines).enumerate() {
                assert_eq!(a, b, "{}: {policy}: order {k}", file.display());
            }
            *totals.entry(policy).or_default() += run_lines.len();
        }
        assert!(by_policy.is_empty(), "replay wrote others: {by_policy:?}");
    }
    // Each policy but `none` orders something somewhere, so the comparison
    // compares orders and not two empty files.
    for policy in POLICIES {
        let n = totals.get(policy).copied().unwrap_or(0);
        if policy == "none" {
            assert_eq!(n, 0);
        } else {
            assert!(n > 0, "{policy} ordered nothing on any bundled trace");
        }
    }
}

/// The help paragraph of each policy setting, by flag.
fn settings_help(command: &str) -> BTreeMap<String, String> {
    let out = pullahead(&[command, "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || trimmed.starts_with('-') && line.starts_with("  -") {
            if let Some((f, h)) = current.take() {
                flags.insert(f, h);
            }
            let flag = trimmed
                .split([' ', '='])
                .find(|w| w.starts_with("--"))
                .unwrap_or("")
                .to_string();
            current = Some((flag, String::new()));
        } else if let Some((_, h)) = current.as_mut() {
            h.push_str(trimmed);
            h.push('\n');
        }
    }
    if let Some((f, h)) = current {
        flags.insert(f, h);
    }
    // clap lays a paragraph out on one or more lines depending on the
    // widest help of the command: compare the words.
    flags
        .into_iter()
        .map(|(f, h)| (f, h.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

#[test]
fn run_and_replay_take_the_same_policy_settings() {
    let run = settings_help("run");
    let replay = settings_help("replay");
    let tune = settings_help("tune");
    for flag in [
        "--popular-k",
        "--static-images",
        "--model",
        "--node-budget-gb",
        "--default-image-bytes",
        "--bandwidth-mbps",
        "--pull-latency-ms",
        "--max-images-per-node",
    ] {
        let r = run.get(flag).unwrap_or_else(|| panic!("run has no {flag}"));
        assert!(!r.trim().is_empty(), "{flag} has no help");
        assert_eq!(Some(r), replay.get(flag), "{flag}: replay's help differs");
        assert_eq!(Some(r), tune.get(flag), "{flag}: tune's help differs");
    }
}

#[test]
fn replay_scores_the_nominated_policy() {
    let out = pullahead(&[
        "replay",
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("replay-data/karpenter-small.jsonl")
            .to_str()
            .unwrap(),
        "--json",
        "--policy",
        "nominated",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == "nominated")
        .expect("a nominated row");
    assert!(p["orders"].as_u64().unwrap() > 0, "{p}");
}
