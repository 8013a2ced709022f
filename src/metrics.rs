//! Prometheus metrics and the HTTP endpoints `/metrics`, `/healthz` and
//! `/readyz`.
//!
//! Every component (controller, watchers, dispatcher, agent) records into one
//! [`Metrics`] value, which owns its own registry so that tests can run many
//! side by side. The names are the contract with the alert rules in
//! `deploy/helm/pullahead/templates/prometheusrule.yaml` and with the Grafana
//! dashboard: change them together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// What can go wrong while building or serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A metric could not be created or registered (a duplicate name).
    #[error("registering metric: {0}")]
    Register(#[from] prometheus::Error),
    /// The listen address could not be bound.
    #[error("binding the metrics server to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("serving metrics: {0}")]
    Serve(std::io::Error),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Histogram buckets for pulls and lead times: 0.5 s to about 17 min.
const PULL_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
];

/// Histogram buckets for one planner decision: 10 µs to about 0.3 s.
const DECISION_BUCKETS: &[f64] = &[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1];

/// Every pullahead metric, registered in its own [`Registry`].
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events taken in, by event `type`.
    pub events: IntCounterVec,
    /// Events dropped, by reason (queue full, malformed, unknown type, ...).
    pub events_dropped: IntCounterVec,
    /// Pull orders the planner emitted, by reason.
    pub pull_orders: IntCounterVec,
    /// Pulls finished, by result (`ok`, `present`, `failed`).
    pub pulls: IntCounterVec,
    /// Bytes pulled by prefetches.
    pub pull_bytes: IntCounter,
    /// Duration of one prefetch pull.
    pub pull_duration: Histogram,
    /// Time between a prefetched image landing and a pod that uses it being
    /// bound.
    pub prefetch_lead_time: Histogram,
    /// Per pod image at binding: `hit` (present), `inflight` (prefetch
    /// running), `miss` (kubelet had to pull it).
    pub pod_image_lookups: IntCounterVec,
    /// Bytes prefetched onto a node that no pod there used before it left.
    pub wasted_bytes: IntCounter,
    /// Time the planner spent on one event.
    pub planner_decision: Histogram,
    /// Mean squared error of the forecast probabilities against outcomes.
    pub forecast_brier_score: Gauge,
    /// Unix time of the last event seen from each watched kind.
    pub watch_last_event: GaugeVec,
    /// Messages behind the head of the Kafka topic, by partition.
    pub kafka_consumer_lag: IntGaugeVec,
    /// Errors of the Kafka event source of `run` (broker errors librdkafka
    /// reported, failed receives and offset stores); the consumer retries.
    pub kafka_errors: IntCounter,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Prefetch pulls running, by node (exported by the node agent).
    pub pulls_in_flight: IntGaugeVec,
    /// `NodePrefetch` writes, by result (`ok`, `error`, `node-pending`).
    pub nodeprefetch_writes: IntCounterVec,
    /// Plans kept for a node the API does not show yet (a NodeClaim
    /// reported it before the Node object was visible).
    pub plans_awaiting_node: IntGauge,
    /// Time from an event arriving to the `NodePrefetch` write it caused
    /// being sent.
    pub dispatch_latency: HistogramVec,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let m = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
    let m = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    /// Creates every metric in a fresh registry.
    pub fn new() -> Result<Self> {
        let r = Registry::new();
        let pull_bytes =
            IntCounter::new("pullahead_pull_bytes_total", "Bytes pulled by prefetches.")?;
        r.register(Box::new(pull_bytes.clone()))?;
        let wasted_bytes = IntCounter::new(
            "pullahead_wasted_bytes_total",
            "Bytes prefetched onto a node that no pod on that node used before the node left.",
        )?;
        r.register(Box::new(wasted_bytes.clone()))?;
        let forecast_brier_score = Gauge::new(
            "pullahead_forecast_brier_score",
            "Brier score (mean squared error) of forecast probabilities against outcomes, over recent resolved orders; 0 is perfect, 0.25 is a coin flip, NaN until an order with a probability has resolved.",
        )?;
        r.register(Box::new(forecast_brier_score.clone()))?;
        // 0 would read as a perfect forecast: until an order with a
        // probability resolves there is no score.
        forecast_brier_score.set(f64::NAN);
        let watch_last_event = GaugeVec::new(
            Opts::new(
                "pullahead_watch_last_event_timestamp_seconds",
                "Unix time of the last event received from each watched kind.",
            ),
            &["kind"],
        )?;
        r.register(Box::new(watch_last_event.clone()))?;
        let kafka_consumer_lag = IntGaugeVec::new(
            Opts::new(
                "pullahead_kafka_consumer_lag",
                "Messages between the consumer's position and the head of the event topic, by partition.",
            ),
            &["partition"],
        )?;
        r.register(Box::new(kafka_consumer_lag.clone()))?;
        let kafka_errors = IntCounter::new(
            "pullahead_kafka_errors_total",
            "Errors of the Kafka event source (broker errors, failed receives or offset stores); the consumer keeps retrying.",
        )?;
        r.register(Box::new(kafka_errors.clone()))?;
        let leader = IntGauge::new(
            "pullahead_leader",
            "1 while this replica holds the leader Lease, else 0.",
        )?;
        r.register(Box::new(leader.clone()))?;
        let pulls_in_flight = IntGaugeVec::new(
            Opts::new(
                "pullahead_pulls_in_flight",
                "Prefetch pulls running now, by node.",
            ),
            &["node"],
        )?;
        r.register(Box::new(pulls_in_flight.clone()))?;
        let plans_awaiting_node = IntGauge::new(
            "pullahead_plans_awaiting_node",
            "Node plans kept until their Node object appears (a NodeClaim named it first).",
        )?;
        r.register(Box::new(plans_awaiting_node.clone()))?;
        let dispatch_latency = HistogramVec::new(
            HistogramOpts::new(
                "pullahead_dispatch_latency_seconds",
                "Time from an event arriving at the controller to the NodePrefetch write it caused being sent.",
            )
            .buckets(vec![0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0]),
            &["kind"],
        )?;
        r.register(Box::new(dispatch_latency.clone()))?;
        Ok(Self {
            events: counter_vec(
                &r,
                "pullahead_events_total",
                "Events taken in, by event type.",
                &["type"],
            )?,
            events_dropped: counter_vec(
                &r,
                "pullahead_events_dropped_total",
                "Events dropped before planning, by reason.",
                &["reason"],
            )?,
            pull_orders: counter_vec(
                &r,
                "pullahead_pull_orders_total",
                "Pull orders emitted by the planner, by reason.",
                &["reason"],
            )?,
            pulls: counter_vec(
                &r,
                "pullahead_pulls_total",
                "Prefetch pulls finished, by result.",
                &["result"],
            )?,
            pull_bytes,
            pull_duration: histogram(
                &r,
                "pullahead_pull_duration_seconds",
                "Duration of one prefetch pull.",
                PULL_BUCKETS,
            )?,
            prefetch_lead_time: histogram(
                &r,
                "pullahead_prefetch_lead_time_seconds",
                "Time between a prefetched image landing on a node and a pod that uses it being bound there.",
                PULL_BUCKETS,
            )?,
            pod_image_lookups: counter_vec(
                &r,
                "pullahead_pod_image_lookups_total",
                "Images of pods bound to a node, by what they found: hit (present), inflight (prefetch running), miss (kubelet pulled it).",
                &["outcome"],
            )?,
            wasted_bytes,
            planner_decision: histogram(
                &r,
                "pullahead_planner_decision_seconds",
                "Time the planner spent handling one event.",
                DECISION_BUCKETS,
            )?,
            forecast_brier_score,
            watch_last_event,
            kafka_consumer_lag,
            kafka_errors,
            leader,
            pulls_in_flight,
            nodeprefetch_writes: counter_vec(
                &r,
                "pullahead_nodeprefetch_writes_total",
                "NodePrefetch server-side apply calls, by result.",
                &["result"],
            )?,
            dispatch_latency,
            plans_awaiting_node,
            registry: r,
        })
    }

    /// The registry, for components that add their own collectors.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on a malformed family, which our
        // fixed set cannot produce; an empty page is the safe fallback.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Where this replica stands with the leader Lease, as `/readyz` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LeaseStatus {
    /// Not yet known: the first Lease read has not come back.
    Unknown = 0,
    /// This replica holds the Lease.
    Held = 1,
    /// Another live replica holds it.
    HeldByOther = 2,
    /// No election (dry run or a single replica by configuration).
    Disabled = 3,
}

/// Liveness and readiness, shared between the controller and the server.
#[derive(Debug, Default)]
pub struct Health {
    synced: AtomicBool,
    lease: AtomicU8,
}

impl Health {
    /// Health before anything has happened: alive, not ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the initial sync (first list of every watched kind) as done.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    /// Records where this replica stands with the Lease.
    pub fn set_lease(&self, s: LeaseStatus) {
        self.lease.store(s as u8, Ordering::Release);
    }

    /// Where this replica stands with the Lease.
    pub fn lease(&self) -> LeaseStatus {
        match self.lease.load(Ordering::Acquire) {
            1 => LeaseStatus::Held,
            2 => LeaseStatus::HeldByOther,
            3 => LeaseStatus::Disabled,
            _ => LeaseStatus::Unknown,
        }
    }

    /// Ready: the initial sync is done and the Lease's holder is known.
    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire) && self.lease() != LeaseStatus::Unknown
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The router with `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

async fn scrape(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.health.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = format!(
            "not ready: synced={} lease={:?}\n",
            s.health.synced.load(Ordering::Acquire),
            s.health.lease()
        );
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

/// A bound metrics server, not yet running.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, metrics: Metrics, health: Arc<Health>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self {
            listener,
            router: router(metrics, health),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_named_in_the_issue_is_exported() {
        let m = Metrics::new().unwrap();
        // Vectors appear only once a label set is used.
        m.events.with_label_values(&["pod"]).inc();
        m.events_dropped.with_label_values(&["queue-full"]).inc();
        m.pull_orders.with_label_values(&["nominated"]).inc();
        m.pulls.with_label_values(&["ok"]).inc();
        m.pod_image_lookups.with_label_values(&["hit"]).inc();
        m.watch_last_event.with_label_values(&["Node"]).set(1.0);
        m.kafka_consumer_lag.with_label_values(&["0"]).set(3);
        let text = m.render();
        for name in [
            "pullahead_events_total{type=\"pod\"} 1",
            "pullahead_events_dropped_total{reason=\"queue-full\"} 1",
            "pullahead_pull_orders_total{reason=\"nominated\"} 1",
            "pullahead_pulls_total{result=\"ok\"} 1",
            "pullahead_pull_bytes_total 0",
            "# TYPE pullahead_pull_duration_seconds histogram",
            "# TYPE pullahead_prefetch_lead_time_seconds histogram",
            "pullahead_pod_image_lookups_total{outcome=\"hit\"} 1",
            "pullahead_wasted_bytes_total 0",
            "# TYPE pullahead_planner_decision_seconds histogram",
            "pullahead_forecast_brier_score NaN",
            "pullahead_watch_last_event_timestamp_seconds{kind=\"Node\"} 1",
            "pullahead_kafka_consumer_lag{partition=\"0\"} 3",
            "pullahead_kafka_errors_total 0",
            "pullahead_leader 0",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    #[test]
    fn ready_needs_sync_and_a_known_lease_holder() {
        let h = Health::new();
        assert!(!h.ready());
        h.set_synced();
        assert!(!h.ready(), "lease holder still unknown");
        h.set_lease(LeaseStatus::HeldByOther);
        assert!(h.ready());
        let h = Health::new();
        h.set_lease(LeaseStatus::Held);
        assert!(!h.ready(), "not synced yet");
    }
}
