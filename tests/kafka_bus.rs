//! The Kafka bus against librdkafka's own MockCluster on loopback: order per
//! key, broker errors during produce, restarts, idempotence and replay reads.

use std::collections::{BTreeMap, HashMap};

use pullahead::bus::kafka::{KafkaBus, KafkaConfig, read_range};
use pullahead::bus::{Bus, Subscription, entity_key};
use pullahead::event::{
    Body, Event, EventReader, EventWriter, Header, Node, NodePhase, Pod, PodPhase,
};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

type Mock = MockCluster<'static, DefaultProducerContext>;

fn cluster(topic: &str, partitions: i32) -> Mock {
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic(topic, partitions, 3).expect("topic");
    mock
}

fn config(mock: &Mock, topic: &str, group: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(mock.bootstrap_servers(), topic);
    c.group = group.into();
    c
}

/// `n` events over `nodes` nodes and as many workloads, each entity's events
/// numbered by a strictly increasing time.
fn events(n: usize, nodes: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let ts = 1_700_000_000.0 + i as f64 * 0.5;
            let k = i % nodes;
            if i % 2 == 0 {
                Event::new(
                    ts,
                    Node {
                        node: format!("node-{k}"),
                        phase: if i % 4 == 0 {
                            NodePhase::Registered
                        } else {
                            NodePhase::Ready
                        },
                        pool: Some("default".into()),
                        labels: BTreeMap::new(),
                        taints: None,
                        images: None,
                        image_fs_bytes: None,
                    },
                )
            } else {
                Event::new(
                    ts,
                    Pod {
                        pod: format!("ns/app{k}-{i}"),
                        workload: Some(format!("ns/app{k}")),
                        images: vec![format!("registry.example/app{k}:v1")],
                        phase: PodPhase::Pending,
                        node: None,
                        node_claim: None,
                    },
                )
            }
        })
        .collect()
}

async fn take(sub: &mut Box<dyn Subscription>, n: usize, ack: bool) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let d = tokio::time::timeout(std::time::Duration::from_secs(20), sub.next())
            .await
            .expect("a delivery within 20 s")
            .expect("subscription open")
            .expect("delivery ok");
        got.push(d.event.clone());
        if ack {
            d.ack().expect("ack");
        }
    }
    got
}

/// Each key's events, in the order they arrived.
fn per_key(events: &[Event]) -> HashMap<String, Vec<f64>> {
    let mut m: HashMap<String, Vec<f64>> = HashMap::new();
    for e in events {
        m.entry(entity_key(e)).or_default().push(e.ts);
    }
    m
}

fn assert_same_per_key(sent: &[Event], got: &[Event]) {
    assert_eq!(got.len(), sent.len(), "nothing lost, nothing duplicated");
    assert_eq!(
        per_key(got),
        per_key(sent),
        "each key's events in the order sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_order_per_key() {
    let mock = cluster("events", 4);
    let cfg = config(&mock, "events", "rt");
    let bus = KafkaBus::new(cfg).unwrap();
    let sent = events(400, 7);
    bus.publish_all(&sent).await.unwrap();
    bus.publish(&sent[0]).await.unwrap();
    let mut sub = bus.subscribe().unwrap();
    let got = take(&mut sub, 401, true).await;
    let mut expected = sent.clone();
    expected.push(sent[0].clone());
    assert_same_per_key(&expected, &got);
    // Events travel intact.
    let mut a: Vec<String> = expected
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let mut b: Vec<String> = got
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_during_produce_lose_and_reorder_nothing() {
    let mock = cluster("events", 3);
    let bus = KafkaBus::new(config(&mock, "events", "err")).unwrap();
    let first = events(50, 5);
    bus.publish_all(&first).await.unwrap();
    // The next produce requests fail with retriable errors; the idempotent
    // producer must retry them without loss, duplication or reordering.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ],
    );
    let rest: Vec<Event> = events(300, 5).into_iter().skip(50).collect();
    bus.publish_all(&rest).await.unwrap();
    let mut sub = bus.subscribe().unwrap();
    let got = take(&mut sub, 300, true).await;
    assert_same_per_key(&events(300, 5), &got);
    // No message beyond the 300 (no duplicate from a retry).
    let extra = tokio::time::timeout(std::time::Duration::from_millis(1500), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {extra:?}");

    // The injection does reach produce requests: a non-retriable error
    // surfaces as a failed publish.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let other = KafkaBus::new(config(&mock, "events", "err")).unwrap();
    let err = other.publish(&first[0]).await.unwrap_err().to_string();
    assert!(err.contains("delivering to events"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_without_gaps() {
    let mock = cluster("events", 2);
    let cfg = config(&mock, "events", "restart");
    let bus = KafkaBus::new(cfg.clone()).unwrap();
    let sent = events(120, 4);
    bus.publish_all(&sent).await.unwrap();

    // First life: applies and acks 50 events, reads 10 more it never applies.
    let mut sub = bus.subscribe().unwrap();
    let applied = take(&mut sub, 50, true).await;
    let unapplied = take(&mut sub, 10, false).await;
    sub.commit().unwrap();
    drop(sub);

    // Second life: starts right after the last acked event of each partition,
    // so the 10 unacknowledged ones come again and nothing is skipped.
    let mut sub = KafkaBus::new(cfg).unwrap().subscribe().unwrap();
    let resumed = take(&mut sub, 70, true).await;
    for e in &unapplied {
        assert!(
            resumed.contains(e),
            "unacked event {e:?} was not redelivered"
        );
    }
    let mut all = applied.clone();
    all.extend(resumed.iter().cloned());
    assert_same_per_key(&sent, &all);
    let extra = tokio::time::timeout(std::time::Duration::from_millis(1500), sub.next()).await;
    assert!(extra.is_err(), "unexpected extra delivery: {extra:?}");
}

/// A consumer's view: the latest state of each entity, as a planner keeps it.
#[derive(Debug, Default, PartialEq)]
struct View {
    nodes: BTreeMap<String, NodePhase>,
    pods: BTreeMap<String, (PodPhase, Option<String>)>,
}

impl View {
    fn apply(&mut self, e: &Event) {
        match &e.body {
            Body::Node(n) if n.phase == NodePhase::Deleted => {
                self.nodes.remove(&n.node);
            }
            Body::Node(n) => {
                self.nodes.insert(n.node.clone(), n.phase);
            }
            Body::Pod(p) if p.phase == PodPhase::Deleted => {
                self.pods.remove(&p.pod);
            }
            Body::Pod(p) => {
                self.pods.insert(p.pod.clone(), (p.phase, p.node.clone()));
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivery_after_a_crash_leaves_the_same_state() {
    let mock = cluster("events", 2);
    let cfg = config(&mock, "events", "idem");
    let bus = KafkaBus::new(cfg.clone()).unwrap();
    let mut sent = events(80, 4);
    // Deletes too, so that a replayed delete after a later state would show.
    sent.push(Event::new(
        1_700_000_100.0,
        Node {
            node: "node-1".into(),
            phase: NodePhase::Deleted,
            pool: None,
            labels: BTreeMap::new(),
            taints: None,
            images: None,
            image_fs_bytes: None,
        },
    ));
    bus.publish_all(&sent).await.unwrap();

    let mut clean = View::default();
    sent.iter().for_each(|e| clean.apply(e));

    // The consumer applies 60 events but crashes having acked only 30: the
    // other 30 are applied twice.
    let mut view = View::default();
    let mut sub = bus.subscribe().unwrap();
    for e in take(&mut sub, 30, true).await {
        view.apply(&e);
    }
    for e in take(&mut sub, 30, false).await {
        view.apply(&e);
    }
    sub.commit().unwrap();
    drop(sub);
    let mut sub = KafkaBus::new(cfg).unwrap().subscribe().unwrap();
    let again = take(&mut sub, sent.len() - 30, true).await;
    for e in &again {
        view.apply(e);
    }
    assert_eq!(view, clean);
    assert!(!view.nodes.contains_key("node-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_range_from_the_topic_equals_the_file() {
    let mock = cluster("replay", 3);
    let cfg = config(&mock, "replay", "unused");
    let sent = events(200, 6);
    KafkaBus::new(cfg.clone())
        .unwrap()
        .publish_all(&sent)
        .await
        .unwrap();

    // The same events through a file, as `pullahead record --out` writes them.
    let mut buf = Vec::new();
    {
        let mut w = EventWriter::new(&mut buf, "mem", &Header::new(sent[0].ts, "test")).unwrap();
        sent.iter().for_each(|e| w.write(e).unwrap());
        w.flush().unwrap();
    }
    let from_file: Vec<Event> = EventReader::new(&buf[..], "mem")
        .map(Result::unwrap)
        .collect();

    let all = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || read_range(&cfg, None, None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(all, from_file);

    let (from, until) = (sent[37].ts + 0.1, sent[150].ts);
    let window = tokio::task::spawn_blocking(move || read_range(&cfg, Some(from), Some(until)))
        .await
        .unwrap()
        .unwrap();
    let expected: Vec<Event> = from_file
        .into_iter()
        .filter(|e| e.ts >= from && e.ts <= until)
        .collect();
    assert_eq!(expected.len(), 150 - 38 + 1);
    assert_eq!(window, expected);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let mock = MockCluster::new(1).unwrap();
    let mut cfg = KafkaConfig::new(mock.bootstrap_servers(), "nope");
    cfg.options
        .push(("allow.auto.create.topics".into(), "false".into()));
    let err = read_range(&cfg, None, None).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}
