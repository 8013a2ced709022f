//! `pullahead pull --parallel 4` against `--parallel 1` for 8 images from a
//! local docker-registry into a local containerd (both started here, as in
//! the tests). Each run pulls images it has never seen, so nothing is cached.
//! Prints wall times and their ratio; runs the same code as the CLI
//! (`dispatch::pull::run`).
//!
//! `cargo bench --bench pull_parallel` (env: PULL_MIB per image, default 8;
//! PULL_LINK_MIBS to throttle each registry connection, default unthrottled;
//! PULL_ROUNDS, default 3)

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use pullahead::dispatch::pull::{Args, run};
use support::{Containerd, Registry, SlowProxy};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and
    // then one small round only checks that the bench still works.
    let measuring = std::env::args().any(|a| a == "--bench");
    let mib = if measuring { env("PULL_MIB", 8) } else { 1 };
    let link = env("PULL_LINK_MIBS", 0);
    let rounds = if measuring { env("PULL_ROUNDS", 3) } else { 1 };
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let proxy = (link > 0).then(|| SlowProxy::start(&reg.addr, link << 20));
    let host = proxy
        .as_ref()
        .map(|p| p.addr.clone())
        .unwrap_or_else(|| reg.addr.clone());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut times = std::collections::BTreeMap::<usize, Vec<f64>>::new();
    for round in 0..rounds {
        for parallel in [1usize, 4] {
            let images: Vec<String> = (0..8)
                .map(|i| {
                    let img = reg.push_image(
                        &format!("bench/r{round}p{parallel}i{i}"),
                        "v1",
                        "amd64",
                        mib << 20,
                    );
                    img.reference.replace(&reg.addr, &host)
                })
                .collect();
            let args = Args {
                cri_socket: ctrd.socket.clone(),
                parallel,
                json: false,
                docker_config: Vec::new(),
                attempts: 1,
                images,
            };
            let t = Instant::now();
            let mut sink = Vec::new();
            rt.block_on(run(args, &mut sink))
                .expect("all pulls succeed");
            times
                .entry(parallel)
                .or_default()
                .push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let p1 = median(times.get_mut(&1).expect("p1"));
    let p4 = median(times.get_mut(&4).expect("p4"));
    println!(
        "8 images x {mib} MiB, link {}: --parallel 1 median {p1:.3}s, --parallel 4 median {p4:.3}s, ratio p1/p4 = {:.2} ({rounds} rounds; all: {times:?})",
        if link > 0 {
            format!("{link} MiB/s per connection")
        } else {
            "unthrottled loopback".into()
        },
        p1 / p4
    );
}
