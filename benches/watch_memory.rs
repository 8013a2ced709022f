//! Retained watch state for 5,000 nodes and 100,000 pods: what the watchers
//! keep after listing them (trackers + normaliser), measured two ways:
//! live heap bytes through a counting allocator, and the process RSS.
//!
//! Run: `cargo bench --bench watch_memory`

#[path = "support/fixtures.rs"]
mod fixtures;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::runtime::watcher::Event as WatchEvent;
use pullahead::normalize::Object;
use pullahead::watch::{Kind, Readiness, Watcher};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

const NODES: usize = 5_000;
const PODS: usize = 100_000;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // and then a small run checks the bench still works.
    let full = std::env::args().any(|a| a == "--bench");
    let (nodes, pods) = if full { (NODES, PODS) } else { (50, 1_000) };
    let kinds = [Kind::Node, Kind::Pod];
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_bytes();
    let mut w = Watcher::new(&kinds, Readiness::new(&kinds));
    let mut out = Vec::new();
    let mut events = 0usize;
    for kind in kinds {
        w.handle(kind, WatchEvent::Init, 0.0, &mut out);
    }
    for i in 0..nodes {
        w.handle(
            Kind::Node,
            WatchEvent::InitApply(Object::Node(Box::new(fixtures::node(i, 1)))),
            1.0,
            &mut out,
        );
        events += out.len();
        out.clear();
    }
    for i in 0..pods {
        // Three in four pods are bound to a node.
        let node = (i % 4 != 0).then(|| {
            format!(
                "ip-10-0-{}-{}.eu-west-1.compute.internal",
                (i / 256) % 20,
                i % 256
            )
        });
        w.handle(
            Kind::Pod,
            WatchEvent::InitApply(Object::Pod(fixtures::slim_pod(i, 1, node.as_deref()))),
            1.0,
            &mut out,
        );
        events += out.len();
        out.clear();
    }
    for kind in kinds {
        w.handle(kind, WatchEvent::InitDone, 2.0, &mut out);
    }
    out.shrink_to_fit();
    let heap = LIVE.load(Ordering::Relaxed) - heap0;
    let rss = rss_bytes().saturating_sub(rss0);
    assert_eq!(w.known_objects(), nodes + pods);
    let mb = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("retained watch state for {nodes} nodes + {pods} pods ({events} events emitted):");
    println!(
        "  live heap   {:8.1} MiB  ({:.0} bytes per object)",
        mb(heap),
        heap as f64 / (nodes + pods) as f64
    );
    println!(
        "  trackers    {:8.1} MiB  (estimate from capacities)",
        mb(w.tracker_bytes())
    );
    println!(
        "  RSS growth  {:8.1} MiB  (includes allocator slack and freed object buffers)",
        mb(rss)
    );
    if full {
        println!(
            "  target <= 256 MiB: {}",
            if mb(heap.max(rss)) <= 256.0 {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    std::hint::black_box(&w);
}
