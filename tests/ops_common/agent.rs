//! The API a node agent sees, as a handler for the one fake
//! ([`super::fake_api::handled`]): its NodePrefetch (a list by field
//! selector, a watch that stays open with no news, status patches) and its
//! Node (get, update, and a strategic-merge patch of the status conditions,
//! merged by `type` as the API server does).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::Method;
use serde_json::{Value, json};

use super::fake_api::{Handler, Seen};
use super::store::{Reply, status};

/// The node's state the handler answers from; tests read and seed it.
#[derive(Clone, Default)]
pub struct AgentApi {
    /// The node's name (its NodePrefetch has the same name).
    pub node_name: String,
    /// The NodePrefetch's spec.
    pub spec: Arc<Mutex<Value>>,
    /// The Node object, updated by PUT and status patches.
    pub node: Arc<Mutex<Value>>,
}

impl AgentApi {
    /// A node `name` whose NodePrefetch wants `spec`.
    pub fn new(name: &str, spec: Value, node: Value) -> Self {
        Self {
            node_name: name.to_string(),
            spec: Arc::new(Mutex::new(spec)),
            node: Arc::new(Mutex::new(node)),
        }
    }

    /// The handler answering from this state.
    pub fn handler(&self) -> Handler {
        let api = self.clone();
        Box::new(move |s: &Seen| api.answer(s))
    }

    fn nodeprefetch(&self) -> Value {
        json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetch",
            "metadata": {"name": self.node_name, "uid": format!("npf-{}", self.node_name), "resourceVersion": "5"},
            "spec": self.spec.lock().unwrap().clone()})
    }

    fn answer(&self, s: &Seen) -> Reply {
        let (path, query) = s.path.split_once('?').unwrap_or((&s.path, ""));
        let n = &self.node_name;
        let npf_status = format!("/apis/pullahead.io/v1alpha1/nodeprefetches/{n}/status");
        let node = format!("/api/v1/nodes/{n}");
        let node_status = format!("{node}/status");
        match (&s.method, path) {
            (&Method::GET, "/apis/pullahead.io/v1alpha1/nodeprefetches") if s.is_watch() => {
                Reply::Hang
            }
            (&Method::GET, "/apis/pullahead.io/v1alpha1/nodeprefetches") => {
                assert!(
                    query.contains(&format!("fieldSelector=metadata.name%3D{n}")),
                    "the agent watches only its own object: {query}"
                );
                Reply::Json(
                    200,
                    json!({"apiVersion": "pullahead.io/v1alpha1", "kind": "NodePrefetchList",
                           "metadata": {"resourceVersion": "5"}, "items": [self.nodeprefetch()]}),
                )
            }
            (&Method::PATCH, p) if p == npf_status => Reply::Json(200, self.nodeprefetch()),
            (&Method::GET, p) if p == node || p == node_status => {
                Reply::Json(200, self.node.lock().unwrap().clone())
            }
            (&Method::PUT, p) if p == node => {
                *self.node.lock().unwrap() = s.body.clone();
                Reply::Json(200, s.body.clone())
            }
            (&Method::PATCH, p)
                if p == node_status
                    && s.content_type
                        .starts_with("application/strategic-merge-patch+json") =>
            {
                let mut node = self.node.lock().unwrap();
                merge_conditions(&mut node, &s.body);
                Reply::Json(200, node.clone())
            }
            _ => status(
                404,
                "NotFound",
                &format!("no route {} {}", s.method, s.path),
            ),
        }
    }
}

/// Merges a strategic-merge patch of `status.conditions` (keyed by `type`)
/// into `node`, as the API server does for Node status.
pub fn merge_conditions(node: &mut Value, patch: &Value) {
    let Some(new) = patch["status"]["conditions"].as_array() else {
        return;
    };
    if !node["status"]["conditions"].is_array() {
        node["status"]["conditions"] = json!([]);
    }
    let conds = node["status"]["conditions"].as_array_mut().unwrap();
    for c in new {
        match conds.iter_mut().find(|o| o["type"] == c["type"]) {
            Some(o) => *o = c.clone(),
            None => conds.push(c.clone()),
        }
    }
}

/// Whether `s` is a status write to the NodePrefetch `name`.
pub fn is_status_patch(s: &Seen, name: &str) -> bool {
    s.method == Method::PATCH
        && s.path.starts_with(&format!(
            "/apis/pullahead.io/v1alpha1/nodeprefetches/{name}/status"
        ))
}
