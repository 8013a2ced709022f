//! The pod backend, for clusters that do not run the node agent: one
//! short-lived pod per (node, batch of images) makes kubelet pull them.
//!
//! The pod is pinned with `nodeName` (no scheduler, so it runs on a node that
//! is still tainted or not yet Ready), uses `hostNetwork` (so it runs before
//! CNI is ready), tolerates every taint, and never restarts. An init container
//! copies a static no-op binary from the pullahead image into an emptyDir;
//! each image then runs that binary, so that even a `scratch` image starts and
//! exits 0 once kubelet has pulled it. The controller watches the pod until
//! every container has finished or is stuck on a pull error, records one
//! result per image, and always deletes the pod (success, failure, timeout),
//! so that finished pods never block Karpenter consolidation.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Container, ContainerStatus, EmptyDirVolumeSource, LocalObjectReference, Pod, PodSpec,
    ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::dispatch::crd::{ImageStatus, PullState};

/// Errors from the pod backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A batch with no images was asked for.
    #[error("a prefetch pod needs at least one image")]
    EmptyBatch,
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the no-op binary lives in the pullahead image.
pub const NOOP_IN_IMAGE: &str = "/usr/local/bin/pullahead-noop";
/// The emptyDir mount point in every container.
pub const NOOP_DIR: &str = "/pullahead-noop";
/// Label on every prefetch pod, for clean-up and `kubectl get`.
pub const NODE_LABEL: &str = "pullahead.io/prefetch-node";

/// Pull-error reasons that mean kubelet will not get the image on its own.
const PULL_ERRORS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// How prefetch pods are made.
#[derive(Clone, Debug)]
pub struct PodConfig {
    /// Namespace the pods live in.
    pub namespace: String,
    /// The pullahead image, which carries the no-op binary.
    pub pullahead_image: String,
    /// Secrets kubelet uses to pull the images.
    pub image_pull_secrets: Vec<String>,
    /// How long a batch may take before it counts as failed and is deleted.
    pub timeout: Duration,
}

impl Default for PodConfig {
    fn default() -> Self {
        Self {
            namespace: "pullahead".into(),
            pullahead_image: "ghcr.io/pullahead/pullahead:latest".into(),
            image_pull_secrets: Vec::new(),
            timeout: Duration::from_secs(600),
        }
    }
}

/// The pod that pulls `images` onto `node`.
pub fn prefetch_pod(cfg: &PodConfig, node: &str, images: &[String]) -> Pod {
    let mount = VolumeMount {
        name: "noop".into(),
        mount_path: NOOP_DIR.into(),
        ..VolumeMount::default()
    };
    let tiny = ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("1m".into())),
            ("memory".to_string(), Quantity("8Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("16Mi".into()),
        )])),
        ..ResourceRequirements::default()
    };
    let noop = format!("{NOOP_DIR}/noop");
    let containers = images
        .iter()
        .enumerate()
        .map(|(i, image)| Container {
            name: format!("img-{i}"),
            image: Some(image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(vec![noop.clone()]),
            volume_mounts: Some(vec![VolumeMount {
                read_only: Some(true),
                ..mount.clone()
            }]),
            resources: Some(tiny.clone()),
            ..Container::default()
        })
        .collect();
    let init = Container {
        name: "install-noop".into(),
        image: Some(cfg.pullahead_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec!["cp".into(), NOOP_IN_IMAGE.into(), noop.clone()]),
        volume_mounts: Some(vec![mount]),
        resources: Some(tiny),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("pullahead-prefetch-".into()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "pullahead".to_string(),
                ),
                (NODE_LABEL.to_string(), label_value(node)),
            ])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            host_network: Some(true),
            restart_policy: Some("Never".into()),
            // `Exists` with no key and no effect tolerates every taint.
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Toleration::default()
            }]),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(0),
            active_deadline_seconds: Some(cfg.timeout.as_secs().max(1) as i64),
            image_pull_secrets: (!cfg.image_pull_secrets.is_empty()).then(|| {
                cfg.image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            init_containers: Some(vec![init]),
            containers,
            volumes: Some(vec![Volume {
                name: "noop".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity("16Mi".into())),
                    ..EmptyDirVolumeSource::default()
                }),
                ..Volume::default()
            }]),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// Label values are at most 63 characters; longer node names are cut.
fn label_value(s: &str) -> String {
    s.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.', '_'])
        .to_string()
}

/// One image's result from a pod's container statuses, or `None` while the
/// container is still on its way.
fn container_result(image: &str, cs: Option<&ContainerStatus>) -> Option<ImageStatus> {
    let state = cs?.state.as_ref()?;
    if let Some(t) = &state.terminated {
        // The no-op ran, so the image is on the node; any exit code proves it.
        let note =
            (t.exit_code != 0).then(|| format!("no-op exited {} (image is present)", t.exit_code));
        return Some(ImageStatus {
            image: image.into(),
            state: PullState::Present,
            message: note,
            ..ImageStatus::default()
        });
    }
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or("");
        if PULL_ERRORS.contains(&reason) {
            return Some(ImageStatus {
                image: image.into(),
                state: PullState::Failed,
                message: Some(format!("{reason}: {}", w.message.as_deref().unwrap_or(""))),
                ..ImageStatus::default()
            });
        }
    }
    None
}

/// Reads a pod's progress: one entry per image, and whether every image has
/// a final answer (pulled, or stuck on a pull error).
pub fn read_completion(pod: &Pod, images: &[String]) -> (Vec<ImageStatus>, bool) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let mut done = true;
    let out = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let name = format!("img-{i}");
            match container_result(image, statuses.iter().find(|c| c.name == name)) {
                Some(r) => r,
                None => {
                    done = false;
                    ImageStatus {
                        image: image.clone(),
                        state: PullState::Pulling,
                        ..ImageStatus::default()
                    }
                }
            }
        })
        .collect();
    // A pod that failed as a whole (deadline, eviction) is final too.
    (out, done || phase == "Failed" || phase == "Succeeded")
}

/// Creates prefetch pods and sees them through.
pub struct PodBackend {
    api: Api<Pod>,
    cfg: PodConfig,
}

impl PodBackend {
    /// A backend creating pods through `client` as `cfg` says.
    pub fn new(client: kube::Client, cfg: PodConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    /// Pulls `images` onto `node` through one pod; returns one status per
    /// image. The pod is deleted whatever happens once it exists.
    pub async fn run_batch(&self, node: &str, images: &[String]) -> Result<Vec<ImageStatus>> {
        if images.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let pod = prefetch_pod(&self.cfg, node, images);
        let created = self
            .api
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|source| Error::Kube {
                context: format!("create prefetch pod for node {node}"),
                source,
            })?;
        let name = created.metadata.name.clone().unwrap_or_default();
        tracing::info!(node, pod = %name, images = images.len(), "prefetch pod created");
        let outcome = tokio::time::timeout(self.cfg.timeout, self.wait(&name, images)).await;
        let result = match outcome {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(images
                .iter()
                .map(|i| ImageStatus {
                    image: i.clone(),
                    state: PullState::Failed,
                    message: Some(format!(
                        "prefetch pod {name} timed out after {:?}",
                        self.cfg.timeout
                    )),
                    ..ImageStatus::default()
                })
                .collect()),
        };
        self.delete(&name).await;
        result
    }

    async fn wait(&self, name: &str, images: &[String]) -> Result<Vec<ImageStatus>> {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut pods = watcher(self.api.clone(), cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut last = Vec::new();
        while let Some(ev) = pods.next().await {
            match ev {
                Ok(p) => {
                    let (res, done) = read_completion(&p, images);
                    if done {
                        return Ok(res);
                    }
                    last = res;
                }
                Err(e) => tracing::warn!(pod = name, error = %e, "watching prefetch pod"),
            }
        }
        Ok(last)
    }

    /// Deletes at once; a pod already gone is fine. Failures are logged: the
    /// pod's activeDeadlineSeconds still ends it.
    async fn delete(&self, name: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::background()
        };
        match self.api.delete(name, &dp).await {
            Ok(_) => tracing::debug!(pod = name, "prefetch pod deleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(pod = name, error = %e, "cannot delete prefetch pod"),
        }
    }
}
