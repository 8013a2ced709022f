//! A partial Pod: only the fields the normaliser reads.
//!
//! A k8s-openapi `Pod` is some 25 allocations and kilobytes of inline
//! `Option`s (every container carries every optional field), and the live
//! watcher receives one per pod change: parsing and freeing it was half the
//! cost of a watch event. [`SlimPod`] implements `kube::Resource` like the
//! full type (through k8s-openapi's `Resource` and `Metadata`, with the
//! full type's constants), so `watcher(Api<SlimPod>, …)` lists and watches
//! the same `/api/v1/pods`; serde skips every field not declared here, so
//! `managedFields`, annotations and the rest are never built, and the
//! status lists are summed up as they are read, allocating nothing.
//!
//! Missing or `null` fields read as empty, as k8s-openapi reads them, and a
//! field that is read but of the wrong type is an error, as there.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The only label the normaliser reads: it links a pod to its Deployment
/// through the ReplicaSet name.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The Pod fields the normaliser reads.
///
/// `metadata` is an `ObjectMeta`, as `kube::Resource` requires, holding
/// only name, namespace, resource version, creation and deletion times, and
/// the owner references' kind, name and controller flag; every other
/// metadata field is left unset, labels included: the one label read is
/// [`SlimPod::template_hash`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlimPod {
    /// Metadata, trimmed as the type's doc says.
    pub metadata: ObjectMeta,
    /// The value of the [`TEMPLATE_HASH_LABEL`] label.
    pub template_hash: Option<String>,
    /// The parts of the spec that name images and the node.
    pub spec: Option<SlimPodSpec>,
    /// The parts of the status that tell the pod's phase.
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
    /// What `conditions` say.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Conditions,
    /// What `containerStatuses` say.
    #[serde(default, deserialize_with = "null_default")]
    pub container_statuses: ContainerStatuses,
}

/// A pod's `status.conditions`, summed up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conditions {
    /// Whether condition `PodScheduled` is `True`.
    pub scheduled: bool,
    /// The latest `lastTransitionTime` of any condition.
    pub last_transition_time: Option<Time>,
}

/// A pod's `status.containerStatuses`, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerStatuses {
    /// Statuses listed.
    pub listed: usize,
    /// Statuses whose `state.running` is set (even empty).
    pub running: usize,
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

/// A pod as it arrives, before the template hash leaves the metadata.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: Option<MetaFields>,
    #[serde(default)]
    spec: Option<SlimPodSpec>,
    #[serde(default)]
    status: Option<SlimPodStatus>,
}

impl<'de> Deserialize<'de> for SlimPod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let (metadata, template_hash) = w.metadata.map(MetaFields::split).unwrap_or_default();
        Ok(SlimPod {
            metadata,
            template_hash,
            spec: w.spec,
            status: w.status,
        })
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

impl MetaFields {
    /// The metadata, and the template hash label's value.
    fn split(self) -> (ObjectMeta, Option<String>) {
        let meta = ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            resource_version: self.resource_version,
            creation_timestamp: self.creation_timestamp,
            deletion_timestamp: self.deletion_timestamp,
            owner_references: self.owner_references.map(|os| {
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
        };
        (meta, self.labels.and_then(|h| h.0))
    }
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

/// A label map read for its [`TEMPLATE_HASH_LABEL`] value alone: the other
/// labels are skipped without being copied.
struct TemplateHash(Option<String>);

impl<'de> Deserialize<'de> for TemplateHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TemplateHash;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of label names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TemplateHash, A::Error> {
                let mut hash = None;
                while let Some(Matched(wanted)) = map.next_key_seed(Is(TEMPLATE_HASH_LABEL))? {
                    if wanted {
                        hash = map.next_value::<Option<String>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(TemplateHash(hash))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a string only to tell whether it equals the one given, without
/// copying it; as a result, whether it did.
#[derive(Clone, Copy)]
struct Is(&'static str);

/// Whether a string read through [`Is`] matched.
#[derive(Clone, Copy, Default)]
struct Matched(bool);

impl<'de> de::DeserializeSeed<'de> for Is {
    type Value = Matched;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Matched, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Is {
    type Value = Matched;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Matched, E> {
        Ok(Matched(s == self.0))
    }
}

/// One condition, as far as [`Conditions`] needs it.
struct Condition {
    scheduled_true: bool,
    last_transition_time: Option<Time>,
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Condition;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pod condition")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Condition, A::Error> {
                let (mut scheduled, mut is_true, mut last) = (false, false, None);
                while let Some(key) = map.next_key::<ConditionField>()? {
                    match key {
                        ConditionField::Type => {
                            scheduled = map.next_value_seed(NullOr(Is("PodScheduled")))?.0
                        }
                        ConditionField::Status => {
                            is_true = map.next_value_seed(NullOr(Is("True")))?.0
                        }
                        ConditionField::LastTransitionTime => last = map.next_value()?,
                        ConditionField::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Condition {
                    scheduled_true: scheduled && is_true,
                    last_transition_time: last,
                })
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ConditionField {
    Type,
    Status,
    LastTransitionTime,
    #[serde(other)]
    Other,
}

/// [`Is`] on a value that may be `null` (no match).
struct NullOr(Is);

impl<'de> de::DeserializeSeed<'de> for NullOr {
    type Value = Matched;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Matched, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for NullOr {
    type Value = Matched;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<Matched, E> {
        Ok(Matched(false))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Matched, E> {
        Ok(Matched(false))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Matched, D::Error> {
        d.deserialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for Conditions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Conditions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of pod conditions")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Conditions, A::Error> {
                let mut all = Conditions::default();
                while let Some(c) = seq.next_element::<Condition>()? {
                    all.scheduled |= c.scheduled_true;
                    if let Some(t) = c.last_transition_time
                        && all.last_transition_time.as_ref().is_none_or(|l| l.0 < t.0)
                    {
                        all.last_transition_time = Some(t);
                    }
                }
                Ok(all)
            }
        }
        d.deserialize_seq(V)
    }
}

/// One container status, as far as [`ContainerStatuses`] needs it.
#[derive(Deserialize)]
struct ContainerStatus {
    #[serde(default)]
    state: Option<ContainerState>,
}

#[derive(Deserialize)]
struct ContainerState {
    #[serde(default)]
    running: Option<IgnoredAny>,
}

impl<'de> Deserialize<'de> for ContainerStatuses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContainerStatuses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of container statuses")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ContainerStatuses, A::Error> {
                let mut all = ContainerStatuses::default();
                while let Some(c) = seq.next_element::<ContainerStatus>()? {
                    all.listed += 1;
                    if c.state.is_some_and(|s| s.running.is_some()) {
                        all.running += 1;
                    }
                }
                Ok(all)
            }
        }
        d.deserialize_seq(V)
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
        let hash = fm.labels.as_ref().and_then(|l| l.get(TEMPLATE_HASH_LABEL));
        assert_eq!(slim.template_hash.as_ref(), hash);
        assert_eq!(slim.template_hash.as_deref(), Some("5d8f7"));
        // Labels, annotations and managed fields are never built.
        assert!(sm.labels.is_none() && sm.annotations.is_none());
        assert!(sm.managed_fields.is_none() && sm.uid.is_none());
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
        let conds = fs.conditions.as_deref().unwrap_or_default();
        let scheduled = conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.status == "True");
        assert!(scheduled);
        assert_eq!(ss.conditions.scheduled, scheduled);
        let latest = conds
            .iter()
            .filter_map(|c| c.last_transition_time.clone())
            .max_by_key(|t| t.0);
        assert_eq!(ss.conditions.last_transition_time, latest);
        let statuses = fs.container_statuses.as_deref().unwrap_or_default();
        let running = statuses
            .iter()
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .count();
        assert_eq!((statuses.len(), running), (2, 1));
        assert_eq!(
            ss.container_statuses,
            ContainerStatuses {
                listed: statuses.len(),
                running
            }
        );
    }

    #[test]
    fn missing_and_null_fields_read_as_empty_and_wrong_types_fail() {
        let p: SlimPod = serde_json::from_value(json!({
            "metadata": {"name": "a", "labels": null, "ownerReferences": null},
            "spec": {"containers": null, "initContainers": null},
            "status": {"conditions": [{"type": "PodScheduled", "status": null}],
                       "containerStatuses": [{"state": {"running": null}}]}
        }))
        .expect("nulls are empty");
        assert_eq!(p.metadata.name.as_deref(), Some("a"));
        assert!(p.template_hash.is_none());
        let spec = p.spec.expect("spec");
        assert!(spec.containers.is_empty() && spec.init_containers.is_empty());
        let status = p.status.expect("status");
        assert_eq!(status.conditions, Conditions::default());
        assert_eq!(
            status.container_statuses,
            ContainerStatuses {
                listed: 1,
                running: 0
            }
        );
        let labelled: SlimPod =
            serde_json::from_value(json!({"metadata": {"labels": {"app": "x"}}})).expect("labels");
        assert!(labelled.template_hash.is_none());
        let empty: SlimPod = serde_json::from_value(json!({})).expect("an empty pod");
        assert_eq!(empty, SlimPod::default());
        for bad in [
            json!({"spec": {"containers": 5}}),
            json!({"metadata": {"labels": ["a"]}}),
            json!({"metadata": {"name": 7}}),
            json!({"status": {"conditions": [{"type": 1}]}}),
            json!({"status": {"containerStatuses": {"a": 1}}}),
            json!({"metadata": {"creationTimestamp": "yesterday"}}),
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
