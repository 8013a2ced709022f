//! The real `pullahead run` binary, with a real `kube::Client` built from a
//! kubeconfig that points at the fake API served over HTTP: SIGTERM while a
//! write is in flight, and start-up without a cluster.

#[path = "ops_common/mod.rs"]
mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fake_api::{FakeApi, kubeconfig};

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_inflight_write_and_exits_within_10s() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-12-34.ec2.internal",
        "9b2f6c1e-58d3-4b8a-a1f0-3c5e7d9f1a2b",
    );
    // Writes take 2 s, so SIGTERM lands while one is in flight.
    *api.write_delay.lock().unwrap() = Duration::from_secs(2);
    let addr = api.serve_http().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), addr);

    let mut child = Command::new(BIN)
        .args([
            "run",
            "--events",
            "-",
            "--metrics-addr",
            "127.0.0.1:0",
            "--identity",
            "pullahead-controller-6c8f-b",
            "--lease-duration",
            "4",
            "--lease-retry",
            "0.2",
        ])
        .env("KUBECONFIG", &kc)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let api2 = api.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the Lease", Duration::from_secs(10), || {
            api2.lease_holder("pullahead-controller").as_deref()
                == Some("pullahead-controller-6c8f-b")
        })
    })
    .await
    .unwrap();

    // stdin stays open: the controller keeps running after these events.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(
        stdin,
        r#"{{"type":"trace","version":1,"ts":100,"source":"test"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"type":"node_claim","ts":100,"node_claim":"default-x7k2p","pool":"default","phase":"created","labels":{{}}}}"#).unwrap();
    writeln!(stdin, r#"{{"type":"pod","ts":101,"pod":"shop/web-1","images":["registry.example.com/shop/web:1.4.2"],"phase":"nominated","node_claim":"default-x7k2p"}}"#).unwrap();
    writeln!(stdin, r#"{{"type":"node_claim","ts":102,"node_claim":"default-x7k2p","pool":"default","phase":"registered","labels":{{}},"node":"ip-10-0-12-34.ec2.internal"}}"#).unwrap();
    stdin.flush().unwrap();

    let api2 = api.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the write to start", Duration::from_secs(10), || {
            !api2.prefetch_writes().is_empty()
        })
    })
    .await
    .unwrap();
    assert_eq!(
        *api.writes_done.lock().unwrap(),
        0,
        "the write should still be in flight"
    );

    let sent = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                return Some((s, err));
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let took = sent.elapsed();
    let (status, stderr) = status.expect("pullahead did not exit within 10 s of SIGTERM");
    drop(stdin);
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        *api.writes_done.lock().unwrap(),
        1,
        "the in-flight write finished; stderr:\n{stderr}"
    );
    assert_eq!(
        api.lease_holder("pullahead-controller"),
        None,
        "Lease released; stderr:\n{stderr}"
    );
    assert!(stderr.contains("shutdown signal received"), "{stderr}");
}

#[test]
fn without_a_cluster_it_exits_at_once_with_a_clear_message() {
    let home = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no Kubernetes cluster configured"), "{err}");
    assert!(err.contains("KUBECONFIG"), "{err}");
}

#[test]
fn an_unreachable_api_server_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kc = kubeconfig(dir.path(), port);
    let started = Instant::now();
    let out = Command::new(BIN)
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--connect-timeout",
            "3",
        ])
        .env("KUBECONFIG", &kc)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach the Kubernetes API server at http://{port}"
        )),
        "{err}"
    );
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', ',', '<']).next().unwrap())
        .filter(|f| *f != "help")
        .collect();
    assert!(flags.len() >= 15, "{flags:?}");
    for f in flags {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("--{f}")))
            .unwrap();
        // The doc text follows on the next line in long help.
        let idx = help.find(line).unwrap() + line.len();
        let doc = help[idx..].lines().nth(1).unwrap_or("").trim();
        assert!(!doc.is_empty(), "--{f} has no help text");
        assert!(
            docs.contains(&format!("`--{f}`")),
            "docs/configuration.md does not document --{f}"
        );
    }
}

#[test]
fn dry_run_over_a_recording_needs_no_cluster_and_stops_at_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let good = [
        r#"{"type":"trace","version":1,"ts":1000,"source":"test"}"#,
        r#"{"type":"node_claim","ts":1000,"node_claim":"c1","pool":"default","phase":"created","labels":{}}"#,
        r#"{"type":"pod","ts":1001.5,"pod":"a/web-1","images":["r/web:1","r/side:2"],"phase":"nominated","node_claim":"c1"}"#,
        r#"{"type":"node_claim","ts":1040,"node_claim":"c1","pool":"default","phase":"registered","labels":{},"node":"n1"}"#,
    ];
    std::fs::write(&events, good.join("\n") + "\n").unwrap();
    let decisions = dir.path().join("d.jsonl");
    let home = tempfile::tempdir().unwrap();
    let run = |events: &std::path::Path| {
        Command::new(BIN)
            .args([
                "run",
                "--dry-run",
                "--metrics-addr",
                "127.0.0.1:0",
                "--events",
            ])
            .arg(events)
            .arg("--decisions")
            .arg(&decisions)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", home.path())
            .output()
            .unwrap()
    };
    let out = run(&events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    // Decisions from a recording carry the recording's time.
    assert_eq!(lines[0]["ts"], 1001.5);
    assert_eq!(lines[0]["node"], "nodeclaim/c1");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        format!("{}\n{}\n{{\"type\":\"pod\",\"ts\":\n", good[0], good[1]),
    )
    .unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3", bad.display())), "{err}");
}

#[test]
fn a_bad_model_is_refused_at_start_naming_file_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json"))
            .unwrap(),
    )
    .unwrap();
    let mut wrong_version = good.clone();
    wrong_version["version"] = 2.into();
    let mut missing = good.clone();
    missing["features"].as_array_mut().unwrap().pop();
    missing["weights"].as_array_mut().unwrap().pop();
    // JSON has no NaN: a NaN weight written by hand is a syntax error.
    let nan =
        serde_json::to_string(&good)
            .unwrap()
            .replacen(&good["weights"][0].to_string(), "NaN", 1);
    let cases = [
        (
            "wrong-version.json",
            wrong_version.to_string(),
            "unsupported model version 2",
        ),
        ("nan.json", nan, "nan.json:1:"),
        (
            "missing.json",
            missing.to_string(),
            "missing feature \"existing\"",
        ),
    ];
    let home = tempfile::tempdir().unwrap();
    for (name, text, problem) in cases {
        let model = dir.path().join(name);
        std::fs::write(&model, text).unwrap();
        let started = Instant::now();
        let out = Command::new(BIN)
            .args(["run", "--policy", "predictive", "--dry-run", "--model"])
            .arg(&model)
            .arg("--events")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/replay-data/karpenter-small.jsonl"
            ))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(&model.display().to_string()), "{name}: {err}");
        assert!(err.contains(problem), "{name}: {err}");
        assert!(err.contains("--model"), "{name}: {err}");
        // Refused before planning anything.
        assert!(!err.contains("stopped"), "{name}: {err}");
    }

    // The committed model is accepted the same way.
    let out = Command::new(BIN)
        .args(["run", "--policy", "predictive", "--dry-run", "--model"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json"))
        .arg("--events")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/replay-data/karpenter-small.jsonl"
        ))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
