//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fake_api;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.0 GET: returns (status, body). Enough for our own
/// endpoints, and it keeps the tests free of an HTTP client dependency.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("write request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read response");
    let text = String::from_utf8(buf).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body split");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, body.to_string())
}

/// A tool the tests need, from `$var` or `default`. Fails the test with a
/// clear message when it is missing: tests never skip silently.
pub fn tool(var: &str, default: &str, hint: &str) -> PathBuf {
    let p = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_string()));
    let found = if p.components().count() > 1 {
        p.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(&p).is_file()))
            .unwrap_or(false)
    };
    assert!(
        found,
        "{} not found (set {var}); install it with {hint}",
        p.display()
    );
    p
}

/// promtool, from the Debian `prometheus` package.
pub fn promtool() -> PathBuf {
    tool(
        "PULLAHEAD_PROMTOOL",
        "promtool",
        "`apt-get install prometheus` (listed in .ci/apt-packages.txt)",
    )
}
