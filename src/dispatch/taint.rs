//! The startup taint (Karpenter `startupTaints`): the agent removes it from
//! its node once every critical image of the spec is present or has finally
//! failed, or once `--release-after` has passed, and says which in
//! `status.startupTaint`. A failed image is a reason to let pods on, not to
//! keep the node shut for good: kubelet pulls it (and reports its error)
//! just as it would without pullahead.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::dispatch::agent::{Error, Result, kube_err};
use crate::dispatch::crd::{ImageOrder, PullState, StartupTaintStatus};
use crate::dispatch::puller::Board;
use std::sync::Arc;

/// Where the spec's critical images stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Critical {
    /// No critical image ordered yet: wait for the controller.
    NoneOrdered,
    /// Some critical images are still pending or pulling.
    Waiting {
        /// Critical images not yet settled.
        left: usize,
        /// Critical images in the spec.
        of: usize,
    },
    /// Every critical image is present or has finally failed.
    Settled {
        /// Critical images present.
        present: usize,
        /// `image: why` of each critical image that failed.
        failed: Vec<String>,
    },
}

impl Critical {
    /// The status line for this state.
    pub fn reason(&self) -> String {
        match self {
            Critical::NoneOrdered => "waiting for the controller to order critical images".into(),
            Critical::Waiting { left, of } => format!("waiting for {left} of {of} critical images"),
            Critical::Settled { present, failed } if failed.is_empty() => {
                format!("every critical image is present ({present})")
            }
            Critical::Settled { present, failed } => format!(
                "critical images settled: {present} present, {} failed ({})",
                failed.len(),
                failed.join("; ")
            ),
        }
    }
}

/// Most failed images named in a reason, so the status stays small.
const MAX_NAMED: usize = 5;

/// Where `spec`'s critical images stand on `board`.
pub fn critical_state(spec: &[ImageOrder], board: &Board) -> Critical {
    let critical: Vec<&ImageOrder> = spec.iter().filter(|i| i.critical).collect();
    if critical.is_empty() {
        return Critical::NoneOrdered;
    }
    let (mut present, mut left, mut failed) = (0, 0, Vec::new());
    for i in &critical {
        match board.get(&i.image) {
            Some(s) if s.state == PullState::Present => present += 1,
            Some(s) if s.state == PullState::Failed => {
                if failed.len() < MAX_NAMED {
                    let why = s.message.unwrap_or_else(|| "failed".into());
                    failed.push(format!("{}: {why}", i.image));
                } else {
                    failed.push(i.image.clone());
                }
            }
            _ => left += 1,
        }
    }
    if left > 0 {
        Critical::Waiting {
            left,
            of: critical.len(),
        }
    } else {
        Critical::Settled { present, failed }
    }
}

/// Whether every critical image in the spec is present.
pub fn critical_ready(spec: &[ImageOrder], board: &Board) -> bool {
    matches!(critical_state(spec, board), Critical::Settled { failed, .. } if failed.is_empty())
}

/// Removes every taint with `key` from `node`. Returns whether one was
/// removed. Uses replace with the read resourceVersion, so a concurrent
/// change to the node makes it re-read rather than overwrite.
pub async fn release_taint(nodes: &Api<Node>, node: &str, key: &str) -> Result<bool> {
    for _ in 0..5 {
        let mut n = nodes
            .get(node)
            .await
            .map_err(kube_err(format!("get node {node}")))?;
        let Some(taints) = n.spec.as_mut().and_then(|s| s.taints.as_mut()) else {
            return Ok(false);
        };
        let before = taints.len();
        taints.retain(|t| t.key != key);
        if taints.len() == before {
            return Ok(false);
        }
        match nodes.replace(node, &PostParams::default(), &n).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(kube_err(format!("update node {node}"))(e)),
        }
    }
    Err(Error::Conflict(format!("node {node}")))
}

/// Whether `node` carries a taint with `key`.
async fn has_taint(nodes: &Api<Node>, node: &str, key: &str) -> Result<bool> {
    let n = nodes
        .get(node)
        .await
        .map_err(kube_err(format!("get node {node}")))?;
    Ok(n.spec
        .and_then(|s| s.taints)
        .is_some_and(|t| t.iter().any(|t| t.key == key)))
}

/// Waits until the critical images are settled (present or finally failed)
/// or `after` has passed, then removes the taint. Keeps
/// `status.startupTaint` (through `board`) saying what it waits for and,
/// at the end, why it released.
pub async fn taint_releaser(
    nodes: Api<Node>,
    node: String,
    key: String,
    after: Option<Duration>,
    board: Arc<Board>,
    mut spec: watch::Receiver<Vec<ImageOrder>>,
) {
    let deadline = after.map(|d| Instant::now() + d);
    let mut changes = board.subscribe();
    let mut shown = String::new();
    if let Ok(false) = has_taint(&nodes, &node, &key).await {
        // Released before (by an agent before a restart) or never set.
        board.set_startup_taint(StartupTaintStatus {
            key,
            released: true,
            reason: "not on the node when the agent started".into(),
        });
        return;
    }
    loop {
        let state = critical_state(&spec.borrow(), &board);
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        let settled = matches!(state, Critical::Settled { .. });
        if settled || expired {
            let why = if settled {
                state.reason()
            } else {
                format!(
                    "--release-after elapsed ({}s) while {}",
                    after.map_or(0, |d| d.as_secs()),
                    state.reason()
                )
            };
            match release_taint(&nodes, &node, &key).await {
                Ok(removed) => {
                    tracing::info!(node, taint = %key, removed, why = %why, "startup taint released");
                    board.set_startup_taint(StartupTaintStatus {
                        key,
                        released: true,
                        reason: why,
                    });
                    return;
                }
                Err(e) => tracing::warn!(node, error = %e, "cannot release taint; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let reason = state.reason();
        if reason != shown {
            shown.clone_from(&reason);
            board.set_startup_taint(StartupTaintStatus {
                key: key.clone(),
                released: false,
                reason,
            });
            // Our own change must not wake us: mark it seen.
            changes.borrow_and_update();
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changes.changed() => {}
            // The agent is stopping (its spec sender is gone).
            r = spec.changed() => if r.is_err() { return },
            _ = sleep => {}
        }
    }
}
