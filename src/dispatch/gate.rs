//! What the agent opens once the node's critical images are present (or the
//! release timeout has passed): the gate that keeps pods off the node until
//! then.
//!
//! - A **taint** the agent removes itself: a startup taint (Karpenter
//!   `startupTaints`, or one a node group sets at registration), or a
//!   `readiness.k8s.io/…` taint that no controller manages.
//! - A **Node condition** the agent sets to `True`, for the Node Readiness
//!   Controller (`readiness.node.x-k8s.io/v1alpha1` `NodeReadinessRule`):
//!   the rule lists the condition in `spec.conditions` with
//!   `requiredStatus: "True"`, and the controller removes the rule's
//!   `readiness.k8s.io/…` taint once it holds. The agent then never touches
//!   the taint, so that the rule stays the one owner of it.

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::agent::{Error, Result, release_taint};

/// The prefix of the taints the Node Readiness Controller manages.
pub const READINESS_TAINT_PREFIX: &str = "readiness.k8s.io/";

/// The condition type the agent sets when none is given.
pub const DEFAULT_CONDITION: &str = "pullahead.io/ImagesReady";

/// What the agent opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Remove every taint with this key.
    Taint(String),
    /// Set the Node condition of this type to `True`.
    Condition(String),
}

impl Gate {
    /// The gate the agent's flags ask for: `--startup-taint KEY` or
    /// `--release-condition TYPE`, not both; `None` without either.
    pub fn from_flags(taint: Option<&str>, condition: Option<&str>) -> Result<Option<Self>> {
        match (taint, condition) {
            (Some(_), Some(c)) => Err(Error::Flag {
                flag: "release-condition",
                value: c.to_string(),
                message: "give --startup-taint or --release-condition, not both: with a \
                          NodeReadinessRule the controller removes the taint once the \
                          condition holds"
                    .into(),
            }),
            (Some(t), None) => {
                valid_key("startup-taint", t)?;
                Ok(Some(Gate::Taint(t.to_string())))
            }
            (None, Some(c)) => {
                valid_key("release-condition", c)?;
                Ok(Some(Gate::Condition(c.to_string())))
            }
            (None, None) => Ok(None),
        }
    }

    /// Opens the gate on `node`; `true` when this call changed the node.
    pub async fn open(&self, nodes: &Api<Node>, node: &str) -> Result<bool> {
        match self {
            Gate::Taint(key) => release_taint(nodes, node, key).await,
            Gate::Condition(kind) => set_condition(nodes, node, kind).await,
        }
    }

    /// The taint key or condition type.
    pub fn key(&self) -> &str {
        match self {
            Gate::Taint(k) | Gate::Condition(k) => k,
        }
    }

    /// What the gate is, for logs: `taint KEY` or `condition TYPE`.
    pub fn describe(&self) -> String {
        match self {
            Gate::Taint(k) => format!("taint {k}"),
            Gate::Condition(c) => format!("condition {c}"),
        }
    }
}

impl From<&str> for Gate {
    /// A taint key: what `--startup-taint` takes.
    fn from(key: &str) -> Self {
        Gate::Taint(key.to_string())
    }
}

/// A taint key or condition type: `[prefix/]name`, as Kubernetes qualified
/// names go (the API server is the final judge; this catches typos early).
fn valid_key(flag: &'static str, value: &str) -> Result<()> {
    let bad = |message: &str| Error::Flag {
        flag,
        value: value.to_string(),
        message: message.to_string(),
    };
    let name = match value.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() || name.contains('/') {
                return Err(bad("expected [prefix/]name with one '/'"));
            }
            name
        }
        None => value,
    };
    let ok = |c: char| c.is_ascii_alphanumeric();
    if name.is_empty()
        || name.len() > 63
        || !name.starts_with(ok)
        || !name.ends_with(ok)
        || !name
            .chars()
            .all(|c| ok(c) || c == '-' || c == '_' || c == '.')
    {
        return Err(bad(
            "the name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ));
    }
    Ok(())
}

/// Sets condition `kind` of `node` to `True` with a strategic merge patch
/// of the status subresource: conditions merge by `type`, so the kubelet's
/// own conditions are left alone. `false` when it was `True` already.
async fn set_condition(nodes: &Api<Node>, node: &str, kind: &str) -> Result<bool> {
    let n = nodes.get_status(node).await.map_err(|source| Error::Kube {
        context: format!("get node {node}"),
        source,
    })?;
    let already = n
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .any(|c| c.type_ == kind && c.status == "True");
    if already {
        return Ok(false);
    }
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let patch = serde_json::json!({
        "status": {"conditions": [{
            "type": kind,
            "status": "True",
            "reason": "CriticalImagesPresent",
            "message": "pullahead: the node's critical images are present or finally failed, or the release timeout passed",
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }]}
    });
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(|source| Error::Kube {
            context: format!("set condition {kind} on node {node}"),
            source,
        })?;
    tracing::info!(node, condition = kind, "set node condition");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_one_gate_and_check_its_name() {
        assert_eq!(Gate::from_flags(None, None).unwrap(), None);
        assert_eq!(
            Gate::from_flags(Some("readiness.k8s.io/images"), None).unwrap(),
            Some(Gate::Taint("readiness.k8s.io/images".into()))
        );
        assert_eq!(
            Gate::from_flags(None, Some(DEFAULT_CONDITION)).unwrap(),
            Some(Gate::Condition(DEFAULT_CONDITION.into()))
        );
        let both = Gate::from_flags(Some("a/b"), Some("c/d")).unwrap_err();
        assert!(both.to_string().contains("not both"), "{both}");
        for bad in ["", "a/", "/b", "a/b/c", "a/-b", "a/b c"] {
            let e = Gate::from_flags(Some(bad), None).unwrap_err();
            assert!(e.to_string().contains("--startup-taint"), "{bad:?}: {e}");
        }
    }
}
