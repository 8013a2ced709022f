//! A real `kube::Client` built from a kubeconfig file, talking HTTP to the
//! fake API server: list and watch Nodes, and read a Lease. This is the path
//! `pullahead run` takes at start-up (the tower-test mock skips it), so it
//! catches TLS-provider and config-loading mistakes.

#[path = "ops_common/mod.rs"]
mod common;

use common::fake_api::{FakeApi, kubeconfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

#[tokio::test]
async fn a_client_from_a_kubeconfig_lists_and_watches() {
    let api = FakeApi::new();
    api.add_node(
        "ip-10-0-1-1.ec2.internal",
        "11111111-1111-4111-8111-111111111111",
    );
    api.add_node(
        "ip-10-0-1-2.ec2.internal",
        "22222222-2222-4222-8222-222222222222",
    );
    let addr = api.serve_http().await;
    let dir = tempfile::tempdir().unwrap();
    let path = kubeconfig(dir.path(), addr);

    // The same provider choice `run` makes before building a client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "pullahead");
    let client = kube::Client::try_from(config).unwrap();
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.33.1"
    );

    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.metadata.resource_version.as_deref(), Some("1042"));
    let names: Vec<_> = list
        .items
        .iter()
        .map(|n| n.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["ip-10-0-1-1.ec2.internal", "ip-10-0-1-2.ec2.internal"]
    );

    let mut stream = nodes
        .watch(&WatchParams::default(), "1042")
        .await
        .unwrap()
        .boxed();
    let mut added = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            WatchEvent::Added(n) => added.push(n.metadata.uid.unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        added,
        [
            "11111111-1111-4111-8111-111111111111",
            "22222222-2222-4222-8222-222222222222"
        ]
    );
    let requests = api.requests.lock().unwrap().clone();
    assert!(
        requests.contains(&"GET /api/v1/nodes".to_string()),
        "{requests:?}"
    );
}
