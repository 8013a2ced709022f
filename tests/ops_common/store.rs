//! The generic side of the fake API server: any resource under `/api/v1`
//! or `/apis/GROUP/VERSION`, namespaced or not, kept as JSON with
//! resourceVersions, served by list, long-lived watch (replayed from a
//! resourceVersion, as after a reconnect), get, create, update (with the
//! resourceVersion conflict check), patch (server-side apply, merge patch,
//! and the `/status` subresource) and delete. Field selectors of the
//! `a.b=c` form are honoured, so a watch of `reason=Nominated` Events or of
//! `metadata.name=NODE` NodePrefetches sees only its objects.
//!
//! It is what the deployed-chain tests run `pullahead run` and
//! `pullahead agent` against; the test plays Karpenter, the scheduler and
//! kubelet by writing objects into it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

/// One change, as a watch stream delivers it.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub coll: String,
    pub kind: &'static str,
    pub object: Value,
}

/// An answer: a JSON body, or a watch stream (one JSON event a line).
pub enum Reply {
    Json(u16, Value),
    Watch(mpsc::UnboundedReceiver<Value>),
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// Collection (`api/v1/pods`) → key (`ns/name` or `name`) → object.
    objects: BTreeMap<String, BTreeMap<String, Value>>,
    log: Vec<Change>,
}

/// The objects, their history, and the live watchers.
pub struct Store {
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                rv: 1000,
                ..Inner::default()
            }),
            changes: broadcast::channel(8192).0,
        }
    }
}

/// A request path taken apart.
#[derive(Debug)]
struct Target {
    /// `api/v1/pods`, `apis/karpenter.sh/v1/nodeclaims`.
    coll: String,
    /// `v1`, `karpenter.sh/v1`.
    api_version: String,
    plural: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, api_version) = match *parts.first()? {
        "api" => (2, parts.get(1)?.to_string()),
        "apis" => (3, format!("{}/{}", parts.get(1)?, parts.get(2)?)),
        _ => return None,
    };
    let mut rest = &parts[prefix.min(parts.len())..];
    let mut ns = None;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        ns = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let plural = rest.first()?.to_string();
    Some(Target {
        coll: format!("{}/{plural}", parts[..prefix].join("/")),
        api_version,
        plural,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

/// The Kind of a plural, for list bodies.
fn kind_of(plural: &str) -> String {
    match plural {
        "nodes" => "Node",
        "pods" => "Pod",
        "events" => "Event",
        "nodeclaims" => "NodeClaim",
        "nodepools" => "NodePool",
        "horizontalpodautoscalers" => "HorizontalPodAutoscaler",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "replicasets" => "ReplicaSet",
        "jobs" => "Job",
        "nodeprefetches" => "NodePrefetch",
        "leases" => "Lease",
        "secrets" => "Secret",
        "serviceaccounts" => "ServiceAccount",
        other => other,
    }
    .to_string()
}

fn key(ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// A Kubernetes Status error body.
pub fn status(code: u16, reason: &str, message: &str) -> Reply {
    Reply::Json(
        code,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a.b=c,d!=e` → a matcher over an object.
fn field_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let (path, want, negate) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, true)
        } else if let Some((p, v)) = term.split_once("==") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once('=') {
            (p, v, false)
        } else {
            return true;
        };
        let got = path
            .split('.')
            .try_fold(obj, |v, k| v.get(k))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        (got == want) != negate
    })
}

fn label_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            return obj["metadata"]["labels"].get(term).is_some();
        };
        obj["metadata"]["labels"][k].as_str() == Some(v.trim_start_matches('='))
    })
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Now, as the API server writes timestamps (whole seconds).
pub fn now_rfc3339() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ts = k8s_openapi::jiff::Timestamp::from_second(t.as_secs() as i64).unwrap();
    format!("{}", ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

impl Store {
    /// Puts `obj` into `path`'s collection (create or replace), as the
    /// test playing a cluster component would. Returns the stored object.
    pub fn put(&self, path: &str, obj: Value) -> Value {
        let t = parse(path).expect("a resource path");
        let mut inner = self.inner.lock().unwrap();
        let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        let k = key(ns.as_deref(), &name);
        let exists = inner
            .objects
            .get(&t.coll)
            .is_some_and(|m| m.contains_key(&k));
        self.commit(
            &mut inner,
            &t.coll,
            k,
            obj,
            if exists { "MODIFIED" } else { "ADDED" },
        )
    }

    /// Changes an object in place (as a component updating it).
    pub fn update(&self, path: &str, name_key: &str, f: impl FnOnce(&mut Value)) -> Option<Value> {
        let t = parse(path)?;
        let mut inner = self.inner.lock().unwrap();
        let mut obj = inner.objects.get(&t.coll)?.get(name_key)?.clone();
        f(&mut obj);
        Some(self.commit(&mut inner, &t.coll, name_key.to_string(), obj, "MODIFIED"))
    }

    /// Removes an object, as its controller would.
    pub fn remove(&self, path: &str, name_key: &str) -> Option<Value> {
        let t = parse(path)?;
        let mut inner = self.inner.lock().unwrap();
        let obj = inner.objects.get_mut(&t.coll)?.remove(name_key)?;
        Some(self.record(&mut inner, &t.coll, obj, "DELETED"))
    }

    /// An object by collection path and key.
    pub fn get(&self, path: &str, name_key: &str) -> Option<Value> {
        let t = parse(path)?;
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(&t.coll)?
            .get(name_key)
            .cloned()
    }

    /// Every object of a collection.
    pub fn all(&self, path: &str) -> Vec<Value> {
        let Some(t) = parse(path) else {
            return Vec::new();
        };
        self.inner
            .lock()
            .unwrap()
            .objects
            .get(&t.coll)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn commit(
        &self,
        inner: &mut Inner,
        coll: &str,
        k: String,
        mut obj: Value,
        kind: &'static str,
    ) -> Value {
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", k.replace('/', "-")));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        }
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        inner
            .objects
            .entry(coll.to_string())
            .or_default()
            .insert(k, obj.clone());
        self.record(inner, coll, obj, kind)
    }

    fn record(&self, inner: &mut Inner, coll: &str, mut obj: Value, kind: &'static str) -> Value {
        if kind == "DELETED" {
            inner.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        }
        let c = Change {
            rv: inner.rv,
            coll: coll.to_string(),
            kind,
            object: obj.clone(),
        };
        inner.log.push(c.clone());
        let _ = self.changes.send(c);
        obj
    }

    /// Answers one request.
    pub fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        content_type: &str,
        body: &Value,
    ) -> Reply {
        if method == "GET" && path == "/version" {
            return Reply::Json(
                200,
                json!({"major":"1","minor":"33","gitVersion":"v1.33.1","gitCommit":"8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
                       "gitTreeState":"clean","buildDate":"2025-05-15T08:19:08Z","goVersion":"go1.24.2",
                       "compiler":"gc","platform":"linux/amd64"}),
            );
        }
        let Some(t) = parse(path) else {
            return status(404, "NotFound", &format!("no such path {path}"));
        };
        match (method, &t.name) {
            ("GET", None) if query_param(query, "watch").as_deref() == Some("true") => {
                self.watch(&t, query)
            }
            ("GET", None) => self.list(&t, query),
            ("GET", Some(name)) => self.get_one(&t, name),
            ("POST", None) => self.create(&t, body),
            ("PUT", Some(name)) => self.replace(&t, name, body),
            ("PATCH", Some(name)) => self.patch(&t, name, content_type, body),
            ("DELETE", Some(name)) => {
                let k = key(t.ns.as_deref(), name);
                let mut inner = self.inner.lock().unwrap();
                match inner.objects.get_mut(&t.coll).and_then(|m| m.remove(&k)) {
                    Some(obj) => Reply::Json(200, self.record(&mut inner, &t.coll, obj, "DELETED")),
                    None => not_found(&t, name),
                }
            }
            _ => status(
                405,
                "MethodNotAllowed",
                &format!("{method} {path} is not supported"),
            ),
        }
    }

    fn selected(t: &Target, query: &str, obj: &Value) -> bool {
        if let Some(ns) = &t.ns
            && obj["metadata"]["namespace"].as_str() != Some(ns.as_str())
        {
            return false;
        }
        if let Some(f) = query_param(query, "fieldSelector")
            && !field_matches(&f, obj)
        {
            return false;
        }
        if let Some(l) = query_param(query, "labelSelector")
            && !label_matches(&l, obj)
        {
            return false;
        }
        true
    }

    fn list(&self, t: &Target, query: &str) -> Reply {
        let inner = self.inner.lock().unwrap();
        let items: Vec<Value> = inner
            .objects
            .get(&t.coll)
            .map(|m| {
                m.values()
                    .filter(|o| Self::selected(t, query, o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        Reply::Json(
            200,
            json!({"apiVersion": t.api_version, "kind": format!("{}List", kind_of(&t.plural)),
                   "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, t: &Target, query: &str) -> Reply {
        let (tx, rx) = mpsc::unbounded_channel();
        let since: Option<u64> = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0);
        let inner = self.inner.lock().unwrap();
        // Subscribed under the lock: nothing falls between replay and live.
        let mut live = self.changes.subscribe();
        match since {
            Some(rv) => {
                for c in inner.log.iter().filter(|c| c.rv > rv && c.coll == t.coll) {
                    if Self::selected(t, query, &c.object) {
                        let _ = tx.send(json!({"type": c.kind, "object": c.object}));
                    }
                }
            }
            None => {
                for o in inner
                    .objects
                    .get(&t.coll)
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    if Self::selected(t, query, o) {
                        let _ = tx.send(json!({"type": "ADDED", "object": o}));
                    }
                }
            }
        }
        drop(inner);
        let coll = t.coll.clone();
        let filter = Target {
            coll: t.coll.clone(),
            api_version: t.api_version.clone(),
            plural: t.plural.clone(),
            ns: t.ns.clone(),
            name: None,
            sub: None,
        };
        let query = query.to_string();
        tokio::spawn(async move {
            loop {
                match live.recv().await {
                    Ok(c) => {
                        if c.coll != coll || !Self::selected(&filter, &query, &c.object) {
                            continue;
                        }
                        if tx
                            .send(json!({"type": c.kind, "object": c.object}))
                            .is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that fell behind is cut off; it relists.
                    Err(_) => return,
                }
            }
        });
        Reply::Watch(rx)
    }

    fn get_one(&self, t: &Target, name: &str) -> Reply {
        match self.get(&format!("/{}", t.coll), &key(t.ns.as_deref(), name)) {
            Some(o) => Reply::Json(200, o),
            None => not_found(t, name),
        }
    }

    fn create(&self, t: &Target, body: &Value) -> Reply {
        let mut obj = body.clone();
        if let Some(ns) = &t.ns {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
            return status(422, "Invalid", "metadata.name: Required value");
        };
        let k = key(t.ns.as_deref(), &name);
        let mut inner = self.inner.lock().unwrap();
        if inner
            .objects
            .get(&t.coll)
            .is_some_and(|m| m.contains_key(&k))
        {
            return status(
                409,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", t.plural),
            );
        }
        Reply::Json(201, self.commit(&mut inner, &t.coll, k, obj, "ADDED"))
    }

    fn replace(&self, t: &Target, name: &str, body: &Value) -> Reply {
        let k = key(t.ns.as_deref(), name);
        let mut inner = self.inner.lock().unwrap();
        let Some(cur) = inner.objects.get(&t.coll).and_then(|m| m.get(&k)).cloned() else {
            return not_found(t, name);
        };
        let want = &body["metadata"]["resourceVersion"];
        if !want.is_null() && *want != cur["metadata"]["resourceVersion"] {
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    t.plural
                ),
            );
        }
        let mut obj = body.clone();
        obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
        obj["metadata"]["creationTimestamp"] = cur["metadata"]["creationTimestamp"].clone();
        match t.sub.as_deref() {
            Some("status") => {
                let mut o = cur.clone();
                o["status"] = body["status"].clone();
                obj = o;
            }
            _ if !cur["status"].is_null() => obj["status"] = cur["status"].clone(),
            _ => {}
        }
        Reply::Json(200, self.commit(&mut inner, &t.coll, k, obj, "MODIFIED"))
    }

    fn patch(&self, t: &Target, name: &str, content_type: &str, body: &Value) -> Reply {
        let k = key(t.ns.as_deref(), name);
        let mut inner = self.inner.lock().unwrap();
        let cur = inner.objects.get(&t.coll).and_then(|m| m.get(&k)).cloned();
        let apply = content_type.starts_with("application/apply-patch");
        let mut obj = match (cur.clone(), apply) {
            (Some(o), _) => o,
            (None, true) if t.sub.is_none() => {
                let mut o = json!({"apiVersion": body["apiVersion"], "kind": body["kind"],
                                   "metadata": {"name": name}});
                if let Some(ns) = &t.ns {
                    o["metadata"]["namespace"] = json!(ns);
                }
                o
            }
            (None, _) => return not_found(t, name),
        };
        if !(apply
            || content_type.starts_with("application/merge-patch")
            || content_type.starts_with("application/strategic-merge-patch"))
        {
            return status(
                415,
                "UnsupportedMediaType",
                &format!("patch type {content_type} is not supported by this fake"),
            );
        }
        match t.sub.as_deref() {
            Some("status") => merge(&mut obj["status"], &body["status"]),
            _ => {
                let mut p = body.clone();
                // The main resource ignores status, as for a status subresource.
                if let Some(m) = p.as_object_mut() {
                    m.remove("status");
                }
                if apply {
                    // An apply states the manager's whole intent: its lists
                    // replace what was there (merge does that too).
                    if let Some(m) = p.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                }
                merge(&mut obj, &p);
            }
        }
        let kind = if cur.is_some() { "MODIFIED" } else { "ADDED" };
        let code = if cur.is_some() { 200 } else { 201 };
        Reply::Json(code, self.commit(&mut inner, &t.coll, k, obj, kind))
    }
}

fn not_found(t: &Target, name: &str) -> Reply {
    status(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", t.plural),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_selectors() {
        let t = parse("/apis/karpenter.sh/v1/nodeclaims/c1").unwrap();
        assert_eq!(
            (t.coll.as_str(), t.name.as_deref()),
            ("apis/karpenter.sh/v1/nodeclaims", Some("c1"))
        );
        let t = parse("/api/v1/namespaces/shop/pods/p/status").unwrap();
        assert_eq!(
            (t.ns.as_deref(), t.sub.as_deref()),
            (Some("shop"), Some("status"))
        );
        let ev = json!({"reason": "Nominated", "metadata": {"name": "x"}});
        assert!(field_matches("reason=Nominated", &ev));
        assert!(!field_matches("reason=Pulled", &ev));
        assert_eq!(percent_decode("metadata.name%3Dn1"), "metadata.name=n1");
    }
}
