//! Registry credentials: dockerconfigjson secrets ([`DockerConfig`]),
//! matched to an image's registry host and handed to the node's runtime
//! through [`Credentials::cri_auth`]. Nothing here logs or prints a
//! secret: the credential types hide them in `Debug`.
//!
//! Image sizes reach the planner as `image` events, from kubelet's `Pulled`
//! events live and in recordings alike, so `replay` sees what `run` saw
//! without asking a registry.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;

use crate::dispatch::cri::AuthConfig;

/// Errors from credential files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dockerconfigjson secret is not valid.
    #[error("{source_name}: invalid dockerconfigjson: {message}")]
    BadDockerConfig {
        /// Where it came from (file path or secret name).
        source_name: String,
        /// Why.
        message: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Installs the ring rustls provider once per process: with more than one
/// provider compiled in, rustls cannot choose on its own, so every client
/// builder calls this first. An already installed provider is fine.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// ------------------------------------------------------------ credentials

/// A user name and password for one registry. `Debug` hides both.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The CRI form, for `PullImage`. `server_address` stays empty: the
    /// credentials were already matched to the image's registry, and
    /// containerd drops credentials whose address does not parse as its host.
    pub fn cri_auth(&self) -> AuthConfig {
        AuthConfig {
            username: self.username.clone(),
            password: self.password.clone(),
            ..AuthConfig::default()
        }
    }
}

/// Credentials by registry host, from one or more dockerconfigjson secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    by_host: HashMap<String, Credentials>,
}

impl fmt::Debug for DockerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hosts: Vec<_> = self.by_host.keys().collect();
        hosts.sort();
        f.debug_struct("DockerConfig")
            .field("hosts", &hosts)
            .finish()
    }
}

impl DockerConfig {
    /// Parses a `.dockerconfigjson` (`{"auths":{HOST:{…}}}`) or a legacy
    /// `.dockercfg` (`{HOST:{…}}`). `source_name` names it in errors.
    pub fn parse(json: &[u8], source_name: &str) -> Result<Self> {
        let bad = |message: String| Error::BadDockerConfig {
            source_name: source_name.to_string(),
            message,
        };
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
        let auths = match v.get("auths") {
            Some(a) => a,
            None => &v,
        };
        let map = auths
            .as_object()
            .ok_or_else(|| bad("`auths` is not an object".into()))?;
        let mut by_host = HashMap::new();
        for (key, entry) in map {
            let get = |k: &str| entry.get(k).and_then(|x| x.as_str()).unwrap_or("");
            let (mut user, mut pass) = (get("username").to_string(), get("password").to_string());
            if user.is_empty() && !get("auth").is_empty() {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(get("auth"))
                    .map_err(|e| bad(format!("entry {key:?}: `auth` is not base64: {e}")))?;
                let s = String::from_utf8(raw)
                    .map_err(|_| bad(format!("entry {key:?}: `auth` is not UTF-8")))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| bad(format!("entry {key:?}: `auth` is not user:password")))?;
                (user, pass) = (u.to_string(), p.to_string());
            }
            if user.is_empty() && pass.is_empty() {
                continue;
            }
            by_host.insert(
                normalise_host(key),
                Credentials {
                    username: user,
                    password: pass,
                },
            );
        }
        Ok(Self { by_host })
    }

    /// Adds another secret's entries; later ones win for the same host.
    pub fn merge(&mut self, other: DockerConfig) {
        self.by_host.extend(other.by_host);
    }

    /// Hosts with credentials.
    pub fn hosts(&self) -> Vec<String> {
        let mut h: Vec<_> = self.by_host.keys().cloned().collect();
        h.sort();
        h
    }

    /// The credentials for `image`'s registry, if any.
    pub fn for_image(&self, image: &str) -> Option<&Credentials> {
        self.by_host.get(&registry_host(image))
    }
}

/// The registry host of an image reference, the way container runtimes
/// read it: the first path component if it looks like a host, else Docker Hub.
pub fn registry_host(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalise_host(first)
        }
        _ => "docker.io".to_string(),
    }
}

fn normalise_host(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    match k {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        other => other.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerconfigjson_forms_and_host_matching() {
        let json = br#"{"auths":{
            "https://index.docker.io/v1/":{"auth":"dTE6cDE="},
            "127.0.0.1:5000":{"username":"u2","password":"p2"},
            "https://ghcr.io":{"auth":"dTM6cDM6d2l0aDpjb2xvbnM="}}}"#;
        let c = DockerConfig::parse(json, "secret/x").unwrap();
        assert_eq!(c.for_image("nginx:1").unwrap().username, "u1");
        assert_eq!(c.for_image("library/nginx:1").unwrap().password, "p1");
        assert_eq!(c.for_image("127.0.0.1:5000/a/b:1").unwrap().username, "u2");
        assert_eq!(
            c.for_image("ghcr.io/o/r:1").unwrap().password,
            "p3:with:colons"
        );
        assert!(c.for_image("quay.io/o/r:1").is_none());
        assert_eq!(c.hosts(), ["127.0.0.1:5000", "docker.io", "ghcr.io"]);
        let legacy = DockerConfig::parse(br#"{"quay.io":{"auth":"YTpi"}}"#, "f").unwrap();
        assert_eq!(legacy.for_image("quay.io/x:1").unwrap().username, "a");
    }

    #[test]
    fn bad_dockerconfig_names_its_source_and_never_the_secret() {
        let e = DockerConfig::parse(
            br#"{"auths":{"r":{"auth":"not base64!"}}}"#,
            "/etc/pull/.dockerconfigjson",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/pull/.dockerconfigjson: invalid dockerconfigjson"),
            "{e}"
        );
        let e = DockerConfig::parse(b"{", "s").unwrap_err();
        assert!(e.to_string().contains("s: invalid"));
        let c = DockerConfig::parse(
            br#"{"auths":{"r.io":{"username":"alice","password":"hunter2"}}}"#,
            "s",
        )
        .unwrap();
        let dbg = format!(
            "{c:?} {:?} {:?}",
            c.for_image("r.io/x"),
            c.for_image("r.io/x").unwrap().cri_auth()
        );
        assert!(!dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
    }
}
