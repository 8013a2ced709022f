//! `pullahead record`: watch a live cluster and write its events to a JSONL
//! file, to a Kafka topic, or to both.
//!
//! The file is flushed at least once a second, so a killed process loses at
//! most about a second of events. SIGINT and SIGTERM stop the watchers, drain
//! what they produced, flush, and exit 0. With no cluster reachable the
//! command fails within `--connect-timeout`, naming the configuration it
//! tried.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::bus::kafka::{self, KafkaBus};
use crate::bus::memory::InProcessBus;
use crate::bus::{self as busmod, Bus};
use crate::clock::{Clock, SystemClock};
use crate::event::{self, EventWriter, Header};
use crate::watch::{self, Readiness};

/// Errors from recording.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting or watching failed.
    #[error(transparent)]
    Watch(#[from] watch::Error),
    /// The bus (Kafka) failed.
    #[error(transparent)]
    Bus(#[from] busmod::Error),
    /// Writing the file failed.
    #[error(transparent)]
    Event(#[from] event::Error),
    /// Installing a signal handler failed.
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
    /// The watch task failed.
    #[error("the watch task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a duration such as `2h`, `90m`, `1h30m`, `45s` or `500ms`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a duration like 2h, 90m or 30s: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("{s:?} is negative"))
}

/// `pullahead record` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSONL file to write (`-` is standard output). Defaults to standard output when no Kafka brokers are given.
    #[arg(long, env = "PULLAHEAD_RECORD_OUT")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: kafka::KafkaArgs,
    /// Stop after this long (e.g. `2h`, `90m`, `30s`); without it, record until SIGINT or SIGTERM.
    #[arg(long, value_parser = parse_duration, env = "PULLAHEAD_RECORD_DURATION")]
    pub duration: Option<Duration>,
    /// Give up when the Kubernetes API does not answer within this time at start.
    #[arg(long, value_parser = parse_duration, default_value = "10s", env = "PULLAHEAD_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,
    /// Events queued between the watchers and the writers; beyond it events are dropped and counted.
    #[arg(long, default_value_t = crate::bus::memory::DEFAULT_CAPACITY, env = "PULLAHEAD_RECORD_QUEUE")]
    pub queue: usize,
}

/// What a recording did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events recorded.
    pub events: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// What the watchers counted.
    pub watch: watch::Stats,
}

/// Waits for SIGINT or SIGTERM.
async fn termination() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

/// Records until a signal or `--duration`.
pub async fn run(args: Args) -> Result<Summary> {
    let kafka_config = args.kafka.config()?;
    let out = args
        .out
        .clone()
        .or_else(|| kafka_config.is_none().then(|| PathBuf::from("-")));
    let client = watch::client::connect(args.connect_timeout).await?;
    let kafka = kafka_config.map(KafkaBus::new).transpose()?;
    let clock = SystemClock;
    let mut writer = match &out {
        Some(p) => Some(EventWriter::create(
            p,
            &Header::new(clock.now(), "pullahead record"),
        )?),
        None => None,
    };

    let bus = InProcessBus::new(args.queue)?;
    let dropped = bus.dropped_counter();
    let mut sub = bus.subscribe()?;
    let config = watch::Config::default();
    let ready = Readiness::new(&config.kinds);
    let (stop_watch, stopped) = oneshot::channel::<()>();
    // The watch task owns the bus: when it ends, the subscription drains
    // and then ends too.
    let watch_task = tokio::spawn(async move {
        watch::run(client, &config, &bus, &SystemClock, ready, async {
            let _ = stopped.await;
        })
        .await
    });

    let signals = termination();
    tokio::pin!(signals);
    let deadline = tokio::time::sleep(
        args.duration
            .unwrap_or(Duration::from_secs(100 * 365 * 86_400)),
    );
    tokio::pin!(deadline);
    let mut stop_watch = Some(stop_watch);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut batch = Vec::new();
    let mut summary = Summary::default();

    loop {
        tokio::select! {
            d = sub.next() => match d {
                Some(d) => {
                    let d = d?;
                    if let Some(w) = writer.as_mut() {
                        w.write(&d.event)?;
                    }
                    summary.events += 1;
                    if kafka.is_some() {
                        batch.push(d.event);
                    } else {
                        d.ack()?;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if let Some(w) = writer.as_mut() {
                    w.flush()?;
                }
                if let Some(k) = kafka.as_ref() && !batch.is_empty() {
                    k.publish_all(&batch).await?;
                    batch.clear();
                }
            }
            r = &mut signals, if stop_watch.is_some() => {
                r?;
                if let Some(s) = stop_watch.take() { let _ = s.send(()); }
            }
            () = &mut deadline, if stop_watch.is_some() => {
                tracing::info!("--duration reached: stopping");
                if let Some(s) = stop_watch.take() { let _ = s.send(()); }
            }
        }
    }
    if let Some(k) = kafka.as_ref()
        && !batch.is_empty()
    {
        k.publish_all(&batch).await?;
    }
    if let Some(w) = writer {
        w.into_inner()?;
    }
    summary.watch = watch_task.await??;
    summary.dropped = dropped.get();
    tracing::info!(
        events = summary.events,
        dropped = summary.dropped,
        "recording done"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_friendly_units() {
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }
}
