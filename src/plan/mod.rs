//! One planning path for `run` and `replay`: the [`Driver`] owns a policy,
//! the clock it plans by, its tick grid and its [`book::PlanBook`]; the
//! controller and the simulator are [`Sink`]s that act on what it decides.
//!
//! Nothing else builds policies ([`settings::build`]) or drives their
//! ticks, so what `replay` scores is what `run` does with the same events.

pub mod book;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SimClock, TickGrid};
use crate::event::Event;
use crate::policy::{Policy, PullOrder};
use book::{Placed, PlanBook};
pub use settings::{PolicyArgs, PolicyName, PolicySettings};

/// Where a driver's time comes from.
pub enum TimeSource {
    /// A live clock (the wall clock in production); ticks come from a
    /// timer, through [`Driver::tick`].
    Live(Arc<dyn Clock>),
    /// Each event's own `ts` (replay, or `run` on a recorded file): the
    /// policy ticks on a [`TickGrid`] before the event that passes each
    /// tick, and decisions carry the recording's times.
    EventTime,
}

/// What a [`Driver`]'s decisions go to.
pub trait Sink {
    /// What can go wrong taking a decision (writing the decision file).
    type Error;

    /// The policy `policy` made `order` at `ts`; it is placed next.
    fn ordered(&mut self, ts: f64, policy: &str, order: &PullOrder) -> Result<(), Self::Error>;

    /// `event` happened at `now`: after the ticks it passes, before the
    /// policy or the book sees it.
    fn event(&mut self, _event: &Event, _now: f64) {}

    /// `node`'s plan, which awaited its Node object, can go to it now.
    fn node_visible(&mut self, _node: &str) {}

    /// `node`'s plan went from the book.
    fn forgotten(&mut self, _node: &str) {}

    /// Placing `order` in the book at `now` did `placed`. Orders a NodeClaim
    /// had parked come here again once the claim names its node.
    fn placed(&mut self, _order: &PullOrder, _placed: &Placed, _now: f64) {}
}

/// A policy with its clock, ticks and plan book. See the module docs.
pub struct Driver {
    policy: Box<dyn Policy>,
    time: TimeSource,
    event_clock: SimClock,
    ticks: Option<TickGrid>,
    book: PlanBook,
    orders: Vec<PullOrder>,
}

impl Driver {
    /// A driver for `policy` on `time`, keeping `cap` images a node.
    pub fn new(policy: Box<dyn Policy>, time: TimeSource, cap: usize) -> Self {
        let ticks = match time {
            TimeSource::EventTime => TickGrid::new(policy.tick_interval()),
            TimeSource::Live(_) => None,
        };
        Self {
            policy,
            time,
            event_clock: SimClock::new(0.0),
            ticks,
            book: PlanBook::new(cap),
            orders: Vec::new(),
        }
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &str {
        self.policy.name()
    }

    /// The plans so far.
    pub fn book(&self) -> &PlanBook {
        &self.book
    }

    /// The plans, to mark one as awaiting its Node or written.
    pub fn book_mut(&mut self) -> &mut PlanBook {
        &mut self.book
    }

    /// The planner's time now.
    pub fn now(&self) -> f64 {
        self.clock().now()
    }

    fn clock(&self) -> &dyn Clock {
        match &self.time {
            TimeSource::Live(c) => c.as_ref(),
            TimeSource::EventTime => &self.event_clock,
        }
    }

    /// How often a live clock should call [`Driver::tick`]; `None` on the
    /// events' clock, or for a policy that never ticks.
    pub fn live_tick_every(&self) -> Option<Duration> {
        match self.time {
            TimeSource::Live(_) => TickGrid::new(self.policy.tick_interval())
                .and_then(|g| Duration::try_from_secs_f64(g.interval()).ok()),
            TimeSource::EventTime => None,
        }
    }

    /// Runs the ticks `event` passes, then the event itself, through the
    /// policy and the book, telling `sink` everything on the way.
    pub fn feed<S: Sink>(&mut self, event: &Event, sink: &mut S) -> Result<(), S::Error> {
        if matches!(self.time, TimeSource::EventTime) {
            while let Some(t) = self.ticks.as_mut().and_then(|g| g.next_due(event.ts)) {
                self.event_clock.set(t);
                self.tick(sink)?;
            }
            self.event_clock.set(event.ts);
        }
        let now = self.now();
        sink.event(event, now);
        let seen = self.book.observe(event);
        if let Some(node) = &seen.forgotten {
            sink.forgotten(node);
        }
        if let Some(node) = &seen.visible {
            sink.node_visible(node);
        }
        for order in seen.released {
            let placed = self.book.place(&order, now);
            sink.placed(&order, &placed, now);
        }
        let mut orders = std::mem::take(&mut self.orders);
        let clock = match &self.time {
            TimeSource::Live(c) => c.as_ref(),
            TimeSource::EventTime => &self.event_clock as &dyn Clock,
        };
        self.policy.on_event(event, clock, &mut orders);
        self.emit(orders, now, sink)
    }

    /// Lets the policy act on the passing of time alone, at the clock's
    /// time now (a live timer calls this; on the events' clock
    /// [`Driver::feed`] does).
    pub fn tick<S: Sink>(&mut self, sink: &mut S) -> Result<(), S::Error> {
        let now = self.now();
        let mut orders = std::mem::take(&mut self.orders);
        let clock = match &self.time {
            TimeSource::Live(c) => c.as_ref(),
            TimeSource::EventTime => &self.event_clock as &dyn Clock,
        };
        self.policy.on_tick(clock, &mut orders);
        self.emit(orders, now, sink)
    }

    /// Hands the policy's new `orders` to `sink` and the book, and keeps
    /// the emptied list for the next call.
    fn emit<S: Sink>(
        &mut self,
        mut orders: Vec<PullOrder>,
        now: f64,
        sink: &mut S,
    ) -> Result<(), S::Error> {
        let mut result = Ok(());
        for order in orders.drain(..) {
            if result.is_ok() {
                result = sink.ordered(now, self.policy.name(), &order);
            }
            let placed = self.book.place(&order, now);
            sink.placed(&order, &placed, now);
        }
        self.orders = orders;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Reason, Target};

    /// A policy that ticks every 10 s and orders one image at each tick.
    struct Ticking;

    impl Policy for Ticking {
        fn name(&self) -> &str {
            "ticking"
        }

        fn on_event(&mut self, _: &Event, _: &dyn Clock, _: &mut Vec<PullOrder>) {}

        fn tick_interval(&self) -> Option<f64> {
            Some(10.0)
        }

        fn on_tick(&mut self, clock: &dyn Clock, out: &mut Vec<PullOrder>) {
            out.push(PullOrder {
                target: Target::Node("n".into()),
                image: format!("r/i:{}", clock.now()),
                priority: clock.now() as u32,
                reason: Reason::HpaTrend,
                probability: None,
            });
        }
    }

    #[derive(Default)]
    struct Log(Vec<(f64, String)>);

    impl Sink for Log {
        type Error = std::convert::Infallible;

        fn ordered(&mut self, ts: f64, _: &str, order: &PullOrder) -> Result<(), Self::Error> {
            self.0.push((ts, order.image.clone()));
            Ok(())
        }
    }

    /// On the events' clock, ticks come on the grid before the event that
    /// passes each, at the tick's time; the book keeps the cap best.
    #[test]
    fn event_time_ticks_on_the_grid_and_the_book_keeps_the_cap() {
        let mut d = Driver::new(Box::new(Ticking), TimeSource::EventTime, 2);
        let mut log = Log::default();
        let lines = "{\"ts\":3,\"type\":\"image\",\"image\":\"x\",\"bytes\":1}\n\
                     {\"ts\":31,\"type\":\"image\",\"image\":\"x\",\"bytes\":1}\n";
        for e in crate::event::EventReader::new(lines.as_bytes(), "t") {
            d.feed(&e.unwrap(), &mut log).unwrap();
        }
        let ts: Vec<f64> = log.0.iter().map(|(t, _)| *t).collect();
        assert_eq!(ts, vec![10.0, 20.0, 30.0]);
        let planned: Vec<&str> = d.book().planned("n").into_iter().map(|(i, _)| i).collect();
        assert_eq!(planned, vec!["r/i:30", "r/i:20"]);
    }
}
