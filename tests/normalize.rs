//! The normaliser over real-shaped Kubernetes JSON: every object kind and
//! every event message form it claims to understand.

use pullahead::event::{Autoscaler, Body, ClaimPhase, Event, NodePhase, PodPhase};
use pullahead::normalize::{Change, Normalizer, Object};
use serde_json::{Value, json};

fn obj(v: Value) -> Object {
    Object::from_value(v).expect("fixture parses")
}

fn apply(n: &mut Normalizer, ts: f64, v: Value) -> Vec<Event> {
    let mut out = Vec::new();
    n.apply(ts, Change::Applied(obj(v)), &mut out)
        .expect("apply");
    out
}

fn delete(n: &mut Normalizer, ts: f64, v: Value) -> Vec<Event> {
    let mut out = Vec::new();
    n.apply(ts, Change::Deleted(obj(v)), &mut out)
        .expect("delete");
    out
}

fn pod_phases(evs: &[Event]) -> Vec<(PodPhase, Option<String>, Option<String>)> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::Pod(p) => Some((p.phase, p.node.clone(), p.node_claim.clone())),
            _ => None,
        })
        .collect()
}

fn pod(node: Option<&str>, running: bool) -> Value {
    let mut spec = json!({
        "initContainers": [{"name": "init", "image": "busybox:1.36"}],
        "containers": [
            {"name": "web", "image": "nginx:1.25", "resources": {"requests": {"cpu": "500m"}}},
            {"name": "sidecar", "image": "quay.io/prometheus/node-exporter:v1.8.0"}
        ],
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
    });
    let mut status = json!({"phase": "Pending", "qosClass": "Burstable"});
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
        status["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2024-03-19T10:00:05Z"}]);
    } else {
        status["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu.", "lastProbeTime": null, "lastTransitionTime": "2024-03-19T10:00:00Z"}]);
    }
    if running {
        status["phase"] = json!("Running");
        status["containerStatuses"] = json!([
            {"name": "web", "image": "docker.io/library/nginx:1.25", "imageID": "docker.io/library/nginx@sha256:aa", "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2024-03-19T10:00:40Z"}}},
            {"name": "sidecar", "image": "quay.io/prometheus/node-exporter:v1.8.0", "imageID": "quay.io/prometheus/node-exporter@sha256:bb", "ready": true, "restartCount": 0, "started": true, "state": {"running": {"startedAt": "2024-03-19T10:00:41Z"}}}
        ]);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-7c9f8d6b5-x2k4p", "namespace": "shop", "uid": "2b1c6a6e-1d2f-4f7e-9a55-0c1f3a0f9b01",
            "resourceVersion": "1234", "creationTimestamp": "2024-03-19T10:00:00Z",
            "labels": {"app": "web", "pod-template-hash": "7c9f8d6b5"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7c9f8d6b5", "uid": "9f3e", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": spec, "status": status
    })
}

fn kube_event(name: &str, reason: &str, message: &str, involved: Value, count: i32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": involved["namespace"].as_str().unwrap_or("default"), "resourceVersion": "88", "creationTimestamp": "2024-03-19T10:00:01Z"},
        "involvedObject": involved,
        "reason": reason, "message": message, "type": "Normal", "count": count,
        "firstTimestamp": "2024-03-19T10:00:01Z", "lastTimestamp": "2024-03-19T10:00:02Z",
        "source": {"component": "kubelet", "host": "ip-10-0-1-23.ec2.internal"},
        "reportingComponent": "kubelet", "reportingInstance": "ip-10-0-1-23.ec2.internal"
    })
}

fn pod_ref() -> Value {
    json!({"kind": "Pod", "namespace": "shop", "name": "web-7c9f8d6b5-x2k4p", "uid": "2b1c6a6e-1d2f-4f7e-9a55-0c1f3a0f9b01", "apiVersion": "v1", "resourceVersion": "1234"})
}

#[test]
fn pod_lifecycle_emits_each_transition_once() {
    let mut n = Normalizer::new();
    let first = apply(&mut n, 1.0, pod(None, false));
    assert_eq!(pod_phases(&first), vec![(PodPhase::Pending, None, None)]);
    let Body::Pod(p) = &first[0].body else {
        panic!("not a pod event")
    };
    assert_eq!(p.pod, "shop/web-7c9f8d6b5-x2k4p");
    assert_eq!(
        p.workload.as_deref(),
        Some("shop/web"),
        "traced through the ReplicaSet"
    );
    assert_eq!(
        p.images,
        vec![
            "docker.io/library/busybox:1.36",
            "docker.io/library/nginx:1.25",
            "quay.io/prometheus/node-exporter:v1.8.0"
        ],
        "init containers first, names expanded"
    );
    assert!(
        apply(&mut n, 2.0, pod(None, false)).is_empty(),
        "re-sent pod emits nothing"
    );
    let sched = apply(&mut n, 3.0, pod(Some("node-a"), false));
    assert_eq!(
        pod_phases(&sched),
        vec![(PodPhase::Scheduled, Some("node-a".into()), None)]
    );
    assert!(apply(&mut n, 3.5, pod(Some("node-a"), false)).is_empty());
    let started = apply(&mut n, 4.0, pod(Some("node-a"), true));
    assert_eq!(
        pod_phases(&started),
        vec![(PodPhase::Started, Some("node-a".into()), None)]
    );
    assert!(apply(&mut n, 4.5, pod(Some("node-a"), true)).is_empty());
    // A container restart (not all running) does not move the pod back.
    assert!(apply(&mut n, 4.7, pod(Some("node-a"), false)).is_empty());
    let gone = delete(&mut n, 5.0, pod(Some("node-a"), true));
    assert_eq!(
        pod_phases(&gone),
        vec![(PodPhase::Deleted, Some("node-a".into()), None)]
    );
    assert!(
        delete(&mut n, 5.0, pod(Some("node-a"), true)).is_empty(),
        "second delete is silent"
    );
    assert_eq!(n.tracked_pods(), 0);
    assert!(gone.iter().all(|e| e.ts == 5.0));
}

#[test]
fn pod_first_seen_running_reports_skipped_phases() {
    let mut n = Normalizer::new();
    let evs = apply(&mut n, 1.0, pod(Some("node-b"), true));
    let phases: Vec<_> = pod_phases(&evs).into_iter().map(|p| p.0).collect();
    assert_eq!(
        phases,
        vec![PodPhase::Pending, PodPhase::Scheduled, PodPhase::Started]
    );
}

#[test]
fn succeeded_pod_counts_as_deleted() {
    let mut n = Normalizer::new();
    apply(&mut n, 1.0, pod(Some("node-a"), true));
    let mut done = pod(Some("node-a"), false);
    done["status"]["phase"] = json!("Succeeded");
    let evs = apply(&mut n, 2.0, done);
    assert_eq!(pod_phases(&evs)[0].0, PodPhase::Deleted);
}

#[test]
fn nominated_event_to_nodeclaim_and_node() {
    let mut n = Normalizer::new();
    apply(&mut n, 1.0, pod(None, false));
    let ev = kube_event(
        "web-7c9f8d6b5-x2k4p.17be0a1f",
        "Nominated",
        "Pod should schedule on: nodeclaim/default-8wq2n",
        pod_ref(),
        1,
    );
    let evs = apply(&mut n, 2.0, ev.clone());
    assert_eq!(
        pod_phases(&evs),
        vec![(PodPhase::Nominated, None, Some("default-8wq2n".into()))]
    );
    let Body::Pod(p) = &evs[0].body else { panic!() };
    assert_eq!(p.images.len(), 3, "nominated pod carries its images");
    assert!(
        apply(&mut n, 2.0, ev).is_empty(),
        "the same event re-sent is silent"
    );
    // Karpenter names the node once the claim has one.
    let both = kube_event(
        "web-7c9f8d6b5-x2k4p.17be0a20",
        "Nominated",
        "Pod should schedule on: nodeclaim/default-8wq2n, node/ip-10-0-1-23.ec2.internal",
        pod_ref(),
        1,
    );
    let evs = apply(&mut n, 3.0, both);
    assert_eq!(
        pod_phases(&evs),
        vec![(
            PodPhase::Nominated,
            Some("ip-10-0-1-23.ec2.internal".into()),
            Some("default-8wq2n".into())
        )]
    );
    // Nomination to an existing node.
    let mut n = Normalizer::new();
    apply(&mut n, 1.0, pod(None, false));
    let evs = apply(
        &mut n,
        2.0,
        kube_event(
            "x.1",
            "Nominated",
            "Pod should schedule on: node/node-c",
            pod_ref(),
            1,
        ),
    );
    assert_eq!(
        pod_phases(&evs),
        vec![(PodPhase::Nominated, Some("node-c".into()), None)]
    );
    // Once bound, a late nomination is ignored.
    apply(&mut n, 3.0, pod(Some("node-c"), false));
    let late = kube_event(
        "x.2",
        "Nominated",
        "Pod should schedule on: node/node-d",
        pod_ref(),
        1,
    );
    assert!(apply(&mut n, 4.0, late).is_empty());
}

/// Watch streams race: the `Nominated` event can come before the pod it
/// names. The nomination carries no images then; once the pod is seen it
/// is passed on again with them, so its images are still ordered.
#[test]
fn a_nomination_before_its_pod_is_passed_on_again_with_the_images() {
    let mut n = Normalizer::new();
    let ev = kube_event(
        "web-7c9f8d6b5-x2k4p.17be0a1f",
        "Nominated",
        "Pod should schedule on: nodeclaim/default-8wq2n",
        pod_ref(),
        1,
    );
    let evs = apply(&mut n, 1.0, ev);
    let Body::Pod(p) = &evs[0].body else { panic!() };
    assert!(p.images.is_empty());
    let evs = apply(&mut n, 2.0, pod(None, false));
    assert_eq!(
        pod_phases(&evs),
        vec![(PodPhase::Nominated, None, Some("default-8wq2n".into()))]
    );
    let Body::Pod(p) = &evs[0].body else { panic!() };
    assert_eq!(p.images.len(), 3, "{:?}", p.images);
    assert!(
        apply(&mut n, 3.0, pod(None, false)).is_empty(),
        "an unchanged pod is silent"
    );
}

fn scale_ups(evs: &[Event]) -> Vec<(String, u32, u32, Option<Vec<String>>)> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::ScaleUp(s) => {
                assert_eq!(s.source, Autoscaler::ClusterAutoscaler);
                Some((s.group.clone(), s.from, s.to, s.pods.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn triggered_scale_up_one_and_several_groups() {
    let mut n = Normalizer::new();
    let mut ev = kube_event(
        "web.1",
        "TriggeredScaleUp",
        "pod triggered scale-up: [{eks-ng-a-1234 3->6 (max: 6)}]",
        pod_ref(),
        1,
    );
    ev["source"] = json!({"component": "cluster-autoscaler"});
    let evs = apply(&mut n, 1.0, ev.clone());
    let pods = Some(vec!["shop/web-7c9f8d6b5-x2k4p".to_string()]);
    assert_eq!(
        scale_ups(&evs),
        vec![("eks-ng-a-1234".into(), 3, 6, pods.clone())]
    );
    assert!(apply(&mut n, 1.0, ev.clone()).is_empty());
    // The same Event object with a higher count is a new occurrence.
    ev["count"] = json!(2);
    assert_eq!(scale_ups(&apply(&mut n, 2.0, ev)).len(), 1);
    let multi = kube_event(
        "web.2",
        "TriggeredScaleUp",
        "pod triggered scale-up: [{ng-a 1->2 (max: 5)} {ng-b 0->3 (max: 10)}]",
        pod_ref(),
        1,
    );
    assert_eq!(
        scale_ups(&apply(&mut n, 3.0, multi)),
        vec![
            ("ng-a".into(), 1, 2, pods.clone()),
            ("ng-b".into(), 0, 3, pods)
        ]
    );
}

#[test]
fn scaled_up_group_on_the_status_configmap() {
    let mut n = Normalizer::new();
    let cm = json!({"kind": "ConfigMap", "namespace": "kube-system", "name": "cluster-autoscaler-status", "apiVersion": "v1", "uid": "c1"});
    let ev = kube_event(
        "cluster-autoscaler-status.17",
        "ScaledUpGroup",
        "Scale-up: setting group eks-ng-a-1234 size to 6 instead of 3 (max: 10)",
        cm,
        1,
    );
    assert_eq!(
        scale_ups(&apply(&mut n, 1.0, ev)),
        vec![("eks-ng-a-1234".into(), 3, 6, None)]
    );
}

/// node, image, bytes, seconds, cached
type PullRow = (String, String, Option<u64>, Option<f64>, bool);

fn pulls(evs: &[Event]) -> Vec<PullRow> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::Pull(p) => Some((
                p.node.clone(),
                p.image.clone(),
                p.bytes,
                p.seconds,
                p.cached,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn pulled_in_all_its_forms() {
    let node = "ip-10-0-1-23.ec2.internal".to_string();
    let cases = [
        (
            r#"Successfully pulled image "nginx:1.25" in 1.2s (3.4s including waiting). Image size: 70000000 bytes."#,
            (
                "docker.io/library/nginx:1.25",
                Some(70_000_000),
                Some(1.2),
                false,
            ),
        ),
        (
            r#"Successfully pulled image "nginx:1.25" in 523ms (523ms including waiting)"#,
            ("docker.io/library/nginx:1.25", None, Some(0.523), false),
        ),
        (
            r#"Successfully pulled image "registry.k8s.io/pause:3.9" in 1m2.5s. Image size: 268051 bytes."#,
            (
                "registry.k8s.io/pause:3.9",
                Some(268_051),
                Some(62.5),
                false,
            ),
        ),
        (
            r#"Successfully pulled image "redis:6.2.4" in 2.345678s"#,
            ("docker.io/library/redis:6.2.4", None, Some(2.345678), false),
        ),
        (
            r#"Container image "quay.io/prometheus/node-exporter:v1.8.0" already present on machine"#,
            ("quay.io/prometheus/node-exporter:v1.8.0", None, None, true),
        ),
        (
            r#"Container image "mongo:4.4.6" already present on machine and can be accessed by the pod"#,
            ("docker.io/library/mongo:4.4.6", None, None, true),
        ),
    ];
    for (i, (msg, (image, bytes, secs, cached))) in cases.into_iter().enumerate() {
        let mut n = Normalizer::new();
        let evs = apply(
            &mut n,
            1.0,
            kube_event(&format!("p.{i}"), "Pulled", msg, pod_ref(), 1),
        );
        let got = pulls(&evs);
        assert_eq!(got.len(), 1, "{msg}");
        assert_eq!(got[0].0, node, "{msg}");
        assert_eq!(got[0].1, image, "{msg}");
        assert_eq!(got[0].2, bytes, "{msg}");
        match (got[0].3, secs) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{msg}: {a} vs {b}"),
            (a, b) => assert_eq!(a, b, "{msg}"),
        }
        assert_eq!(got[0].4, cached, "{msg}");
        let images: Vec<_> = evs
            .iter()
            .filter_map(|e| match &e.body {
                Body::Image(i) => Some(i.bytes),
                _ => None,
            })
            .collect();
        assert_eq!(
            images,
            bytes.into_iter().collect::<Vec<_>>(),
            "an image event iff a size: {msg}"
        );
    }
}

#[test]
fn pulled_without_a_source_host_uses_the_pods_node() {
    let mut n = Normalizer::new();
    apply(&mut n, 1.0, pod(Some("node-z"), false));
    let mut ev = kube_event(
        "p.9",
        "Pulled",
        r#"Container image "nginx:1.25" already present on machine"#,
        pod_ref(),
        1,
    );
    ev["source"] = json!({});
    ev["reportingInstance"] = json!("");
    assert_eq!(pulls(&apply(&mut n, 2.0, ev))[0].0, "node-z");
}

#[test]
fn unparseable_message_is_counted_not_fatal() {
    let mut n = Normalizer::new();
    let evs = apply(
        &mut n,
        1.0,
        kube_event("q", "TriggeredScaleUp", "something new", pod_ref(), 1),
    );
    assert!(evs.is_empty());
    assert_eq!(n.stats().unparsed_messages, 1);
    apply(
        &mut n,
        1.0,
        kube_event("r", "BackOff", "Back-off pulling image", pod_ref(), 1),
    );
    assert_eq!(n.stats().ignored_events, 1);
}

fn claim(conds: &[&str], deleting: bool) -> Value {
    let conditions: Vec<Value> = ["Launched", "Registered", "Initialized", "Ready"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": if conds.contains(t) { "True" } else { "Unknown" },
                   "lastTransitionTime": "2024-03-19T10:00:30Z", "reason": "", "message": "",
                   "observedGeneration": 1})
        })
        .collect();
    let mut v = json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {"name": "default-8wq2n", "generateName": "default-", "creationTimestamp": "2024-03-19T10:00:01Z",
                     "labels": {"karpenter.sh/nodepool": "default", "node.kubernetes.io/instance-type": "m5.large", "kubernetes.io/arch": "amd64"},
                     "ownerReferences": [{"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "name": "default", "uid": "u1", "blockOwnerDeletion": true}]},
        "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                 "requirements": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]}],
                 "resources": {"requests": {"cpu": "1500m", "pods": "3"}},
                 "taints": [{"key": "dedicated", "value": "web", "effect": "NoSchedule"}]},
        "status": {"conditions": conditions, "providerID": "aws:///us-west-2a/i-0abc", "imageID": "ami-0123"}
    });
    if conds.contains(&"Registered") {
        v["status"]["nodeName"] = json!("ip-10-0-1-23.ec2.internal");
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2024-03-19T11:00:00Z");
    }
    v
}

fn claim_phases(evs: &[Event]) -> Vec<ClaimPhase> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::NodeClaim(c) => {
                assert_eq!(c.pool, "default");
                assert_eq!(c.taints.as_ref().map(|t| t.len()), Some(1));
                Some(c.phase)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn nodeclaim_conditions_drive_phases() {
    let mut n = Normalizer::new();
    assert_eq!(
        claim_phases(&apply(&mut n, 1.0, claim(&[], false))),
        vec![ClaimPhase::Created]
    );
    assert!(apply(&mut n, 1.5, claim(&[], false)).is_empty());
    assert_eq!(
        claim_phases(&apply(&mut n, 2.0, claim(&["Launched"], false))),
        vec![ClaimPhase::Launched]
    );
    // Registered and Initialized arriving together are both reported, in order.
    let evs = apply(
        &mut n,
        3.0,
        claim(&["Launched", "Registered", "Initialized", "Ready"], false),
    );
    assert_eq!(
        claim_phases(&evs),
        vec![ClaimPhase::Registered, ClaimPhase::Initialized]
    );
    let Body::NodeClaim(c) = &evs[0].body else {
        panic!()
    };
    assert_eq!(c.node.as_deref(), Some("ip-10-0-1-23.ec2.internal"));
    assert!(
        apply(
            &mut n,
            3.0,
            claim(&["Launched", "Registered", "Initialized"], false)
        )
        .is_empty()
    );
    let all = ["Launched", "Registered", "Initialized"];
    assert_eq!(
        claim_phases(&apply(&mut n, 4.0, claim(&all, true))),
        vec![ClaimPhase::Deleted]
    );
    assert!(apply(&mut n, 4.1, claim(&all, true)).is_empty());
    assert!(
        delete(&mut n, 4.2, claim(&all, true)).is_empty(),
        "already reported deleted"
    );
    // A claim first seen fully initialised reports every phase it skipped.
    let mut n = Normalizer::new();
    assert_eq!(
        claim_phases(&apply(&mut n, 1.0, claim(&all, false))).len(),
        4
    );
    assert_eq!(
        claim_phases(&delete(&mut n, 2.0, claim(&all, false))),
        vec![ClaimPhase::Deleted]
    );
}

fn node(ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "ip-10-0-1-23.ec2.internal", "creationTimestamp": "2024-03-19T10:00:40Z",
                     "labels": {"karpenter.sh/nodepool": "default", "kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "m5.large"}},
        "spec": {"providerID": "aws:///us-west-2a/i-0abc",
                 "taints": [{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]},
        "status": {
            "capacity": {"cpu": "2", "memory": "7934456Ki", "pods": "29"},
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                            "lastHeartbeatTime": "2024-03-19T10:00:55Z", "lastTransitionTime": "2024-03-19T10:00:55Z",
                            "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "images": [{"names": ["docker.io/library/nginx@sha256:aa", "docker.io/library/nginx:1.25"], "sizeBytes": 70000000},
                       {"names": ["registry.k8s.io/pause@sha256:cc"], "sizeBytes": 268051}]
        }
    })
}

#[test]
fn node_registered_ready_deleted() {
    let mut n = Normalizer::new();
    let evs = apply(&mut n, 1.0, node(false));
    assert_eq!(evs.len(), 1);
    let Body::Node(nd) = &evs[0].body else {
        panic!()
    };
    assert_eq!(nd.phase, NodePhase::Registered);
    assert_eq!(nd.pool.as_deref(), Some("default"));
    assert_eq!(
        nd.images.as_deref(),
        Some(
            &[
                "docker.io/library/nginx:1.25".to_string(),
                "registry.k8s.io/pause@sha256:cc".to_string()
            ][..]
        )
    );
    assert_eq!(
        nd.taints.as_ref().map(|t| t[0].effect.as_str()),
        Some("NoExecute")
    );
    assert!(apply(&mut n, 1.5, node(false)).is_empty());
    let evs = apply(&mut n, 2.0, node(true));
    assert!(
        matches!(&evs[..], [Event { body: Body::Node(nd), .. }] if nd.phase == NodePhase::Ready)
    );
    assert!(apply(&mut n, 2.5, node(true)).is_empty());
    assert!(
        apply(&mut n, 2.6, node(false)).is_empty(),
        "a flap is not news"
    );
    let evs = delete(&mut n, 3.0, node(true));
    assert!(
        matches!(&evs[..], [Event { body: Body::Node(nd), .. }] if nd.phase == NodePhase::Deleted)
    );
}

fn deployment(replicas: i32, image: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "generation": 3, "creationTimestamp": "2024-03-19T09:00:00Z"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"initContainers": [{"name": "migrate", "image": "ghcr.io/acme/migrate:2"}],
                                       "containers": [{"name": "web", "image": image}],
                                       "nodeSelector": {"karpenter.sh/nodepool": "default"},
                                       "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "web", "effect": "NoSchedule"}]}}},
        "status": {"replicas": replicas, "readyReplicas": replicas}
    })
}

#[test]
fn workloads_of_every_kind() {
    let mut n = Normalizer::new();
    let evs = apply(&mut n, 1.0, deployment(3, "nginx:1.25"));
    let Body::Workload(w) = &evs[0].body else {
        panic!()
    };
    assert_eq!(w.workload, "shop/web");
    assert_eq!(w.kind, "Deployment");
    assert_eq!(
        w.images,
        vec!["ghcr.io/acme/migrate:2", "docker.io/library/nginx:1.25"]
    );
    assert_eq!(
        w.node_selector
            .get("karpenter.sh/nodepool")
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(w.tolerations.as_ref().map(|t| t.len()), Some(1));
    assert_eq!(w.replicas, Some(3));
    assert!(apply(&mut n, 2.0, deployment(3, "nginx:1.25")).is_empty());
    let evs = apply(&mut n, 3.0, deployment(5, "nginx:1.25"));
    assert!(matches!(&evs[..], [Event { body: Body::Workload(w), .. }] if w.replicas == Some(5)));
    let evs = apply(&mut n, 4.0, deployment(5, "nginx:1.27"));
    assert!(
        matches!(&evs[..], [Event { body: Body::Workload(w), .. }] if w.images[1].ends_with("nginx:1.27"))
    );
    let evs = delete(&mut n, 5.0, deployment(5, "nginx:1.27"));
    assert!(matches!(&evs[..], [Event { body: Body::Workload(w), .. }] if w.replicas == Some(0)));

    let template = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "quay.io/prometheus/node-exporter:v1.8.0"}]}});
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-exporter", "namespace": "kube-system"},
                    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}});
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "shop"},
                     "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"a": "b"}}, "template": template}});
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "batch-1", "namespace": "shop"},
                     "spec": {"parallelism": 4, "template": template}});
    let owned_rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                          "metadata": {"name": "web-7c9f8d6b5", "namespace": "shop",
                                       "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
                          "spec": {"replicas": 3, "selector": {"matchLabels": {"a": "b"}}, "template": template}});
    let lone_rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "lone", "namespace": "shop"},
                         "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": template}});
    let kinds: Vec<(String, Option<u32>)> = [ds, sts, job, owned_rs, lone_rs]
        .into_iter()
        .flat_map(|v| apply(&mut n, 6.0, v))
        .filter_map(|e| match e.body {
            Body::Workload(w) => Some((w.kind, w.replicas)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("DaemonSet".to_string(), None),
            ("StatefulSet".to_string(), Some(2)),
            ("Job".to_string(), Some(4)),
            ("ReplicaSet".to_string(), Some(1)),
        ],
        "a Deployment's ReplicaSet is reported through its Deployment"
    );
}

fn hpa(current: i32, desired: i32, util: i32) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 20,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}]},
        "status": {"currentReplicas": current, "desiredReplicas": desired,
                   "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": util, "averageValue": "300m"}}}],
                   "conditions": [{"type": "AbleToScale", "status": "True", "lastTransitionTime": "2024-03-19T10:00:00Z", "reason": "ReadyForNewScale"}]}
    })
}

#[test]
fn hpa_status_changes() {
    let mut n = Normalizer::new();
    let evs = apply(&mut n, 1.0, hpa(2, 4, 120));
    let Body::Hpa(h) = &evs[0].body else { panic!() };
    assert_eq!(h.hpa, "shop/web");
    assert_eq!(h.workload, "shop/web");
    assert_eq!((h.current_replicas, h.desired_replicas), (2, 4));
    assert_eq!((h.min_replicas, h.max_replicas), (Some(2), Some(20)));
    let m = h.metric.as_ref().expect("metric");
    assert_eq!((m.name.as_str(), m.current, m.target), ("cpu", 120.0, 60.0));
    assert!(apply(&mut n, 2.0, hpa(2, 4, 120)).is_empty());
    assert_eq!(apply(&mut n, 3.0, hpa(4, 4, 61)).len(), 1);
}

#[test]
fn bad_objects_are_errors_naming_the_cause() {
    let err = Object::from_value(json!({"apiVersion": "v1", "kind": "Secret"})).unwrap_err();
    assert!(err.to_string().contains("Secret"), "{err}");
    let err =
        Object::from_value(json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": 5}}))
            .unwrap_err();
    assert!(err.to_string().contains("malformed Pod"), "{err}");
    let mut n = Normalizer::new();
    let mut out = Vec::new();
    let nameless = obj(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}));
    let err = n
        .apply(1.0, Change::Applied(nameless), &mut out)
        .unwrap_err();
    assert!(err.to_string().contains("metadata.name"), "{err}");
}

#[test]
fn helpers_parse_edge_forms() {
    use pullahead::normalize::{full_reference, parse_go_duration, parse_quantity};
    assert_eq!(full_reference("nginx"), "docker.io/library/nginx:latest");
    assert_eq!(full_reference("acme/app:1"), "docker.io/acme/app:1");
    assert_eq!(
        full_reference("localhost:5000/app"),
        "localhost:5000/app:latest"
    );
    assert_eq!(
        full_reference("ghcr.io/a/b@sha256:ff"),
        "ghcr.io/a/b@sha256:ff"
    );
    assert_eq!(parse_go_duration("1h2m3.5s"), Some(3723.5));
    assert_eq!(parse_go_duration("12x"), None);
    assert_eq!(parse_quantity("500m"), Some(0.5));
    assert_eq!(parse_quantity("2Gi"), Some(2.0 * 1024.0 * 1024.0 * 1024.0));
}

#[test]
fn state_follows_live_objects_only() {
    let mut n = Normalizer::new();
    for i in 0..1000 {
        let mut p = pod(Some(&format!("node-{i}")), false);
        p["metadata"]["name"] = json!(format!("web-{i}"));
        p["spec"]["containers"][0]["image"] = json!(format!("nginx:{i}"));
        apply(&mut n, i as f64, p.clone());
        delete(&mut n, i as f64, p);
    }
    assert_eq!(n.tracked_pods(), 0);
    // 1000 node names, images and image lists (3000 interned values) came
    // and went; pruning every 1024 changes dropped those of the first 512
    // pods, so about 1500 remain.
    let kept = n.retained_strings();
    assert!((1000..2000).contains(&kept), "{kept}");
}
