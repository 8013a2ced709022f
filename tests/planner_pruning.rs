//! The planner scores only the images that can pass its threshold (those
//! whose pool signals pass, and those the claim's pods or the pool's history
//! name). `pullahead tune` makes it score every candidate instead. Both must
//! order exactly the same pulls, with the same priorities, reasons and
//! probabilities: this replays every bundled trace and a generated one
//! through both and compares.

use pullahead::event::{Event, EventReader};
use pullahead::forecast::model::DEFAULT_MODEL;
use pullahead::forecast::model::Model;
use pullahead::forecast::planner::{Planner, PlannerConfig};
use pullahead::plan::{Driver, Sink, TimeSource};
use pullahead::policy::PullOrder;

mod traces;

/// Every order a driver passes on, with its time.
#[derive(Default)]
struct Collect(Vec<(u64, PullOrder)>);

impl Sink for Collect {
    type Error = std::convert::Infallible;

    fn ordered(&mut self, ts: f64, _: &str, order: &PullOrder) -> Result<(), Self::Error> {
        self.0.push((ts.to_bits(), order.clone()));
        Ok(())
    }
}

/// Every order `planner` makes over `events`, driven as `replay` and
/// `run --events` drive it: ticks on the same grid, between events.
fn orders(planner: Planner, events: &[Event]) -> Vec<(u64, PullOrder)> {
    let mut driver = Driver::new(Box::new(planner), TimeSource::EventTime, usize::MAX);
    let mut out = Collect::default();
    for e in events {
        let Ok(()) = driver.feed(e, &mut out);
    }
    out.0
}

/// Checks both planners agree over `events` under `model`; returns how
/// many orders they made.
fn compare(name: &str, model: &Model, events: &[Event]) -> usize {
    let pruned = orders(
        Planner::new(model.clone(), PlannerConfig::default()),
        events,
    );
    let every = orders(
        Planner::new(model.clone(), PlannerConfig::default()).collecting(),
        events,
    );
    assert_eq!(pruned.len(), every.len(), "{name}: number of orders");
    for (k, (a, b)) in pruned.iter().zip(&every).enumerate() {
        assert_eq!(a, b, "{name}: order {k} differs");
    }
    pruned.len()
}

/// The bundled traces and a generated one.
fn all_traces() -> Vec<(String, Vec<Event>)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(traces::data("")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        all.push((path.display().to_string(), traces::file_events(&path)));
    }
    let trace = traces::synth_trace(7, 20_000);
    let events = EventReader::new(&trace[..], "synth")
        .map(|e| e.unwrap())
        .collect();
    all.push(("synth".to_string(), events));
    all
}

#[test]
fn pruned_planner_orders_what_the_exhaustive_one_orders() {
    let default = Model::from_json(DEFAULT_MODEL).unwrap();
    // The pruning must not depend on the sign of the history weight: the
    // same model with it negative, and a higher bias so that many images
    // still pass.
    let mut w = *default.weights();
    w[6] = -w[6];
    let flipped = Model::new(
        w,
        default.bias + 3.0,
        default.horizon_seconds,
        default.threshold,
    );
    // Nor on the sign of `not_nominated`'s: with it positive, a claim's
    // plan scores every image.
    let mut w = *default.weights();
    w[8] = w[8].abs() + 1.0;
    let lifting = Model::new(w, default.bias, default.horizon_seconds, default.threshold);
    let (mut with_default, mut with_flipped) = (0, 0);
    for (name, events) in all_traces() {
        with_default += compare(&name, &default, &events);
        with_flipped += compare(&format!("{name} (negative history)"), &flipped, &events);
        compare(
            &format!("{name} (positive not_nominated)"),
            &lifting,
            &events,
        );
    }
    assert!(
        with_default > 1_000,
        "the traces should make many orders: {with_default}"
    );
    assert!(
        with_flipped > 1_000,
        "the traces should make many orders: {with_flipped}"
    );
}
