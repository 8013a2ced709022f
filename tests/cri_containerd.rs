//! The CRI client and the pull loop against a real containerd and a real
//! docker-registry on loopback.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use pullahead::clock::SystemClock;
use pullahead::dispatch::crd::PullState;
use pullahead::dispatch::cri::{CriClient, Error, ImageService};
use pullahead::dispatch::puller::{Options, Order, Puller};
use pullahead::registry::DockerConfig;
use support::{Containerd, Registry, SlowProxy};

fn opts(parallel: usize) -> Options {
    Options {
        parallel,
        max_attempts: Some(3),
        retry_for: Duration::from_secs(600),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        runtime_wait: Duration::from_millis(30_000),
    }
}

fn puller(c: &Containerd, parallel: usize) -> (Arc<CriClient>, Puller<CriClient, SystemClock>) {
    let cri = Arc::new(CriClient::new(&c.socket).expect("CRI client"));
    (
        cri.clone(),
        Puller::new(cri, Arc::new(SystemClock), opts(parallel)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pulls_land_and_list_images_shows_them() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    ctrd.trust(&reg.addr);
    let imgs: Vec<_> = (0..4)
        .map(|i| reg.push_image(&format!("app/svc{i}"), "v1", "amd64", 64 * 1024))
        .collect();
    let (cri, p) = puller(&ctrd, 4);
    let v = cri.version().await.expect("CRI Version");
    assert_eq!(v.runtime_name, "containerd");

    let out = p
        .run(imgs.iter().map(|i| Order::new(&i.reference)).collect())
        .await;
    for o in &out {
        assert_eq!(o.state, PullState::Present, "{o:?}");
        assert!(o.bytes.unwrap_or(0) >= 64 * 1024, "size reported: {o:?}");
        assert!(!o.already_present);
    }
    let listed = cri.list_images().await.expect("ListImages");
    let tags: HashSet<_> = listed
        .iter()
        .flat_map(|i| i.repo_tags.iter().cloned())
        .collect();
    for i in &imgs {
        assert!(
            tags.contains(&i.reference),
            "{} missing from ListImages {tags:?}",
            i.reference
        );
    }
    let ids: HashSet<_> = listed.iter().map(|i| i.id.clone()).collect();
    assert!(
        ids.contains(&imgs[0].config_digest),
        "image id is the config digest"
    );

    // A second run finds them present and pulls nothing.
    let again = p.run(vec![Order::new(&imgs[0].reference)]).await;
    assert!(
        again[0].already_present && again[0].attempts == 0,
        "{again:?}"
    );

    // ImageFsInfo reports the snapshotter's usage; RemoveImage removes.
    let fs = cri.image_fs_info().await.expect("ImageFsInfo");
    assert!(!fs.image_filesystems.is_empty());
    cri.remove_image(&imgs[0].reference)
        .await
        .expect("RemoveImage");
    assert!(
        cri.image_status(&imgs[0].reference)
            .await
            .expect("ImageStatus")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_clearly_while_others_succeed() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let good = reg.push_image("app/good", "v1", "amd64", 4096);
    let missing = format!("{}/app/good:nope", reg.addr);
    let (_, p) = puller(&ctrd, 2);
    let out = p
        .run(vec![Order::new(&missing), Order::new(&good.reference)])
        .await;
    let m = out
        .iter()
        .find(|o| o.image == missing)
        .expect("missing outcome");
    assert_eq!(m.state, PullState::Failed);
    assert_eq!(m.attempts, 1, "not found is not retried");
    let msg = m.error.as_deref().unwrap_or_default();
    assert!(
        msg.starts_with(&format!("image {missing} not found")),
        "{msg}"
    );
    assert_eq!(
        out.iter()
            .find(|o| o.image == good.reference)
            .expect("good")
            .state,
        PullState::Present
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_is_retried_then_fails_cleanly() {
    let mut reg = Registry::start();
    let ctrd = Containerd::start();
    let img = reg.push_image("app/down", "v1", "amd64", 4096);
    reg.stop();
    let (cri, p) = puller(&ctrd, 1);
    let direct = cri
        .pull_image(&img.reference, None)
        .await
        .expect_err("registry is down");
    assert!(
        matches!(direct, Error::RegistryUnreachable { .. }),
        "{direct:?}"
    );
    assert!(
        direct
            .to_string()
            .starts_with("registry unreachable pulling"),
        "{direct}"
    );
    let t = std::time::Instant::now();
    let out = p.run(vec![Order::new(&img.reference)]).await;
    assert_eq!(out[0].state, PullState::Failed);
    assert_eq!(out[0].attempts, 3, "retried up to max_attempts: {out:?}");
    assert!(
        out[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("after 3 attempts")
    );
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "backed off between attempts"
    );
}

#[tokio::test]
async fn absent_socket_gives_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("containerd.sock");
    let e = CriClient::new(&sock).expect_err("no socket");
    assert_eq!(
        e.to_string(),
        format!("containerd CRI socket {} not found", sock.display())
    );
    // The CLI says the same and exits non-zero.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pullahead"))
        .args(["pull", "--cri-socket"])
        .arg(&sock)
        .arg("127.0.0.1:1/x:1")
        .output()
        .expect("run pullahead pull");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "containerd CRI socket {} not found",
            sock.display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_registry_takes_the_right_dockerconfigjson_only() {
    let reg = Registry::start_with_auth("puller", "s3cret-pw");
    let ctrd = Containerd::start();
    let img = reg.push_image("private/app", "v1", "amd64", 4096);
    let (cri, _) = puller(&ctrd, 1);

    let right = format!(
        r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
        reg.addr,
        b64("puller:s3cret-pw")
    );
    let wrong = format!(
        r#"{{"auths":{{"http://{}/":{{"username":"puller","password":"guess"}}}}}}"#,
        reg.addr
    );
    let wrong = DockerConfig::parse(wrong.as_bytes(), "wrong").expect("parse");
    let e = cri
        .pull_image(
            &img.reference,
            wrong.for_image(&img.reference).map(|c| c.cri_auth()),
        )
        .await
        .expect_err("wrong password");
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_retryable());
    assert!(
        !e.to_string().contains("guess"),
        "the password never shows: {e}"
    );
    let anon = cri
        .pull_image(&img.reference, None)
        .await
        .expect_err("no credentials");
    assert!(matches!(anon, Error::Unauthorized { .. }), "{anon:?}");

    let right = DockerConfig::parse(right.as_bytes(), "right").expect("parse");
    let auth = right
        .for_image(&img.reference)
        .expect("credentials match the host")
        .cri_auth();
    cri.pull_image(&img.reference, Some(auth))
        .await
        .expect("pull with the right credentials");
    assert!(
        cri.image_status(&img.reference)
            .await
            .expect("status")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_resolves_to_the_node_platform() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let (_index_digest, images) = reg.push_index("multi/app", "v1", &["arm64", "amd64"], 4096);
    let reference = format!("{}/multi/app:v1", reg.addr);
    let (cri, _) = puller(&ctrd, 1);
    cri.pull_image(&reference, None).await.expect("pull index");
    let st = cri
        .image_status(&reference)
        .await
        .expect("status")
        .expect("present");
    // The host (and so the node) is linux/amd64: containerd must unpack the amd64 entry.
    let amd64 = images
        .iter()
        .find(|i| i.reference.ends_with("-amd64"))
        .expect("amd64");
    assert_eq!(
        st.id, amd64.config_digest,
        "containerd picked the amd64 manifest"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_restart_mid_pull_reconnects_and_finishes() {
    let reg = Registry::start();
    let mut ctrd = Containerd::start();
    // 6 MiB through a 2 MiB/s link: the pull takes about 3 s.
    let proxy = SlowProxy::start(&reg.addr, 2 << 20);
    let img = reg.push_image("slow/app", "v1", "amd64", 6 << 20);
    let reference = img.reference.replace(&reg.addr, &proxy.addr);
    let (cri, p) = puller(&ctrd, 1);
    let run = tokio::spawn(async move { p.run(vec![Order::new(&reference)]).await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !run.is_finished(),
        "the pull must still be running when containerd stops"
    );
    // Keep the restarted daemon alive until the end of the test.
    let _ctrd = tokio::task::spawn_blocking(move || {
        ctrd.restart();
        ctrd
    })
    .await
    .expect("restart containerd");
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("pull finishes")
        .expect("task");
    assert_eq!(out[0].state, PullState::Present, "{out:?}");
    assert!(
        out[0].attempts >= 2,
        "the interrupted attempt was retried: {out:?}"
    );
    assert!(
        cri.image_status(&out[0].image)
            .await
            .expect("status after restart")
            .is_some()
    );
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_command_prints_one_json_line_per_image_and_fails_when_one_fails() {
    let reg = Registry::start();
    let ctrd = Containerd::start();
    let good = reg.push_image("cli/good", "v1", "amd64", 8192);
    let missing = format!("{}/cli/good:missing", reg.addr);
    let run = |args: Vec<String>| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pullahead"))
            .arg("pull")
            .arg("--cri-socket")
            .arg(&ctrd.socket)
            .args(args)
            .output()
            .expect("run pullahead pull")
    };
    let out = run(vec![
        "--json".into(),
        "--parallel".into(),
        "2".into(),
        good.reference.clone(),
        missing.clone(),
    ]);
    assert!(
        !out.status.success(),
        "one image failed, so the command fails"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2);
    let g = lines
        .iter()
        .find(|l| l["image"] == good.reference.as_str())
        .expect("good line");
    assert_eq!(g["state"], "present");
    assert!(g["bytes"].as_u64().unwrap_or(0) >= 8192);
    assert!(g["seconds"].as_f64().is_some());
    let m = lines
        .iter()
        .find(|l| l["image"] == missing.as_str())
        .expect("missing line");
    assert_eq!(m["state"], "failed");
    assert!(
        m["error"].as_str().unwrap_or("").contains("not found"),
        "{m}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 images failed"));

    // Text mode, image already present: success and a tab-separated line.
    let out = run(vec![good.reference.clone()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cols: Vec<&str> = text.trim_end().split('\t').collect();
    assert_eq!(
        (cols[0], cols[1], cols[4]),
        (good.reference.as_str(), "present", "already present")
    );
}
