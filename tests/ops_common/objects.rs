//! Real-shaped Kubernetes objects and the small files a test needs to
//! talk to the API-server double (`fake_api`): one builder of each, shared
//! by every test (`tests/common` includes this file too).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// A Kubernetes `Status` failure body, as a real API server sends it.
pub fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message": message, "reason": reason, "code": code})
}

/// A kubeconfig in `dir` pointing at `addr` over plain HTTP, with
/// `pullahead` as the default namespace.
pub fn kubeconfig(dir: &Path, addr: SocketAddr) -> PathBuf {
    kubeconfig_in(dir, addr, "pullahead")
}

/// A kubeconfig in `dir` pointing at `addr` over plain HTTP, with
/// `namespace` as the default namespace.
pub fn kubeconfig_in(dir: &Path, addr: SocketAddr, namespace: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The Status a real API server returns for an unknown resource.
pub fn not_found() -> Value {
    status_json(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

/// The watch event a real API server sends when the resource version is too old.
pub fn gone() -> Value {
    json!({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"too old resource version: 10 (2000)","reason":"Expired","code":410}})
}

/// A watch event line.
pub fn ev(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// A list answer.
pub fn list(api_version: &str, kind: &str, rv: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv}, "items": items})
}

/// A Node that Karpenter registered and kubelet has not made ready yet:
/// [`node`] with the given `uid` and Karpenter's `unregistered` taint.
pub fn node_json(name: &str, uid: &str) -> Value {
    let mut n = node(name, "1042", false, "default");
    n["metadata"]["uid"] = json!(uid);
    n["spec"]["taints"] = json!([{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]);
    n
}

/// A Lease held by `holder`, renewed at `renew` (RFC 3339 with micros).
pub fn lease_json(ns: &str, name: &str, holder: &str, renew: &str, duration: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": "500",
                     "uid": "0d5e8f5c-3a7e-4c1e-9a0b-6f1d2e3c4b5a",
                     "creationTimestamp": "2025-11-28T08:00:00Z"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                 "acquireTime": "2025-11-28T08:00:00.000000Z", "renewTime": renew,
                 "leaseTransitions": 0}
    })
}

/// Now as an RFC 3339 MicroTime string.
pub fn micro_now() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(t.as_micros() as i64).unwrap();
    format!("{}", ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"))
}

fn managed_fields(manager: &str) -> Value {
    json!([{"manager": manager, "operation": "Update", "apiVersion": "v1", "time": "2025-06-01T10:00:00Z",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}}])
}

/// A Node as kubelet registers it; `ready` sets the Ready condition.
pub fn node(name: &str, rv: &str, ready: bool, pool: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv,
            "creationTimestamp": "2025-06-01T10:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.large", "karpenter.sh/nodepool": pool,
                "topology.kubernetes.io/zone": "eu-west-1a"
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            "managedFields": managed_fields("kubelet")
        },
        "spec": {"providerID": format!("aws:///eu-west-1a/i-{name}")},
        "status": {
            "capacity": {"cpu": "2", "memory": "7934456Ki", "pods": "29"},
            "allocatable": {"cpu": "1930m", "memory": "7244280Ki", "pods": "29"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": "2025-06-01T10:00:30Z",
                 "lastTransitionTime": "2025-06-01T10:00:00Z", "reason": "KubeletHasSufficientMemory", "message": "kubelet has sufficient memory available"},
                {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastHeartbeatTime": "2025-06-01T10:00:30Z",
                 "lastTransitionTime": "2025-06-01T10:00:20Z", "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
                 "message": if ready { "kubelet is posting ready status" } else { "container runtime network not ready" }}
            ],
            "nodeInfo": {"machineID": "ec2", "systemUUID": "ec2", "bootID": "b", "kernelVersion": "6.1.0",
                         "osImage": "Amazon Linux 2023", "containerRuntimeVersion": "containerd://1.7.27",
                         "kubeletVersion": "v1.33.1", "kubeProxyVersion": "v1.33.1", "operatingSystem": "linux", "architecture": "amd64"},
            "images": [{"names": ["public.ecr.aws/eks-distro/kubernetes/pause@sha256:aaaa", "public.ecr.aws/eks-distro/kubernetes/pause:3.10"], "sizeBytes": 321520}]
        }
    })
}

/// A pending Pod of Deployment `app` in `ns` (owned through a ReplicaSet).
pub fn pod(ns: &str, name: &str, rv: &str, app: &str, node: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv,
            "creationTimestamp": "2025-06-01T10:00:05Z", "generateName": format!("{app}-7d9c5b8f4-"),
            "labels": {"app": app, "pod-template-hash": "7d9c5b8f4"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9c5b8f4"),
                                 "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": managed_fields("kube-controller-manager")
        },
        "spec": {
            "containers": [{"name": app, "image": format!("registry.example.com/{app}:1.4.2"),
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                            "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                            "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {"phase": "Pending", "qosClass": "Burstable",
                   "conditions": [{"type": "PodScheduled", "status": "False", "lastProbeTime": null,
                                   "lastTransitionTime": "2025-06-01T10:00:05Z", "reason": "Unschedulable",
                                   "message": "0/3 nodes are available: 3 Insufficient cpu."}]}
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
        p["status"]["conditions"] = json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                                             "lastTransitionTime": "2025-06-01T10:01:05Z"}]);
    }
    p
}

/// A Karpenter v1 NodeClaim with the given true conditions.
pub fn node_claim(
    name: &str,
    rv: &str,
    pool: &str,
    conditions: &[&str],
    node: Option<&str>,
) -> Value {
    let conds: Vec<Value> = conditions
        .iter()
        .map(|c| json!({"type": c, "status": "True", "reason": c, "message": "", "lastTransitionTime": "2025-06-01T10:00:30Z", "observedGeneration": 1}))
        .collect();
    let mut status = json!({"conditions": conds, "imageID": "ami-0123456789", "capacity": {"cpu": "2", "memory": "7934456Ki", "pods": "29"}});
    if let Some(n) = node {
        status["nodeName"] = json!(n);
        status["providerID"] = json!(format!("aws:///eu-west-1a/i-{n}"));
    }
    json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
        "metadata": {
            "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv, "generation": 1,
            "creationTimestamp": "2025-06-01T10:00:00Z",
            "labels": {"karpenter.sh/nodepool": pool, "karpenter.k8s.aws/instance-family": "m5",
                       "node.kubernetes.io/instance-type": "m5.large", "kubernetes.io/arch": "amd64"},
            "annotations": {"karpenter.sh/nodepool-hash": "123", "karpenter.sh/nodepool-hash-version": "v3"},
            "finalizers": ["karpenter.sh/termination"],
            "ownerReferences": [{"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "name": pool, "uid": "np-uid", "blockOwnerDeletion": true}],
            "managedFields": managed_fields("karpenter")
        },
        "spec": {
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "requirements": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": [pool]},
                             {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m5.large"]}],
            "resources": {"requests": {"cpu": "1250m", "memory": "1Gi", "pods": "5"}},
            "expireAfter": "720h"
        },
        "status": status
    })
}

/// A core/v1 Event about `object` (`kind/ns/name`), as the given component sends it.
pub fn kube_event(
    name: &str,
    rv: &str,
    reason: &str,
    message: &str,
    involved: (&str, &str, &str),
    component: &str,
    host: Option<&str>,
) -> Value {
    let (kind, ns, obj) = involved;
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": name, "namespace": if ns.is_empty() { "default" } else { ns }, "uid": format!("uid-{name}"),
                     "resourceVersion": rv, "creationTimestamp": "2025-06-01T10:00:06Z"},
        "involvedObject": {"kind": kind, "namespace": ns, "name": obj, "uid": format!("uid-{obj}"), "apiVersion": "v1", "resourceVersion": "1"},
        "reason": reason, "message": message, "source": source,
        "firstTimestamp": "2025-06-01T10:00:06Z", "lastTimestamp": "2025-06-01T10:00:06Z", "count": 1, "type": "Normal",
        "eventTime": null, "reportingComponent": component, "reportingInstance": host.unwrap_or("")
    })
}
