//! Connecting to the Kubernetes API: the kubeconfig or in-cluster
//! configuration, a TLS provider chosen explicitly, and a bounded first
//! contact so that a missing cluster is a quick, clear error instead of a
//! watcher retrying forever.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;

use super::{Error, Result};

/// Where the configuration comes from, for messages: the kubeconfig path(s)
/// from `$KUBECONFIG`, `~/.kube/config`, or the in-cluster service account.
pub fn describe_config_source() -> String {
    if let Some(k) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
        return format!(
            "kubeconfig {} (from $KUBECONFIG)",
            PathBuf::from(k).display()
        );
    }
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"));
    if let Some(h) = home.as_ref().filter(|h| h.exists()) {
        return format!("kubeconfig {}", h.display());
    }
    match std::env::var("KUBERNETES_SERVICE_HOST") {
        Ok(host) => format!(
            "in-cluster configuration (KUBERNETES_SERVICE_HOST={host}, service account token under /var/run/secrets/kubernetes.io/serviceaccount)"
        ),
        Err(_) => {
            let home = home.map_or_else(|| "~/.kube/config".into(), |h| h.display().to_string());
            format!(
                "no kubeconfig ($KUBECONFIG is unset and {home} does not exist) and no in-cluster configuration (KUBERNETES_SERVICE_HOST is unset)"
            )
        }
    }
}

/// Installs the `ring` rustls provider for the process. kube and other
/// clients in this binary compile in more than one provider, and rustls then
/// refuses to pick one on its own.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client from the inferred configuration and checks, within
/// `timeout`, that the API server answers.
pub async fn connect(timeout: Duration) -> Result<Client> {
    install_crypto_provider();
    let tried = describe_config_source();
    let config = tokio::time::timeout(timeout, kube::Config::infer())
        .await
        .map_err(|_| Error::Connect {
            tried: tried.clone(),
            url: None,
            msg: format!("reading the configuration took longer than {timeout:?}"),
        })?
        .map_err(|e| Error::Connect {
            tried: tried.clone(),
            url: None,
            msg: e.to_string(),
        })?;
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| Error::Connect {
        tried: tried.clone(),
        url: Some(url.clone()),
        msg: e.to_string(),
    })?;
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(%url, version = %v.git_version, config = %tried, "connected to the Kubernetes API");
            Ok(client)
        }
        Ok(Err(e)) => Err(Error::Connect {
            tried,
            url: Some(url),
            msg: e.to_string(),
        }),
        Err(_) => Err(Error::Connect {
            tried,
            url: Some(url),
            msg: format!("no answer within {timeout:?}"),
        }),
    }
}
