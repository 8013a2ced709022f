//! The committed CRD must be exactly what `pullahead crdgen` prints, so that
//! a change to the Rust types cannot ship without regenerating the chart.

use std::path::Path;
use std::process::Command;

const COMMITTED: &str = "deploy/helm/pullahead/crds/nodeprefetches.pullahead.io.yaml";

#[test]
fn committed_crd_matches_crdgen() {
    let out = Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .arg("crdgen")
        .output()
        .expect("run pullahead crdgen");
    assert!(
        out.status.success(),
        "crdgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("crdgen prints UTF-8");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run `pullahead crdgen > {COMMITTED}`",
            path.display()
        )
    });
    assert!(
        committed == generated,
        "{COMMITTED} differs from `pullahead crdgen`; regenerate it with `cargo run -- crdgen > {COMMITTED}`"
    );
    // And it is the library's rendering, not some other text.
    assert_eq!(
        generated,
        pullahead::dispatch::crd::crd_yaml().expect("render CRD")
    );
}
