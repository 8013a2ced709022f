//! pullahead: an event-driven, autoscaler-aware, predictive container-image
//! prefetcher for Kubernetes.
//!
//! The modules follow the data flow: sources produce [`event::Event`]s, a
//! [`policy::Policy`] turns them into [`policy::PullOrder`]s, and the
//! [`replay`] simulator scores policies on recorded or generated streams.

pub mod allocator;
pub mod bus;
pub mod clock;
pub mod config;
pub mod controller;
pub mod crossval;
pub mod decisions;
pub mod dispatch;
pub mod event;
pub mod forecast;
pub mod import;
pub mod intern;
pub mod lease;
pub mod metrics;
pub mod nominated;
pub mod normalize;
pub mod plan;
pub mod policy;
pub mod position;
pub mod record;
pub mod registry;
pub mod replay;
pub mod run;
pub mod scenario;
pub mod scorecard;
pub mod state;
pub mod tune;
pub mod watch;
