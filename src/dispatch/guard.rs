//! The checks the pull loop makes around every pull attempt: disk headroom
//! ([`crate::dispatch::disk`]), registry and cluster budgets
//! ([`crate::dispatch::budget`]) and the record of what was pulled for the
//! clean-up ([`crate::dispatch::cleanup`]).
//!
//! A guard is asked before each attempt and told the result after it. It may
//! make the attempt wait (a budget slot is busy, a registry said 429), let it
//! go with a [`Ticket`] held for the attempt's length, or hold the image back
//! for good ([`Admit::Skip`]).

use std::any::Any;

use futures::future::BoxFuture;

use crate::dispatch::cri;
use crate::dispatch::puller::Order;

/// A guard's answer before one attempt.
pub enum Admit {
    /// Go ahead; the ticket is dropped when the attempt ends.
    Go(Ticket),
    /// Do not pull this image now.
    Skip {
        /// Why, for the status message (names the resource: disk space, …).
        reason: String,
        /// The image's bytes that were not pulled, when known.
        held_back_bytes: Option<u64>,
    },
}

/// Whatever a guard holds for one attempt (a budget slot, a disk
/// reservation); released on drop.
#[derive(Default)]
pub struct Ticket {
    held: Vec<Box<dyn Any + Send + Sync>>,
}

impl Ticket {
    /// A ticket that holds nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A ticket that holds `item` until it is dropped.
    pub fn holding(item: impl Any + Send + Sync) -> Self {
        Self {
            held: vec![Box::new(item)],
        }
    }

    /// Adds what another ticket holds.
    pub fn join(&mut self, other: Ticket) {
        self.held.extend(other.held);
    }
}

/// What a finished attempt gave.
pub enum Attempt<'a> {
    /// The image is on the node now.
    Pulled {
        /// The runtime's image reference.
        image_ref: &'a str,
        /// The runtime's size of the image, when known.
        bytes: Option<u64>,
    },
    /// The attempt failed.
    Failed(&'a cri::Error),
}

/// A check around pull attempts.
pub trait PullGuard: Send + Sync {
    /// Asked before each attempt; may wait.
    fn admit<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, Admit>;
    /// Told after each attempt, before its ticket is dropped.
    fn after<'a>(&'a self, order: &'a Order, attempt: Attempt<'a>) -> BoxFuture<'a, ()>;
}
