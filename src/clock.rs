//! Time for the planner: the wall clock live, a simulated clock in replay.
//!
//! The planner never reads the wall clock itself, so the same code gives the
//! same decisions live and in replay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time, in seconds (Unix epoch live).
pub trait Clock: Send + Sync {
    /// The current time in seconds.
    fn now(&self) -> f64;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }
}

/// A clock that moves only when told to: replay and tests.
#[derive(Debug, Default)]
pub struct SimClock(AtomicU64);

impl SimClock {
    /// A clock standing at `t`.
    pub fn new(t: f64) -> Self {
        Self(AtomicU64::new(t.to_bits()))
    }

    /// Moves the clock to `t`.
    pub fn set(&self, t: f64) {
        self.0.store(t.to_bits(), Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Ticks further apart than this many intervals are skipped over: nothing
/// happened in between for a tick to react to.
const MAX_TICKS_PER_GAP: f64 = 10_000.0;

/// The grid of event times at which a policy's `on_tick` runs when time
/// comes from the events themselves (replay, or `run` on a recorded file):
/// every multiple of the interval, from the first event on, handed out
/// before the event that passes it.
#[derive(Clone, Copy, Debug)]
pub struct TickGrid {
    interval: f64,
    next: Option<f64>,
}

impl TickGrid {
    /// A grid for a policy's `tick_interval`; `None` if it wants no ticks.
    pub fn new(interval: Option<f64>) -> Option<Self> {
        interval.filter(|i| *i > 0.0).map(|interval| Self {
            interval,
            next: None,
        })
    }

    /// Seconds between ticks.
    pub fn interval(&self) -> f64 {
        self.interval
    }

    /// The next tick at or before `t` that has not been handed out yet;
    /// `None` once there is none. Call until `None` before the event at `t`.
    pub fn next_due(&mut self, t: f64) -> Option<f64> {
        let i = self.interval;
        let mut tick = *self.next.get_or_insert((t / i).ceil() * i);
        if (t - tick) / i > MAX_TICKS_PER_GAP {
            tick = (t / i).floor() * i;
        }
        if tick <= t {
            self.next = Some(tick + i);
            Some(tick)
        } else {
            self.next = Some(tick);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_grid_hands_out_each_multiple_once_and_skips_long_gaps() {
        assert!(TickGrid::new(None).is_none());
        assert!(TickGrid::new(Some(0.0)).is_none());
        let mut g = TickGrid::new(Some(15.0)).unwrap();
        let mut upto = |t: f64| std::iter::from_fn(|| g.next_due(t)).collect::<Vec<_>>();
        // The first event starts the grid at the next multiple.
        assert_eq!(upto(7.0), Vec::<f64>::new());
        assert_eq!(upto(15.0), vec![15.0]);
        assert_eq!(upto(15.0), Vec::<f64>::new());
        assert_eq!(upto(50.0), vec![30.0, 45.0]);
        // A gap of more than 10,000 intervals: only the last tick before it.
        assert_eq!(upto(1e9), vec![(1e9f64 / 15.0).floor() * 15.0]);
    }

    #[test]
    fn sim_clock_moves_only_when_set() {
        let c = SimClock::new(5.0);
        assert_eq!(c.now(), 5.0);
        c.set(7.5);
        assert_eq!(c.now(), 7.5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now() > 1.577e9);
    }
}
