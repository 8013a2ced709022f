//! A scripted Kubernetes API server behind kube's tower-test mock service
//! (the `ApiServerVerifier` pattern of kube-rs/controller-rs): every request
//! is recorded and answered by a handler with real-shaped JSON.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// One request the mock API server saw.
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
}

impl Seen {
    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.path.contains("watch=true")
    }
}

/// How the mock answers.
pub enum Reply {
    /// A JSON body with a status code.
    Json(u16, Value),
    /// Watch events, one JSON object per line; the stream then ends.
    Events(Vec<Value>),
    /// Never answer (a watch that stays open).
    Hang,
}

/// The handler: request in, reply out.
pub type Handler = Box<dyn FnMut(&Seen) -> Reply + Send>;

/// A client whose API server is `handler`; returns what it saw.
pub fn mock_api(mut handler: Handler) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
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
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let reply = handler(&s);
            log.lock().expect("log").push(s);
            let (code, body) = match reply {
                Reply::Json(code, v) => (code, serde_json::to_vec(&v).expect("json")),
                Reply::Events(evs) => {
                    let mut b = Vec::new();
                    for e in evs {
                        b.extend(serde_json::to_vec(&e).expect("json"));
                        b.push(b'\n');
                    }
                    (200, b)
                }
                Reply::Hang => {
                    held.push(send);
                    continue;
                }
            };
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(body))
                    .expect("response"),
            );
        }
    });
    (Client::new(svc, "default"), seen)
}

/// A Kubernetes `Status` failure body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": reason, "code": code, "message": message})
}
