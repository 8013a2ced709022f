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
