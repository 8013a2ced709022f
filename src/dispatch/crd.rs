//! The `NodePrefetch` custom resource: one cluster-scoped object per node,
//! named after the node and owned by it, so that a burst on 1,000 nodes is at
//! most 1,000 API objects and garbage collection removes each with its node.
//!
//! The controller writes `spec.images`; the node agent writes
//! `status.images` plus the summary counts that `kubectl get npf` prints
//! (printer columns cannot count array items, so the agent keeps the counts).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::{CustomResource, CustomResourceExt, Resource};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The group of every pullahead resource.
pub const GROUP: &str = "pullahead.io";

/// Errors from this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRD could not be rendered as YAML.
    #[error("cannot render the NodePrefetch CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the controller wants on one node.
// The derive's printcolumn(...) lists repeat `type_ = "integer"`, which
// clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "pullahead.io",
    version = "v1alpha1",
    kind = "NodePrefetch",
    plural = "nodeprefetches",
    shortname = "npf",
    status = "NodePrefetchStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Images to prefetch onto one node (the object is named after the node and owned by it).",
    printcolumn(
        name = "Wanted",
        type_ = "integer",
        json_path = ".status.wanted",
        description = "Images in spec.images"
    ),
    printcolumn(
        name = "Present",
        type_ = "integer",
        json_path = ".status.present",
        description = "Images present on the node"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.failed",
        description = "Images whose pull failed or expired"
    ),
    printcolumn(
        name = "Pulling",
        type_ = "integer",
        json_path = ".status.pulling",
        description = "Images being pulled now"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NodePrefetchSpec {
    /// The images to pull, in any order; the agent pulls by `priority`.
    #[serde(default)]
    pub images: Vec<ImageOrder>,
}

/// One image the controller wants on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageOrder {
    /// Full image reference, `registry/repo:tag` or `…@sha256:…`.
    pub image: String,
    /// Higher is pulled first.
    #[serde(default)]
    pub priority: u32,
    /// Why the planner wants it (`nominated`, `daemonset`, `hpa-trend`, …).
    #[serde(default)]
    pub reason: String,
    /// After this time the order is dropped rather than pulled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// The node's startup taint waits for every critical image.
    #[serde(default)]
    pub critical: bool,
}

/// What the agent reports for the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodePrefetchStatus {
    /// One entry per image in `spec.images`.
    #[serde(default)]
    pub images: Vec<ImageStatus>,
    /// Number of images in `spec.images`.
    #[serde(default)]
    pub wanted: u32,
    /// Images in state `present`.
    #[serde(default)]
    pub present: u32,
    /// Images in state `failed`.
    #[serde(default)]
    pub failed: u32,
    /// Images in state `pulling`.
    #[serde(default)]
    pub pulling: u32,
    /// The startup taint, when the agent is set to release one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_taint: Option<StartupTaintStatus>,
}

/// Where the node's startup taint stands, and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartupTaintStatus {
    /// The taint's key.
    pub key: String,
    /// Whether the agent has removed it.
    pub released: bool,
    /// Why it was released, or what it waits for.
    pub reason: String,
}

impl NodePrefetchStatus {
    /// A status from per-image entries, with the summary counts filled in.
    pub fn from_images(images: Vec<ImageStatus>) -> Self {
        let count = |s: PullState| images.iter().filter(|i| i.state == s).count() as u32;
        Self {
            wanted: images.len() as u32,
            present: count(PullState::Present),
            failed: count(PullState::Failed),
            pulling: count(PullState::Pulling),
            images,
            startup_taint: None,
        }
    }
}

/// Progress of one image on the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// The image reference as written in `spec.images`.
    pub image: String,
    /// Where the pull stands.
    pub state: PullState,
    /// Compressed bytes pulled, or the image's size when it was present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Wall seconds the pull took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why it failed, or other detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The state of one image on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    /// Waiting for a pull slot.
    #[default]
    Pending,
    /// A pull is running.
    Pulling,
    /// On the node.
    Present,
    /// The pull failed for good, or its deadline passed.
    Failed,
}

impl PullState {
    /// The state as written in the resource.
    pub fn as_str(self) -> &'static str {
        match self {
            PullState::Pending => "pending",
            PullState::Pulling => "pulling",
            PullState::Present => "present",
            PullState::Failed => "failed",
        }
    }
}

impl NodePrefetch {
    /// The object for node `node_name` (with uid `node_uid`), owned by the
    /// Node so that the API server garbage-collects it with the node.
    pub fn for_node(node_name: &str, node_uid: &str, images: Vec<ImageOrder>) -> Self {
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node_name.into(),
            uid: node_uid.into(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        };
        let mut npf = NodePrefetch::new(node_name, NodePrefetchSpec { images });
        npf.metadata = ObjectMeta {
            name: Some(node_name.into()),
            owner_references: Some(vec![owner]),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "pullahead".to_string(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        };
        npf
    }
}

/// The CRD as YAML, exactly what `pullahead crdgen` prints and what is
/// committed under `deploy/helm/pullahead/crds/`.
pub fn crd_yaml() -> Result<String> {
    Ok(serde_yaml_ng::to_string(&NodePrefetch::crd())?)
}

/// The API path of the resource kind, for logs and errors.
pub fn kind_path() -> String {
    format!(
        "{}/{}/{}",
        NodePrefetch::group(&()),
        NodePrefetch::version(&()),
        NodePrefetch::plural(&())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_is_cluster_scoped_with_pinned_names() {
        let crd = NodePrefetch::crd();
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "NodePrefetch");
        assert_eq!(crd.spec.names.plural, "nodeprefetches");
        assert_eq!(crd.spec.names.short_names, Some(vec!["npf".to_string()]));
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        let cols: Vec<_> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Wanted", "Present", "Failed", "Pulling", "Age"]);
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }

    #[test]
    fn object_is_named_after_and_owned_by_its_node() {
        let npf = NodePrefetch::for_node("ip-10-0-1-5", "uid-1", vec![]);
        assert_eq!(npf.metadata.name.as_deref(), Some("ip-10-0-1-5"));
        let owner = &npf.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Node", "ip-10-0-1-5", "uid-1")
        );
        assert_eq!(npf.metadata.namespace, None);
    }

    #[test]
    fn spec_round_trips_through_the_wire_shape() {
        let json = serde_json::json!({
            "apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch",
            "metadata": {"name": "n1"},
            "spec": {"images": [{"image": "r/a:1", "priority": 9, "reason": "nominated",
                                  "deadline": "2026-11-28T10:00:00Z", "critical": true},
                                 {"image": "r/b:1"}]},
            "status": {"images": [{"image": "r/a:1", "state": "present", "bytes": 10, "seconds": 1.5}],
                       "wanted": 2, "present": 1}
        });
        let npf: NodePrefetch = serde_json::from_value(json).unwrap();
        assert_eq!(npf.spec.images[0].priority, 9);
        assert!(npf.spec.images[0].critical);
        assert!(npf.spec.images[0].deadline.is_some());
        assert_eq!(npf.spec.images[1].priority, 0);
        let st = npf.status.unwrap();
        assert_eq!(st.images[0].state, PullState::Present);
        let bad = serde_json::json!({"image": "x", "state": "done"});
        assert!(serde_json::from_value::<ImageStatus>(bad).is_err());
    }

    #[test]
    fn status_counts_states() {
        let mk = |s| ImageStatus {
            image: "i".into(),
            state: s,
            ..Default::default()
        };
        let st = NodePrefetchStatus::from_images(vec![
            mk(PullState::Present),
            mk(PullState::Present),
            mk(PullState::Failed),
            mk(PullState::Pulling),
            mk(PullState::Pending),
        ]);
        assert_eq!((st.wanted, st.present, st.failed, st.pulling), (5, 2, 1, 1));
    }
}
