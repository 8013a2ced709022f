//! `pullahead replay` from a Kafka topic: bundled traces are published through
//! the project's own Kafka producer to librdkafka's MockCluster, and replaying
//! the topic must score every policy exactly as replaying the file does.
//! Broker trouble must end in a one-line error, never a hang.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pullahead::bus::Bus;
use pullahead::bus::kafka::{KafkaBus, KafkaConfig};
use pullahead::event::Event;
use pullahead::replay::{self, KafkaSource, Options, Report};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

mod traces;
use traces::{data, file_events};

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");

type Mock = MockCluster<'static, DefaultProducerContext>;

/// A MockCluster holding `files`' events, each file on its own topic of
/// `partitions` partitions, published through [`KafkaBus`].
fn publish(files: &[&str], partitions: i32) -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for f in files {
        mock.create_topic(f, partitions, 3).expect("topic");
        let bus = KafkaBus::new(KafkaConfig::new(mock.bootstrap_servers(), *f)).unwrap();
        let events = file_events(&data(f));
        rt.block_on(bus.publish_all(&events)).expect("published");
    }
    mock
}

fn source(mock: &Mock, topic: &str) -> KafkaSource {
    KafkaSource {
        config: KafkaConfig::new(mock.bootstrap_servers(), topic),
        from: None,
        until: None,
        timeout: Duration::from_secs(10),
    }
}

/// The report as JSON, with the trace's name taken out: the figures only.
fn figures(r: &Report) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    v.as_object_mut().unwrap().remove("file");
    v
}

const FILES: &[&str] = &[
    "karpenter-small.jsonl",
    "ca-small.jsonl",
    "simkube-dsb-karpenter.jsonl",
];

#[test]
fn a_topic_scores_like_the_file_it_was_published_from() {
    let mock = publish(FILES, 3);
    let opts = Options::default();
    for f in FILES {
        let from_file = replay::replay_file(&data(f), &opts, None).unwrap();
        let from_topic = replay::replay_kafka(&source(&mock, f), &opts, None).unwrap();
        assert_eq!(from_topic.file, format!("kafka://{f}"));
        assert!(from_file.events > 0);
        assert_eq!(
            from_topic.policies.len(),
            opts.policies.len(),
            "every policy is reported"
        );
        assert_eq!(figures(&from_topic), figures(&from_file), "{f}");
    }
}

#[test]
fn a_time_window_replays_only_its_events() {
    let f = "simkube-dsb-karpenter.jsonl";
    let mock = publish(&[f], 2);
    let events = file_events(&data(f));
    let (from, until) = (events[events.len() / 3].ts, events[2 * events.len() / 3].ts);
    let window: Vec<Event> = events
        .into_iter()
        .filter(|e| e.ts >= from && e.ts <= until)
        .collect();
    let opts = Options::default();
    let expected = replay::replay_events("window", window, &opts, None).unwrap();
    let src = KafkaSource {
        from: Some(from),
        until: Some(until),
        ..source(&mock, f)
    };
    let got = replay::replay_kafka(&src, &opts, None).unwrap();
    assert_eq!(figures(&got), figures(&expected));
}

/// Runs the binary with a time limit; returns (status, stdout, stderr).
fn run_bounded(args: &[&str], limit: Duration) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        // The default log level: what a user sees must stay one line.
        .env_remove("RUST_LOG")
        .env_remove("PULLAHEAD_KAFKA_BROKERS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // Pipes are drained on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        err_pipe.read_to_string(&mut s).unwrap();
        s
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("pullahead {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn the_binary_replays_a_topic_like_the_file() {
    let f = "karpenter-small.jsonl";
    let mock = publish(&[f], 3);
    let brokers = mock.bootstrap_servers();
    let path = data(f);
    let limit = Duration::from_secs(60);
    let (st, file_json, err) = run_bounded(&["replay", "--json", path.to_str().unwrap()], limit);
    assert!(st.success(), "{err}");
    let (st, topic_json, err) = run_bounded(
        &[
            "replay",
            "--json",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            f,
        ],
        limit,
    );
    assert!(st.success(), "{err}");
    let mut a: serde_json::Value = serde_json::from_str(file_json.trim()).unwrap();
    let mut b: serde_json::Value = serde_json::from_str(topic_json.trim()).unwrap();
    assert_eq!(b["file"], format!("kafka://{f}"));
    a.as_object_mut().unwrap().remove("file");
    b.as_object_mut().unwrap().remove("file");
    assert_eq!(a, b);
}

#[test]
fn an_unreachable_broker_is_a_one_line_error_not_a_hang() {
    // Nothing listens on the port once the listener is dropped.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let brokers = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let (st, _, err) = run_bounded(
        &[
            "replay",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "events",
            "--kafka-timeout",
            "2s",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    let err = err.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&brokers) && err.contains("\"events\""),
        "{err}"
    );
}

#[test]
fn a_missing_topic_is_a_one_line_error() {
    let mock = publish(&[], 1);
    let brokers = mock.bootstrap_servers();
    let (st, _, err) = run_bounded(
        &[
            "replay",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            "no-such-topic",
            "--kafka-timeout",
            "5s",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(st.code(), Some(1), "{err}");
    let err = err.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no-such-topic") && err.contains(&brokers),
        "{err}"
    );
}

#[test]
fn files_and_a_topic_exclude_each_other() {
    let path = data("ca-small.jsonl");
    let limit = Duration::from_secs(30);
    let (st, _, err) = run_bounded(
        &[
            "replay",
            path.to_str().unwrap(),
            "--kafka-brokers",
            "127.0.0.1:9",
        ],
        limit,
    );
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (st, _, err) = run_bounded(&["replay"], limit);
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("FILE"), "{err}");
    let (st, _, err) = run_bounded(&["replay", path.to_str().unwrap(), "--from", "0"], limit);
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("need --kafka-brokers"), "{err}");
}
