//! Dispatch: turns pull orders into images on nodes.
//!
//! - [`crd`]: the `NodePrefetch` resource, one per node, that carries orders
//!   from the controller to the node and progress back.
//! - [`cri`]: a hand-written CRI `runtime.v1.ImageService` client over
//!   containerd's Unix socket (no protoc needed to build).
//! - [`agent`]: the node agent's pull loop and its API side.
//! - [`gate`]: what the agent opens once the critical images are present: a
//!   startup or `readiness.k8s.io/…` taint, or a Node condition.
//! - [`pull`]: the one-shot `pullahead pull` command.
//! - [`guard`]: the checks around every pull: [`disk`] headroom,
//!   [`budget`]s per registry host and cluster, [`cleanup`] of unused
//!   prefetches; [`safety`] holds their flags and wiring.
//! - [`report`]: the agents' status read back, for the controller's
//!   outcome metrics.
//! - [`taint`]: when and why the agent removes the node's startup taint.

pub mod agent;
pub mod budget;
pub mod cleanup;
pub mod crd;
pub mod cri;
pub mod disk;
pub mod gate;
pub mod guard;
pub mod pull;
pub mod puller;
pub mod report;
pub mod safety;
pub mod taint;
