//! Synthetic but real-shaped cluster objects shared by the watch benches.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerImage, Node, NodeCondition, NodeSpec, NodeStatus, Pod, PodCondition,
    PodSpec, PodStatus, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use pullahead::normalize::SlimPod;

/// A Ready node of `pool` with 50 images in its status, as kubelet reports them.
pub fn node(i: usize, rv: u64) -> Node {
    let name = format!(
        "ip-10-{}-{}-{}.eu-west-1.compute.internal",
        i / 65536,
        (i / 256) % 256,
        i % 256
    );
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "m5.large"),
        (
            "karpenter.sh/nodepool",
            if i.is_multiple_of(3) {
                "gpu"
            } else {
                "general"
            },
        ),
        ("topology.kubernetes.io/zone", "eu-west-1a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            uid: Some(format!("uid-node-{i}")),
            resource_version: Some(rv.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            provider_id: Some(format!("aws:///eu-west-1a/i-{i:017x}")),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                ..Default::default()
            }]),
            images: Some(
                (0..50)
                    .map(|k| ContainerImage {
                        names: Some(vec![
                            format!(
                                "registry.example.com/team{}/svc{}@sha256:{:064x}",
                                k % 7,
                                k,
                                k
                            ),
                            format!("registry.example.com/team{}/svc{}:1.{}.0", k % 7, k, k % 9),
                        ]),
                        size_bytes: Some(50_000_000 + k as i64),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    }
}

/// Pod `i` of one of 500 Deployments: 2 containers, a ReplicaSet owner,
/// pending or bound to a node.
pub fn pod(i: usize, rv: u64, node: Option<&str>) -> Pod {
    let app = format!("svc{}", i % 500);
    let ns = format!("team{}", i % 20);
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{app}-7d9c5b8f4-{i:05x}")),
            namespace: Some(ns),
            uid: Some(format!("uid-pod-{i}")),
            resource_version: Some(rv.to_string()),
            labels: Some(
                [
                    ("app".to_string(), app.clone()),
                    ("pod-template-hash".into(), "7d9c5b8f4".into()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: format!("{app}-7d9c5b8f4"),
                uid: "rs".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: app.clone(),
                    image: Some(format!("registry.example.com/{app}:1.4.2")),
                    ..Default::default()
                },
                Container {
                    name: "envoy".into(),
                    image: Some("docker.io/envoyproxy/envoy:v1.31.0".into()),
                    ..Default::default()
                },
            ],
            node_name: node.map(str::to_string),
            tolerations: Some(vec![Toleration {
                key: Some("node.kubernetes.io/not-ready".into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: if node.is_some() { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// [`pod`] as the API server sends it: its JSON.
pub fn pod_json(i: usize, rv: u64, node: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&pod(i, rv, node)).expect("a Pod serialises")
}

/// A pod's JSON read as the watcher reads it: the fields the normaliser
/// needs, in a [`SlimPod`].
pub fn slim_pod_from(json: &[u8]) -> SlimPod {
    serde_json::from_slice(json).expect("a Pod's JSON is a SlimPod")
}

/// [`pod`] as the watcher receives it.
pub fn slim_pod(i: usize, rv: u64, node: Option<&str>) -> SlimPod {
    slim_pod_from(&pod_json(i, rv, node))
}
