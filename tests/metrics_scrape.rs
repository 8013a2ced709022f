//! Scrapes a real running metrics server and lints the text with
//! `promtool check metrics`.

#[path = "ops_common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use pullahead::metrics::{Health, LeaseStatus, Metrics, Server};

#[tokio::test]
async fn scrape_passes_promtool_and_readiness_follows_health() {
    let metrics = Metrics::new().unwrap();
    let health = Health::new();
    let server = Server::bind(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        health.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stop_rx.await;
    }));

    // Fill in every vector so that the lint sees a labelled sample of each.
    metrics.events.with_label_values(&["node"]).inc_by(3);
    metrics
        .events_dropped
        .with_label_values(&["queue-full"])
        .inc();
    metrics.pull_orders.with_label_values(&["nominated"]).inc();
    metrics.pulls.with_label_values(&["ok"]).inc();
    metrics.pull_bytes.inc_by(1 << 20);
    metrics.pull_duration.observe(3.5);
    metrics.prefetch_lead_time.observe(40.0);
    metrics.pod_image_lookups.with_label_values(&["miss"]).inc();
    metrics.planner_decision.observe(0.0002);
    metrics.forecast_brier_score.set(0.12);
    metrics
        .watch_last_event
        .with_label_values(&["Node"])
        .set(1.7e9);
    metrics.kafka_consumer_lag.with_label_values(&["0"]).set(7);
    metrics.leader.set(1);
    metrics
        .pulls_in_flight
        .with_label_values(&["node-a"])
        .set(2);
    metrics.nodeprefetch_writes.with_label_values(&["ok"]).inc();
    metrics
        .dispatch_latency
        .with_label_values(&["node"])
        .observe(0.004);

    let (status, body) = common::http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("pullahead_events_total{type=\"node\"} 3"),
        "{body}"
    );
    assert!(body.contains("pullahead_leader 1"), "{body}");

    let mut child = Command::new(common::promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(common::http_get(addr, "/healthz").await.0, 200);
    let (status, why) = common::http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    health.set_synced();
    assert_eq!(common::http_get(addr, "/readyz").await.0, 503);
    health.set_lease(LeaseStatus::HeldByOther);
    assert_eq!(common::http_get(addr, "/readyz").await.0, 200);

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}
