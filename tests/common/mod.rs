//! A scripted Kubernetes API for watcher tests, in the spirit of the
//! `ApiServerVerifier` + `Scenario` pattern of kube-rs/controller-rs.
//!
//! Many watchers run at once, so requests arrive in no fixed order. The
//! verifier therefore routes each request by resource path (and field
//! selector) to that resource's own script of list and watch answers, and
//! records every request so tests can assert on what was asked. It answers
//! both a `tower_test` mock service (the [`ApiServerVerifier`]) and a real
//! HTTP server on 127.0.0.1 (for tests with a real `kube::Client`). An answer
//! can be held back behind a [`Gate`] until the test opens it, and the HTTP
//! server can hand what the script does not route (writes, Leases, single
//! objects) to a [`Fallback`], such as the stateful fake of `ops_common`.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};

/// A response body that may stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Holds an answer's body back until the test sends `true`: the headers go
/// out at once, the body only after, as from a slow API server.
pub type Gate = tokio::sync::watch::Receiver<bool>;

/// Answers requests the script has no route for: (method, uri, body) to
/// (status, JSON body).
pub type Fallback =
    Arc<dyn Fn(http::Method, http::Uri, Bytes) -> BoxFuture<'static, (u16, Value)> + Send + Sync>;

/// One scripted answer to a watch request.
#[derive(Clone, Debug)]
pub struct WatchScript {
    /// Watch events (`{"type":…,"object":…}`), one a line.
    pub lines: Vec<Value>,
    /// Keep the stream open after the lines (as a real watch does until its
    /// timeout) instead of ending it.
    pub hold: bool,
    /// Send the lines only once this opens.
    pub gate: Option<Gate>,
}

/// One scripted answer to a list request.
#[derive(Clone, Debug)]
struct ListAnswer {
    status: u16,
    body: Value,
    gate: Option<Gate>,
}

#[derive(Debug, Default)]
struct Route {
    lists: VecDeque<ListAnswer>,
    watches: VecDeque<WatchScript>,
    /// The last list answer, repeated if the script runs out.
    last_list: Option<ListAnswer>,
}

/// The scripted API.
#[derive(Clone, Default)]
pub struct FakeApi {
    routes: Arc<Mutex<HashMap<String, Route>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// The route of a request: its path, plus `?fieldSelector=…` when present.
pub fn route_of(path: &str, query: Option<&str>) -> String {
    let selector = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| {
        kv.strip_prefix("fieldSelector=")
            .map(|v| v.replace("%3D", "=").replace("%3d", "="))
    });
    match selector {
        Some(s) => format!("{path}?fieldSelector={s}"),
        None => path.to_string(),
    }
}

impl FakeApi {
    /// An API with no routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a list answer for `route`.
    pub fn list(&self, route: &str, status: u16, body: Value) -> &Self {
        self.push_list(route, status, body, None)
    }

    /// Queues a list answer for `route` whose body waits for `gate`.
    pub fn list_gated(&self, route: &str, status: u16, body: Value, gate: Gate) -> &Self {
        self.push_list(route, status, body, Some(gate))
    }

    fn push_list(&self, route: &str, status: u16, body: Value, gate: Option<Gate>) -> &Self {
        let mut r = self.routes.lock().unwrap();
        r.entry(route.to_string())
            .or_default()
            .lists
            .push_back(ListAnswer { status, body, gate });
        self
    }

    /// Queues a watch answer for `route`.
    pub fn watch(&self, route: &str, lines: Vec<Value>, hold: bool) -> &Self {
        self.push_watch(route, lines, hold, None)
    }

    /// Queues a watch answer for `route` whose lines wait for `gate`.
    pub fn watch_gated(&self, route: &str, lines: Vec<Value>, hold: bool, gate: Gate) -> &Self {
        self.push_watch(route, lines, hold, Some(gate))
    }

    fn push_watch(&self, route: &str, lines: Vec<Value>, hold: bool, gate: Option<Gate>) -> &Self {
        let mut r = self.routes.lock().unwrap();
        r.entry(route.to_string())
            .or_default()
            .watches
            .push_back(WatchScript { lines, hold, gate });
        self
    }

    /// Whether the script answers GETs of `path` (with `query`'s field
    /// selector), or the request is for `/version`.
    pub fn routes(&self, path: &str, query: Option<&str>) -> bool {
        path == "/version"
            || self
                .routes
                .lock()
                .unwrap()
                .contains_key(&route_of(path, query))
    }

    /// Every request so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// Answers one request.
    pub fn respond(&self, method: &http::Method, uri: &http::Uri) -> Response<Body> {
        self.requests.lock().unwrap().push(format!(
            "{method} {}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
        if uri.path() == "/version" {
            return json_response(
                200,
                &json!({"major":"1","minor":"33","gitVersion":"v1.33.1","gitCommit":"x","gitTreeState":"clean",
                        "buildDate":"2025-05-15T00:00:00Z","goVersion":"go1.24","compiler":"gc","platform":"linux/amd64"}),
            );
        }
        let route = route_of(uri.path(), uri.query());
        let is_watch = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"));
        let mut routes = self.routes.lock().unwrap();
        let Some(r) = routes.get_mut(&route) else {
            return json_response(404, &not_found());
        };
        if is_watch {
            match r.watches.pop_front() {
                Some(w) => watch_response(w),
                // Nothing more to say: an idle watch that stays open.
                None => watch_response(WatchScript {
                    lines: vec![],
                    hold: true,
                    gate: None,
                }),
            }
        } else {
            let answer = r.lists.pop_front().or_else(|| r.last_list.clone());
            match answer {
                Some(a) => {
                    r.last_list = Some(a.clone());
                    match a.gate {
                        Some(gate) => gated_json_response(a.status, &a.body, gate),
                        None => json_response(a.status, &a.body),
                    }
                }
                None => json_response(404, &not_found()),
            }
        }
    }
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(
            http_body_util::Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// Waits until `gate` opens (or its sender is gone).
async fn opened(mut gate: Gate) {
    let _ = gate.wait_for(|open| *open).await;
}

fn gated_json_response(status: u16, body: &Value, gate: Gate) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
    let body = futures::stream::once(async move {
        opened(gate).await;
        Ok::<_, Infallible>(Frame::data(bytes))
    });
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            body.boxed(),
        )))
        .unwrap()
}

fn watch_response(w: WatchScript) -> Response<Body> {
    let lines: Vec<_> = w
        .lines
        .into_iter()
        .map(|l| {
            let mut b = serde_json::to_vec(&l).unwrap();
            b.push(b'\n');
            Ok::<_, Infallible>(Frame::data(Bytes::from(b)))
        })
        .collect();
    let gate = w.gate;
    let stream = futures::stream::once(async move {
        if let Some(g) = gate {
            opened(g).await;
        }
        futures::stream::iter(lines)
    })
    .flatten();
    let body = if w.hold {
        BodyExt::boxed_unsync(http_body_util::StreamBody::new(
            stream.chain(futures::stream::pending()).boxed(),
        ))
    } else {
        BodyExt::boxed_unsync(http_body_util::StreamBody::new(stream.boxed()))
    };
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}

/// The Status a real API server returns for an unknown resource.
pub fn not_found() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
           "message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404})
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

/// Serves `api` as a tower-test mock: the `ApiServerVerifier`. Returns a
/// `kube::Client` on the mock.
pub fn mock_client(api: FakeApi) -> kube::Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<kube::client::Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            send.send_response(api.respond(req.method(), req.uri()));
        }
    });
    kube::Client::new(svc, "default")
}

/// Serves `api` over plain HTTP on 127.0.0.1; returns the port.
pub async fn serve_http(api: FakeApi) -> u16 {
    serve_http_with(api, None).await
}

/// Serves `api` over plain HTTP on 127.0.0.1, handing every request that is
/// not a GET the script routes to `fallback`; returns the port.
pub async fn serve_http_with(api: FakeApi, fallback: Option<Fallback>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let api = api.clone();
            let fallback = fallback.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let api = api.clone();
                    let fallback = fallback.clone();
                    async move {
                        let scripted = req.method() == http::Method::GET
                            && api.routes(req.uri().path(), req.uri().query());
                        let resp = match fallback {
                            Some(f) if !scripted => {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let (status, json) = f(parts.method, parts.uri, bytes).await;
                                json_response(status, &json)
                            }
                            _ => api.respond(req.method(), req.uri()),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    port
}

/// A kubeconfig that points at `http://127.0.0.1:PORT`.
pub fn kubeconfig(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user:
    token: not-a-secret
"
    )
}

// ---- real-shaped objects ----

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
