//! A CRI `runtime.v1.ImageService` client over containerd's Unix socket.
//!
//! The messages are written by hand with `prost` derives, carrying the field
//! numbers of `k8s.io/cri-api` `api.proto`, so that the crate builds on a
//! machine without `protoc`. Only the image calls pullahead needs are here.
//!
//! The tonic channel connects lazily and reconnects on the next call after
//! the socket drops (containerd restarted); a call that was in flight when
//! that happened fails with [`Error::CriUnavailable`], which callers retry.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;
use tower::service_fn;

/// Errors from CRI calls, classified so that callers can decide to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket file does not exist (containerd not installed, or a wrong path).
    #[error("containerd CRI socket {0} not found")]
    SocketNotFound(PathBuf),
    /// The runtime did not answer on its socket (stopped, restarting).
    #[error("CRI runtime on {socket} unavailable: {message}")]
    CriUnavailable {
        /// The socket.
        socket: PathBuf,
        /// What the transport said.
        message: String,
    },
    /// The registry has no such repository or tag.
    #[error("image {image} not found: {message}")]
    NotFound {
        /// The image reference.
        image: String,
        /// The runtime's message.
        message: String,
    },
    /// The registry refused the credentials (or none were given).
    #[error("unauthorised pulling {image}: {message}")]
    Unauthorized {
        /// The image reference.
        image: String,
        /// The runtime's message.
        message: String,
    },
    /// The registry could not be reached from the node.
    #[error("registry unreachable pulling {image}: {message}")]
    RegistryUnreachable {
        /// The image reference.
        image: String,
        /// The runtime's message.
        message: String,
    },
    /// The registry asked the node to slow down (HTTP 429).
    #[error("registry rate-limited pulling {image}: {message}")]
    RateLimited {
        /// The image reference.
        image: String,
        /// The runtime's message.
        message: String,
    },
    /// The call took longer than its timeout.
    #[error("CRI {op} timed out after {0:?}", .timeout)]
    Timeout {
        /// The RPC.
        op: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// Any other gRPC failure.
    #[error("CRI {op} failed ({code:?}): {message}")]
    Rpc {
        /// The RPC.
        op: &'static str,
        /// The gRPC status code.
        code: Code,
        /// The runtime's message.
        message: String,
    },
}

impl Error {
    /// Whether trying again later can help.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::CriUnavailable { .. }
            | Error::RegistryUnreachable { .. }
            | Error::RateLimited { .. }
            | Error::Timeout { .. } => true,
            Error::Rpc { code, .. } => matches!(
                code,
                Code::Unavailable | Code::Unknown | Code::ResourceExhausted | Code::Aborted
            ),
            Error::SocketNotFound(_) | Error::NotFound { .. } | Error::Unauthorized { .. } => false,
        }
    }
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `runtime.v1.ImageSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageSpec {
    /// Image reference.
    #[prost(string, tag = "1")]
    pub image: String,
    /// Unstructured annotations.
    #[prost(map = "string, string", tag = "2")]
    pub annotations: HashMap<String, String>,
    /// The reference as the user wrote it.
    #[prost(string, tag = "18")]
    pub user_specified_image: String,
    /// Runtime handler to pull for.
    #[prost(string, tag = "19")]
    pub runtime_handler: String,
}

/// `runtime.v1.AuthConfig`. Its `Debug` hides every secret.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct AuthConfig {
    /// User name.
    #[prost(string, tag = "1")]
    pub username: String,
    /// Password.
    #[prost(string, tag = "2")]
    pub password: String,
    /// base64(`user:password`), as in a dockerconfigjson `auth`.
    #[prost(string, tag = "3")]
    pub auth: String,
    /// Registry host the credentials are for.
    #[prost(string, tag = "4")]
    pub server_address: String,
    /// Identity token for the registry.
    #[prost(string, tag = "5")]
    pub identity_token: String,
    /// Bearer token for the registry.
    #[prost(string, tag = "6")]
    pub registry_token: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("server_address", &self.server_address)
            .field("username", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `runtime.v1.Int64Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Int64Value {
    /// The value.
    #[prost(int64, tag = "1")]
    pub value: i64,
}

/// `runtime.v1.UInt64Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UInt64Value {
    /// The value.
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `runtime.v1.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Image id (the config digest for containerd).
    #[prost(string, tag = "1")]
    pub id: String,
    /// Tags that point at it.
    #[prost(string, repeated, tag = "2")]
    pub repo_tags: Vec<String>,
    /// `repo@sha256:…` digests.
    #[prost(string, repeated, tag = "3")]
    pub repo_digests: Vec<String>,
    /// Size in bytes as the runtime counts it (containerd: the content it holds).
    #[prost(uint64, tag = "4")]
    pub size: u64,
    /// The image's user id, if numeric.
    #[prost(message, optional, tag = "5")]
    pub uid: Option<Int64Value>,
    /// The image's user name, if not numeric.
    #[prost(string, tag = "6")]
    pub username: String,
    /// The spec it was pulled with.
    #[prost(message, optional, tag = "7")]
    pub spec: Option<ImageSpec>,
    /// Exempt from garbage collection.
    #[prost(bool, tag = "8")]
    pub pinned: bool,
}

/// `runtime.v1.ImageFilter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFilter {
    /// Only this image.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

/// `runtime.v1.ListImagesRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListImagesRequest {
    /// Optional filter.
    #[prost(message, optional, tag = "1")]
    pub filter: Option<ImageFilter>,
}

/// `runtime.v1.ListImagesResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListImagesResponse {
    /// Every image the runtime holds.
    #[prost(message, repeated, tag = "1")]
    pub images: Vec<Image>,
}

/// `runtime.v1.ImageStatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusRequest {
    /// The image asked about.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    /// Ask for extra runtime detail.
    #[prost(bool, tag = "2")]
    pub verbose: bool,
}

/// `runtime.v1.ImageStatusResponse`; `image` is absent when not present.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageStatusResponse {
    /// The image, if present.
    #[prost(message, optional, tag = "1")]
    pub image: Option<Image>,
    /// Verbose detail.
    #[prost(map = "string, string", tag = "2")]
    pub info: HashMap<String, String>,
}

/// `runtime.v1.PullImageRequest` (without `sandbox_config`, tag 3, which
/// pullahead never sends).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageRequest {
    /// What to pull.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
    /// Registry credentials.
    #[prost(message, optional, tag = "2")]
    pub auth: Option<AuthConfig>,
}

/// `runtime.v1.PullImageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PullImageResponse {
    /// The image id or digest the runtime stored.
    #[prost(string, tag = "1")]
    pub image_ref: String,
}

/// `runtime.v1.RemoveImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveImageRequest {
    /// What to remove.
    #[prost(message, optional, tag = "1")]
    pub image: Option<ImageSpec>,
}

/// `runtime.v1.RemoveImageResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveImageResponse {}

/// `runtime.v1.ImageFsInfoRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFsInfoRequest {}

/// `runtime.v1.FilesystemIdentifier`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesystemIdentifier {
    /// Mount point.
    #[prost(string, tag = "1")]
    pub mountpoint: String,
}

/// `runtime.v1.FilesystemUsage`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesystemUsage {
    /// When measured, Unix nanoseconds.
    #[prost(int64, tag = "1")]
    pub timestamp: i64,
    /// Which filesystem.
    #[prost(message, optional, tag = "2")]
    pub fs_id: Option<FilesystemIdentifier>,
    /// Bytes used by images.
    #[prost(message, optional, tag = "3")]
    pub used_bytes: Option<UInt64Value>,
    /// Inodes used by images.
    #[prost(message, optional, tag = "4")]
    pub inodes_used: Option<UInt64Value>,
}

/// `runtime.v1.ImageFsInfoResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageFsInfoResponse {
    /// Filesystems holding images.
    #[prost(message, repeated, tag = "1")]
    pub image_filesystems: Vec<FilesystemUsage>,
    /// Filesystems holding container layers.
    #[prost(message, repeated, tag = "2")]
    pub container_filesystems: Vec<FilesystemUsage>,
}

/// `runtime.v1.VersionRequest` (RuntimeService), used as a liveness probe.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionRequest {
    /// The kubelet's CRI version.
    #[prost(string, tag = "1")]
    pub version: String,
}

/// `runtime.v1.VersionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VersionResponse {
    /// CRI API version.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Runtime name, e.g. `containerd`.
    #[prost(string, tag = "2")]
    pub runtime_name: String,
    /// Runtime version.
    #[prost(string, tag = "3")]
    pub runtime_version: String,
    /// Runtime's CRI API version.
    #[prost(string, tag = "4")]
    pub runtime_api_version: String,
}

/// What the pull loop needs from a container runtime. [`CriClient`] is the
/// real one; tests may supply their own.
pub trait ImageService: Send + Sync + 'static {
    /// Pulls `image`; returns the runtime's image reference.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> impl Future<Output = Result<String>> + Send;
    /// The image if the runtime holds it.
    fn image_status(&self, image: &str) -> impl Future<Output = Result<Option<Image>>> + Send;
}

/// A CRI client bound to one socket.
#[derive(Clone, Debug)]
pub struct CriClient {
    socket: PathBuf,
    channel: Channel,
    timeout: Duration,
}

/// How long a pull may take before it is abandoned (and retried).
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a quick call (status, list, version) may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);

impl CriClient {
    /// A client for the CRI socket at `socket`. Fails at once when the socket
    /// file is absent; otherwise connects on first use and again after the
    /// runtime restarts.
    pub fn new(socket: impl AsRef<Path>) -> Result<Self> {
        let socket = socket.as_ref().to_path_buf();
        if !socket.exists() {
            return Err(Error::SocketNotFound(socket));
        }
        let path = socket.clone();
        // The URI is never dialled: the connector below opens the socket.
        let endpoint =
            Endpoint::from_static("http://[::]:50051").connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_with_connector_lazy(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        Ok(Self {
            socket,
            channel,
            timeout: DEFAULT_PULL_TIMEOUT,
        })
    }

    /// Sets the pull timeout.
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The channel to the socket, for containerd's own services beside CRI.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    async fn call<Req, Resp>(
        &self,
        op: &'static str,
        path: &'static str,
        req: Req,
        timeout: Duration,
        image: &str,
    ) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        if !self.socket.exists() {
            // containerd removes its socket while it restarts; say so plainly.
            return Err(Error::CriUnavailable {
                socket: self.socket.clone(),
                message: "socket file is gone (runtime restarting?)".into(),
            });
        }
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let work = async {
            grpc.ready().await.map_err(|e| Error::CriUnavailable {
                socket: self.socket.clone(),
                message: e.to_string(),
            })?;
            let codec = ProstCodec::<Req, Resp>::default();
            grpc.unary(Request::new(req), PathAndQuery::from_static(path), codec)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| self.classify(op, image, s))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { op, timeout }),
        }
    }

    /// Maps a gRPC status to an error the pull loop can act on. containerd
    /// reports registry failures as `Unknown` with the HTTP story in the
    /// message, so the message is read too.
    fn classify(&self, op: &'static str, image: &str, s: Status) -> Error {
        let message = s.message().to_string();
        let lower = message.to_ascii_lowercase();
        let image = image.to_string();
        match s.code() {
            Code::Unavailable | Code::Cancelled if is_transport(&s) => Error::CriUnavailable {
                socket: self.socket.clone(),
                message,
            },
            Code::NotFound => Error::NotFound { image, message },
            Code::Unauthenticated | Code::PermissionDenied => {
                Error::Unauthorized { image, message }
            }
            _ if lower.contains("401 unauthorized")
                || lower.contains("403 forbidden")
                || lower.contains("authorization failed")
                || lower.contains("pull access denied") =>
            {
                Error::Unauthorized { image, message }
            }
            _ if lower.contains("429") || lower.contains("toomanyrequests") => {
                Error::RateLimited { image, message }
            }
            _ if lower.contains(": not found") => Error::NotFound { image, message },
            _ if lower.contains("connection refused")
                || lower.contains("no such host")
                || lower.contains("i/o timeout")
                || lower.contains("connection reset")
                || lower.contains("dial tcp") =>
            {
                Error::RegistryUnreachable { image, message }
            }
            code => Error::Rpc { op, code, message },
        }
    }

    /// `ImageService.ListImages`: every image the runtime holds.
    pub async fn list_images(&self) -> Result<Vec<Image>> {
        let resp: ListImagesResponse = self
            .call(
                "ListImages",
                "/runtime.v1.ImageService/ListImages",
                ListImagesRequest { filter: None },
                QUICK_TIMEOUT,
                "",
            )
            .await?;
        Ok(resp.images)
    }

    /// `ImageService.RemoveImage`.
    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let _: RemoveImageResponse = self
            .call(
                "RemoveImage",
                "/runtime.v1.ImageService/RemoveImage",
                RemoveImageRequest {
                    image: Some(spec(image)),
                },
                QUICK_TIMEOUT,
                image,
            )
            .await?;
        Ok(())
    }

    /// `ImageService.ImageFsInfo`: bytes used on the image filesystems.
    pub async fn image_fs_info(&self) -> Result<ImageFsInfoResponse> {
        self.call(
            "ImageFsInfo",
            "/runtime.v1.ImageService/ImageFsInfo",
            ImageFsInfoRequest {},
            QUICK_TIMEOUT,
            "",
        )
        .await
    }

    /// `RuntimeService.Version`: proves the runtime answers.
    pub async fn version(&self) -> Result<VersionResponse> {
        self.call(
            "Version",
            "/runtime.v1.RuntimeService/Version",
            VersionRequest {
                version: "v1".into(),
            },
            QUICK_TIMEOUT,
            "",
        )
        .await
    }
}

impl ImageService for CriClient {
    async fn pull_image(&self, image: &str, auth: Option<AuthConfig>) -> Result<String> {
        let req = PullImageRequest {
            image: Some(spec(image)),
            auth,
        };
        let resp: PullImageResponse = self
            .call(
                "PullImage",
                "/runtime.v1.ImageService/PullImage",
                req,
                self.timeout,
                image,
            )
            .await?;
        Ok(resp.image_ref)
    }

    async fn image_status(&self, image: &str) -> Result<Option<Image>> {
        let resp: ImageStatusResponse = self
            .call(
                "ImageStatus",
                "/runtime.v1.ImageService/ImageStatus",
                ImageStatusRequest {
                    image: Some(spec(image)),
                    verbose: false,
                },
                QUICK_TIMEOUT,
                image,
            )
            .await?;
        Ok(resp.image)
    }
}

fn spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.to_string(),
        ..ImageSpec::default()
    }
}

/// Whether a status came from the transport (socket closed, connect refused)
/// rather than from the runtime.
fn is_transport(s: &Status) -> bool {
    use std::error::Error as _;
    s.code() == Code::Unavailable || s.source().is_some() || s.message().contains("transport")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn wire_tags_match_cri_api() {
        // ImageSpec{image:"a"} = field 1, wire type 2, len 1, 'a'.
        let b = spec("a").encode_to_vec();
        assert_eq!(b, vec![0x0a, 1, b'a']);
        // PullImageRequest.auth is field 2; AuthConfig.server_address is 4.
        let req = PullImageRequest {
            image: None,
            auth: Some(AuthConfig {
                server_address: "r".into(),
                ..Default::default()
            }),
        };
        assert_eq!(req.encode_to_vec(), vec![0x12, 3, 0x22, 1, b'r']);
        // Image.size is field 4 varint; repo_digests field 3.
        let img = Image {
            size: 5,
            repo_digests: vec!["d".into()],
            ..Default::default()
        };
        assert_eq!(img.encode_to_vec(), vec![0x1a, 1, b'd', 0x20, 5]);
    }

    #[test]
    fn auth_debug_never_shows_secrets() {
        let a = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            auth: "YWxpY2U6aHVudGVyMg==".into(),
            server_address: "reg:5000".into(),
            ..Default::default()
        };
        let s = format!("{a:?}");
        assert!(s.contains("reg:5000"));
        for secret in ["alice", "hunter2", "YWxp"] {
            assert!(!s.contains(secret), "{s}");
        }
    }

    #[test]
    fn absent_socket_is_a_clear_error() {
        let e = CriClient::new("/nonexistent/containerd.sock").unwrap_err();
        assert_eq!(
            e.to_string(),
            "containerd CRI socket /nonexistent/containerd.sock not found"
        );
    }

    #[tokio::test]
    async fn registry_failures_are_classified_from_containerd_messages() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        std::fs::write(&sock, b"").unwrap();
        let c = CriClient::new(&sock).unwrap();
        let e = c.classify("PullImage", "i", Status::unknown(
            "failed to pull and unpack image \"127.0.0.1:5/a:1\": failed to resolve reference: failed to do request: Head \"http://127.0.0.1:5/v2/a/manifests/1\": dial tcp 127.0.0.1:5: connect: connection refused"));
        assert!(
            matches!(e, Error::RegistryUnreachable { .. }) && e.is_retryable(),
            "{e}"
        );
        let e = c.classify("PullImage", "i", Status::unknown(
            "failed to resolve reference \"r/a:1\": pulling from host r failed with status code [manifests 1]: 401 Unauthorized"));
        assert!(
            matches!(e, Error::Unauthorized { .. }) && !e.is_retryable(),
            "{e}"
        );
        let e = c.classify("PullImage", "i", Status::not_found("r/a:1: not found"));
        assert!(matches!(e, Error::NotFound { .. }) && !e.is_retryable());
        let e = c.classify(
            "PullImage",
            "i",
            Status::unknown("unexpected status code 429 Too Many Requests"),
        );
        assert!(matches!(e, Error::RateLimited { .. }) && e.is_retryable());
    }
}
