//! Kafka produce-to-consume through librdkafka's MockCluster on loopback:
//! events per second for the idempotent producer (`publish_all`), for the
//! at-least-once consumer (deliver + ack each, and deliver + one batched
//! ack a batch, as `run` acknowledges what its planner applied), and end to
//! end.
//!
//! Run: `cargo bench --bench kafka_bus`

use std::collections::BTreeMap;
use std::time::Instant;

use pullahead::bus::kafka::{KafkaBus, KafkaConfig};
use pullahead::bus::{Bus, Pending};
use pullahead::event::{Event, Node, NodePhase};
use rdkafka::mocking::MockCluster;

/// Events acknowledged at once in the batched run: the controller's batch.
const BATCH: usize = 1024;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 200_000 } else { 2_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mock = MockCluster::new(3).expect("mock cluster");
    mock.create_topic("bench", 6, 3).expect("topic");
    let mut cfg = KafkaConfig::new(mock.bootstrap_servers(), "bench");
    cfg.group = "bench".into();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            Event::new(
                1.7e9 + i as f64 * 1e-3,
                Node {
                    node: format!(
                        "ip-10-0-{}-{}.eu-west-1.compute.internal",
                        (i / 256) % 256,
                        i % 256
                    ),
                    phase: NodePhase::Ready,
                    pool: Some("general".into()),
                    labels: BTreeMap::from([("karpenter.sh/nodepool".into(), "general".into())]),
                    taints: None,
                    images: None,
                },
            )
        })
        .collect();
    rt.block_on(async {
        let bus = KafkaBus::new(cfg).expect("bus");
        let t0 = Instant::now();
        for chunk in events.chunks(10_000) {
            bus.publish_all(chunk).await.expect("publish");
        }
        let produce = t0.elapsed();
        let mut sub = bus.subscribe().expect("subscribe");
        let t1 = Instant::now();
        for _ in 0..n {
            let d = sub.next().await.expect("open").expect("delivery");
            d.ack().expect("ack");
        }
        sub.commit().expect("commit");
        let consume = t1.elapsed();
        // Again from the start, under another group: acknowledged a batch at
        // a time, as `run` does after each batch the planner applied.
        bus.publish_all(&events[..]).await.expect("publish");
        let mut batched_cfg = bus.config().clone();
        batched_cfg.group = "bench-batched".into();
        let batched_bus = KafkaBus::new(batched_cfg).expect("bus");
        let mut sub = batched_bus.subscribe().expect("subscribe");
        let t2 = Instant::now();
        let mut pending = Vec::with_capacity(BATCH);
        for _ in 0..n {
            let (_event, ack) = sub.next().await.expect("open").expect("delivery").split();
            pending.push(ack);
            if pending.len() == BATCH {
                Pending::ack_all(pending.drain(..)).expect("ack");
            }
        }
        Pending::ack_all(pending.drain(..)).expect("ack");
        sub.commit().expect("commit");
        let batched = t2.elapsed();
        let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
        println!("kafka MockCluster (3 brokers, 6 partitions), {n} events of ~190 bytes:");
        println!(
            "  produce (idempotent, acks=all)  {:>10.0} events/s  ({:.2} s)",
            rate(produce),
            produce.as_secs_f64()
        );
        println!(
            "  consume (deliver + ack)         {:>10.0} events/s  ({:.2} s)",
            rate(consume),
            consume.as_secs_f64()
        );
        println!(
            "  consume (deliver, batched ack)  {:>10.0} events/s  ({:.2} s)",
            rate(batched),
            batched.as_secs_f64()
        );
        println!(
            "  produce-to-consume              {:>10.0} events/s  ({:.2} s)",
            rate(produce + consume),
            (produce + consume).as_secs_f64()
        );
    });
}
