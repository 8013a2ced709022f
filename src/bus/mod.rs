//! The event bus: how events travel from the sources (watchers, files) to the
//! planner and to recorders.
//!
//! One [`Bus`] interface, two transports:
//! - [`memory::InProcessBus`], the default: bounded queues inside the process.
//!   A full queue drops the event and counts it; publishers never block, so a
//!   slow consumer cannot stall the watchers.
//! - [`kafka::KafkaBus`]: a Kafka topic, for several clusters or replicas that
//!   share one stream. The key is the entity (node, workload, ...) so each
//!   entity keeps its order; delivery is at least once.
//!
//! Consumers receive [`Delivery`]s and call [`Delivery::ack`] once the event
//! has been applied. On Kafka the ack stores the offset, so a consumer that
//! dies before acking sees the event again after a restart. Events are
//! idempotent state changes ("node X is ready"), so applying one twice leaves
//! the same state.

pub mod kafka;
pub mod memory;

use futures::future::BoxFuture;

use crate::event::{Body, Event};

/// Errors from the bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kafka client call failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The librdkafka error.
        source: rdkafka::error::KafkaError,
    },
    /// A message on the topic is not a schema-v1 event.
    #[error("kafka: {topic}/{partition}@{offset}: {source}")]
    Decode {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset of the bad message.
        offset: i64,
        /// Why it could not be read.
        source: crate::event::Error,
    },
    /// An event could not be encoded.
    #[error("cannot encode event: {0}")]
    Encode(#[source] serde_json::Error),
    /// A `-X key=value` option is malformed.
    #[error("kafka option {0:?} is not of the form key=value")]
    BadOption(String),
    /// The topic has no partitions, or does not exist.
    #[error("kafka: topic {0:?} not found or has no partitions")]
    NoTopic(String),
    /// A time bound is not a finite number of seconds.
    #[error("time bound {0} is not a finite number of seconds")]
    BadTime(f64),
    /// A metric could not be created.
    #[error("metric: {0}")]
    Metric(#[from] prometheus::Error),
    /// The bus was closed: every publisher is gone.
    #[error("the bus is closed")]
    Closed,
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Publish and subscribe of [`Event`]s.
pub trait Bus: Send + Sync {
    /// Publishes one event. In-process this never waits; on Kafka it waits
    /// for the broker's acknowledgement.
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<()>>;

    /// Publishes events in order, pipelined where the transport can.
    fn publish_all<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for e in events {
                self.publish(e).await?;
            }
            Ok(())
        })
    }

    /// A new subscription. In-process, it sees events published from now on;
    /// on Kafka, it resumes from the committed offsets of its group.
    fn subscribe(&self) -> Result<Box<dyn Subscription>>;
}

/// A stream of deliveries from a [`Bus`].
pub trait Subscription: Send {
    /// The next delivery; `None` when the bus is closed.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>>;

    /// Makes acknowledged progress durable now (Kafka: a synchronous commit
    /// of stored offsets). Call it before a planned shutdown.
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
}

/// One event handed to a consumer, with the means to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    ack: Option<kafka::Ack>,
}

impl Delivery {
    /// A delivery that needs no acknowledgement (in-process).
    pub fn unacked(event: Event) -> Self {
        Self { event, ack: None }
    }

    /// Tells the transport the event has been applied. On Kafka this stores
    /// the offset for the next commit; without it the event comes again
    /// after a restart.
    pub fn ack(self) -> Result<()> {
        match self.ack {
            Some(a) => a.store(),
            None => Ok(()),
        }
    }

    /// The event, and the acknowledgement to give once it is applied.
    pub fn split(self) -> (Event, Pending) {
        (self.event, Pending(self.ack))
    }
}

/// The acknowledgement of a delivery whose event was handed on: kept until
/// the event has been applied, then given with [`Pending::ack_all`].
#[derive(Debug)]
pub struct Pending(Option<kafka::Ack>);

impl Pending {
    /// Acknowledges every one of `pending` at once: on Kafka, one store of
    /// the furthest offset of each partition, so that acknowledging costs
    /// a call a batch rather than one an event.
    pub fn ack_all(pending: impl IntoIterator<Item = Pending>) -> Result<()> {
        kafka::Ack::store_all(pending.into_iter().filter_map(|p| p.0))
    }
}

/// The entity an event belongs to, used as the Kafka key so that each
/// entity's events stay in one partition and so in order.
///
/// Node-side events are keyed by node (`node/NAME`); workload-side events
/// (workload, HPA, the pods of a workload) by workload (`workload/NS/NAME`).
/// A pod without a workload is its own entity, as are NodeClaims, scale-up
/// groups and images.
pub fn entity_key(event: &Event) -> String {
    match &event.body {
        Body::Node(n) => format!("node/{}", n.node),
        Body::Pull(p) => format!("node/{}", p.node),
        Body::NodeClaim(c) => format!("nodeclaim/{}", c.node_claim),
        Body::Workload(w) => format!("workload/{}", w.workload),
        Body::Hpa(h) => format!("workload/{}", h.workload),
        Body::Pod(p) => match &p.workload {
            Some(w) => format!("workload/{w}"),
            None => format!("pod/{}", p.pod),
        },
        Body::ScaleUp(s) => format!("group/{}", s.group),
        Body::Image(i) => format!("image/{}", i.image),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Pod, PodPhase};

    #[test]
    fn pods_of_a_workload_share_its_key() {
        let pod = |name: &str, w: Option<&str>| {
            Event::new(
                1.0,
                Pod {
                    pod: name.into(),
                    workload: w.map(Into::into),
                    images: vec![],
                    phase: PodPhase::Pending,
                    node: None,
                    node_claim: None,
                },
            )
        };
        assert_eq!(entity_key(&pod("ns/a-1", Some("ns/a"))), "workload/ns/a");
        assert_eq!(entity_key(&pod("ns/a-2", Some("ns/a"))), "workload/ns/a");
        assert_eq!(entity_key(&pod("ns/solo", None)), "pod/ns/solo");
    }
}
