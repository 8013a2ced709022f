//! The Kafka transport, on rdkafka (librdkafka).
//!
//! - **Keys.** Each message's key is [`super::entity_key`]: the node, the
//!   workload, ... Kafka keeps order within a partition and a key always maps
//!   to one partition, so each entity's events stay in order.
//! - **Producer.** Idempotent (`enable.idempotence=true`, which implies
//!   `acks=all` and bounded in-flight requests), so librdkafka retries failed
//!   produce requests without duplicating or reordering messages. The message
//!   timestamp is the event's `ts`, so a replay can find its start with
//!   `offsets_for_times`. Each message also carries the producer's sequence
//!   number in the `pullahead-seq` header, so that a replay can put events
//!   of equal `ts` from different partitions back in the order they were
//!   published.
//! - **Consumer.** At least once: automatic offset storing is off, and a
//!   [`Delivery`]'s offset is stored only when it is acked, after the event
//!   was applied. Stored offsets are committed in the background and on
//!   [`Subscription::commit`]. Partitions are `assign`ed (no group rebalance)
//!   from the group's committed offsets, so a restarted consumer resumes where
//!   it left off and sees again whatever it had not acked.
//! - **Configuration.** Any librdkafka property can be passed as
//!   `-X key=value`; it overrides the defaults set here.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{Bus, Delivery, Error, Result, Subscription, entity_key};
use crate::event::{Event, EventReader};

/// The header that carries a message's place in its producer's sequence.
const SEQ_HEADER: &str = "pullahead-seq";

/// The producer sequence number of a message, when it has one.
fn seq_of<M: Message>(msg: &M) -> Option<u64> {
    let value = msg.headers()?.iter().find(|h| h.key == SEQ_HEADER)?.value?;
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// How long metadata and offset look-ups may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka flags shared by the commands that use a topic.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port[,host:port…]`. Enables the Kafka
    /// bus: `record` publishes to the topic, `replay` and `run` read from it.
    #[arg(long, env = "PULLAHEAD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The Kafka topic that carries the events.
    #[arg(
        long,
        env = "PULLAHEAD_KAFKA_TOPIC",
        default_value = "pullahead-events"
    )]
    pub kafka_topic: String,
    /// Consumer group whose committed offsets a consumer resumes from.
    #[arg(long, env = "PULLAHEAD_KAFKA_GROUP", default_value = "pullahead")]
    pub kafka_group: String,
    /// A librdkafka property, `key=value`; repeatable. Overrides pullahead's defaults.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub kafka_option: Vec<String>,
}

impl KafkaArgs {
    /// The Kafka settings, or `None` when no brokers were given.
    pub fn config(&self) -> Result<Option<KafkaConfig>> {
        let Some(brokers) = self.kafka_brokers.clone() else {
            return Ok(None);
        };
        let options = self
            .kafka_option
            .iter()
            .map(|o| parse_option(o))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(KafkaConfig {
            brokers,
            topic: self.kafka_topic.clone(),
            group: self.kafka_group.clone(),
            options,
        }))
    }
}

/// Splits a `-X key=value` option.
pub fn parse_option(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::BadOption(s.to_string())),
    }
}

/// Where the events live and how to talk to the brokers.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumer group for subscriptions.
    pub group: String,
    /// librdkafka properties that override the defaults.
    pub options: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Settings for `brokers` and `topic` with the default group and no
    /// extra options.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            group: "pullahead".into(),
            options: Vec::new(),
        }
    }

    fn client(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> Error {
    move |source| Error::Kafka {
        context: context.into(),
        source,
    }
}

/// The Kafka message timestamp for an event time: epoch milliseconds.
fn timestamp_ms(ts: f64) -> Option<i64> {
    (ts.is_finite() && ts >= 0.0).then(|| (ts * 1000.0).floor() as i64)
}

/// Decodes one message payload; `None` for payloads that carry no event
/// (a header, an unknown type).
fn decode(topic: &str, partition: i32, offset: i64, payload: &[u8]) -> Result<Option<Event>> {
    let name = format!("kafka:{topic}/{partition}@{offset}");
    match EventReader::new(payload, name).next() {
        Some(Ok(e)) => Ok(Some(e)),
        None => Ok(None),
        Some(Err(source)) => Err(Error::Decode {
            topic: topic.to_string(),
            partition,
            offset,
            source,
        }),
    }
}

/// Publishes to and subscribes from one Kafka topic.
pub struct KafkaBus {
    config: KafkaConfig,
    producer: FutureProducer,
    /// The next message's sequence number (see [`SEQ_HEADER`]).
    seq: AtomicU64,
}

impl KafkaBus {
    /// Connects a producer. librdkafka connects lazily, so this does not wait
    /// for the brokers.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        let producer = config
            .client(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
                ("retry.backoff.ms", "20"),
            ])
            .create()
            .map_err(kafka("creating the producer"))?;
        Ok(Self {
            config,
            producer,
            seq: AtomicU64::new(0),
        })
    }

    /// The settings this bus was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// Queues one event for sending; waits only while librdkafka's own queue
    /// is full.
    async fn enqueue(&self, event: &Event) -> Result<DeliveryFuture> {
        let key = entity_key(event);
        let payload = serde_json::to_vec(event).map_err(Error::Encode)?;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        loop {
            let headers = OwnedHeaders::new().insert(Header {
                key: SEQ_HEADER,
                value: Some(&seq[..]),
            });
            let mut record = FutureRecord::to(&self.config.topic)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            if let Some(ms) = timestamp_ms(event.ts) {
                record = record.timestamp(ms);
            }
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(kafka("queueing an event")(e)),
            }
        }
    }

    async fn settle(&self, f: DeliveryFuture) -> Result<()> {
        match f.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(kafka(format!("delivering to {}", self.config.topic))(e)),
            Err(_) => Err(Error::Closed),
        }
    }
}

impl Bus for KafkaBus {
    fn publish<'a>(&'a self, event: &'a Event) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let f = self.enqueue(event).await?;
            self.settle(f).await
        })
    }

    fn publish_all<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Queue everything first so the producer batches, then wait for
            // every acknowledgement; the idempotent producer keeps order.
            let mut pending = Vec::with_capacity(events.len());
            for e in events {
                pending.push(self.enqueue(e).await?);
            }
            let mut first_error = None;
            for f in pending {
                if let Err(e) = self.settle(f).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    fn subscribe(&self) -> Result<Box<dyn Subscription>> {
        Ok(Box::new(KafkaSubscription::new(&self.config)?))
    }
}

/// Partitions of `topic`, from the brokers' metadata.
fn partitions<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka(format!("reading metadata of {topic}")))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        return Err(Error::NoTopic(topic.to_string()));
    }
    Ok(parts)
}

/// The subscription's client context. librdkafka reports broker trouble as
/// log lines and global errors while it retries by itself. Until the
/// subscription is assigned, start-up returns its own error naming what
/// failed, so these go to debug; afterwards each one is a warning naming the
/// brokers and topic, and is counted, because nothing else surfaces it.
pub struct SubscriptionContext {
    brokers: String,
    topic: String,
    live: std::sync::atomic::AtomicBool,
    errors: Option<prometheus::IntCounter>,
}

impl SubscriptionContext {
    fn count(&self) {
        if let Some(c) = &self.errors {
            c.inc();
        }
    }
}

impl ClientContext for SubscriptionContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let live = self.live.load(Ordering::Relaxed);
        if live && (level as i32) <= (RDKafkaLogLevel::Warning as i32) {
            tracing::warn!(target: "librdkafka", brokers = %self.brokers, topic = %self.topic, fac, "{log_message}");
        } else {
            tracing::debug!(target: "librdkafka", ?level, fac, "{log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.live.load(Ordering::Relaxed) {
            self.count();
            tracing::warn!(
                brokers = %self.brokers,
                topic = %self.topic,
                %error,
                reason,
                "kafka client error; librdkafka keeps retrying"
            );
        } else {
            tracing::debug!(target: "librdkafka", %error, reason, "client error");
        }
    }
}

impl ConsumerContext for SubscriptionContext {}

type SubConsumer = StreamConsumer<SubscriptionContext>;

/// An at-least-once consumer of every partition of the topic.
pub struct KafkaSubscription {
    consumer: Arc<SubConsumer>,
    topic: String,
}

impl KafkaSubscription {
    /// Assigns every partition of the topic, starting from the group's
    /// committed offsets (the earliest offset where there are none).
    /// Blocking for up to 10 s while it reads the topic's metadata.
    pub fn new(config: &KafkaConfig) -> Result<Self> {
        Self::connect(config, LOOKUP_TIMEOUT, None)
    }

    /// [`KafkaSubscription::new`] with `timeout` as the bound on the
    /// metadata look-up, so an unreachable broker is an error instead of a
    /// hang, and `errors` counting the broker errors reported once the
    /// subscription is assigned. Blocking: from async code, call it through
    /// `spawn_blocking`.
    pub fn connect(
        config: &KafkaConfig,
        timeout: Duration,
        errors: Option<prometheus::IntCounter>,
    ) -> Result<Self> {
        let context = SubscriptionContext {
            brokers: config.brokers.clone(),
            topic: config.topic.clone(),
            live: std::sync::atomic::AtomicBool::new(false),
            errors,
        };
        let consumer: SubConsumer = config
            .client(&[
                ("group.id", config.group.as_str()),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ])
            .create_with_context(context)
            .map_err(kafka("creating the consumer"))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions(&consumer, &config.topic, timeout)? {
            tpl.add_partition_offset(&config.topic, p, Offset::Stored)
                .map_err(kafka("building the assignment"))?;
        }
        consumer
            .assign(&tpl)
            .map_err(kafka(format!("assigning {}", config.topic)))?;
        consumer.context().live.store(true, Ordering::Relaxed);
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: config.topic.clone(),
        })
    }

    /// A handle that measures this subscription's lag; it stays usable
    /// while the subscription itself is busy in [`Subscription::next`].
    pub fn lag_probe(&self) -> LagProbe {
        LagProbe {
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
        }
    }
}

/// Measures how far a [`KafkaSubscription`] is behind the head of its topic.
#[derive(Clone)]
pub struct LagProbe {
    consumer: Arc<SubConsumer>,
    topic: String,
}

impl LagProbe {
    /// Per assigned partition, `(partition, high watermark - position)`:
    /// the messages not yet handed to the application. Where nothing was
    /// read yet, the position is the group's committed offset, else the
    /// partition's low watermark. Blocking (one broker round trip per
    /// partition, each bounded by `timeout`): from async code, call it
    /// through `spawn_blocking`.
    pub fn lag(&self, timeout: Duration) -> Result<Vec<(i32, i64)>> {
        let position = self
            .consumer
            .position()
            .map_err(kafka(format!("reading the position on {}", self.topic)))?;
        let mut committed = None;
        let mut out = Vec::new();
        for e in position.elements_for_topic(&self.topic) {
            let p = e.partition();
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.topic, p, timeout)
                .map_err(kafka(format!("reading watermarks of {}/{p}", self.topic)))?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => {
                    if committed.is_none() {
                        committed = Some(self.consumer.committed(timeout).map_err(kafka(
                            format!("reading committed offsets of {}", self.topic),
                        ))?);
                    }
                    match committed
                        .as_ref()
                        .and_then(|c| c.find_partition(&self.topic, p))
                        .map(|c| c.offset())
                    {
                        Some(Offset::Offset(o)) => o,
                        _ => low,
                    }
                }
            };
            out.push((p, (high - at.max(low)).max(0)));
        }
        Ok(out)
    }
}

impl Subscription for KafkaSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery>>> {
        Box::pin(async move {
            loop {
                let msg = match self.consumer.recv().await {
                    Ok(m) => m,
                    Err(e) => return Some(Err(kafka(format!("consuming {}", self.topic))(e))),
                };
                let (partition, offset) = (msg.partition(), msg.offset());
                let ack = Ack {
                    consumer: self.consumer.clone(),
                    topic: self.topic.clone(),
                    partition,
                    offset,
                };
                match decode(
                    &self.topic,
                    partition,
                    offset,
                    msg.payload().unwrap_or_default(),
                ) {
                    Ok(Some(event)) => {
                        return Some(Ok(Delivery {
                            event,
                            ack: Some(ack),
                        }));
                    }
                    // Nothing to apply: acknowledge at once so it is not re-read.
                    Ok(None) => {
                        if let Err(e) = ack.store() {
                            return Some(Err(e));
                        }
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
        })
    }

    fn commit(&mut self) -> Result<()> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(kafka(format!("committing offsets of {}", self.topic))(e)),
        }
    }
}

/// The position of a delivered message, to store once it has been applied.
pub(super) struct Ack {
    consumer: Arc<SubConsumer>,
    topic: String,
    partition: i32,
    offset: i64,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ack({}/{}@{})", self.topic, self.partition, self.offset)
    }
}

impl Ack {
    /// Stores, for each partition, the offset after the furthest of `acks`.
    pub(super) fn store_all(acks: impl Iterator<Item = Ack>) -> Result<()> {
        let mut furthest: HashMap<i32, Ack> = HashMap::new();
        for a in acks {
            match furthest.get(&a.partition) {
                Some(f) if f.offset >= a.offset => {}
                _ => {
                    furthest.insert(a.partition, a);
                }
            }
        }
        for a in furthest.into_values() {
            a.store()?;
        }
        Ok(())
    }

    pub(super) fn store(self) -> Result<()> {
        // librdkafka stores offset + 1: the next message to read.
        self.consumer
            .store_offset(&self.topic, self.partition, self.offset)
            .map_err(kafka(format!(
                "storing offset {}/{}@{}",
                self.topic, self.partition, self.offset
            )))
    }
}

/// The replay reader's client context. librdkafka reports an unreachable
/// broker as a stream of log lines and global errors while it retries; a
/// replay read is one bounded call whose own error says what failed, so those
/// go to debug instead of flooding the terminal at ERROR.
struct QuietContext;

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "client error");
    }
}

impl ConsumerContext for QuietContext {}

/// Reads the events of the topic with `from <= ts <= until`, in time order,
/// for replay; events of equal `ts` keep the order their producer published
/// them in. The start of each partition is found with
/// `offsets_for_times`; reading stops at the end offsets seen when the call
/// began. Blocking: from async code, call it through `spawn_blocking`.
/// Each broker look-up, and each wait for the next message, gives up after
/// 10 s; [`read_range_within`] sets that bound.
pub fn read_range(
    config: &KafkaConfig,
    from: Option<f64>,
    until: Option<f64>,
) -> Result<Vec<Event>> {
    read_range_within(config, from, until, LOOKUP_TIMEOUT)
}

/// [`read_range`] with `timeout` as the bound on each broker look-up and on
/// each wait for the next message, so that an unreachable broker or a
/// stalled partition ends in an error instead of a hang.
pub fn read_range_within(
    config: &KafkaConfig,
    from: Option<f64>,
    until: Option<f64>,
    timeout: Duration,
) -> Result<Vec<Event>> {
    for t in from.iter().chain(until.iter()) {
        if !t.is_finite() {
            return Err(Error::BadTime(*t));
        }
    }
    let consumer: BaseConsumer<QuietContext> = config
        .client(&[
            ("group.id", "pullahead-replay"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // A replay only reads: a mistyped topic must be an error, not a
            // new empty topic on brokers that create topics on demand.
            ("allow.auto.create.topics", "false"),
        ])
        .create_with_context(QuietContext)
        .map_err(kafka("creating the replay consumer"))?;
    let topic = config.topic.as_str();
    let parts = partitions(&consumer, topic, timeout)?;

    // Where each partition starts and ends.
    let mut starts: Vec<(i32, i64)> = Vec::new();
    let by_time = match from.and_then(timestamp_ms) {
        Some(ms) => {
            let mut q = TopicPartitionList::new();
            for &p in &parts {
                q.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(kafka("building the time query"))?;
            }
            Some(
                consumer
                    .offsets_for_times(q, timeout)
                    .map_err(kafka(format!("finding offsets of {topic} by time")))?,
            )
        }
        None => None,
    };
    let mut remaining = std::collections::HashMap::new();
    for &p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka(format!("reading watermarks of {topic}/{p}")))?;
        let start = match by_time.as_ref().and_then(|t| t.find_partition(topic, p)) {
            Some(e) => match e.offset() {
                Offset::Offset(o) => o,
                // Kafka answers "end" when no message is at or after `from`,
                // but some brokers (librdkafka's MockCluster among them) do not
                // index by time and answer "end" for every time. Scanning from
                // the start and filtering by `ts` is correct for both.
                _ => {
                    tracing::debug!(
                        topic,
                        partition = p,
                        "no offset for the start time; scanning the partition"
                    );
                    low
                }
            },
            None => low,
        };
        if start < high {
            starts.push((p, start));
            remaining.insert(p, high);
        }
    }
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &starts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(kafka("building the assignment"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(kafka(format!("assigning {topic}")))?;

    let mut events = Vec::new();
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            if last_progress.elapsed() > timeout {
                return Err(kafka(format!("reading {topic}"))(
                    KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                ));
            }
            continue;
        };
        let msg = msg.map_err(kafka(format!("reading {topic}")))?;
        last_progress = Instant::now();
        let (p, o) = (msg.partition(), msg.offset());
        if let Some(event) = decode(topic, p, o, msg.payload().unwrap_or_default())?
            && from.is_none_or(|f| event.ts >= f)
            && until.is_none_or(|u| event.ts <= u)
        {
            events.push((seq_of(&msg), event));
        }
        if remaining.get(&p).is_some_and(|&high| o + 1 >= high) {
            remaining.remove(&p);
        }
    }
    // Merge the partitions by time, and equal times by the producer's
    // sequence: one recorder's events then come back exactly in the order it
    // saw them, which the simulator depends on (a node registers before the
    // pod bound to it in the same second). Messages without a sequence sort
    // after those with one; the sort is stable, so each partition's (and so
    // each entity's) order is kept among equal keys.
    events.sort_by(|(sa, a), (sb, b)| {
        a.ts.total_cmp(&b.ts)
            .then_with(|| sa.unwrap_or(u64::MAX).cmp(&sb.unwrap_or(u64::MAX)))
    });
    Ok(events.into_iter().map(|(_, e)| e).collect())
}
