//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod agent;
pub mod fake_api;
pub mod objects;
pub mod script;
pub mod store;
#[allow(clippy::duplicate_mod)] // `support` includes it too
pub mod tool;

#[allow(unused_imports)]
pub use tool::{promtool, require_bin, tool};

use std::net::SocketAddr;

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
