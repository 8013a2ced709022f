//! CapacityBuffers (`autoscaling.x-k8s.io`, v1beta1 and v1alpha1 alike)
//! and the pod templates they name → `buffer` events.
//!
//! A buffer names its template by `spec.podTemplateRef` (a PodTemplate in
//! its namespace) or `spec.scalableRef` (a workload with a scale
//! subresource); the buffer controller writes the template it resolved to
//! `status.podTemplateRef`, which wins when set. Either the buffer or its
//! template may arrive first, so both are kept, in summary, and a change to
//! either re-emits the buffers it affects, once per real change.

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use rustc_hash::FxHashMap as HashMap;

use super::{Error, Result, fingerprint};
use crate::event::{self, Event, Toleration};

/// What a buffer needs of a pod template.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Template {
    pub(super) images: Vec<String>,
    pub(super) node_selector: BTreeMap<String, String>,
    pub(super) tolerations: Option<Vec<Toleration>>,
    /// The workload's replicas, for `spec.percentage`.
    pub(super) replicas: Option<u32>,
}

/// What is kept of a CapacityBuffer's spec and status.
#[derive(Clone, Debug, Default, PartialEq)]
struct Spec {
    /// `KIND namespace/name` of the template, as [`Buffers::templates`] keys it.
    template: Option<String>,
    /// `namespace/name` of the `scalableRef` workload.
    workload: Option<String>,
    replicas: Option<u32>,
    percentage: Option<u32>,
    status_replicas: Option<u32>,
}

/// Buffers and the templates they may name.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// `KIND namespace/name` → template, for PodTemplates and workloads.
    templates: HashMap<String, Template>,
    /// `namespace/name` → the buffer's spec and the fingerprint of the last
    /// event emitted for it.
    buffers: BTreeMap<String, (Spec, Option<u64>)>,
}

fn int(v: Option<&serde_json::Value>) -> Option<u32> {
    v.and_then(serde_json::Value::as_i64)
        .map(|n| n.clamp(0, i64::from(u32::MAX)) as u32)
}

fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str().filter(|s| !s.is_empty())
}

impl Buffers {
    /// The template `key` (`KIND namespace/name`) is now `template`, or
    /// gone; re-emits the buffers that name it.
    pub(super) fn template(
        &mut self,
        ts: f64,
        key: String,
        template: Option<Template>,
        out: &mut Vec<Event>,
    ) {
        let changed = match template {
            Some(t) => self.templates.insert(key.clone(), t.clone()) != Some(t),
            None => self.templates.remove(&key).is_some(),
        };
        if !changed {
            return;
        }
        let names: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, (s, _))| s.template.as_deref() == Some(key.as_str()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.emit(ts, &name, out);
        }
    }

    /// A CapacityBuffer changed (`deleted`: as it was last).
    pub(super) fn buffer(
        &mut self,
        ts: f64,
        b: &DynamicObject,
        deleted: bool,
        out: &mut Vec<Event>,
    ) -> Result<()> {
        let name = super::namespaced(&b.metadata, "CapacityBuffer")?;
        if deleted || b.metadata.deletion_timestamp.is_some() {
            if let Some((_, Some(_))) = self.buffers.remove(&name) {
                out.push(Event::new(
                    ts,
                    event::Buffer {
                        buffer: name,
                        replicas: 0,
                        images: Vec::new(),
                        node_selector: BTreeMap::new(),
                        tolerations: None,
                        template: None,
                        workload: None,
                    },
                ));
            }
            return Ok(());
        }
        let ns = b.metadata.namespace.as_deref().unwrap_or("default");
        let spec = b.data.get("spec").ok_or(Error::MissingField {
            kind: "CapacityBuffer",
            field: "spec",
        })?;
        let status = b.data.get("status");
        let scalable = spec.get("scalableRef");
        let workload = scalable
            .and_then(|s| str_at(s, &["name"]))
            .map(|n| format!("{ns}/{n}"));
        let template = status
            .and_then(|s| str_at(s, &["podTemplateRef", "name"]))
            .or_else(|| str_at(spec, &["podTemplateRef", "name"]))
            .map(|n| format!("PodTemplate {ns}/{n}"))
            .or_else(|| {
                let s = scalable?;
                Some(format!(
                    "{} {}",
                    str_at(s, &["kind"])?,
                    workload.as_deref()?
                ))
            });
        let new = Spec {
            template,
            workload,
            replicas: int(spec.get("replicas")),
            percentage: int(spec.get("percentage")),
            status_replicas: int(status.and_then(|s| s.get("replicas"))),
        };
        let entry = self.buffers.entry(name.clone()).or_default();
        if entry.0 != new {
            entry.0 = new;
            self.emit(ts, &name, out);
        }
        Ok(())
    }

    /// Emits buffer `name`'s event if it differs from the last one.
    fn emit(&mut self, ts: f64, name: &str, out: &mut Vec<Event>) {
        let Some((spec, last)) = self.buffers.get(name) else {
            return;
        };
        let t = spec.template.as_ref().and_then(|k| self.templates.get(k));
        // The buffer controller's count, else the spec's: the larger of
        // `replicas` and `percentage` of the workload, rounded up. A buffer
        // sized by `limits` alone counts one chunk until the controller
        // has counted them: events carry no resource requests.
        let from_percentage = spec.percentage.and_then(|p| {
            let r = t?.replicas?;
            Some((u64::from(r) * u64::from(p)).div_ceil(100) as u32)
        });
        let replicas =
            spec.status_replicas
                .unwrap_or_else(|| match (spec.replicas, from_percentage) {
                    (None, None) => 1,
                    (a, b) => a.unwrap_or(0).max(b.unwrap_or(0)),
                });
        let b = event::Buffer {
            buffer: name.to_string(),
            replicas,
            images: t.map(|t| t.images.clone()).unwrap_or_default(),
            node_selector: t.map(|t| t.node_selector.clone()).unwrap_or_default(),
            tolerations: t.and_then(|t| t.tolerations.clone()),
            template: spec.template.as_ref().map(|k| k.replacen(' ', "/", 1)),
            workload: spec.workload.clone(),
        };
        let fp = fingerprint(&format!("{b:?}"));
        if *last != Some(fp) {
            if let Some(e) = self.buffers.get_mut(name) {
                e.1 = Some(fp);
            }
            out.push(Event::new(ts, b));
        }
    }
}
