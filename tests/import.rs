//! `pullahead import` on a real SimKube trace (JSON and msgpack) and on
//! kubectl watch streams, plus the errors for bad files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use pullahead::event::{Body, ClaimPhase, Event, NodePhase, PodPhase};
use pullahead::import::{Format, convert};
use serde_json::{Value, json};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/simkube/dsb_social_network_trace.json")
}

fn replicas_by_workload(evs: &[Event]) -> BTreeMap<String, Vec<u32>> {
    let mut m: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in evs {
        if let Body::Workload(w) = &e.body {
            m.entry(w.workload.clone())
                .or_default()
                .push(w.replicas.unwrap_or(0));
        }
    }
    m
}

fn check_dsb(evs: &[Event]) {
    let reps = replicas_by_workload(evs);
    assert_eq!(reps.len(), 27, "27 Deployments in the dsb namespace");
    // The replica history SOURCE.txt describes, read from the objects.
    assert_eq!(reps["dsb/nginx-thrift"], vec![1, 2, 4, 8, 10, 1]);
    assert_eq!(reps["dsb/compose-post-service"], vec![1, 4, 1, 6, 2, 1]);
    let images: BTreeSet<String> = evs
        .iter()
        .flat_map(|e| match &e.body {
            Body::Workload(w) => w.images.clone(),
            _ => Vec::new(),
        })
        .collect();
    // Seven container images, plus alpine/git from an init container.
    assert_eq!(images.len(), 8, "{images:?}");
    assert!(images.contains("docker.io/alpine/git:latest"), "{images:?}");
    assert!(
        images.contains("docker.io/library/mongo:4.4.6"),
        "{images:?}"
    );
    assert!(evs.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert_eq!(evs.first().map(|e| e.ts), Some(1_710_892_138.0));
}

#[test]
fn simkube_json_trace() {
    let bytes = std::fs::read(fixture()).expect("fixture present");
    let (evs, summary) = convert(Format::Simkube, &bytes, "dsb.json").expect("imports");
    check_dsb(&evs);
    assert_eq!(summary.events.get("workload"), Some(&(evs.len() as u64)));
    assert!(summary.skipped.is_empty());
}

#[test]
fn simkube_msgpack_trace_matches_json() {
    let bytes = std::fs::read(fixture()).expect("fixture present");
    let value: Value = serde_json::from_slice(&bytes).expect("json");
    let packed = rmp_serde::to_vec_named(&value).expect("msgpack");
    assert_ne!(packed.first(), Some(&b'{'));
    let (from_mp, _) = convert(Format::Simkube, &packed, "dsb.sktrace").expect("imports msgpack");
    let (from_json, _) = convert(Format::Simkube, &bytes, "dsb.json").expect("imports json");
    check_dsb(&from_mp);
    assert_eq!(from_mp, from_json);
}

#[test]
fn simkube_bad_files() {
    let err = convert(
        Format::Simkube,
        br#"{"version": 9, "events": []}"#,
        "t.json",
    )
    .unwrap_err();
    assert!(err.to_string().contains("version 9"), "{err}");
    let err = convert(
        Format::Simkube,
        b"{\"version\": 2,\n \"events\": [}",
        "t.json",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("t.json:2:"), "{err}");
    let err = convert(Format::Simkube, &[0x93, 0xc1, 0xc1], "t.sktrace").unwrap_err();
    assert!(err.to_string().contains("msgpack"), "{err}");
    let bad_obj = json!({"version": 2, "events": [{"ts": 5, "applied_objs": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "many"}}
    ], "deleted_objs": []}]});
    let err = convert(Format::Simkube, bad_obj.to_string().as_bytes(), "t.json").unwrap_err();
    assert!(
        err.to_string().contains("events[0]") && err.to_string().contains("Deployment"),
        "{err}"
    );
}

/// A kubectl watch stream: pretty-printed objects back to back, as
/// `kubectl get … --watch --output-watch-events -o json` prints them.
fn watch_stream() -> String {
    let claim = |conds: Value| {
        json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
               "metadata": {"name": "default-x7k2p", "creationTimestamp": "2024-05-01T10:00:00Z",
                            "labels": {"karpenter.sh/nodepool": "default"}},
               "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}, "requirements": []},
               "status": {"conditions": conds, "nodeName": "ip-10-0-7-9.ec2.internal"}})
    };
    let pod = |node: Option<&str>| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-5d8f7-abcde", "namespace": "shop", "creationTimestamp": "2024-05-01T10:00:00Z",
                         "labels": {"pod-template-hash": "5d8f7"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
            "status": {"phase": "Pending"}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
            p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2024-05-01T10:01:05Z"}]);
        }
        p
    };
    let nominated = json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-5d8f7-abcde.1", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web-5d8f7-abcde"},
        "reason": "Nominated", "message": "Pod should schedule on: nodeclaim/default-x7k2p",
        "lastTimestamp": "2024-05-01T10:00:02Z", "count": 1, "type": "Normal", "source": {"component": "karpenter"}});
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "ip-10-0-7-9.ec2.internal", "creationTimestamp": "2024-05-01T10:00:50Z",
                     "labels": {"karpenter.sh/nodepool": "default"}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:01:00Z"}]}});
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "x"}});
    let launched = json!([{"type": "Launched", "status": "True", "lastTransitionTime": "2024-05-01T10:00:05Z"}]);
    let init = json!([{"type": "Launched", "status": "True", "lastTransitionTime": "2024-05-01T10:00:05Z"},
                      {"type": "Registered", "status": "True", "lastTransitionTime": "2024-05-01T10:00:50Z"},
                      {"type": "Initialized", "status": "True", "lastTransitionTime": "2024-05-01T10:01:00Z"}]);
    let items = [
        json!({"type": "ADDED", "object": claim(json!([]))}),
        json!({"type": "ADDED", "object": pod(None)}),
        json!({"type": "ADDED", "object": nominated}),
        json!({"type": "MODIFIED", "object": claim(launched)}),
        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}}),
        json!({"type": "ADDED", "object": node}),
        json!({"type": "MODIFIED", "object": claim(init)}),
        json!({"type": "ADDED", "object": cm}),
        json!({"type": "MODIFIED", "object": pod(Some("ip-10-0-7-9.ec2.internal"))}),
        json!({"type": "DELETED", "object": pod(Some("ip-10-0-7-9.ec2.internal"))}),
    ];
    // Pretty-printed and back to back, one even glued to the next.
    let mut s = String::new();
    for (i, it) in items.iter().enumerate() {
        if i == 3 {
            s.push_str(&serde_json::to_string(it).expect("json"));
        } else {
            s.push_str(&serde_json::to_string_pretty(it).expect("json"));
            s.push('\n');
        }
    }
    s
}

#[test]
fn kube_watch_stream() {
    let (evs, summary) =
        convert(Format::KubeWatch, watch_stream().as_bytes(), "w.json").expect("imports");
    assert!(evs.windows(2).all(|w| w[0].ts <= w[1].ts), "time-ordered");
    let claims: Vec<ClaimPhase> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::NodeClaim(c) => Some(c.phase),
            _ => None,
        })
        .collect();
    assert_eq!(
        claims,
        vec![
            ClaimPhase::Created,
            ClaimPhase::Launched,
            ClaimPhase::Registered,
            ClaimPhase::Initialized
        ]
    );
    let pods: Vec<(PodPhase, Option<String>)> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Pod(p) => {
                assert_eq!(p.workload.as_deref(), Some("shop/web"));
                Some((p.phase, p.node_claim.clone().or(p.node.clone())))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        pods,
        vec![
            (PodPhase::Pending, None),
            (PodPhase::Nominated, Some("default-x7k2p".into())),
            (PodPhase::Scheduled, Some("default-x7k2p".into())),
            (PodPhase::Deleted, Some("default-x7k2p".into())),
        ]
    );
    let nodes: Vec<NodePhase> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Node(n) => Some(n.phase),
            _ => None,
        })
        .collect();
    assert_eq!(nodes, vec![NodePhase::Registered, NodePhase::Ready]);
    // Times come from the objects: the nomination at 10:00:02.
    let nominated_ts = evs
        .iter()
        .find(|e| matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Nominated))
        .map(|e| e.ts);
    assert_eq!(nominated_ts, Some(1_714_557_602.0));
    assert_eq!(summary.skipped.get("ConfigMap"), Some(&1));
    assert_eq!(summary.objects, 9, "the bookmark is not an object");
}

#[test]
fn kube_watch_list_and_bare_objects() {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ne", "namespace": "mon"},
         "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "quay.io/prometheus/node-exporter:v1.8.0"}]}}}}
    ]});
    let bare = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "maxReplicas": 9},
        "status": {"currentReplicas": 2, "desiredReplicas": 5}});
    let text = format!("{list}{bare}");
    let (evs, _) = convert(Format::KubeWatch, text.as_bytes(), "l.json").expect("imports");
    assert!(matches!(&evs[0].body, Body::Workload(w) if w.kind == "DaemonSet"));
    assert!(
        matches!(&evs[1].body, Body::Hpa(h) if h.desired_replicas == 5 && h.workload == "shop/web")
    );
}

#[test]
fn kube_watch_bad_files_name_the_line() {
    let cases: [(&str, &str); 6] = [
        (
            "{\"type\": \"ADDED\",\n \"object\": {\"apiVersion\": \"v1\",\n \"kind\": \"Pod\" \n",
            "w.json:4:",
        ),
        (
            "{\"type\": \"ADDED\", \"object\": {\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {\"name\": \"n\"}}}\n\n{\"type\": \"SQUASHED\", \"object\": {}}",
            "w.json:3:",
        ),
        (
            "\n\n{\"type\": \"ADDED\", \"object\": {\"apiVersion\": \"v1\", \"kind\": \"Pod\", \"spec\": {\"containers\": 1}}}",
            "w.json:3:",
        ),
        ("[1, 2]", "w.json:1:"),
        ("   ", "w.json: no JSON values"),
        // Bad JSON: its line and column in the file, and what was expected.
        (
            "{\"type\": \"BOOKMARK\", \"object\": {}}\n{\"type\": x}",
            "w.json:2:10: expected value",
        ),
    ];
    for (text, prefix) in cases {
        let err = convert(Format::KubeWatch, text.as_bytes(), "w.json")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(prefix), "{text:?}: {err}");
        assert!(!err.contains(" at line "), "the position once: {err}");
    }
    // A nameless Node is the normaliser's error, with the object's line.
    let err = convert(
        Format::KubeWatch,
        b"\n{\"type\": \"ADDED\", \"object\": {\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {}}}",
        "w.json",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("w.json:2:") && err.contains("metadata.name"),
        "{err}"
    );
}
