//! Registry look-ups through oci-client: tag to digest, the manifest for a
//! node's platform (resolving image indexes), compressed size and layers as
//! `image` events, imagePullSecrets credentials, a TTL cache and a
//! per-registry concurrency limit.
//!
//! Credentials come from dockerconfigjson secrets ([`DockerConfig`]); the
//! same credentials are handed to the node's runtime through
//! [`Credentials::cri_auth`]. Nothing here logs or prints a secret: the
//! credential types hide them in `Debug`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::Semaphore;

use crate::dispatch::cri::AuthConfig;
use crate::event;

/// Errors from registry look-ups and credential files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference does not parse.
    #[error("bad image reference {image:?}: {message}")]
    BadReference {
        /// The reference.
        image: String,
        /// Why.
        message: String,
    },
    /// No such repository, tag or digest.
    #[error("image {image} not found in its registry: {message}")]
    NotFound {
        /// The reference.
        image: String,
        /// The registry's words.
        message: String,
    },
    /// The registry refused the credentials (or wanted some).
    #[error("unauthorised for {image}: {message}")]
    Unauthorized {
        /// The reference.
        image: String,
        /// The registry's words.
        message: String,
    },
    /// HTTP 429 or TOOMANYREQUESTS.
    #[error("registry rate-limited the look-up of {image}: {message}")]
    RateLimited {
        /// The reference.
        image: String,
        /// The registry's words.
        message: String,
    },
    /// The registry could not be reached.
    #[error("registry unreachable for {image}: {message}")]
    Unreachable {
        /// The reference.
        image: String,
        /// The transport's words.
        message: String,
    },
    /// The image has no manifest for the platform asked for.
    #[error("image {image} has no manifest for {platform}")]
    NoPlatform {
        /// The reference.
        image: String,
        /// `os/arch`.
        platform: String,
    },
    /// Anything else the registry said.
    #[error("registry error for {image}: {message}")]
    Other {
        /// The reference.
        image: String,
        /// The error.
        message: String,
    },
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

/// Installs the ring rustls provider once per process. kube and oci-client
/// both link rustls; with more than one provider compiled in rustls cannot
/// choose on its own, so every client builder calls this first. An already
/// installed provider is fine.
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

    fn oci_auth(&self) -> RegistryAuth {
        RegistryAuth::Basic(self.username.clone(), self.password.clone())
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

// ---------------------------------------------------------------- resolver

/// A node's platform, from its `kubernetes.io/os` and `kubernetes.io/arch` labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub arch: String,
}

impl Platform {
    /// `linux/<arch>`.
    pub fn linux(arch: &str) -> Self {
        Self {
            os: "linux".into(),
            arch: arch.into(),
        }
    }

    /// From node labels; missing labels default to linux/amd64.
    pub fn from_labels(labels: &std::collections::BTreeMap<String, String>) -> Self {
        Self {
            os: labels
                .get("kubernetes.io/os")
                .cloned()
                .unwrap_or_else(|| "linux".into()),
            arch: labels
                .get("kubernetes.io/arch")
                .cloned()
                .unwrap_or_else(|| "amd64".into()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)
    }
}

/// What a look-up found.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// The reference asked about.
    pub image: String,
    /// Digest the tag points at (the index's, for a multi-arch image).
    pub digest: String,
    /// Digest of the platform's own manifest.
    pub manifest_digest: String,
    /// Platform resolved for.
    pub platform: Platform,
    /// Sum of the compressed layer sizes, in bytes.
    pub bytes: u64,
    /// Layers, in order.
    pub layers: Vec<event::Layer>,
}

impl Resolved {
    /// As an `image` event body.
    pub fn to_event(&self) -> event::Image {
        event::Image {
            image: self.image.clone(),
            bytes: self.bytes,
            layers: Some(self.layers.clone()),
        }
    }
}

/// How the resolver connects.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Registries reached over plain HTTP (host:port).
    pub insecure: Vec<String>,
    /// How long a look-up is reused.
    pub ttl: Duration,
    /// Look-ups in flight per registry host.
    pub per_registry: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            ttl: Duration::from_secs(300),
            per_registry: 4,
        }
    }
}

type CacheKey = (String, Platform);

/// Resolves references through oci-client with caching and limits.
pub struct Resolver {
    client: Client,
    creds: DockerConfig,
    cfg: ResolverConfig,
    cache: Mutex<HashMap<CacheKey, (Instant, Resolved)>>,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Resolver {
    /// A resolver using `creds` for the registries they name.
    pub fn new(cfg: ResolverConfig, creds: DockerConfig) -> Self {
        install_crypto_provider();
        let protocol = if cfg.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(cfg.insecure.clone())
        };
        let client = Client::new(ClientConfig {
            protocol,
            // Index resolution is done here, for the node's platform, not the host's.
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Self {
            client,
            creds,
            cfg,
            cache: Mutex::new(HashMap::new()),
            limits: Mutex::new(HashMap::new()),
        }
    }

    /// The digest, size and layers of `image` for `platform`, from the
    /// cache when a look-up younger than the TTL exists.
    pub async fn resolve(&self, image: &str, platform: &Platform) -> Result<Resolved> {
        let key = (image.to_string(), platform.clone());
        if let Some((at, r)) = self.lock_cache().get(&key)
            && at.elapsed() < self.cfg.ttl
        {
            return Ok(r.clone());
        }
        let reference: Reference =
            image
                .parse()
                .map_err(|e: oci_client::ParseError| Error::BadReference {
                    image: image.into(),
                    message: e.to_string(),
                })?;
        let host = reference.resolve_registry().to_string();
        let sem = self
            .limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host)
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_registry.max(1))))
            .clone();
        let _slot = sem.acquire_owned().await.map_err(|e| Error::Other {
            image: image.into(),
            message: e.to_string(),
        })?;
        let auth = self
            .creds
            .for_image(image)
            .map(Credentials::oci_auth)
            .unwrap_or(RegistryAuth::Anonymous);
        let err = |e| classify(image, e);
        let (manifest, digest) = self
            .client
            .pull_manifest(&reference, &auth)
            .await
            .map_err(err)?;
        let (manifest, manifest_digest) = match manifest {
            OciManifest::Image(m) => (m, digest.clone()),
            OciManifest::ImageIndex(index) => {
                let entry = index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform.as_ref().is_some_and(|p| {
                            p.os.to_string() == platform.os
                                && p.architecture.to_string() == platform.arch
                        })
                    })
                    .ok_or_else(|| Error::NoPlatform {
                        image: image.into(),
                        platform: platform.to_string(),
                    })?;
                let by_digest = reference.clone_with_digest(entry.digest.clone());
                match self
                    .client
                    .pull_manifest(&by_digest, &auth)
                    .await
                    .map_err(err)?
                {
                    (OciManifest::Image(m), d) => (m, d),
                    (OciManifest::ImageIndex(_), _) => {
                        return Err(Error::Other {
                            image: image.into(),
                            message: "index entry points at another index".into(),
                        });
                    }
                }
            }
        };
        let layers: Vec<event::Layer> = manifest
            .layers
            .iter()
            .map(|l| event::Layer {
                digest: l.digest.clone(),
                bytes: l.size.max(0) as u64,
            })
            .collect();
        let resolved = Resolved {
            image: image.to_string(),
            digest,
            manifest_digest,
            platform: platform.clone(),
            bytes: layers.iter().map(|l| l.bytes).sum(),
            layers,
        };
        self.lock_cache()
            .insert(key, (Instant::now(), resolved.clone()));
        Ok(resolved)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<CacheKey, (Instant, Resolved)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn classify(image: &str, e: OciDistributionError) -> Error {
    let image = image.to_string();
    let message = e.to_string();
    match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound { image, message },
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Error::Unauthorized { image, message },
        OciDistributionError::ServerError { code: 429, .. } => {
            Error::RateLimited { image, message }
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Error::Unauthorized { image, message },
        OciDistributionError::ServerError { code: 404, .. } => Error::NotFound { image, message },
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                Error::NotFound { image, message }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                Error::Unauthorized { image, message }
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                Error::RateLimited { image, message }
            } else {
                Error::Other { image, message }
            }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            Error::Unreachable {
                image,
                message: format!("{message}: {}", source_chain(r)),
            }
        }
        _ => Error::Other { image, message },
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
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

    #[test]
    fn platform_from_node_labels() {
        let labels = [("kubernetes.io/arch".to_string(), "arm64".to_string())].into();
        assert_eq!(Platform::from_labels(&labels), Platform::linux("arm64"));
        assert_eq!(Platform::linux("amd64").to_string(), "linux/amd64");
    }
}
