//! `registry::Resolver` (oci-client) against a real docker-registry.

mod support;

use std::time::Duration;

use pullahead::registry::{DockerConfig, Error, Platform, Resolver, ResolverConfig};
use support::Registry;

fn resolver(reg: &Registry, ttl: Duration, creds: DockerConfig) -> Resolver {
    Resolver::new(
        ResolverConfig {
            insecure: vec![reg.addr.clone()],
            ttl,
            per_registry: 2,
        },
        creds,
    )
}

#[tokio::test]
async fn tag_resolves_to_digest_size_and_layers_as_an_image_event() {
    let reg = Registry::start();
    let img = reg.push_image("lib/app", "v1", "amd64", 10_000);
    let r = resolver(&reg, Duration::from_secs(60), DockerConfig::default());
    let got = r
        .resolve(&img.reference, &Platform::linux("amd64"))
        .await
        .expect("resolve");
    assert_eq!(got.digest, img.digest);
    assert_eq!(got.manifest_digest, img.digest);
    assert_eq!(got.bytes, img.layer_size);
    let ev = got.to_event();
    assert_eq!(ev.image, img.reference);
    assert_eq!(
        ev.layers.as_deref().map(|l| l[0].digest.clone()),
        Some(img.layer_digest.clone())
    );
}

#[tokio::test]
async fn an_index_resolves_to_the_node_platform() {
    let reg = Registry::start();
    let (index_digest, images) = reg.push_index("multi/app", "v2", &["amd64", "arm64"], 2048);
    let reference = format!("{}/multi/app:v2", reg.addr);
    let r = resolver(&reg, Duration::from_secs(60), DockerConfig::default());
    for (arch, img) in [("amd64", &images[0]), ("arm64", &images[1])] {
        let got = r
            .resolve(&reference, &Platform::linux(arch))
            .await
            .expect("resolve");
        assert_eq!(got.digest, index_digest, "the tag points at the index");
        assert_eq!(
            got.manifest_digest, img.digest,
            "{arch} picks its own manifest"
        );
        assert_eq!(got.layers[0].digest, img.layer_digest);
    }
    let e = r
        .resolve(&reference, &Platform::linux("s390x"))
        .await
        .expect_err("no s390x");
    assert!(matches!(e, Error::NoPlatform { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        format!("image {reference} has no manifest for linux/s390x")
    );
}

#[tokio::test]
async fn not_found_and_unreachable_are_told_apart_and_the_cache_holds_for_its_ttl() {
    let mut reg = Registry::start();
    let img = reg.push_image("lib/cached", "v1", "amd64", 1000);
    let cached = resolver(&reg, Duration::from_secs(60), DockerConfig::default());
    let uncached = resolver(&reg, Duration::ZERO, DockerConfig::default());
    let e = cached
        .resolve(
            &format!("{}/lib/cached:nope", reg.addr),
            &Platform::linux("amd64"),
        )
        .await
        .expect_err("missing tag");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    cached
        .resolve(&img.reference, &Platform::linux("amd64"))
        .await
        .expect("first look-up");
    uncached
        .resolve(&img.reference, &Platform::linux("amd64"))
        .await
        .expect("first look-up");
    reg.stop();
    cached
        .resolve(&img.reference, &Platform::linux("amd64"))
        .await
        .expect("served from the cache");
    let e = uncached
        .resolve(&img.reference, &Platform::linux("amd64"))
        .await
        .expect_err("registry down");
    assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    assert!(e.to_string().starts_with("registry unreachable for"), "{e}");
}

#[tokio::test]
async fn htpasswd_registry_wants_the_right_credentials() {
    let reg = Registry::start_with_auth("reader", "correct-horse");
    let img = reg.push_image("private/app", "v1", "amd64", 1000);
    let cfg = |pw: &str| {
        DockerConfig::parse(
            format!(
                r#"{{"auths":{{"{}":{{"username":"reader","password":"{pw}"}}}}}}"#,
                reg.addr
            )
            .as_bytes(),
            "test",
        )
        .expect("parse")
    };
    let ok = resolver(&reg, Duration::ZERO, cfg("correct-horse"));
    assert_eq!(
        ok.resolve(&img.reference, &Platform::linux("amd64"))
            .await
            .expect("right creds")
            .digest,
        img.digest
    );
    for creds in [cfg("wrong"), DockerConfig::default()] {
        let e = resolver(&reg, Duration::ZERO, creds)
            .resolve(&img.reference, &Platform::linux("amd64"))
            .await
            .expect_err("refused");
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
        assert!(!e.to_string().contains("wrong"));
    }
}
