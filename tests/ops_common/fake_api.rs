//! A small stateful fake of the Kubernetes API: enough of `/version`,
//! Leases, Nodes and NodePrefetch server-side apply for the controller, with
//! real-shaped JSON. It is served two ways: as a tower-test mock service
//! behind `kube::Client::new` (the ApiServerVerifier pattern, but answering
//! by state rather than by a fixed script, because the election and the
//! controller interleave their calls), and over real HTTP for a real
//! `kube::Client` built from a kubeconfig.
//!
//! [`FakeApi::stateful`] makes one that answers every resource from a
//! generic [`Store`] instead (list, live watch, get, create, update, patch,
//! delete), for the deployed-chain tests; its HTTP server can be stopped
//! and started again on the same port, as an API server that restarts.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use super::store::{Reply, Store};

/// One write call (POST, PUT, PATCH, DELETE) the fake received.
#[derive(Clone, Debug)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
pub struct FakeApi {
    pub leases: Mutex<HashMap<String, Value>>,
    pub nodes: Mutex<HashMap<String, Value>>,
    pub prefetches: Mutex<HashMap<String, Value>>,
    pub writes: Mutex<Vec<Write>>,
    /// Every request as "METHOD path".
    pub requests: Mutex<Vec<String>>,
    /// Delay applied to NodePrefetch writes, to keep them in flight.
    pub write_delay: Mutex<Duration>,
    /// NodePrefetch writes to refuse with a 500 before accepting.
    pub fail_writes: Mutex<u32>,
    /// Completed NodePrefetch writes (set after the delay).
    pub writes_done: Mutex<u64>,
    /// When set, every request is answered from this store.
    pub store: Option<Store>,
    rv: Mutex<u64>,
}

/// A running HTTP front of the fake; [`HttpServer::stop`] drops the
/// listener and every open connection (watch streams end mid-stream).
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl HttpServer {
    /// Stops serving, as an API server that goes away.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// A Node as the API server returns it (trimmed `kubectl get node -o json`).
pub fn node_json(name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": uid,
            "resourceVersion": "1042",
            "creationTimestamp": "2025-11-28T08:50:01Z",
            "labels": {
                "karpenter.sh/nodepool": "default",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m6i.large"
            }
        },
        "spec": {
            "providerID": format!("aws:///us-east-1a/i-0{uid}"),
            "taints": [{"key": "karpenter.sh/unregistered", "effect": "NoExecute"}]
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                            "lastHeartbeatTime": "2025-11-28T08:50:01Z",
                            "lastTransitionTime": "2025-11-28T08:50:01Z",
                            "message": "container runtime network not ready"}],
            "nodeInfo": {"containerRuntimeVersion": "containerd://1.7.27", "kubeletVersion": "v1.33.1",
                         "architecture": "amd64", "operatingSystem": "linux", "bootID": "", "kernelVersion": "6.1.0",
                         "kubeProxyVersion": "", "machineID": "", "osImage": "Bottlerocket", "systemUUID": ""}
        }
    })
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

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

impl FakeApi {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A fake that answers every resource from a generic [`Store`].
    pub fn stateful() -> Arc<Self> {
        Arc::new(Self {
            store: Some(Store::default()),
            ..Self::default()
        })
    }

    /// The store of a [`FakeApi::stateful`] fake.
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("a stateful FakeApi")
    }

    /// Answers one request, from the store when there is one.
    pub async fn reply(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: &[u8],
    ) -> Reply {
        let Some(store) = &self.store else {
            let (code, json) = self.handle(method, path, query, body).await;
            return match json {
                // A finite watch of the scripted fake.
                Value::Array(_) => Reply::Json(code, json),
                other => Reply::Json(code, other),
            };
        };
        self.requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}?{query}"));
        let parsed: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    let (c, v) = status(400, "BadRequest", &format!("bad json: {e}"));
                    return Reply::Json(c, v);
                }
            }
        };
        if *method != Method::GET {
            self.writes.lock().unwrap().push(Write {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                body: parsed.clone(),
                at: Instant::now(),
            });
        }
        store.handle(method.as_str(), path, query, content_type, &parsed)
    }

    pub fn add_node(&self, name: &str, uid: &str) {
        self.nodes
            .lock()
            .unwrap()
            .insert(name.to_string(), node_json(name, uid));
    }

    pub fn set_lease(&self, lease: Value) {
        let name = lease["metadata"]["name"].as_str().unwrap().to_string();
        self.leases.lock().unwrap().insert(name, lease);
    }

    pub fn lease_holder(&self, name: &str) -> Option<String> {
        self.leases
            .lock()
            .unwrap()
            .get(name)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    }

    /// NodePrefetch PATCH calls so far.
    pub fn prefetch_writes(&self) -> Vec<Write> {
        self.writes
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.path.contains("/nodeprefetches/"))
            .cloned()
            .collect()
    }

    fn next_rv(&self) -> String {
        let mut rv = self.rv.lock().unwrap();
        *rv += 1;
        (1000 + *rv).to_string()
    }

    /// Answers one request.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (u16, Value) {
        self.requests
            .lock()
            .unwrap()
            .push(format!("{method} {path}"));
        let parsed: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &format!("bad json: {e}")),
            }
        };
        if *method != Method::GET {
            self.writes.lock().unwrap().push(Write {
                method: method.to_string(),
                path: path.to_string(),
                query: query.to_string(),
                body: parsed.clone(),
                at: Instant::now(),
            });
        }
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["version"]) => (
                200,
                json!({"major":"1","minor":"33","gitVersion":"v1.33.1","gitCommit":"8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
                       "gitTreeState":"clean","buildDate":"2025-05-15T08:19:08Z","goVersion":"go1.24.2",
                       "compiler":"gc","platform":"linux/amd64"}),
            ),
            (
                "GET",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    _,
                    "leases",
                    name,
                ],
            ) => match self.leases.lock().unwrap().get(*name) {
                Some(l) => (200, l.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("leases.coordination.k8s.io \"{name}\" not found"),
                ),
            },
            (
                "POST",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    _,
                    "leases",
                ],
            ) => {
                let name = parsed["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut leases = self.leases.lock().unwrap();
                if leases.contains_key(&name) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                    );
                }
                let mut l = parsed;
                l["metadata"]["resourceVersion"] = json!(self.next_rv());
                l["metadata"]["uid"] = json!("3f0c2b8e-1d1e-4f55-8a5e-9c7d6b5a4e3f");
                leases.insert(name, l.clone());
                (201, l)
            }
            (
                "PUT",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    _,
                    "leases",
                    name,
                ],
            ) => {
                let mut leases = self.leases.lock().unwrap();
                let Some(cur) = leases.get(*name) else {
                    return status(404, "NotFound", "not found");
                };
                if cur["metadata"]["resourceVersion"] != parsed["metadata"]["resourceVersion"] {
                    return status(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let mut l = parsed;
                l["metadata"]["resourceVersion"] = json!(self.next_rv());
                leases.insert(name.to_string(), l.clone());
                (200, l)
            }
            ("GET", ["api", "v1", "nodes"]) if query.contains("watch=true") => {
                // A finite watch: one ADDED per node, then the stream ends
                // (clients re-watch from the last resourceVersion).
                let nodes = self.nodes.lock().unwrap();
                let mut names: Vec<&String> = nodes.keys().collect();
                names.sort();
                let lines: Vec<Value> = names
                    .into_iter()
                    .map(|n| json!({"type": "ADDED", "object": nodes[n]}))
                    .collect();
                (200, Value::Array(lines))
            }
            ("GET", ["api", "v1", "nodes"]) => {
                let nodes = self.nodes.lock().unwrap();
                let mut items: Vec<Value> = nodes.values().cloned().collect();
                items.sort_by_key(|n| {
                    n["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                });
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "NodeList",
                           "metadata": {"resourceVersion": "1042"}, "items": items}),
                )
            }
            ("GET", ["api", "v1", "nodes", name]) => match self.nodes.lock().unwrap().get(*name) {
                Some(n) => (200, n.clone()),
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            },
            ("PATCH", ["apis", "pullahead.io", "v1alpha1", "nodeprefetches", name]) => {
                {
                    let mut fail = self.fail_writes.lock().unwrap();
                    if *fail > 0 {
                        *fail -= 1;
                        return status(500, "InternalError", "etcdserver: request timed out");
                    }
                }
                let delay = *self.write_delay.lock().unwrap();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut obj = parsed;
                obj["metadata"]["uid"] = json!(format!("np-{name}"));
                obj["metadata"]["resourceVersion"] = json!(self.next_rv());
                self.prefetches
                    .lock()
                    .unwrap()
                    .insert(name.to_string(), obj.clone());
                *self.writes_done.lock().unwrap() += 1;
                (200, obj)
            }
            _ => status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({method} {path})"),
            ),
        }
    }

    /// A `kube::Client` over a tower-test mock service answered by this fake.
    pub fn client(self: &Arc<Self>) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect_bytes().await.unwrap_or_default();
                    let (code, json) = api
                        .handle(
                            &parts.method,
                            parts.uri.path(),
                            parts.uri.query().unwrap_or(""),
                            &bytes,
                        )
                        .await;
                    send.send_response(
                        Response::builder()
                            .status(code)
                            .header("content-type", "application/json")
                            .body(Body::from(wire(&json)))
                            .unwrap(),
                    );
                });
            }
        });
        kube::Client::new(svc, "default")
    }

    /// Serves this fake over plain HTTP on a free loopback port.
    pub async fn serve_http(self: &Arc<Self>) -> SocketAddr {
        let server = self.serve_http_at("127.0.0.1:0".parse().unwrap()).await;
        let addr = server.addr;
        // Runs for the rest of the test.
        std::mem::forget(server);
        addr
    }

    /// Serves this fake over plain HTTP on `addr` until stopped; call it
    /// again with the same address to bring the API server back.
    pub async fn serve_http_at(self: &Arc<Self>, addr: SocketAddr) -> HttpServer {
        use http_body_util::{BodyExt, Full, StreamBody};
        use hyper::body::{Bytes, Frame, Incoming};
        type Out = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
        // The port may still be held for a moment by the previous server.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let api = self.clone();
        tokio::spawn(async move {
            let mut stop_accept = stop.clone();
            loop {
                let stream = tokio::select! {
                    _ = stop_accept.wait_for(|s| *s) => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => return,
                    },
                };
                let api = api.clone();
                let mut stop_conn = stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let api = api.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let bytes = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let content_type = parts
                                .headers
                                .get(http::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let reply = api
                                .reply(
                                    &parts.method,
                                    parts.uri.path(),
                                    parts.uri.query().unwrap_or(""),
                                    &content_type,
                                    &bytes,
                                )
                                .await;
                            let (code, body): (u16, Out) = match reply {
                                Reply::Json(code, json) => {
                                    (code, Full::new(Bytes::from(wire(&json))).boxed())
                                }
                                Reply::Watch(rx) => {
                                    let lines = futures::stream::unfold(rx, |mut rx| async move {
                                        let ev = rx.recv().await?;
                                        let line = serde_json::to_string(&ev).unwrap() + "\n";
                                        Some((
                                            Ok::<_, std::convert::Infallible>(Frame::data(
                                                Bytes::from(line),
                                            )),
                                            rx,
                                        ))
                                    });
                                    (200, StreamBody::new(lines).boxed())
                                }
                            };
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(body)
                                    .unwrap(),
                            )
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        // Dropping the connection closes it, watches too.
                        _ = stop_conn.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        HttpServer {
            addr,
            stop: stop_tx,
        }
    }
}

/// The response body: arrays are watch streams, one JSON event a line.
fn wire(json: &Value) -> Vec<u8> {
    match json {
        Value::Array(events) => events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap() + "\n")
            .collect::<String>()
            .into_bytes(),
        other => serde_json::to_vec(other).unwrap(),
    }
}

/// A kubeconfig pointing at `addr` over plain HTTP.
pub fn kubeconfig(dir: &std::path::Path, addr: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: pullahead\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}
