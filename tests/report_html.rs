//! `pullahead replay --report OUT.html` on a bundled trace, loaded in real
//! headless Chromium: the page is self-contained, its charts are in the DOM,
//! and the screenshot shows them drawn in every policy's colour.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pullahead");
const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/replay-data/nasa-karpenter-24h.jsonl"
);
const POLICIES: [&str; 5] = ["none", "static", "popular", "predictive", "oracle"];
/// The charts of one trace: distribution, over time, bytes, capture.
const CHARTS: usize = 4;

fn chromium() -> std::path::PathBuf {
    let name = std::env::var("PULLAHEAD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin"])
    {
        let p = Path::new(dir).join(&name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required binary `{name}` not found (set PULLAHEAD_CHROMIUM or `apt-get install chromium`; .ci/test installs it)"
    );
}

/// Runs headless Chromium on `page` with `extra` flags, killed after a
/// minute; a fresh profile each time.
fn headless(page: &Path, profile: &Path, extra: &[String]) -> Output {
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read its output while it runs (a DOM larger than the pipe would
    // block it), and kill it if it hangs.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("chromium's output"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("chromium did not finish within a minute");
        }
    }
}

/// Every value of `attr="…"` (or with single quotes) in `html`.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    for quote in ['"', '\''] {
        let open = format!("{attr}={quote}");
        let mut rest = html;
        while let Some(at) = rest.find(&open) {
            rest = &rest[at + open.len()..];
            let end = rest.find(quote).unwrap_or(rest.len());
            out.push(&rest[..end]);
        }
    }
    out
}

/// Pixels of `png` exactly of colour `rgb`.
fn count_colour(png: &[u8], rgb: [u8; 3]) -> (usize, usize) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "a colour screenshot, not {:?}",
        info.color_type
    );
    let pixels = &buf[..info.buffer_size()];
    let count = pixels
        .chunks_exact(channels)
        .filter(|p| p[..3] == rgb)
        .count();
    (count, pixels.len() / channels)
}

#[test]
fn the_replay_report_is_one_page_whose_charts_render_in_chromium() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("r.html");
    let out = Command::new(BIN)
        .args(["replay", TRACE, "--report"])
        .arg(&page)
        .output()
        .expect("run pullahead");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).expect("the report");

    // Self-contained: nothing to fetch, no scripts.
    for attr in ["src", "href", "xlink:href"] {
        for v in attribute_values(&html, attr) {
            let v = v.trim().to_ascii_lowercase();
            assert!(
                !(v.starts_with("http:") || v.starts_with("https:") || v.starts_with("//")),
                "{attr}={v:?} fetches from the network"
            );
        }
    }
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("<link"), "no linked resources");
    assert!(!html.contains("url("), "no fetched styles or fonts");
    assert!(!html.contains("@import"), "no imported styles");
    assert_eq!(
        html.matches("<svg").count(),
        CHARTS,
        "four inline SVG charts"
    );
    assert!(
        html.contains("oracle (upper bound)"),
        "the oracle is the bound"
    );
    for p in POLICIES {
        assert!(
            html.contains(&format!("<td>{p}")),
            "{p} in the summary table"
        );
    }

    // The browser builds the charts: every SVG is in the DOM with its lines.
    let dom = headless(
        &page,
        &dir.path().join("profile-dom"),
        &["--dump-dom".to_string()],
    );
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(dom.matches("<svg").count(), CHARTS, "the SVGs in the DOM");
    // Two line charts of five policies each, plus their legends' samples.
    assert!(
        dom.matches("<polyline").count() >= 2 * POLICIES.len(),
        "the line series in the DOM"
    );
    assert!(
        dom.matches("<rect").count() >= 3 * POLICIES.len(),
        "the bars"
    );

    // And draws them: each policy's colour is on the screenshot, which only
    // the charts use (the tables are black on white).
    let shot = dir.path().join("shot.png");
    let taken = headless(
        &page,
        &dir.path().join("profile-shot"),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2600".to_string(),
        ],
    );
    assert!(
        taken.status.success(),
        "{}",
        String::from_utf8_lossy(&taken.stderr)
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    if let Ok(keep) = std::env::var("PULLAHEAD_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep the screenshot");
    }
    for (policy, rgb) in [
        ("static", [230, 120, 20]),
        ("popular", [40, 100, 220]),
        ("predictive", [20, 160, 60]),
        ("none", [128, 128, 128]),
        ("wasted bytes", [200, 30, 30]),
    ] {
        let (n, total) = count_colour(&png, rgb);
        assert!(
            n >= 200,
            "{policy}'s colour {rgb:?} on {n} of {total} pixels: its charts did not render"
        );
    }
}
