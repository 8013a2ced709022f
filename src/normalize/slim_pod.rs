//! A partial Pod: only the fields the normaliser reads.
//!
//! A k8s-openapi `Pod` is some 25 allocations and kilobytes of inline
//! `Option`s (every container carries every optional field), and the live
//! watcher receives one per pod change: parsing and freeing it was half the
//! cost of a watch event. [`SlimPod`] implements `kube::Resource` like the
//! full type (through k8s-openapi's `Resource` and `Metadata`, with the
//! full type's constants), so `watcher(Api<SlimPod>, …)` lists and watches
//! the same `/api/v1/pods`; serde skips every field not declared here, so
//! `managedFields`, annotations and the rest are never built.
//!
//! Missing or `null` fields read as empty, as k8s-openapi reads them, and a
//! field that is here but of the wrong type is an error, as there.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The only label the normaliser reads: it links a pod to its Deployment
/// through the ReplicaSet name.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The Pod fields the normaliser reads.
///
/// `metadata` is an `ObjectMeta`, as `kube::Resource` requires, holding
/// only name, namespace, resource version, creation and deletion times,
/// the [`TEMPLATE_HASH_LABEL`] label, and the owner references' kind, name
/// and controller flag; every other metadata field is left unset.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimPod {
    /// Metadata, trimmed as the type's doc says.
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    /// The parts of the spec that name images and the node.
    #[serde(default)]
    pub spec: Option<SlimPodSpec>,
    /// The parts of the status that tell the pod's phase.
    #[serde(default)]
    pub status: Option<SlimPodStatus>,
}

/// `spec` of a [`SlimPod`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    /// `containers`.
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<SlimContainer>,
    /// `initContainers`.
    #[serde(default, deserialize_with = "null_default")]
    pub init_containers: Vec<SlimContainer>,
    /// `nodeName`: the node the pod is bound to.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// A container of a [`SlimPodSpec`]: its image.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimContainer {
    /// `image`, as written.
    #[serde(default)]
    pub image: Option<String>,
}

/// `status` of a [`SlimPod`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    /// `phase`: `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`.
    #[serde(default)]
    pub phase: Option<String>,
    /// `nominatedNodeName`: where the scheduler means to place the pod.
    #[serde(default)]
    pub nominated_node_name: Option<String>,
    /// `conditions`.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<SlimPodCondition>,
    /// `containerStatuses`.
    #[serde(default, deserialize_with = "null_default")]
    pub container_statuses: Vec<SlimContainerStatus>,
}

/// A condition of a [`SlimPodStatus`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodCondition {
    /// `type`, such as `PodScheduled`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub type_: String,
    /// `status`: `True`, `False` or `Unknown`.
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    /// `lastTransitionTime`.
    #[serde(default)]
    pub last_transition_time: Option<Time>,
}

/// A container status of a [`SlimPodStatus`]: whether it runs.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimContainerStatus {
    /// `state`.
    #[serde(default)]
    pub state: Option<SlimContainerState>,
}

/// `state` of a [`SlimContainerStatus`]: only whether `running` is set.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SlimContainerState {
    /// `running`, present (even empty) while the container runs.
    #[serde(default)]
    pub running: Option<IgnoredAny>,
}

impl k8s_openapi::Resource for SlimPod {
    // The full Pod's constants: the same API path, list and watch.
    const API_VERSION: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <k8s_openapi::api::core::v1::Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for SlimPod {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A non-optional field that reads `null` as its default, as k8s-openapi
/// reads a required field that is missing or `null`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The metadata fields the normaliser reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    resource_version: Option<String>,
    #[serde(default)]
    creation_timestamp: Option<Time>,
    #[serde(default)]
    deletion_timestamp: Option<Time>,
    #[serde(default)]
    labels: Option<TemplateHash>,
    #[serde(default)]
    owner_references: Option<Vec<Owner>>,
}

/// What an owner reference tells the normaliser.
#[derive(Deserialize)]
struct Owner {
    #[serde(default, deserialize_with = "null_default")]
    kind: String,
    #[serde(default, deserialize_with = "null_default")]
    name: String,
    #[serde(default)]
    controller: Option<bool>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let Some(m) = Option::<MetaFields>::deserialize(d)? else {
        return Ok(ObjectMeta::default());
    };
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        labels: m.labels.map(|h| {
            h.0.map(|v| (TEMPLATE_HASH_LABEL.to_string(), v))
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        }),
        owner_references: m.owner_references.map(|os| {
            os.into_iter()
                .map(|o| OwnerReference {
                    kind: o.kind,
                    name: o.name,
                    controller: o.controller,
                    ..Default::default()
                })
                .collect()
        }),
        ..Default::default()
    })
}

/// A label map read for its [`TEMPLATE_HASH_LABEL`] value alone: the other
/// labels are skipped without being copied.
struct TemplateHash(Option<String>);

impl<'de> Deserialize<'de> for TemplateHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TemplateHashVisitor)
    }
}

struct TemplateHashVisitor;

impl<'de> Visitor<'de> for TemplateHashVisitor {
    type Value = TemplateHash;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of label names to values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TemplateHash, A::Error> {
        let mut hash = None;
        while let Some(IsTemplateHash(wanted)) = map.next_key()? {
            if wanted {
                hash = map.next_value::<Option<String>>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(TemplateHash(hash))
    }
}

/// A label name, read only to know whether it is [`TEMPLATE_HASH_LABEL`].
struct IsTemplateHash(bool);

impl<'de> Deserialize<'de> for IsTemplateHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IsTemplateHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a label name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<IsTemplateHash, E> {
                Ok(IsTemplateHash(s == TEMPLATE_HASH_LABEL))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    /// A pod as the API server sends it, with fields the slim type skips.
    fn full_json() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-5d8f7-abcde", "namespace": "shop", "uid": "0b0e",
                "resourceVersion": "4711", "generation": 1,
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "deletionTimestamp": "2024-05-01T11:00:00Z",
                "labels": {"app": "web", "pod-template-hash": "5d8f7", "tier": "front"},
                "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-05-01T09:00:00Z"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-5d8f7", "uid": "u", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
            },
            "spec": {
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
                     "resources": {"requests": {"cpu": "100m"}}},
                    {"name": "envoy", "image": "docker.io/envoyproxy/envoy:v1.31.0"}
                ],
                "nodeName": "ip-10-0-7-9.ec2.internal",
                "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
            },
            "status": {
                "phase": "Running", "nominatedNodeName": "ip-10-0-7-8.ec2.internal",
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T10:01:05Z"},
                    {"type": "Ready", "status": "False", "lastTransitionTime": null}
                ],
                "containerStatuses": [
                    {"name": "web", "image": "nginx:1.25", "imageID": "", "ready": true,
                     "restartCount": 0, "state": {"running": {"startedAt": "2024-05-01T10:01:09Z"}}},
                    {"name": "envoy", "image": "e", "imageID": "", "ready": false,
                     "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
                ],
                "hostIP": "10.0.7.9", "podIP": "10.1.2.3", "qosClass": "Burstable"
            }
        })
    }

    #[test]
    fn reads_what_the_full_pod_holds_for_the_fields_it_keeps() {
        let full: Pod = serde_json::from_value(full_json()).expect("full pod");
        let slim: SlimPod = serde_json::from_value(full_json()).expect("slim pod");
        let (fm, sm) = (&full.metadata, &slim.metadata);
        assert_eq!(sm.name, fm.name);
        assert_eq!(sm.namespace, fm.namespace);
        assert_eq!(sm.resource_version, fm.resource_version);
        assert_eq!(sm.creation_timestamp, fm.creation_timestamp);
        assert_eq!(sm.deletion_timestamp, fm.deletion_timestamp);
        let hash = |m: &ObjectMeta| m.labels.as_ref()?.get(TEMPLATE_HASH_LABEL).cloned();
        assert_eq!(hash(sm).as_deref(), Some("5d8f7"));
        assert_eq!(hash(sm), hash(fm));
        // Other labels, annotations and managed fields are never built.
        assert_eq!(sm.labels.as_ref().map(BTreeMap::len), Some(1));
        assert!(sm.annotations.is_none() && sm.managed_fields.is_none() && sm.uid.is_none());
        let owners = |m: &ObjectMeta| -> Vec<(String, String, Option<bool>)> {
            m.owner_references
                .iter()
                .flatten()
                .map(|o| (o.kind.clone(), o.name.clone(), o.controller))
                .collect()
        };
        assert_eq!(owners(sm), owners(fm));

        let (fs, ss) = (
            full.spec.as_ref().expect("spec"),
            slim.spec.as_ref().expect("spec"),
        );
        let images = |cs: &mut dyn Iterator<Item = Option<String>>| cs.collect::<Vec<_>>();
        assert_eq!(
            images(&mut ss.containers.iter().map(|c| c.image.clone())),
            images(&mut fs.containers.iter().map(|c| c.image.clone()))
        );
        assert_eq!(
            images(&mut ss.init_containers.iter().map(|c| c.image.clone())),
            images(&mut fs.init_containers.iter().flatten().map(|c| c.image.clone()))
        );
        assert_eq!(ss.node_name, fs.node_name);

        let (fs, ss) = (
            full.status.as_ref().expect("status"),
            slim.status.as_ref().expect("status"),
        );
        assert_eq!(ss.phase, fs.phase);
        assert_eq!(ss.nominated_node_name, fs.nominated_node_name);
        let conds: Vec<_> = fs
            .conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.last_transition_time.clone(),
                )
            })
            .collect();
        let slim_conds: Vec<_> = ss
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.last_transition_time.clone(),
                )
            })
            .collect();
        assert_eq!(slim_conds, conds);
        let running: Vec<bool> = fs
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .collect();
        assert_eq!(running, vec![true, false]);
        assert_eq!(
            ss.container_statuses
                .iter()
                .map(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                .collect::<Vec<_>>(),
            vec![true, false]
        );
    }

    #[test]
    fn missing_and_null_fields_read_as_empty_and_wrong_types_fail() {
        let p: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "a", "labels": null, "ownerReferences": null},
            "spec": {"containers": null, "initContainers": null},
            "status": {"conditions": null, "containerStatuses": [{"state": {"running": null}}]}
        }))
        .expect("nulls are empty");
        assert_eq!(p.metadata.name.as_deref(), Some("a"));
        assert!(p.metadata.labels.is_none());
        let spec = p.spec.expect("spec");
        assert!(spec.containers.is_empty() && spec.init_containers.is_empty());
        let status = p.status.expect("status");
        assert!(status.conditions.is_empty());
        assert!(
            status.container_statuses[0]
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_none())
        );
        let empty: SlimPod = serde_json::from_value(json!({})).expect("an empty pod");
        assert_eq!(empty, SlimPod::default());
        for bad in [
            json!({"spec": {"containers": 5}}),
            json!({"metadata": {"labels": ["a"]}}),
            json!({"metadata": {"name": 7}}),
            json!({"status": {"conditions": [{"type": 1}]}}),
        ] {
            assert!(
                serde_json::from_value::<SlimPod>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn is_listed_and_watched_at_the_pod_path() {
        use kube::Resource;
        assert_eq!(SlimPod::kind(&()), "Pod");
        assert_eq!(SlimPod::api_version(&()), "v1");
        assert_eq!(SlimPod::plural(&()), "pods");
        assert_eq!(
            SlimPod::url_path(&(), Some("shop")),
            "/api/v1/namespaces/shop/pods"
        );
    }
}
