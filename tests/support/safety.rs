//! Parts for the safety tests: a small tmpfs (unmounted on drop) and an
//! HTTP proxy in front of the registry that counts pulls in flight per
//! repository and can answer `429 Too Many Requests` with `Retry-After`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::require_bin;

/// A tmpfs of a given size mounted on a fresh directory; unmounted (lazily,
/// so a busy mount cannot leak) when dropped, even after a failed assert.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size` (e.g. `320m`) on a new directory. Needs root.
    pub fn mount(size: &str) -> Self {
        let mount = require_bin("PULLAHEAD_MOUNT_BIN", "mount", "mount");
        let dir = tempfile::Builder::new()
            .prefix("pa-tmpfs")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let out = Command::new(mount)
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = require_bin("PULLAHEAD_UMOUNT_BIN", "umount", "mount");
        let ok = Command::new(&umount)
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new(umount).arg("-l").arg(&self.path).status();
        }
    }
}

/// Whether `path` is a mount point now (for the test's own check).
pub fn is_mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&path.display().to_string()))
}

#[derive(Default)]
struct Counts {
    /// Requests in flight per repository.
    active: HashMap<String, usize>,
    /// Most repositories with a request in flight at once.
    peak: usize,
    /// Requests answered 429.
    throttled: usize,
    /// Requests forwarded.
    forwarded: usize,
}

/// An HTTP/1.1 proxy to `upstream` that forces one request per connection
/// and so sees each request's start and end. A pull of one repository is in
/// flight while any of its requests is; the proxy keeps the peak number of
/// repositories in flight at once.
pub struct CountingProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    counts: Arc<Mutex<Counts>>,
    throttle_until: Arc<Mutex<Option<Instant>>>,
    retry_after: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn repo_of(path: &str) -> String {
    // /v2/<repo>/(manifests|blobs)/<ref>
    let p = path.trim_start_matches("/v2/");
    for sep in ["/manifests/", "/blobs/"] {
        if let Some(i) = p.find(sep) {
            return p[..i].to_string();
        }
    }
    p.to_string()
}

impl CountingProxy {
    /// Starts the proxy on its own threads.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let p = CountingProxy {
            addr,
            counts: Arc::default(),
            throttle_until: Arc::default(),
            retry_after: Arc::new(AtomicUsize::new(1)),
            stop: Arc::default(),
        };
        let (counts, until, retry, stop) = (
            p.counts.clone(),
            p.throttle_until.clone(),
            p.retry_after.clone(),
            p.stop.clone(),
        );
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let (counts, until, retry, upstream) = (
                            counts.clone(),
                            until.clone(),
                            retry.clone(),
                            upstream.clone(),
                        );
                        std::thread::spawn(move || {
                            serve(down, &upstream, &counts, &until, &retry);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        p
    }

    /// Answers every request with 429 and `Retry-After: secs` for `window`.
    pub fn throttle(&self, window: Duration, secs: usize) {
        self.retry_after.store(secs, Ordering::Relaxed);
        *self.throttle_until.lock().unwrap() = Some(Instant::now() + window);
    }

    /// (peak repositories in flight, requests answered 429, requests forwarded).
    pub fn counts(&self) -> (usize, usize, usize) {
        let c = self.counts.lock().unwrap();
        (c.peak, c.throttled, c.forwarded)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut down: TcpStream,
    upstream: &str,
    counts: &Mutex<Counts>,
    until: &Mutex<Option<Instant>>,
    retry: &AtomicUsize,
) {
    let _ = down.set_nonblocking(false);
    let _ = down.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match down.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    if until.lock().unwrap().is_some_and(|u| Instant::now() < u) {
        counts.lock().unwrap().throttled += 1;
        let r = format!(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            retry.load(Ordering::Relaxed)
        );
        let _ = down.write_all(r.as_bytes());
        return;
    }
    let mut fwd = format!("{request_line}\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            fwd.push_str(l);
            fwd.push_str("\r\n");
        }
    }
    fwd.push_str("Connection: close\r\n\r\n");
    let repo = repo_of(&path);
    {
        let mut c = counts.lock().unwrap();
        c.forwarded += 1;
        *c.active.entry(repo.clone()).or_default() += 1;
        let now = c.active.values().filter(|n| **n > 0).count();
        c.peak = c.peak.max(now);
    }
    if let Ok(mut up) = TcpStream::connect(upstream)
        && up.write_all(fwd.as_bytes()).is_ok()
    {
        // Requests the registry gets from pulls carry no body.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match up.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if down.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
    let mut c = counts.lock().unwrap();
    if let Some(n) = c.active.get_mut(&repo) {
        *n -= 1;
    }
}
