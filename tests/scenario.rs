//! The scenario simulator on small hand-worked cases: the HPA algorithm,
//! the scheduler, both provisioners, idle scale-down and DaemonSets; plus
//! determinism by seed and the errors for bad specs and load files.

use std::path::Path;

use pullahead::event::{
    Autoscaler, Body, ClaimPhase, Event, EventReader, EventWriter, Header, NodePhase, PodPhase,
};
use pullahead::scenario::load::Load;
use pullahead::scenario::sim::hpa_recommendation;
use pullahead::scenario::spec::{LoadLayout, Spec};
use pullahead::scenario::{Options, Summary, generate};

const T0: f64 = 1_000_000.0;

/// A load CSV with one `count` column, one row a minute from T0.
fn csv(rates: &[u32]) -> String {
    let mut s = String::from("time,count\n");
    for (i, r) in rates.iter().enumerate() {
        s.push_str(&format!("{},{r}\n", T0 + 60.0 * i as f64));
    }
    s
}

fn run(spec: &str, rates: &[u32], hours: f64, seed: u64) -> (Summary, Vec<Event>, Vec<u8>) {
    try_run(spec, &csv(rates), hours, seed).unwrap_or_else(|e| panic!("scenario failed: {e}"))
}

fn try_run(
    spec: &str,
    load_csv: &str,
    hours: f64,
    seed: u64,
) -> Result<(Summary, Vec<Event>, Vec<u8>), String> {
    let spec = Spec::parse(spec, "spec.yaml").map_err(|e| e.to_string())?;
    spec.validate("spec.yaml").map_err(|e| e.to_string())?;
    let load = Load::from_reader(load_csv.as_bytes(), "load.csv", spec.load_layout, None)
        .map_err(|e| e.to_string())?;
    let opts = Options {
        seed,
        hours: Some(hours),
        start_hour: 0.0,
    };
    let (summary, bytes) = generate(&spec, Path::new("."), "spec.yaml", &load, &opts, |t0| {
        EventWriter::new(Vec::new(), "mem", &Header::new(t0, "test"))
    })
    .map_err(|e| e.to_string())?;
    // The output must read back as a valid, time-ordered schema-v1 file.
    let events: Vec<Event> = EventReader::new(&bytes[..], "mem")
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    Ok((summary, events, bytes))
}

fn pool(autoscaler: &str, cpu: u32, min: u32, extra: &str) -> String {
    format!(
        "  - name: default
    autoscaler: {autoscaler}
    node: {{cpu_millis: {cpu}, memory_mib: 100000}}
    labels: {{team: a}}
    launch_seconds: [1, 1]
    register_seconds: [30, 30]
    ready_seconds: [10, 10]
    min_nodes: {min}
    max_nodes: 10
    idle_seconds: 60
{extra}"
    )
}

fn hpa_workload(cpu: u32, cap: u32, target: f64, min: u32, max: u32) -> String {
    format!(
        "  - name: shop/web
    images: [docker.io/library/nginx:1.25]
    pool: default
    pod: {{cpu_millis: {cpu}, memory_mib: 10}}
    load: {{column: count}}
    per_pod_capacity: {cap}
    hpa: {{min: {min}, max: {max}, target_utilization: {target}}}
"
    )
}

fn workload_replicas(evs: &[Event], name: &str) -> Vec<(f64, u32)> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::Workload(w) if w.workload == name => Some((e.ts - T0, w.replicas?)),
            _ => None,
        })
        .collect()
}

#[test]
fn hpa_algorithm_hand_worked() {
    // 300/min over 4 pods of 100 at a 60% target: ratio 1.25 → ceil(5).
    assert_eq!(hpa_recommendation(4, 4, 300.0, 100.0, 0.6, 0.1), 5);
    // Ratio 1.04 is inside the 10% tolerance.
    assert_eq!(hpa_recommendation(4, 4, 250.0, 100.0, 0.6, 0.1), 4);
    // Ratio 0.25 → ceil(0.25 × 4) = 1.
    assert_eq!(hpa_recommendation(4, 4, 60.0, 100.0, 0.6, 0.1), 1);
    // Two pods not ready count as 0% when scaling up: (1.25×4)/6 < 1 reverses
    // the direction, so nothing changes.
    assert_eq!(hpa_recommendation(6, 4, 300.0, 100.0, 0.6, 0.1), 6);
    // 600/min: ratio 2.5 over 4 ready; (2.5×4)/6 = 1.67 → ceil(1.67×6) = 10.
    assert_eq!(hpa_recommendation(6, 4, 600.0, 100.0, 0.6, 0.1), 10);
    // Scaling down with 2 not ready: they count as at target, (0.25×4+2)/6 = 0.5 → 3.
    assert_eq!(hpa_recommendation(6, 4, 60.0, 100.0, 0.6, 0.1), 3);
    // From zero: what the load needs.
    assert_eq!(hpa_recommendation(0, 0, 100.0, 100.0, 0.5, 0.1), 2);
    // No pod reports a metric: hold.
    assert_eq!(hpa_recommendation(3, 0, 900.0, 100.0, 0.5, 0.1), 3);
}

#[test]
fn hpa_scale_down_waits_for_the_stabilisation_window() {
    let spec = format!(
        "pools:\n{}workloads:\n{}",
        pool("karpenter", 64000, 1, ""),
        hpa_workload(100, 100, 0.5, 1, 50)
    );
    // 600/min for 5 minutes (12 pods at 50% of 100), then 60/min.
    let mut rates = vec![600; 5];
    rates.extend([60; 20]);
    let (_, evs, _) = run(&spec, &rates, 0.4, 1);
    let reps = workload_replicas(&evs, "shop/web");
    assert_eq!(
        reps[0],
        (0.0, 12),
        "initial replicas: ceil(600 / (100 × 0.5))"
    );
    // The load drops at t=300; the recommendations of 12 made up to t=285
    // leave the 300 s window at t=600, and only then does it scale down.
    assert_eq!(reps[1], (600.0, 2), "{reps:?}");
    let downs: Vec<_> = evs
        .iter()
        .filter(|e| matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Deleted))
        .map(|e| e.ts - T0)
        .collect();
    assert_eq!(downs, vec![600.0; 10], "ten newest pods deleted at once");
}

#[test]
fn hpa_scale_up_is_rate_limited_per_sync() {
    let spec = format!(
        "pools:\n{}workloads:\n{}",
        pool("karpenter", 640000, 1, ""),
        hpa_workload(100, 100, 1.0, 1, 20)
    );
    let (_, evs, _) = run(&spec, &[0, 5000, 5000], 0.05, 1);
    let reps = workload_replicas(&evs, "shop/web");
    // 1 → max(2×1, 1+4) = 5 → 10 → 20 (max), one step per 15 s sync.
    assert_eq!(reps, vec![(0.0, 1), (60.0, 5), (75.0, 10), (90.0, 20)]);
    let hpa = evs.iter().find_map(|e| match &e.body {
        Body::Hpa(h) if e.ts - T0 == 60.0 => Some(h.clone()),
        _ => None,
    });
    let hpa = hpa.expect("an hpa event when it scales");
    assert_eq!((hpa.current_replicas, hpa.desired_replicas), (1, 5));
    assert_eq!(hpa.min_replicas, Some(1));
    assert_eq!(hpa.max_replicas, Some(20));
}

fn bound_nodes(evs: &[Event]) -> Vec<String> {
    evs.iter()
        .filter_map(|e| match &e.body {
            Body::Pod(p) if p.phase == PodPhase::Scheduled => p.node.clone(),
            _ => None,
        })
        .collect()
}

#[test]
fn scheduler_spreads_or_packs_by_pool_setting() {
    let fixed = "  - name: shop/web
    images: [docker.io/library/nginx:1.25]
    pool: default
    pod: {cpu_millis: 400, memory_mib: 10}
    replicas: 2
";
    for (packing, distinct) in [("spread", 2), ("binpack", 1)] {
        let spec = format!(
            "pools:\n{}workloads:\n{fixed}",
            pool("karpenter", 1000, 2, &format!("    packing: {packing}\n"))
        );
        let (_, evs, _) = run(&spec, &[0, 0], 0.01, 1);
        let mut nodes = bound_nodes(&evs);
        assert_eq!(nodes.len(), 2);
        nodes.dedup();
        assert_eq!(nodes.len(), distinct, "{packing}: {nodes:?}");
    }
}

/// A pool of several node sizes: each new node is one its first pod fits,
/// labelled with its instance type, and it holds as many pods as its size
/// allows.
#[test]
fn a_pool_of_several_sizes_launches_nodes_its_pods_fit() {
    let sizes = "    other_node_sizes:\n      - {cpu_millis: 2000, memory_mib: 100000}\n      - {cpu_millis: 4000, memory_mib: 100000}\n";
    let spec = format!(
        "pools:\n{}hpa_controller: {{scale_down_stabilization_seconds: 0}}\nworkloads:\n{}",
        pool("karpenter", 1000, 1, sizes),
        hpa_workload(400, 100, 1.0, 1, 40)
    );
    // 1 pod, then 40 for long enough that many nodes come up.
    let rates: Vec<u32> = std::iter::once(0)
        .chain(std::iter::repeat_n(4000, 20))
        .collect();
    let (summary, evs, _) = run(&spec, &rates, 0.3, 9);
    assert_eq!(summary.unplaceable_pods, 0);
    let mut per_type: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &evs {
        if let Body::Node(n) = &e.body
            && n.phase == NodePhase::Registered
        {
            let t = n.labels.get("node.kubernetes.io/instance-type").cloned();
            per_type
                .entry(t.expect("instance-type label"))
                .or_default()
                .push(n.node.clone());
        }
    }
    let types: Vec<&str> = per_type.keys().map(String::as_str).collect();
    assert_eq!(
        types,
        ["1000m-100000Mi", "2000m-100000Mi", "4000m-100000Mi"],
        "the warm node is the first size; the seed draws the others"
    );
    // Pods of 400m: two on a 1000m node, five on 2000m, ten on 4000m.
    let binds = bound_nodes(&evs);
    for (t, most) in [
        ("1000m-100000Mi", 2),
        ("2000m-100000Mi", 5),
        ("4000m-100000Mi", 10),
    ] {
        for node in &per_type[t] {
            let n = binds.iter().filter(|b| *b == node).count();
            assert!(n <= most, "{node} ({t}) holds {n} pods");
        }
        let fullest = per_type[t]
            .iter()
            .map(|node| binds.iter().filter(|b| *b == node).count())
            .max();
        assert_eq!(fullest, Some(most), "{t}: some node fills up");
    }
    // One size alone: no label, as before.
    let plain = format!(
        "pools:\n{}workloads:\n{}",
        pool("karpenter", 1000, 1, ""),
        hpa_workload(400, 100, 1.0, 1, 4)
    );
    let (_, evs, _) = run(&plain, &[0, 400], 0.05, 9);
    assert!(evs.iter().all(|e| !matches!(&e.body, Body::Node(n)
        if n.labels.contains_key("node.kubernetes.io/instance-type"))));
}

/// min 1 replica of 400m on one 1000m node; at t=60 the load asks for 5.
fn growth_spec(autoscaler: &str) -> String {
    format!(
        "pools:\n{}hpa_controller: {{scale_down_stabilization_seconds: 0}}\nworkloads:\n{}",
        pool(autoscaler, 1000, 1, ""),
        hpa_workload(400, 100, 1.0, 1, 5)
    )
}

#[test]
fn karpenter_claims_nominates_and_binds_on_the_new_nodes() {
    // Minute 0: no load (1 pod); minutes 1–2: 500/min (5 pods); then none.
    let (summary, evs, _) = run(
        &growth_spec("karpenter"),
        &[0, 500, 500, 0, 0, 0, 0],
        0.1,
        4,
    );
    let at = |ts: f64| evs.iter().filter(move |e| e.ts - T0 == ts);
    // t=60: 4 new pods; one fits beside the first, three need nodes of
    // 1000m: two claims (two pods, then one).
    let claims: Vec<_> = at(60.0)
        .filter_map(|e| match &e.body {
            Body::NodeClaim(c) if c.phase == ClaimPhase::Created => Some(c.node_claim.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(claims.len(), 2);
    let nominated: Vec<_> = at(60.0)
        .filter_map(|e| match &e.body {
            Body::Pod(p) if p.phase == PodPhase::Nominated => {
                Some((p.pod.clone(), p.node_claim.clone().expect("claim")))
            }
            _ => None,
        })
        .collect();
    assert_eq!(nominated.len(), 3);
    assert_eq!(nominated.iter().filter(|(_, c)| *c == claims[0]).count(), 2);
    assert_eq!(nominated.iter().filter(|(_, c)| *c == claims[1]).count(), 1);
    let ups: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::ScaleUp(s) => Some((e.ts - T0, s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 1);
    let (ts, up) = &ups[0];
    assert_eq!(
        (*ts, up.source, up.from, up.to),
        (60.0, Autoscaler::Karpenter, 1, 3)
    );
    let mut listed = up.pods.clone().unwrap_or_default();
    let mut noms: Vec<_> = nominated.iter().map(|(p, _)| p.clone()).collect();
    listed.sort();
    noms.sort();
    assert_eq!(listed, noms, "the scale-up lists the nominated pods");
    // Registered at 60+30, ready at +10: the nominated pods bind then, to
    // their claim's node.
    for claim in &claims {
        let node = evs.iter().find_map(|e| match &e.body {
            Body::NodeClaim(c) if c.node_claim == *claim && c.phase == ClaimPhase::Registered => {
                assert_eq!(e.ts - T0, 90.0);
                c.node.clone()
            }
            _ => None,
        });
        let node = node.expect("claim registers");
        let binds: Vec<_> = evs
            .iter()
            .filter_map(|e| match &e.body {
                Body::Pod(p)
                    if p.phase == PodPhase::Scheduled
                        && p.node_claim.as_deref() == Some(claim.as_str()) =>
                {
                    assert_eq!(p.node.as_deref(), Some(node.as_str()));
                    Some(e.ts - T0)
                }
                _ => None,
            })
            .collect();
        assert!(
            !binds.is_empty() && binds.iter().all(|&t| t == 100.0),
            "{binds:?}"
        );
    }
    assert_eq!(summary.node_claims, 3, "one warm claim and two new ones");
    assert_eq!(summary.bound_fresh, 3);
    // Load gone at t=180: back to 1 pod; the two new nodes empty, idle 60 s,
    // then removed (min_nodes 1 keeps one).
    let removed: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::NodeClaim(c) if c.phase == ClaimPhase::Deleted => Some(e.ts - T0),
            _ => None,
        })
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(
        removed.iter().all(|&t| (240.0..=270.0).contains(&t)),
        "{removed:?}"
    );
    assert!(
        !evs.iter().any(|e| matches!(&e.body, Body::Pull(_))
            || matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Started)),
        "inputs only: no pull and no pod started"
    );
}

#[test]
fn cluster_autoscaler_grows_the_group_and_pods_wait_for_the_nodes() {
    let (summary, evs, _) = run(&growth_spec("cluster-autoscaler"), &[0, 500, 500], 0.05, 4);
    assert_eq!(summary.node_claims, 0);
    assert!(!evs.iter().any(|e| matches!(&e.body, Body::NodeClaim(_))));
    assert!(
        !evs.iter()
            .any(|e| matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Nominated))
    );
    let ups: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::ScaleUp(s) => Some((e.ts - T0, s.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 1);
    let (ts, up) = &ups[0];
    assert_eq!(
        (*ts, up.source, up.from, up.to),
        (60.0, Autoscaler::ClusterAutoscaler, 1, 3)
    );
    assert_eq!(up.group, "default");
    assert_eq!(up.pods.as_ref().map(Vec::len), Some(3));
    let new_nodes: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Node(n) if n.phase == NodePhase::Ready && e.ts > T0 => {
                assert_eq!(e.ts - T0, 100.0, "scale-up at 60, +30 register, +10 ready");
                Some(n.node.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(new_nodes.len(), 2);
    let late_binds: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Pod(p)
                if p.phase == PodPhase::Scheduled
                    && p.workload.as_deref() == Some("shop/web")
                    && e.ts - T0 == 100.0 =>
            {
                p.node.clone()
            }
            _ => None,
        })
        .collect();
    assert_eq!(late_binds.len(), 3);
    assert!(late_binds.iter().all(|n| new_nodes.contains(n)));
}

#[test]
fn daemonsets_land_on_every_tolerating_node_at_registration() {
    let spec = format!(
        "pools:\n{}daemonsets:
  - {{name: kube-system/proxy, images: [registry.k8s.io/kube-proxy:v1.33.0], tolerations: [{{operator: Exists}}]}}
  - {{name: kube-system/picky, images: [docker.io/library/busybox:1.36]}}
workloads:\n{}",
        pool(
            "karpenter",
            1300,
            1,
            "    taints: [{key: dedicated, value: web, effect: NoSchedule}]\n"
        ),
        hpa_workload(400, 100, 1.0, 1, 5).replace(
            "    hpa:",
            "    tolerations: [{key: dedicated, operator: Equal, value: web}]\n    hpa:"
        )
    );
    let (_, evs, _) = run(&spec, &[0, 500, 500], 0.05, 2);
    let registered: Vec<(f64, String)> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Node(n) if n.phase == NodePhase::Registered => Some((e.ts, n.node.clone())),
            _ => None,
        })
        .collect();
    // The warm node, and one claim for the two pods that do not fit on it.
    assert_eq!(registered.len(), 2);
    for (ts, node) in &registered {
        let ds: Vec<_> = evs
            .iter()
            .filter(|e| e.ts == *ts)
            .filter_map(|e| match &e.body {
                Body::Pod(p) if p.phase == PodPhase::Scheduled && p.node.as_ref() == Some(node) => {
                    p.workload.clone()
                }
                _ => None,
            })
            .filter(|w| w.starts_with("kube-system/"))
            .collect();
        assert_eq!(
            ds,
            vec!["kube-system/proxy".to_string()],
            "only the tolerating DaemonSet on {node}"
        );
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_names() {
    let spec = growth_spec("karpenter");
    let rates = [0, 500, 500, 0, 900, 100, 0];
    let (_, _, a) = run(&spec, &rates, 0.1, 9);
    let (_, _, b) = run(&spec, &rates, 0.1, 9);
    let (_, _, c) = run(&spec, &rates, 0.1, 10);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn bad_specs_name_the_field() {
    let wl = hpa_workload(400, 100, 1.0, 1, 5);
    let cases = [
        (
            format!(
                "pools:\n{}workloads:\n{}",
                pool("karpenter", 1000, 1, ""),
                wl.replace("pool: default", "pool: nope")
            ),
            "workloads[0].pool",
            "no pool named \"nope\"",
        ),
        (
            format!(
                "pools:\n{}workloads:\n{wl}",
                pool("karpenter", 1000, 1, "").replace("cpu_millis: 1000", "cpu_millis: -4")
            ),
            "pools[0].node.cpu_millis",
            "must be positive",
        ),
        (
            format!("pools:\n{}workloads:\n{wl}", pool("fargate", 1000, 1, "")),
            "pools[0].autoscaler",
            "unknown autoscaler \"fargate\"",
        ),
        (
            format!(
                "pools:\n{}workloads:\n{}",
                pool("karpenter", 1000, 1, ""),
                wl.replace("column: count", "column: requests")
            ),
            "workloads[0].load.column",
            "no column \"requests\"",
        ),
        (
            format!(
                "pools:\n{}workloads:\n{wl}",
                pool(
                    "karpenter",
                    1000,
                    1,
                    "    other_node_sizes: [{cpu_millis: 0, memory_mib: 10}]\n"
                )
            ),
            "pools[0].other_node_sizes[0].cpu_millis",
            "must be positive",
        ),
        (format!("workloads:\n{wl}"), "pools", "at least one pool"),
        (
            format!(
                "pools:\n{}workloads:\n{}",
                pool("karpenter", 1000, 1, ""),
                wl.replace("target_utilization: 1", "target_utilization: 7")
            ),
            "workloads[0].hpa.target_utilization",
            "(0, 1]",
        ),
    ];
    for (spec, field, msg) in cases {
        let err = try_run(&spec, &csv(&[1, 2]), 0.01, 1).expect_err(field);
        assert!(
            err.contains(&format!("spec.yaml: {field}: ")),
            "{field}: {err}"
        );
        assert!(err.contains(msg), "{field}: {err}");
    }
    // Unknown fields and wrong types are refused by the parser, at their
    // line and column, named once.
    let err = try_run("pools: []\nworklods: []\n", &csv(&[1]), 0.01, 1).unwrap_err();
    assert!(
        err.contains("spec.yaml:2:1: unknown field `worklods`"),
        "{err}"
    );
    assert!(!err.contains(" at line "), "{err}");
}

#[test]
fn bad_load_csv_names_its_line() {
    let spec = growth_spec("karpenter");
    let cases = [
        (
            "time,count\n1000000,5\n1000060,lots\n",
            ":3:",
            "not a number",
        ),
        (
            "time,count\n1000000,5\nyesterday,4\n",
            ":3:",
            "not a timestamp",
        ),
        (
            "time,count\n1000060,5\n1000000,4\n",
            ":3:",
            "before the first row",
        ),
        ("time,count\n1000000,5\n1000060,-3\n", ":3:", "not a rate"),
        ("time,count\n1000000,5\n1000060,3,9\n", ":3:", "fields"),
        ("time,count\n", ":1:", "no data rows"),
    ];
    for (text, line, msg) in cases {
        let err = try_run(&spec, text, 0.01, 1).expect_err(text);
        assert!(
            err.contains("load.csv") && err.contains(line) && err.contains(msg),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn load_csv_forms() {
    // ISO timestamps without an offset are UTC; a missing minute is zero;
    // rows inside one minute add up.
    let text = "minute,count,other\n1995-07-01 00:00:00,4,1\n1995-07-01 00:00:30,1,0\n1995-07-01 00:02:00,7,\n";
    let l = Load::from_reader(text.as_bytes(), "l.csv", LoadLayout::Long, None).expect("parses");
    assert_eq!(l.start, 804_556_800.0);
    assert_eq!(l.columns, vec!["count", "other"]);
    assert_eq!(
        (l.rate(0, 0), l.rate(0, 1), l.rate(0, 2), l.rate(1, 2)),
        (5.0, 0.0, 7.0, 0.0)
    );
    let wide = "HashFunction,HashApp,minute_1,minute_2,minute_3\nf1,a,1,0,3\nf2,b,0,9,\n";
    let l =
        Load::from_reader(wide.as_bytes(), "w.csv", LoadLayout::Wide, Some(50.0)).expect("parses");
    assert_eq!(l.columns, vec!["f1", "f2"]);
    assert_eq!(
        (l.minutes(), l.start, l.rate(1, 1), l.rate(0, 2)),
        (3, 50.0, 9.0, 3.0)
    );
}

#[test]
fn recorded_replicas_drive_the_cluster() {
    use pullahead::event::Workload;
    use pullahead::scenario::generate_from_replicas;
    let spec = format!(
        "pools:\n{}imported: {{pool: default, pod: {{cpu_millis: 400, memory_mib: 10}}}}\n",
        pool("karpenter", 1000, 1, "")
    );
    let spec = Spec::parse(&spec, "spec.yaml").expect("parses");
    spec.validate("spec.yaml").expect("valid");
    let w = |ts: f64, name: &str, replicas: u32| {
        Event::new(
            ts,
            Workload {
                workload: name.into(),
                kind: "Deployment".into(),
                images: vec!["docker.io/library/redis:6.2.4".into()],
                node_selector: Default::default(),
                tolerations: None,
                replicas: Some(replicas),
            },
        )
    };
    let input = vec![
        w(100.0, "dsb/a", 2),
        w(200.0, "dsb/a", 5),
        w(230.0, "dsb/b", 1),
        w(400.0, "dsb/a", 1),
    ];
    let opts = Options {
        seed: 1,
        hours: Some(0.1),
        start_hour: 0.0,
    };
    let (summary, bytes) =
        generate_from_replicas(&spec, Path::new("."), "spec.yaml", &input, &opts, |t0| {
            EventWriter::new(Vec::new(), "mem", &Header::new(t0, "test"))
        })
        .expect("runs");
    let evs: Vec<Event> = EventReader::new(&bytes[..], "mem")
        .collect::<Result<_, _>>()
        .expect("valid file");
    let reps: Vec<(f64, String, u32)> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::Workload(w) => Some((e.ts, w.workload.clone(), w.replicas?)),
            _ => None,
        })
        .collect();
    assert_eq!(
        reps,
        vec![
            (100.0, "dsb/a".into(), 2),
            (200.0, "dsb/a".into(), 5),
            (230.0, "dsb/b".into(), 1),
            (400.0, "dsb/a".into(), 1)
        ]
    );
    // Warm: one node holds the first two pods; at 200 three more need
    // two claims (two fit a 1000m node), and dsb/b joins the in-flight one.
    let ups: Vec<_> = evs
        .iter()
        .filter_map(|e| match &e.body {
            Body::ScaleUp(s) => Some((e.ts, s.from, s.to)),
            _ => None,
        })
        .collect();
    assert_eq!(ups, vec![(200.0, 1, 3)]);
    let nominated_b = evs.iter().any(|e| {
        matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Nominated
            && p.workload.as_deref() == Some("dsb/b") && e.ts == 230.0)
    });
    assert!(
        nominated_b,
        "the late workload is nominated to the claim in flight"
    );
    assert_eq!(summary.pods, 6);
    let deleted = evs
        .iter()
        .filter(
            |e| matches!(&e.body, Body::Pod(p) if p.phase == PodPhase::Deleted && e.ts == 400.0),
        )
        .count();
    assert_eq!(deleted, 4);
}
