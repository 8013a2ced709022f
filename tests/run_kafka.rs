//! `pullahead run` with a Kafka topic as its event source, against
//! librdkafka's MockCluster: the same decisions as from the file the topic
//! was filled from, the lag gauge at 0 once everything is consumed, a restart
//! that resumes after the committed offsets, and a one-line error when the
//! brokers cannot be reached.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pullahead::bus::Bus;
use pullahead::bus::kafka::{KafkaArgs, KafkaBus, KafkaConfig};
use pullahead::config::{Config, RunArgs};
use pullahead::controller::Summary;
use pullahead::metrics::{Health, Metrics};
use pullahead::run::run_with;
use rdkafka::mocking::MockCluster;
use tokio::sync::watch;

mod traces;
use traces::{data, file_events};

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");
const TRACE: &str = "karpenter-small.jsonl";

fn base_args(decisions: &Path) -> RunArgs {
    RunArgs {
        dry_run: true,
        decisions: Some(decisions.into()),
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..RunArgs::default()
    }
}

/// The decisions without their time: a file run plans in the recording's
/// time, a topic run on the wall clock.
fn decisions(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("ts");
            v
        })
        .collect()
}

fn events_handled(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("pullahead_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `run_with` on the topic until it has handled `expect` events and
/// reports no lag on any of `partitions`; returns its summary and metrics.
async fn run_topic(
    brokers: &str,
    group: &str,
    decisions: &Path,
    expect: u64,
    partitions: i32,
) -> (Summary, String) {
    let args = RunArgs {
        kafka: KafkaArgs {
            kafka_brokers: Some(brokers.into()),
            kafka_topic: "events".into(),
            kafka_group: group.into(),
            kafka_option: Vec::new(),
        },
        ..base_args(decisions)
    };
    let cfg = Config::resolve(&args).unwrap();
    let metrics = Metrics::new().unwrap();
    let health = Health::new();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(run_with(
        cfg,
        None,
        None,
        shutdown,
        metrics.clone(),
        health.clone(),
    ));
    let zero_lag: Vec<String> = (0..partitions)
        .map(|p| format!("pullahead_kafka_consumer_lag{{partition=\"{p}\"}} 0"))
        .collect();
    let start = Instant::now();
    loop {
        let text = metrics.render();
        if events_handled(&text) >= expect && zero_lag.iter().all(|z| text.contains(z)) {
            assert!(health.ready(), "consuming but not ready");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "not caught up after 40 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("run stops within 20 s")
        .unwrap()
        .expect("run succeeds");
    let text = metrics.render();
    for z in &zero_lag {
        assert!(text.contains(z), "no {z:?} after shutdown:\n{text}");
    }
    (summary, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_drives_the_same_decisions_as_the_file_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = data(TRACE);

    // What a dry run over the file decides.
    let from_file = dir.path().join("file.jsonl");
    let cfg = Config::resolve(&RunArgs {
        events: Some(path.clone()),
        ..base_args(&from_file)
    })
    .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let expected = run_with(
        cfg,
        None,
        None,
        shutdown,
        Metrics::new().unwrap(),
        Health::new(),
    )
    .await
    .unwrap();
    let want = decisions(&from_file);
    assert!(
        want.iter().any(|d| d["reason"] == "nominated"),
        "the trace should make a nominated decision: {want:?}"
    );

    // One partition: the controller sees the file's order across entities
    // (Kafka orders only within a partition).
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let bus = KafkaBus::new(KafkaConfig::new(brokers.clone(), "events")).unwrap();
    let events = file_events(&path);
    bus.publish_all(&events).await.unwrap();

    let from_topic = dir.path().join("topic.jsonl");
    let (summary, _) = run_topic(&brokers, "run-test", &from_topic, expected.events, 1).await;
    assert_eq!(summary.events, expected.events);
    assert_eq!(summary.orders, expected.orders);
    assert_eq!(decisions(&from_topic), want);

    // A restart of the same group sees only what was published since.
    bus.publish_all(&events).await.unwrap();
    let again = dir.path().join("again.jsonl");
    let (summary, _) = run_topic(&brokers, "run-test", &again, expected.events, 1).await;
    assert_eq!(
        summary.events, expected.events,
        "the restart re-read or skipped events"
    );
    assert_eq!(decisions(&again), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_reported_per_partition() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", 3, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let bus = KafkaBus::new(KafkaConfig::new(brokers.clone(), "events")).unwrap();
    let events = file_events(&data(TRACE));
    bus.publish_all(&events).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = events.len() as u64;
    let (summary, text) = run_topic(&brokers, "lag-test", &dir.path().join("d.jsonl"), n, 3).await;
    assert_eq!(summary.events, n);
    assert!(text.contains("pullahead_kafka_errors_total 0"), "{text}");
}

#[test]
fn an_unreachable_broker_is_a_one_line_error_within_15_s() {
    // Nothing listens on the port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let brokers = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--dry-run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "x",
        ])
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        pipe.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = err.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    // librdkafka's retry chatter stays out of sight: one error line, no
    // warnings or errors logged on the way.
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].starts_with("error: ")
            && errors[0].contains(&brokers)
            && errors[0].contains("\"x\""),
        "{err}"
    );
    assert!(!err.contains("WARN") && !err.contains("ERROR"), "{err}");
}

#[test]
fn events_and_a_topic_exclude_each_other() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--dry-run",
            "--kafka-brokers",
            "127.0.0.1:1",
            "--events",
        ])
        .arg(data(TRACE))
        .env_remove("PULLAHEAD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give one event source"), "{err}");
}

/// A GET of `path` on 127.0.0.1:`port`; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pullahead run` on the topic, as a child process.
fn run_child(
    brokers: &str,
    decisions: &Path,
    port: u16,
    abort_at: Option<u64>,
) -> std::process::Child {
    let mut c = Command::new(BIN);
    c.args([
        "run",
        "--dry-run",
        "--kafka-topic",
        "events",
        "--kafka-group",
        "kill-test",
    ])
    .args(["--kafka-brokers", brokers])
    .arg("--decisions")
    .arg(decisions)
    .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
    .env_remove("PULLAHEAD_CONFIG")
    .env_remove("KUBECONFIG")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    match abort_at {
        Some(n) => c.env(pullahead::run::FAULT_ABORT_ENV, n.to_string()),
        None => c.env_remove(pullahead::run::FAULT_ABORT_ENV),
    };
    c.spawn().unwrap()
}

/// At least once, for real: a `run` process dies (SIGABRT) with events
/// taken from the topic but not applied, after Kafka's auto-commit had its
/// chance; the restarted process applies every event the first did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_between_consume_and_apply_loses_no_event() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let path = data(TRACE);
    let events = file_events(&path);
    let total = events.len() as u64;
    let abort_at = total / 2;

    // What a dry run over the file decides.
    let from_file = dir.path().join("file.jsonl");
    let cfg = Config::resolve(&RunArgs {
        events: Some(path.clone()),
        ..base_args(&from_file)
    })
    .unwrap();
    let (_stop, shutdown) = watch::channel(false);
    run_with(
        cfg,
        None,
        None,
        shutdown,
        Metrics::new().unwrap(),
        Health::new(),
    )
    .await
    .unwrap();
    let want = decisions(&from_file);
    assert!(!want.is_empty());

    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let bus = KafkaBus::new(KafkaConfig::new(brokers.clone(), "events")).unwrap();
    bus.publish_all(&events).await.unwrap();

    // The first run takes the topic's events and dies before applying one.
    let first = dir.path().join("first.jsonl");
    let mut child = run_child(&brokers, &first, free_port(), Some(abort_at));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("the faulty run did not abort within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.signal(), Some(6), "killed by SIGABRT: {status:?}");

    // The restart applies at least everything from the event it died on.
    let second = dir.path().join("second.jsonl");
    let port = free_port();
    let mut child = run_child(&brokers, &second, port, None);
    let need = total - (abort_at - 1);
    let start = Instant::now();
    let handled = loop {
        let text = http_get(port, "/metrics").unwrap_or_default();
        let n = events_handled(&text);
        if n >= need && text.contains("pullahead_kafka_consumer_lag{partition=\"0\"} 0") {
            break n;
        }
        if start.elapsed() > Duration::from_secs(40) {
            child.kill().unwrap();
            panic!("the restart handled {n} events, not the {need} left:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no exit on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(handled <= total, "read past the topic: {handled}");
    // The restart's decisions are the file's, from where it resumed to the end.
    let got = decisions(&second);
    assert!(!got.is_empty(), "the restart decided nothing");
    assert_eq!(got[..], want[want.len() - got.len()..]);
}
