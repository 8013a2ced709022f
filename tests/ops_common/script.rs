//! Scripted answers of the API-server double (`fake_api::FakeApi`), for
//! watcher tests, in the spirit of the `ApiServerVerifier` + `Scenario`
//! pattern of kube-rs/controller-rs.
//!
//! Many watchers run at once, so requests arrive in no fixed order. The
//! script therefore routes each GET by resource path (and field selector)
//! to that resource's own queue of list and watch answers, and records every
//! request it answers so tests can assert on what was asked. An answer can be
//! held back behind a [`Gate`] until the test opens it. What the script has
//! no route for (writes, Leases, single objects) the fake answers from its
//! state.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};

/// A response body that may stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Holds an answer's body back until the test sends `true`: the headers go
/// out at once, the body only after, as from a slow API server.
pub type Gate = tokio::sync::watch::Receiver<bool>;

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

/// The scripted answers.
#[derive(Clone, Default)]
pub struct Script {
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

impl Script {
    /// A script with no routes.
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

    /// Whether any route is scripted.
    pub fn active(&self) -> bool {
        !self.routes.lock().unwrap().is_empty()
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

    /// Records a request the fake answered without the script.
    pub fn note(&self, method: &http::Method, uri: &http::Uri) {
        self.requests.lock().unwrap().push(format!(
            "{method} {}",
            uri.path_and_query().map(|p| p.as_str()).unwrap_or("")
        ));
    }

    /// Answers one request.
    pub fn respond(&self, method: &http::Method, uri: &http::Uri) -> Response<Body> {
        self.note(method, uri);
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
            return json_response(404, &super::objects::not_found());
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
                None => json_response(404, &super::objects::not_found()),
            }
        }
    }
}

pub fn json_response(status: u16, body: &Value) -> Response<Body> {
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
