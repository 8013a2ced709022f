//! Dispatch: turns pull orders into images on nodes.
//!
//! - [`crd`]: the `NodePrefetch` resource, one per node, that carries orders
//!   from the controller to the node and progress back.
//! - [`cri`]: a hand-written CRI `runtime.v1.ImageService` client over
//!   containerd's Unix socket (no protoc needed to build).
//! - [`agent`]: the node agent's pull loop and its API side.
//! - [`pull`]: the one-shot `pullahead pull` command.
//! - [`report`]: the agents' status read back, for the controller's
//!   outcome metrics.
//! - [`taint`]: when and why the agent removes the node's startup taint.

pub mod agent;
pub mod crd;
pub mod cri;
pub mod pull;
pub mod puller;
pub mod report;
pub mod taint;
