//! The in-process bus: bounded queues, one per subscriber.
//!
//! Publishing never waits. When a subscriber's queue is full the event is
//! dropped for that subscriber and counted (in
//! `pullahead_bus_dropped_events_total`, or the counter given to
//! [`InProcessBus::with_dropped_counter`]), so a stuck planner shows up in the
//! metrics instead of stalling the watchers or growing memory without bound.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::{Bus, Delivery, Result, Subscription};
use crate::event::Event;

/// The default queue length per subscriber, in events.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// A bounded publish/subscribe bus inside one process.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

struct Inner {
    subscribers: Mutex<Vec<mpsc::Sender<Event>>>,
    capacity: usize,
    dropped: IntCounter,
    published: IntCounter,
}

impl InProcessBus {
    /// A bus whose subscribers each queue up to `capacity` events.
    pub fn new(capacity: usize) -> Result<Self> {
        Self::with_dropped_counter(
            capacity,
            IntCounter::new(
                "pullahead_bus_dropped_events_total",
                "Events dropped by the in-process bus because a subscriber's queue was full.",
            )?,
        )
    }

    /// A bus that counts its drops in `dropped`: `pullahead run` passes its
    /// `pullahead_events_dropped_total{reason="queue-full"}` child, so the
    /// alert on that series sees the watchers' drops too.
    pub fn with_dropped_counter(capacity: usize, dropped: IntCounter) -> Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                subscribers: Mutex::new(Vec::new()),
                capacity: capacity.max(1),
                dropped,
                published: IntCounter::new(
                    "pullahead_bus_published_events_total",
                    "Events published on the in-process bus.",
                )?,
            }),
        })
    }

    /// Events dropped so far because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.get()
    }

    /// The drop counter, for registration with a Prometheus registry.
    pub fn dropped_counter(&self) -> IntCounter {
        self.inner.dropped.clone()
    }

    /// The publish counter, for registration with a Prometheus registry.
    pub fn published_counter(&self) -> IntCounter {
        self.inner.published.clone()
    }

    /// Publishes without waiting; drops and counts where a queue is full.
    pub fn send(&self, event: Event) {
        self.send_all(std::iter::once(event));
    }

    /// Publishes `events` in order, as [`InProcessBus::send`] does each, with
    /// the subscriber list locked once for all of them: the watcher hands
    /// over the events of one watch event together.
    pub fn send_all<I>(&self, events: I)
    where
        I: IntoIterator<Item = Event>,
        I::IntoIter: ExactSizeIterator,
    {
        let events = events.into_iter();
        // Counted before any is delivered, as a single send counts, so that
        // a subscriber never sees an event the counter does not include; once
        // per call, as each update is an atomic add that a metrics scrape on
        // another core contends on.
        self.inner.published.inc_by(events.len() as u64);
        let mut subs = match self.inner.subscribers.lock() {
            Ok(s) => s,
            // A panic elsewhere while holding the lock leaves the list intact.
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut closed = false;
        for event in events {
            let last = subs.len().saturating_sub(1);
            let mut event = Some(event);
            for (i, tx) in subs.iter().enumerate() {
                // The last subscriber gets the event itself, the others a copy.
                let e = if i == last {
                    event.take()
                } else {
                    event.clone()
                };
                let Some(e) = e else { break };
                match tx.try_send(e) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => self.inner.dropped.inc(),
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            subs.retain(|tx| !tx.is_closed());
        }
    }

    /// Ends every subscription once its queue is drained.
    pub fn close(&self) {
        match self.inner.subscribers.lock() {
            Ok(mut s) => s.clear(),
            Err(poisoned) => poisoned.into_inner().clear(),
        }
    }
}

impl InProcessBus {
    /// A subscription as its concrete type, for callers that want
    /// [`InProcessSubscription::try_recv`].
    pub fn subscribe_local(&self) -> InProcessSubscription {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        match self.inner.subscribers.lock() {
            Ok(mut s) => s.push(tx),
            Err(poisoned) => poisoned.into_inner().push(tx),
        }
        InProcessSubscription { rx }
    }
}

impl Bus for InProcessBus {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<()>> {
        self.send(event.clone());
        Box::pin(async { Ok(()) })
    }

    fn publish_all<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<()>> {
        // One lock and one future for the batch instead of one per event.
        self.send_all(events.iter().cloned());
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(self.subscribe_local()))
    }
}

/// A subscriber's end of an [`InProcessBus`].
pub struct InProcessSubscription {
    rx: mpsc::Receiver<Event>,
}

impl InProcessSubscription {
    /// The next event, without the [`Delivery`] wrapper.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next queued event, without waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The queue itself, for a consumer that takes a plain channel (the
    /// controller loop). It ends once the bus is closed or dropped.
    pub fn into_receiver(self) -> mpsc::Receiver<Event> {
        self.rx
    }
}

impl Subscription for InProcessSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(async move { self.rx.recv().await.map(|e| Ok(Delivery::unacked(e))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Node, NodePhase};

    fn node(i: u32) -> Event {
        Event::new(
            f64::from(i),
            Node {
                node: format!("n{i}"),
                phase: NodePhase::Registered,
                pool: None,
                labels: Default::default(),
                taints: None,
                images: None,
                image_fs_bytes: None,
            },
        )
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_in_order() {
        let bus = InProcessBus::new(16).unwrap();
        let mut a = bus.subscribe().unwrap();
        let mut b = bus.subscribe().unwrap();
        for i in 0..10 {
            bus.publish(&node(i)).await.unwrap();
        }
        bus.close();
        for sub in [&mut a, &mut b] {
            let mut got = Vec::new();
            while let Some(d) = sub.next().await {
                let d = d.unwrap();
                got.push(d.event.ts);
                d.ack().unwrap();
            }
            assert_eq!(got, (0..10).map(f64::from).collect::<Vec<_>>());
        }
        assert_eq!(bus.dropped(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let bus = InProcessBus::new(4).unwrap();
        let mut sub = bus.subscribe().unwrap();
        for i in 0..10 {
            bus.send(node(i));
        }
        assert_eq!(bus.dropped(), 6);
        assert_eq!(bus.dropped_counter().get(), 6);
        assert_eq!(bus.published_counter().get(), 10);
        bus.close();
        let mut kept = Vec::new();
        while let Some(d) = sub.next().await {
            kept.push(d.unwrap().event.ts);
        }
        // The oldest events stay; the overflow is what was dropped.
        assert_eq!(kept, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[tokio::test]
    async fn drops_go_to_the_given_counter_and_the_receiver_ends_with_the_bus() {
        let outer = prometheus::IntCounterVec::new(
            prometheus::Opts::new("dropped_total", "test"),
            &["reason"],
        )
        .unwrap();
        let bus = InProcessBus::with_dropped_counter(2, outer.with_label_values(&["queue-full"]))
            .unwrap();
        let mut rx = bus.subscribe_local().into_receiver();
        for i in 0..5 {
            bus.send(node(i));
        }
        // The labelled child shares its value with the vector.
        assert_eq!(outer.with_label_values(&["queue-full"]).get(), 3);
        drop(bus);
        assert_eq!(rx.recv().await.map(|e| e.ts), Some(0.0));
        assert_eq!(rx.recv().await.map(|e| e.ts), Some(1.0));
        assert!(rx.recv().await.is_none(), "the queue ends with the bus");
    }

    #[tokio::test]
    async fn a_batch_is_delivered_in_order_and_counted_like_single_sends() {
        let bus = InProcessBus::new(4).unwrap();
        let mut a = bus.subscribe_local();
        let mut b = bus.subscribe_local();
        bus.send_all((0..6).map(node));
        bus.publish_all(&[node(6)]).await.unwrap();
        assert_eq!(bus.published_counter().get(), 7);
        assert_eq!(
            bus.dropped(),
            6,
            "3 events over capacity, for 2 subscribers"
        );
        for sub in [&mut a, &mut b] {
            let got: Vec<f64> = std::iter::from_fn(|| sub.try_recv().map(|e| e.ts)).collect();
            assert_eq!(got, vec![0.0, 1.0, 2.0, 3.0]);
        }
    }

    #[tokio::test]
    async fn a_gone_subscriber_is_forgotten() {
        let bus = InProcessBus::new(4).unwrap();
        let sub = bus.subscribe().unwrap();
        drop(sub);
        for i in 0..10 {
            bus.send(node(i));
        }
        assert_eq!(bus.dropped(), 0);
        assert!(bus.inner.subscribers.lock().unwrap().is_empty());
    }
}
