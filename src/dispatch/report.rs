//! The agents' reports back to the controller: a watch of every
//! `NodePrefetch`'s status, turned into [`PrefetchReport`]s (what is present
//! on each node, and its size). The scorecard needs them because a live
//! cluster sends no `image` events: without the sizes an unused prefetch
//! would count as 0 wasted bytes, and without the landing times there is no
//! lead time.

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use crate::controller::PrefetchReport;
use crate::dispatch::crd::{NodePrefetch, PullState};
use crate::metrics::Metrics;

/// The report in one object's status, if it has one.
pub fn report_of(npf: &NodePrefetch) -> Option<PrefetchReport> {
    let status = npf.status.as_ref()?;
    let present = status
        .images
        .iter()
        .filter(|i| i.state == PullState::Present)
        .map(|i| (i.image.clone(), i.bytes.unwrap_or(0)))
        .collect();
    Some(PrefetchReport {
        node: npf.name_any(),
        present,
    })
}

/// Watches every `NodePrefetch` until `stop`, sending each status as a
/// report. A full queue drops the report (the next status carries the same
/// images again) and counts it in `events_dropped{reason="report-queue-full"}`.
pub async fn watch_reports(
    client: Client,
    tx: mpsc::Sender<PrefetchReport>,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<NodePrefetch> = Api::all(client);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    loop {
        let ev = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            ev = events.next() => ev,
        };
        let npf = match ev {
            None => return,
            Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) => o,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "NodePrefetch status watch; retrying");
                continue;
            }
        };
        let Some(report) = report_of(&npf) else {
            continue;
        };
        match tx.try_send(report) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => metrics
                .events_dropped
                .with_label_values(&["report-queue-full"])
                .inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}
