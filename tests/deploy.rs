//! The deployment checks of issue 7, as part of `cargo test`: helm lint, the
//! chart against the Kubernetes 1.33 schemas, committed manifests against a
//! fresh render, and promtool on the alert rules (check + unit tests).
//! The work is in `deploy/check.sh` so an operator can run it by hand.

#[path = "ops_common/mod.rs"]
mod common;

use std::process::Command;

#[test]
fn chart_manifests_and_alert_rules_pass_their_checks() {
    // Fail with an install hint when a tool is missing, never skip.
    common::tool(
        "PULLAHEAD_HELM",
        "/opt/pullahead-tools/helm/helm",
        ".ci/setup.d/30-helm.sh",
    );
    common::tool(
        "PULLAHEAD_KUBERNETES_VALIDATE",
        "/opt/pullahead-tools/venv/bin/kubernetes-validate",
        ".ci/setup.d/31-kubernetes-validate.sh",
    );
    common::promtool();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/check.sh"))
        .output()
        .expect("run deploy/check.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/check.sh failed:\n{text}");
    // Each stage ran, rather than the script exiting early with 0.
    for stage in [
        "1 chart(s) linted, 0 chart(s) failed",
        "passed for resource daemonset/pullahead-agent against version 1.33",
        "passed for resource deployment/pullahead-controller against version 1.33",
        "passed for resource customresourcedefinition/nodeprefetches.pullahead.io",
        "readiness gate ok",
        "SUCCESS: 8 rules found",
        "== deploy ok",
    ] {
        assert!(text.contains(stage), "missing {stage:?} in:\n{text}");
    }
    assert!(!text.contains("ERROR"), "{text}");
}
