//! Real components for integration tests: the Debian `docker-registry` and
//! `containerd`, each on loopback in its own temp dir, started per test and
//! stopped by PID on drop; plus small images built and pushed from Rust
//! (tar, gzip with stored blocks, plain HTTP uploads; no skopeo).
//!
//! Binaries are found through env vars with sane defaults
//! (`PULLAHEAD_REGISTRY_BIN`, `PULLAHEAD_CONTAINERD_BIN`, `PULLAHEAD_HTPASSWD_BIN`).
//! A missing binary fails the test with a message saying what to install.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The path of a required binary, or a panic that says how to get it.
pub fn require_bin(env: &str, default: &str, package: &str) -> PathBuf {
    let name = std::env::var(env).unwrap_or_else(|_| default.to_string());
    let p = PathBuf::from(&name);
    if p.is_absolute() && p.exists() {
        return p;
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
    ]) {
        let c = Path::new(dir).join(&name);
        if c.exists() {
            return c;
        }
    }
    panic!(
        "required binary `{name}` not found (set {env} or `apt-get install {package}`; .ci/test installs it)"
    );
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

fn wait_until(what: &str, log: &Path, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > timeout {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = log
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{what} not ready after {timeout:?}; log tail:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Whether this process's `/` is a mount point (not so in a chroot).
fn root_is_mount_point() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some("/")))
        .unwrap_or(true)
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SIGTERM by PID first so the daemon can clean up, then make sure.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

// ---------------------------------------------------------------- registry

/// A `docker-registry` on 127.0.0.1, optionally behind htpasswd auth.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    auth: Option<(String, String)>,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A registry that wants `user`/`password` (bcrypt htpasswd).
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Self {
        let bin = require_bin(
            "PULLAHEAD_REGISTRY_BIN",
            "docker-registry",
            "docker-registry",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth_yaml = String::new();
        if let Some((u, p)) = &auth {
            let htpasswd = require_bin("PULLAHEAD_HTPASSWD_BIN", "htpasswd", "apache2-utils");
            let out = Command::new(htpasswd)
                .args(["-Bbn", u, p])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp: {{addr: \"{addr}\", secret: test}}\n{auth_yaml}",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml).expect("write registry config");
        let log = dir.path().join("log");
        let mut reg = Registry {
            addr,
            auth,
            child: None,
            config,
            log,
            _dir: dir,
        };
        let _ = bin;
        reg.run();
        reg
    }

    fn run(&mut self) {
        let bin = require_bin(
            "PULLAHEAD_REGISTRY_BIN",
            "docker-registry",
            "docker-registry",
        );
        let log = std::fs::File::create(&self.log).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&self.config)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let addr = self.addr.clone();
        wait_until(
            "docker-registry",
            &self.log,
            Duration::from_secs(10),
            || {
                matches!(
                    http(&addr, "GET", "/v2/", &[], &[], None),
                    Ok((200 | 401, _, _))
                )
            },
        );
    }

    /// Stops the registry (its data stays).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts a stopped registry again, on the same address and data.
    pub fn resume(&mut self) {
        self.run();
    }

    fn basic(&self) -> Option<String> {
        use base64::Engine;
        self.auth.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
    }

    /// Uploads one blob; returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let auth = self.basic();
        let (code, headers, body) = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            &[],
            auth.as_deref(),
        )
        .expect("start upload");
        assert_eq!(
            code,
            202,
            "start upload: {}",
            String::from_utf8_lossy(&body)
        );
        let loc = header(&headers, "location").expect("upload Location");
        let path = loc
            .split_once("://")
            .map(|(_, r)| &r[r.find('/').unwrap_or(r.len())..])
            .unwrap_or(&loc)
            .to_string();
        let sep = if path.contains('?') { '&' } else { '?' };
        let (code, _, body) = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[("Content-Type", "application/octet-stream")],
            data,
            auth.as_deref(),
        )
        .expect("put blob");
        assert_eq!(code, 201, "put blob: {}", String::from_utf8_lossy(&body));
        digest
    }

    /// Uploads a manifest or index under `reference` (a tag or digest).
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let (code, _, resp) = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            body,
            self.basic().as_deref(),
        )
        .expect("put manifest");
        assert_eq!(
            code,
            201,
            "put manifest: {}",
            String::from_utf8_lossy(&resp)
        );
        sha256(body)
    }

    /// Builds and pushes a one-layer linux image whose single file holds
    /// `payload` pseudo-random bytes (seeded by `repo:tag` and `arch`).
    /// Returns `(manifest digest, manifest size, config digest)`.
    pub fn push_image(&self, repo: &str, tag: &str, arch: &str, payload: usize) -> PushedImage {
        let data = pseudo_random(&format!("{repo}:{tag}:{arch}"), payload);
        let tar = tar_one_file("data.bin", &data);
        let diff_id = sha256(&tar);
        let layer = gzip_stored(&tar);
        let layer_digest = self.push_blob(repo, &layer);
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        );
        let config_digest = self.push_blob(repo, config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let digest = self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            manifest.as_bytes(),
        );
        PushedImage {
            reference: format!("{}/{repo}:{tag}", self.addr),
            digest,
            manifest_size: manifest.len() as u64,
            config_digest,
            layer_digest,
            layer_size: layer.len() as u64,
        }
    }

    /// Pushes one image per `arch` under a single index tag.
    pub fn push_index(
        &self,
        repo: &str,
        tag: &str,
        arches: &[&str],
        payload: usize,
    ) -> (String, Vec<PushedImage>) {
        let mut entries = Vec::new();
        let mut images = Vec::new();
        for arch in arches {
            let img = self.push_image(repo, &format!("{tag}-{arch}"), arch, payload);
            entries.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                img.digest, img.manifest_size
            ));
            images.push(img);
        }
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        );
        let digest = self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.index.v1+json",
            index.as_bytes(),
        );
        (digest, images)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`Registry::push_image`] pushed.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Manifest size in bytes.
    pub manifest_size: u64,
    /// Config digest (containerd's image id).
    pub config_digest: String,
    /// The layer's digest.
    pub layer_digest: String,
    /// The layer's compressed size.
    pub layer_size: u64,
}

// -------------------------------------------------------------- containerd

/// A `containerd` with its CRI plugin on a socket in a temp dir.
pub struct Containerd {
    /// The gRPC (CRI) socket.
    pub socket: PathBuf,
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd with the native snapshotter.
    pub fn start() -> Self {
        require_bin("PULLAHEAD_CONTAINERD_BIN", "containerd", "containerd");
        // Short path: Unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let d = dir.path();
        let socket = d.join("c.sock");
        std::fs::create_dir_all(d.join("certs.d")).expect("certs.d");
        let config = d.join("config.toml");
        let toml = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs","io.containerd.snapshotter.v1.btrfs","io.containerd.snapshotter.v1.devmapper","io.containerd.snapshotter.v1.zfs","io.containerd.tracing.processor.v1.otlp","io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "127.0.0.1:1/none:v1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{d}/certs.d"
"#,
            d = d.display()
        );
        std::fs::write(&config, toml).expect("write containerd config");
        let log = d.join("log");
        let mut c = Containerd {
            socket,
            child: None,
            config,
            log,
            dir,
        };
        c.run();
        c
    }

    fn run(&mut self) {
        let bin = require_bin("PULLAHEAD_CONTAINERD_BIN", "containerd", "containerd");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("containerd log");
        let mut cmd = if root_is_mount_point() {
            Command::new(bin)
        } else {
            // Inside a chroot, `/` is not a mount point, and runc (behind
            // `ctr run`) cannot make it a slave mount ("mount /, flags:
            // 0x84000: invalid argument"). containerd then gets its own
            // mount namespace whose root is a bind mount of this one: the
            // same files and sockets, at the same paths. The bind goes
            // inside a private tmpfs so that it never propagates back here,
            // where removing the temp dir would walk into it.
            let jail = self.dir.path().join("jail");
            std::fs::create_dir_all(&jail).expect("jail dir");
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "unchanged", "sh", "-c"])
                .arg(concat!(
                    r#"mount -t tmpfs jail "$0" && mount --make-private "$0" && "#,
                    r#"mkdir "$0/r" && mount --rbind / "$0/r" && cd "$0/r" && exec chroot . "$@""#
                ))
                .arg(&jail)
                .arg(bin);
            c
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let sock = self.socket.clone();
        wait_until("containerd", &self.log, Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// Tells containerd to use plain HTTP for `host` (it does so for
    /// loopback on its own; this makes it explicit).
    pub fn trust(&self, host: &str) {
        let d = self.dir.path().join("certs.d").join(host);
        std::fs::create_dir_all(&d).expect("hosts dir");
        std::fs::write(
            d.join("hosts.toml"),
            format!("server = \"http://{host}\"\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"),
        )
        .expect("hosts.toml");
    }

    /// Stops containerd (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again on the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------- bandwidth limiter

/// A TCP proxy on loopback that forwards to `upstream` at about
/// `bytes_per_sec` per connection, so that pulls take measurable time.
pub struct SlowProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SlowProxy {
    /// Starts the proxy on its own threads.
    pub fn start(upstream: &str, bytes_per_sec: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(&upstream) else {
                            continue;
                        };
                        let (d2, u2) = (
                            down.try_clone().expect("clone"),
                            up.try_clone().expect("clone"),
                        );
                        std::thread::spawn(move || pump(down, up, usize::MAX));
                        std::thread::spawn(move || pump(u2, d2, bytes_per_sec));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SlowProxy { addr, stop }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, rate: usize) {
    let chunk = if rate == usize::MAX {
        64 * 1024
    } else {
        (rate / 50).max(1024)
    };
    let mut buf = vec![0u8; chunk];
    loop {
        let t = Instant::now();
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if rate != usize::MAX {
                    let want = Duration::from_secs_f64(n as f64 / rate as f64);
                    if let Some(rest) = want.checked_sub(t.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

// ------------------------------------------------------------ image bytes

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Deterministic incompressible bytes.
pub fn pseudo_random(seed: &str, n: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut s = [0u8; 32];
    for (i, b) in Sha256::digest(seed.as_bytes()).iter().enumerate() {
        s[i] = *b;
    }
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(s);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A ustar archive holding one regular file.
pub fn tar_one_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// gzip with stored (uncompressed) deflate blocks: valid, simple, and the
/// payload is random anyway.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[][..]]
    } else {
        data.chunks(65535).collect()
    };
    let last = chunks.len() - 1;
    for (i, c) in chunks.iter().enumerate() {
        out.push(u8::from(i == last));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

// -------------------------------------------------------------- tiny HTTP

type Headers = Vec<(String, String)>;

/// One HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    auth: Option<&str>,
) -> std::io::Result<(u16, Headers, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers, resp[split + 4..].to_vec()))
}

fn header(h: &Headers, name: &str) -> Option<String> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

pub mod kube_mock;
