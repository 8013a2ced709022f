//! The shipped image itself: `deploy/image/build.sh` writes an OCI layout,
//! skopeo pushes it to a real docker-registry on loopback, a real containerd
//! pulls it, and `ctr run --read-only` runs it as the image's own user. A
//! library missing from the image, a path only root may write, or a wrong
//! entrypoint or user fails here.
//!
//! The binary is `$PULLAHEAD_BINARY` when set (e.g. `target/dist/pullahead`),
//! else this build's own, stripped of its debug info first: the same code
//! and the same shared libraries as the `dist` binary, without a second full
//! build of every dependency in CI.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{Containerd, Registry, require_bin};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The binary the image ships (see the module doc).
fn binary(dir: &Path) -> PathBuf {
    if let Some(b) = std::env::var_os("PULLAHEAD_BINARY").filter(|b| !b.is_empty()) {
        return PathBuf::from(b);
    }
    let strip = require_bin("PULLAHEAD_STRIP_BIN", "strip", "binutils");
    let out = dir.join("pullahead");
    let run = Command::new(strip)
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(env!("CARGO_BIN_EXE_pullahead"))
        .output()
        .expect("run strip");
    assert!(run.status.success(), "strip failed: {}", text(&run));
    out
}

/// Runs `deploy/image/build.sh out` with `bin`; returns its report.
fn build(bin: &Path, out: &Path) -> String {
    let run = Command::new("bash")
        .arg(repo_root().join("deploy/image/build.sh"))
        .arg(out)
        .env("PULLAHEAD_BINARY", bin)
        .output()
        .expect("run build.sh");
    assert!(run.status.success(), "build.sh failed: {}", text(&run));
    String::from_utf8_lossy(&run.stderr).into_owned()
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

/// What `ldd` says `bin` loads: each library's path and the loader's.
fn ldd_paths(bin: &Path) -> BTreeSet<String> {
    let ldd = require_bin("PULLAHEAD_LDD_BIN", "ldd", "libc-bin");
    let out = Command::new(ldd).arg(bin).output().expect("run ldd");
    assert!(out.status.success(), "ldd failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect()
}

/// `ctr run --rm --read-only` of `image` with the image's own user and
/// environment; `mounts` are `type=bind,…` specs.
fn ctr_run(
    ctrd: &Containerd,
    work: &Path,
    image: &str,
    mounts: &[String],
    args: &[&str],
) -> Output {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let ctr = require_bin("PULLAHEAD_CTR_BIN", "ctr", "containerd");
    let id = format!(
        "pullahead-image-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let mut cmd = Command::new(ctr);
    cmd.arg("--address")
        .arg(&ctrd.socket)
        .args([
            "-n",
            "k8s.io",
            "run",
            "--rm",
            "--read-only",
            "--snapshotter",
            "native",
        ])
        // Keep runc's state and the stdio fifos in this test's own folder,
        // not in the machine-wide /run/containerd.
        .arg("--fifo-dir")
        .arg(work.join("fifo"))
        .arg("--runc-root")
        .arg(work.join("runc"));
    for m in mounts {
        cmd.arg("--mount").arg(m);
    }
    cmd.arg(image).arg(id).args(args);
    cmd.output().expect("run ctr")
}

#[test]
fn build_sh_image_is_accepted_by_a_registry_and_runs_read_only_as_non_root_under_containerd() {
    let skopeo = require_bin("PULLAHEAD_SKOPEO_BIN", "skopeo", "skopeo");
    let ctr = require_bin("PULLAHEAD_CTR_BIN", "ctr", "containerd");
    let work = tempfile::Builder::new()
        .prefix("pullahead-image")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let w = work.path();
    let bin = binary(w);

    // The layout: its tag, its config and exactly the files it should hold.
    let layout = w.join("layout");
    let report = build(&bin, &layout);
    assert!(
        report.contains(&format!("image pullahead:{VERSION}")),
        "{report}"
    );
    let index = read_json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"], VERSION,
        "{index}"
    );
    let manifest_digest = entry["digest"]
        .as_str()
        .expect("manifest digest")
        .to_string();
    let manifest = read_json(&blob(&layout, &manifest_digest));
    let config = read_json(&blob(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/pullahead"])
    );
    assert_eq!(config["os"], "linux");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = blob(&layout, layers[0]["digest"].as_str().expect("layer digest"));
    let listing = Command::new("tar")
        .args(["--list", "--verbose", "--numeric-owner", "--gzip", "--file"])
        .arg(&layer)
        .output()
        .expect("run tar");
    assert!(listing.status.success(), "tar: {}", text(&listing));
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut files = BTreeSet::new();
    for line in listing.lines() {
        // mode owner/group size date time name
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() == 6, "unexpected tar line {line:?}");
        assert_eq!(
            f[1], "0/0",
            "every file is root's, read-only to the user: {line}"
        );
        assert_eq!(
            f[3], "1970-01-01",
            "mtime 0 for a reproducible layer: {line}"
        );
        assert!(!f[0].contains('s') && !f[0].starts_with('l'), "{line}");
        if f[0].starts_with('-') {
            files.insert(format!("/{}", f[5]));
        }
    }
    let mut want = ldd_paths(&bin);
    want.insert("/pullahead".to_string());
    want.insert(CA_BUNDLE.to_string());
    // The binary, what it links (ldd's list), the CA bundle: no shell, no
    // package manager, nothing else.
    assert_eq!(files, want, "image files vs binary + ldd + CA bundle");
    assert!(want.iter().any(|f| f.contains("ld-linux")), "{want:?}");

    // The same inputs give the same bytes.
    let again = w.join("again");
    build(&bin, &again);
    assert_eq!(
        std::fs::read(layout.join("index.json")).expect("index"),
        std::fs::read(again.join("index.json")).expect("index again"),
        "build.sh is not reproducible"
    );

    // A real registry accepts it, under the digest the layout names.
    let reg = Registry::start();
    let image = format!("{}/pullahead/pullahead:{VERSION}", reg.addr);
    let push = Command::new(&skopeo)
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{VERSION}", layout.display()))
        .arg(format!("docker://{image}"))
        .output()
        .expect("run skopeo");
    assert!(push.status.success(), "skopeo copy: {}", text(&push));
    let (code, headers, body) = support::http(
        &reg.addr,
        "GET",
        &format!("/v2/pullahead/pullahead/manifests/{VERSION}"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
        None,
    )
    .expect("GET manifest");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    let served = headers
        .iter()
        .find(|(k, _)| k == "docker-content-digest")
        .map(|(_, v)| v.as_str());
    assert_eq!(served, Some(manifest_digest.as_str()));

    // containerd pulls it from there.
    let ctrd = Containerd::start();
    ctrd.trust(&reg.addr);
    let pull = Command::new(&ctr)
        .arg("--address")
        .arg(&ctrd.socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "native",
        ])
        .arg(&image)
        .output()
        .expect("run ctr pull");
    assert!(pull.status.success(), "ctr pull: {}", text(&pull));

    // No arguments: the entrypoint is the binary, which asks for a command.
    let run = ctr_run(&ctrd, w, &image, &[], &[]);
    assert_eq!(run.status.code(), Some(2), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("Usage: pullahead <COMMAND>")
            || String::from_utf8_lossy(&run.stderr).contains("Usage: pullahead <COMMAND>"),
        "{}",
        text(&run)
    );

    let run = ctr_run(&ctrd, w, &image, &[], &["/pullahead", "--version"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("pullahead {VERSION}\n")
    );

    let run = ctr_run(&ctrd, w, &image, &[], &["/pullahead", "agent", "--help"]);
    assert!(run.status.success(), "{}", text(&run));
    let help = String::from_utf8_lossy(&run.stdout);
    assert!(help.contains("Run the node agent"), "{help}");
    assert!(help.contains("--node <NODE>"), "{help}");

    // Who it runs as: a file it makes in a world-writable mount is
    // 65532:65532's; a root-owned 0755 mount refuses it (root, which keeps
    // CAP_DAC_OVERRIDE under ctr, would get in); the root filesystem is
    // read-only.
    let open = w.join("open");
    let closed = w.join("closed");
    for (d, mode) in [(&open, 0o777), (&closed, 0o755)] {
        std::fs::create_dir(d).expect("mount dir");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let mounts = [
        format!(
            "type=bind,src={},dst=/open,options=rbind:rw",
            open.display()
        ),
        format!(
            "type=bind,src={},dst=/closed,options=rbind:rw",
            closed.display()
        ),
    ];
    let synth = |out: &str| {
        ctr_run(
            &ctrd,
            w,
            &image,
            &mounts,
            &[
                "/pullahead",
                "synth",
                "--events",
                "20",
                "--workloads",
                "2",
                "--images",
                "2",
                "--pools",
                "1",
                "--out",
                out,
            ],
        )
    };
    let run = synth("/open/trace.jsonl");
    assert!(run.status.success(), "{}", text(&run));
    let meta = std::fs::metadata(open.join("trace.jsonl")).expect("the trace it wrote");
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    assert!(meta.len() > 0);

    let run = synth("/closed/trace.jsonl");
    assert!(!run.status.success(), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("Permission denied"),
        "{}",
        text(&run)
    );
    assert!(!closed.join("trace.jsonl").exists());

    let run = synth("/trace.jsonl");
    assert!(!run.status.success(), "{}", text(&run));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("Read-only file system"),
        "{}",
        text(&run)
    );

    // The kind and minikube route of docs/operations.md: a docker archive
    // under the chart's default name, imported as `kind load image-archive`
    // does (`ctr images import` into k8s.io).
    let archive = w.join("pullahead.tar");
    let named = format!("ghcr.io/pullahead/pullahead:{VERSION}");
    let convert = Command::new(&skopeo)
        .arg("copy")
        .arg(format!("oci:{}:{VERSION}", layout.display()))
        .arg(format!("docker-archive:{}:{named}", archive.display()))
        .output()
        .expect("run skopeo");
    assert!(
        convert.status.success(),
        "skopeo to docker-archive: {}",
        text(&convert)
    );
    let import = Command::new(&ctr)
        .arg("--address")
        .arg(&ctrd.socket)
        .args([
            "-n",
            "k8s.io",
            "images",
            "import",
            "--digests",
            "--snapshotter",
            "native",
        ])
        .arg(&archive)
        .output()
        .expect("run ctr import");
    assert!(import.status.success(), "ctr import: {}", text(&import));
    let run = ctr_run(&ctrd, w, &named, &[], &["/pullahead", "--version"]);
    assert!(run.status.success(), "{}", text(&run));
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        format!("pullahead {VERSION}\n")
    );
}

/// The chart pulls the tag build.sh writes: the crate's version.
#[test]
fn chart_defaults_to_the_image_of_this_version() {
    let chart: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/helm/pullahead/Chart.yaml"))
            .expect("Chart.yaml"),
    )
    .expect("parse Chart.yaml");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(VERSION),
        "Chart.yaml appVersion vs Cargo.toml version"
    );
    let values: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/helm/pullahead/values.yaml"))
            .expect("values.yaml"),
    )
    .expect("parse values.yaml");
    let repository = values["image"]["repository"]
        .as_str()
        .expect("image.repository");
    assert_eq!(
        values["image"]["tag"].as_str(),
        Some(""),
        "image.tag defaults to appVersion"
    );
    let manifests = std::fs::read_to_string(repo_root().join("deploy/manifests/pullahead.yaml"))
        .expect("manifests");
    let want = format!("image: {repository}:{VERSION}");
    assert_eq!(
        manifests.matches(&want).count(),
        2,
        "controller and agent run {want}"
    );
}
