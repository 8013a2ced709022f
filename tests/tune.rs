//! `pullahead tune` on a synthetic trace: the model it writes loads, and the
//! figures it reports come from the held-back part only.

use std::process::Command;

use pullahead::event::{EventWriter, Header};
use pullahead::forecast::model::Model;
use pullahead::replay::synth;

#[test]
fn tune_writes_a_loadable_model_and_scores_the_held_back_part() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    let mut w = EventWriter::create(&trace, &Header::new(0.0, "test")).unwrap();
    let cfg = synth::SynthConfig {
        seed: 5,
        events: 8_000,
        pools: 2,
        workloads: 20,
        images: 30,
    };
    synth::generate(cfg, &mut w).unwrap();
    w.flush().unwrap();
    drop(w);
    let model = dir.path().join("m.json");
    let page = dir.path().join("tune.html");
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["tune", "--json", "--train-fraction", "0.6", "--out"])
        .arg(&model)
        .arg(&trace)
        .arg("--report")
        .arg(&page)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page: the threshold search, then the held-back part's charts.
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Threshold search on the training part"));
    assert!(html.contains("<td>chosen</td>"));
    assert!(html.contains("held back: after t="));
    assert_eq!(html.matches("<svg").count(), 4, "one trace, four charts");
    let m = Model::load(&model).unwrap();
    assert!(m.provenance.rows > 0);
    assert!(m.provenance.command.contains("tune"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["file"].as_str().unwrap().contains("held back"));
    let names: Vec<&str> = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["none", "static", "popular", "predictive", "oracle"]);
    // Only pods bound after the split count: fewer than the whole trace has.
    let whole = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--json", "--policy", "none"])
        .arg(&trace)
        .output()
        .unwrap();
    let whole: serde_json::Value = serde_json::from_slice(&whole.stdout).unwrap();
    let held = report["policies"][0]["pods"].as_u64().unwrap();
    let all = whole["policies"][0]["pods"].as_u64().unwrap();
    assert!(held > 0 && held < all, "held back {held} of {all}");

    // The model is accepted by replay.
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--policy", "predictive", "--model"])
        .arg(&model)
        .arg(&trace)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a synthetic trace of `events` events with `seed`.
fn synth_trace(dir: &std::path::Path, seed: u64, events: u64) -> std::path::PathBuf {
    let path = dir.join(format!("s{seed}.jsonl"));
    let mut w = EventWriter::create(&path, &Header::new(0.0, "test")).unwrap();
    let cfg = synth::SynthConfig {
        seed,
        events,
        pools: 2,
        workloads: 20,
        images: 30,
    };
    synth::generate(cfg, &mut w).unwrap();
    w.flush().unwrap();
    path
}

#[test]
fn cross_validation_scores_each_file_left_out_and_writes_the_model_fitted_on_all() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        synth_trace(dir.path(), 11, 5_000),
        synth_trace(dir.path(), 12, 5_000),
    ];
    let model = dir.path().join("cv.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["tune", "--cross-validate", "--json", "--out"])
        .arg(&model)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let folds = folds.as_array().unwrap();
    assert_eq!(folds.len(), 2);
    for (fold, file) in folds.iter().zip(&files) {
        assert_eq!(fold["file"], file.display().to_string());
        let names: Vec<&str> = fold["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["policy"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["predictive", "rules", "static", "popular"]);
        for p in fold["policies"].as_array().unwrap() {
            let share = p["waste_share"].as_f64().unwrap_or(0.0);
            assert!((0.0..=1.0).contains(&share), "{p}");
        }
    }
    // The model is fitted on both files and says it came from cross-validation.
    let m = Model::load(&model).unwrap();
    assert_eq!(m.provenance.data.len(), 2);
    assert!(m.provenance.command.contains("--cross-validate"));
    // The table: a header, a rule and one row per file.
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["tune", "--cross-validate", "--out"])
        .arg(&model)
        .args(&files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("| file left out |"), "{text}");
    assert!(
        text.contains("| s11.jsonl |") && text.contains("| s12.jsonl |"),
        "{text}"
    );
    // One file cannot be cross-validated.
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["tune", "--cross-validate", "--out"])
        .arg(&model)
        .arg(&files[0])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least two"), "{err}");
}

#[test]
fn a_bad_model_file_is_refused_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bad.json");
    std::fs::write(
        &model,
        r#"{"version":1,"features":["nominated"],"weights":[1.0],"bias":0,"horizon_seconds":60,"threshold":0.5,"provenance":{"command":"","data":[],"rows":0,"positive_share":0}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--policy", "predictive", "--model"])
        .arg(&model)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/replay-data/ca-small.jsonl"
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing feature \"scale_up\""), "{stderr}");
    assert!(stderr.contains("bad.json"), "{stderr}");
}

#[test]
fn a_model_file_that_is_not_json_names_its_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("broken.json");
    std::fs::write(&model, "{\"version\": 1,\n  \"features\": [nominated]\n}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["replay", "--policy", "predictive", "--model"])
        .arg(&model)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/replay-data/ca-small.jsonl"
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.json:2:17: expected ident"),
        "{stderr}"
    );
    assert!(!stderr.contains(" at line "), "the position once: {stderr}");
}
