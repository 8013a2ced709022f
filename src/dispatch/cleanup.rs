//! Clean-up: removes, through CRI `RemoveImage`, a prefetched image that no
//! container on the node used by the order's deadline, when the operator
//! turned it on (`--cleanup`, off by default).
//!
//! Removing nothing else is the point, so an image is a candidate only when
//! this agent pulled it (it was not on the node before: the pull loop reports
//! only real pulls to its guards) and its order had a deadline. Until then,
//! every `--cleanup-interval` the agent lists containerd's containers in the
//! CRI namespace `k8s.io` through containerd's own `Containers` service.
//! That list holds kubelet's containers (running or exited, while their pod
//! exists) and also those made outside CRI (`ctr -n k8s.io run`), which CRI
//! `ListContainers` would not show. A candidate any container refers to is
//! used and is never removed; one in use at the deadline is not either.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use http::uri::PathAndQuery;
use prometheus::IntCounter;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic_prost::ProstCodec;

use crate::clock::Clock;
use crate::dispatch::crd::{ImageStatus, PullState};
use crate::dispatch::cri::{self, CriClient, ImageService};
use crate::dispatch::guard::{Admit, Attempt, PullGuard, Ticket};
use crate::dispatch::puller::{Board, Order};

/// The containerd namespace CRI keeps its images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// `containerd.services.containers.v1.ListContainersRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {
    /// containerd filter expressions (none: all).
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

/// `containerd.services.containers.v1.Container` (the fields read here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    /// Container id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// The image name it was made from.
    #[prost(string, tag = "3")]
    pub image: String,
}

/// `containerd.services.containers.v1.ListContainersResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    /// Every container in the namespace.
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// What the clean-up needs from the runtime.
pub trait CleanupRuntime: Send + Sync + 'static {
    /// The image names of every container in the CRI namespace.
    fn container_images(&self) -> BoxFuture<'_, cri::Result<Vec<String>>>;
    /// The image id a name resolves to, if present.
    fn image_id<'a>(&'a self, image: &'a str) -> BoxFuture<'a, cri::Result<Option<String>>>;
    /// Removes an image by id.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, cri::Result<()>>;
}

impl CleanupRuntime for CriClient {
    fn container_images(&self) -> BoxFuture<'_, cri::Result<Vec<String>>> {
        async move {
            let mut grpc = tonic::client::Grpc::new(self.channel());
            let unavailable = |message: String| cri::Error::CriUnavailable {
                socket: self.socket().to_path_buf(),
                message,
            };
            grpc.ready().await.map_err(|e| unavailable(e.to_string()))?;
            let mut req = Request::new(ListContainersRequest::default());
            req.metadata_mut().insert(
                "containerd-namespace",
                MetadataValue::from_static(CRI_NAMESPACE),
            );
            req.set_timeout(Duration::from_secs(10));
            let codec = ProstCodec::<ListContainersRequest, ListContainersResponse>::default();
            let resp = grpc
                .unary(
                    req,
                    PathAndQuery::from_static("/containerd.services.containers.v1.Containers/List"),
                    codec,
                )
                .await
                .map_err(|s| cri::Error::Rpc {
                    op: "Containers.List",
                    code: s.code(),
                    message: s.message().to_string(),
                })?;
            Ok(resp
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.image)
                .collect())
        }
        .boxed()
    }

    fn image_id<'a>(&'a self, image: &'a str) -> BoxFuture<'a, cri::Result<Option<String>>> {
        async move { Ok(self.image_status(image).await?.map(|i| i.id)) }.boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, cri::Result<()>> {
        self.remove_image(id).boxed()
    }
}

/// One image this agent pulled.
#[derive(Clone, Debug, PartialEq)]
struct Candidate {
    id: String,
    deadline: f64,
    bytes: Option<u64>,
    used: bool,
}

/// Clean-up counters.
#[derive(Clone, Debug)]
pub struct CleanupMetrics {
    /// Images removed.
    pub removed: IntCounter,
    /// Their bytes.
    pub reclaimed_bytes: IntCounter,
}

/// Tracks what this agent pulled and removes what stayed unused.
pub struct Cleanup<R> {
    runtime: Arc<R>,
    clock: Arc<dyn Clock>,
    enabled: bool,
    board: Option<Arc<Board>>,
    metrics: Option<CleanupMetrics>,
    candidates: Mutex<HashMap<String, Candidate>>,
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Images removed.
    pub removed: Vec<String>,
    /// Candidates found used by a container (kept for good).
    pub used: Vec<String>,
}

impl<R: CleanupRuntime> Cleanup<R> {
    /// A clean-up over `runtime`; with `enabled` false it records and
    /// reports nothing removed, ever.
    pub fn new(runtime: Arc<R>, clock: Arc<dyn Clock>, enabled: bool) -> Self {
        Self {
            runtime,
            clock,
            enabled,
            board: None,
            metrics: None,
            candidates: Mutex::new(HashMap::new()),
        }
    }

    /// Reports removals on `board`.
    pub fn with_board(mut self, board: Arc<Board>) -> Self {
        self.board = Some(board);
        self
    }

    /// Counts removals.
    pub fn with_metrics(mut self, m: CleanupMetrics) -> Self {
        self.metrics = Some(m);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Candidate>> {
        self.candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that this agent pulled `image` (id `id`) for an order due at
    /// `deadline`.
    pub fn pulled(&self, image: &str, id: &str, deadline: Option<f64>, bytes: Option<u64>) {
        let Some(deadline) = deadline else { return };
        if !self.enabled || id.is_empty() {
            return;
        }
        self.lock().insert(
            image.to_string(),
            Candidate {
                id: id.to_string(),
                deadline,
                bytes,
                used: false,
            },
        );
    }

    /// Images still waiting for their deadline.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    /// Marks candidates that containers use, then removes those past their
    /// deadline that none used.
    pub async fn pass(&self) -> cri::Result<Pass> {
        let mut out = Pass::default();
        if !self.enabled || self.lock().is_empty() {
            return Ok(out);
        }
        // A failed list means "unknown": remove nothing this round.
        let names = self.runtime.container_images().await?;
        let mut ids: HashSet<String> = HashSet::new();
        for n in names.iter().collect::<HashSet<_>>() {
            // CRI names containers' images by id; `ctr run` by reference.
            ids.insert(n.clone());
            if let Ok(Some(id)) = self.runtime.image_id(n).await {
                ids.insert(id);
            }
        }
        let now = self.clock.now();
        let due: Vec<(String, Candidate)> = {
            let mut c = self.lock();
            for (image, cand) in c.iter_mut() {
                if !cand.used && (ids.contains(&cand.id) || ids.contains(image)) {
                    cand.used = true;
                    out.used.push(image.clone());
                }
            }
            // A used image is the prefetch's success: forget it.
            c.retain(|_, cand| !cand.used);
            c.iter()
                .filter(|(_, cand)| cand.deadline < now)
                .map(|(i, cand)| (i.clone(), cand.clone()))
                .collect()
        };
        for (image, cand) in due {
            match self.runtime.remove(&cand.id).await {
                Ok(()) => {
                    tracing::info!(%image, id = %cand.id, bytes = ?cand.bytes, "removed a prefetched image no container used by its deadline");
                    self.lock().remove(&image);
                    let bytes = cand.bytes.unwrap_or(0);
                    if let Some(m) = &self.metrics {
                        m.removed.inc();
                        m.reclaimed_bytes.inc_by(bytes);
                    }
                    if let Some(b) = &self.board {
                        b.set(ImageStatus {
                            image: image.clone(),
                            state: PullState::Removed,
                            bytes: cand.bytes,
                            seconds: None,
                            message: Some("removed: no container used it by its deadline".into()),
                        });
                        b.add_reclaimed(bytes);
                    }
                    out.removed.push(image);
                }
                Err(e) => {
                    tracing::warn!(%image, error = %e, "cannot remove unused prefetched image")
                }
            }
        }
        Ok(out)
    }

    /// Runs passes every `interval` until the task is dropped.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "clean-up pass failed; nothing removed");
            }
        }
    }
}

/// The clean-up as a pull-loop guard: it only listens for pulls.
pub struct CleanupRecorder<R>(pub Arc<Cleanup<R>>);

impl<R: CleanupRuntime> PullGuard for CleanupRecorder<R> {
    fn admit<'a>(&'a self, _order: &'a Order) -> BoxFuture<'a, Admit> {
        async { Admit::Go(Ticket::empty()) }.boxed()
    }

    fn after<'a>(&'a self, order: &'a Order, attempt: Attempt<'a>) -> BoxFuture<'a, ()> {
        async move {
            if let Attempt::Pulled { image_ref, bytes } = attempt {
                self.0
                    .pulled(&order.image, image_ref, order.deadline, bytes);
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;

    #[derive(Default)]
    struct FakeRuntime {
        containers: Mutex<Vec<String>>,
        images: Mutex<HashMap<String, String>>,
        removed: Mutex<Vec<String>>,
    }

    impl CleanupRuntime for FakeRuntime {
        fn container_images(&self) -> BoxFuture<'_, cri::Result<Vec<String>>> {
            let c = self.containers.lock().unwrap().clone();
            async move { Ok(c) }.boxed()
        }
        fn image_id<'a>(&'a self, image: &'a str) -> BoxFuture<'a, cri::Result<Option<String>>> {
            let id = self.images.lock().unwrap().get(image).cloned();
            async move { Ok(id) }.boxed()
        }
        fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, cri::Result<()>> {
            self.removed.lock().unwrap().push(id.to_string());
            async { Ok(()) }.boxed()
        }
    }

    fn setup(enabled: bool) -> (Arc<FakeRuntime>, Arc<SimClock>, Cleanup<FakeRuntime>) {
        let rt = Arc::new(FakeRuntime::default());
        for (n, id) in [
            ("r/a:1", "sha256:a"),
            ("r/b:1", "sha256:b"),
            ("r/c:1", "sha256:c"),
        ] {
            rt.images.lock().unwrap().insert(n.into(), id.into());
        }
        let clock = Arc::new(SimClock::new(100.0));
        let c = Cleanup::new(rt.clone(), clock.clone(), enabled);
        (rt, clock, c)
    }

    #[tokio::test]
    async fn only_unused_images_past_their_deadline_go() {
        let (rt, clock, c) = setup(true);
        c.pulled("r/a:1", "sha256:a", Some(150.0), Some(10));
        c.pulled("r/b:1", "sha256:b", Some(150.0), Some(20));
        c.pulled("r/c:1", "sha256:c", None, Some(30));
        // b is used by a container named by reference (as `ctr run` does).
        rt.containers.lock().unwrap().push("r/b:1".into());
        let p = c.pass().await.unwrap();
        assert_eq!(
            p.removed,
            Vec::<String>::new(),
            "nothing is due before the deadline"
        );
        assert_eq!(p.used, vec!["r/b:1".to_string()]);
        rt.containers.lock().unwrap().clear();
        clock.set(151.0);
        let p = c.pass().await.unwrap();
        assert_eq!(p.removed, vec!["r/a:1".to_string()]);
        assert_eq!(*rt.removed.lock().unwrap(), vec!["sha256:a".to_string()]);
        assert_eq!(c.pending(), 0, "the deadline-less c was never a candidate");
    }

    #[tokio::test]
    async fn an_image_in_use_at_the_deadline_is_kept() {
        let (rt, clock, c) = setup(true);
        c.pulled("r/a:1", "sha256:a", Some(150.0), Some(10));
        clock.set(200.0);
        // CRI's containers name their image by id.
        rt.containers.lock().unwrap().push("sha256:a".into());
        let p = c.pass().await.unwrap();
        assert!(p.removed.is_empty());
        assert!(rt.removed.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn off_removes_nothing() {
        let (rt, clock, c) = setup(false);
        c.pulled("r/a:1", "sha256:a", Some(150.0), Some(10));
        clock.set(200.0);
        assert_eq!(c.pass().await.unwrap(), Pass::default());
        assert!(rt.removed.lock().unwrap().is_empty());
    }
}
