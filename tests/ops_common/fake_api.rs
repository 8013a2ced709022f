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
//!
//! [`mock_api`] and [`handled`] make one that a test's handler answers,
//! request by request in arrival order, recording each [`Seen`] request;
//! [`super::agent`] has the handler a node agent's tests share.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

#[allow(unused_imports)]
pub use super::objects::{kubeconfig, lease_json, micro_now};
use super::objects::{node_json, status_json};
use super::script::{self, Gate, Script};
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

/// One request a handler-answered fake saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Content-Type header.
    pub content_type: String,
    /// Parsed JSON body (Null when none).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.path.contains("watch=true")
    }
}

/// A test's answers: request in, reply out.
pub type Handler = Box<dyn FnMut(&Seen) -> Reply + Send>;

/// A client whose API server is `handler`; returns what it saw.
pub fn mock_api(handler: Handler) -> (kube::Client, Arc<Mutex<Vec<Seen>>>) {
    let api = Arc::new(FakeApi {
        handler: Some(Mutex::new(handler)),
        ..FakeApi::default()
    });
    let seen = api.seen.clone();
    (api.client(), seen)
}

/// A fake that `handler` answers, request by request in arrival order,
/// over either front ([`FakeApi::client`] or [`FakeApi::serve_http`]).
pub fn handled(handler: Handler) -> Arc<FakeApi> {
    Arc::new(FakeApi {
        handler: Some(Mutex::new(handler)),
        ..FakeApi::default()
    })
}

#[derive(Default)]
pub struct FakeApi {
    /// Scripted answers, consulted first for the GETs they route.
    script: Script,
    /// When set, every other request is answered by this handler.
    handler: Option<Mutex<Handler>>,
    /// What the handler was asked.
    seen: Arc<Mutex<Vec<Seen>>>,
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

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (code, status_json(code, reason, message))
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
                "GET",
                [
                    "apis",
                    "coordination.k8s.io",
                    "v1",
                    "namespaces",
                    _,
                    "leases",
                ],
            ) => {
                // labelSelector=KEY%3DVALUE: the only selector pullahead sends.
                let want = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(|s| s.replace("%2F", "/").replace("%3D", "="));
                let leases = self.leases.lock().unwrap();
                let mut items: Vec<Value> = leases
                    .values()
                    .filter(|l| {
                        want.as_deref().is_none_or(|w| {
                            let (k, v) = w.split_once('=').unwrap_or((w, ""));
                            l["metadata"]["labels"][k].as_str() == Some(v)
                        })
                    })
                    .cloned()
                    .collect();
                items.sort_by_key(|l| l["metadata"]["name"].as_str().unwrap_or("").to_string());
                (
                    200,
                    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "LeaseList",
                           "metadata": {"resourceVersion": self.next_rv()}, "items": items}),
                )
            }
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

    /// Whether the script answers this request. A scripted fake records
    /// every request in the script's log, whoever answers it.
    fn scripts(&self, method: &Method, uri: &http::Uri) -> bool {
        if !self.script.active() {
            return false;
        }
        if *method == Method::GET && self.script.routes(uri.path(), uri.query()) {
            return true;
        }
        self.script.note(method, uri);
        false
    }

    /// Queues a scripted list answer for `route` (a path, plus
    /// `?fieldSelector=…` when the client sends one).
    pub fn list(&self, route: &str, status: u16, body: Value) -> &Self {
        self.script.list(route, status, body);
        self
    }

    /// Queues a scripted list answer for `route` whose body waits for `gate`.
    pub fn list_gated(&self, route: &str, status: u16, body: Value, gate: Gate) -> &Self {
        self.script.list_gated(route, status, body, gate);
        self
    }

    /// Queues a scripted watch answer for `route`; `hold` keeps the stream
    /// open after the lines.
    pub fn watch(&self, route: &str, lines: Vec<Value>, hold: bool) -> &Self {
        self.script.watch(route, lines, hold);
        self
    }

    /// Queues a scripted watch answer for `route` whose lines wait for `gate`.
    pub fn watch_gated(&self, route: &str, lines: Vec<Value>, hold: bool, gate: Gate) -> &Self {
        self.script.watch_gated(route, lines, hold, gate);
        self
    }

    /// What a handler-answered fake was asked so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Every request a scripted fake saw, as `METHOD path?query`.
    pub fn scripted_requests(&self) -> Vec<String> {
        self.script.requests()
    }

    /// Asks the handler, recording the request.
    fn ask(&self, handler: &Mutex<Handler>, parts: &http::request::Parts, bytes: &[u8]) -> Reply {
        let s = Seen {
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body: serde_json::from_slice(bytes).unwrap_or(Value::Null),
            at: Instant::now(),
        };
        let reply = (handler.lock().unwrap())(&s);
        self.seen.lock().unwrap().push(s);
        reply
    }

    /// A `kube::Client` over a tower-test mock service answered by this fake.
    pub fn client(self: &Arc<Self>) -> kube::Client {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<script::Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                if api.scripts(req.method(), req.uri()) {
                    send.send_response(api.script.respond(req.method(), req.uri()));
                    continue;
                }
                if let Some(handler) = &api.handler {
                    // In arrival order, as the test's script expects.
                    let (parts, body) = req.into_parts();
                    let bytes = body.collect_bytes().await.unwrap_or_default();
                    let (code, body) = match api.ask(handler, &parts, &bytes) {
                        Reply::Json(code, v) => (code, wire(&v)),
                        Reply::Events(evs) => (200, wire(&Value::Array(evs))),
                        Reply::Hang | Reply::Watch(_) => {
                            // Held open: the sender lives as long as the test.
                            tokio::spawn(async move {
                                let _send = send;
                                std::future::pending::<()>().await
                            });
                            continue;
                        }
                    };
                    send.send_response(Response::builder().status(code).body(full(body)).unwrap());
                    continue;
                }
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
                            .body(full(wire(&json)))
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
        type Out = script::Body;
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
                            if api.scripts(req.method(), req.uri()) {
                                return Ok::<_, std::convert::Infallible>(
                                    api.script.respond(req.method(), req.uri()),
                                );
                            }
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
                            let reply = match &api.handler {
                                Some(handler) => api.ask(handler, &parts, &bytes),
                                None => {
                                    api.reply(
                                        &parts.method,
                                        parts.uri.path(),
                                        parts.uri.query().unwrap_or(""),
                                        &content_type,
                                        &bytes,
                                    )
                                    .await
                                }
                            };
                            let (code, body): (u16, Out) = match reply {
                                Reply::Json(code, json) => {
                                    (code, Full::new(Bytes::from(wire(&json))).boxed_unsync())
                                }
                                Reply::Events(evs) => (
                                    200,
                                    Full::new(Bytes::from(wire(&Value::Array(evs)))).boxed_unsync(),
                                ),
                                Reply::Hang => (
                                    200,
                                    StreamBody::new(futures::stream::pending()).boxed_unsync(),
                                ),
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
                                    (200, StreamBody::new(lines).boxed_unsync())
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

/// A whole response body.
fn full(bytes: Vec<u8>) -> script::Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(hyper::body::Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
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

/// A `kube::Client` on `api` through a tower-test mock service (the
/// ApiServerVerifier pattern).
pub fn mock_client(api: Arc<FakeApi>) -> kube::Client {
    api.client()
}

/// Serves `api` over plain HTTP on 127.0.0.1 for the rest of the test;
/// returns the port.
pub async fn serve_http(api: Arc<FakeApi>) -> u16 {
    api.serve_http().await.port()
}
