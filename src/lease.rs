//! Leader election on a `coordination.k8s.io/v1` Lease, so that only one
//! controller replica plans and writes.
//!
//! The protocol is the one client-go uses: read the Lease; if it is ours,
//! renew it; if it is free or its holder has not renewed within
//! `leaseDurationSeconds`, take it over; otherwise follow. Every write carries
//! the `resourceVersion` that was read, so two replicas racing for an expired
//! Lease cannot both win: the API server rejects the second write with 409.
//!
//! Expiry is judged from the Lease's `renewTime` against our [`Clock`], which
//! assumes replica clocks agree to well under the lease duration (NTP on the
//! nodes). Time comes through the clock so tests can move it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::metrics::{Health, LeaseStatus, Metrics};

/// What can go wrong while electing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a Lease call.
    #[error("{op} Lease {namespace}/{name}: {source}")]
    Api {
        /// What was being done (`get`, `create`, `update`).
        op: &'static str,
        /// The Lease namespace.
        namespace: String,
        /// The Lease name.
        name: String,
        /// The client error.
        source: Box<kube::Error>,
    },
    /// The clock gave a time that is not a valid timestamp.
    #[error("clock time {0} is out of range")]
    Clock(f64),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which Lease to take and how.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity, usually the pod name.
    pub identity: String,
    /// How long a Lease stays valid without a renewal, in seconds.
    pub duration: f64,
    /// How often to try to acquire or renew, in seconds. Must be well below
    /// `duration` so that a leader renews several times per term.
    pub retry_period: f64,
}

/// The outcome of one election step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// This replica holds the Lease.
    Leader,
    /// Another replica holds a valid Lease (or won a race just now).
    Follower {
        /// The holder's identity, when known.
        holder: Option<String>,
    },
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    clock: Arc<dyn Clock>,
}

fn micro_time(t: f64) -> Result<MicroTime> {
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond((t * 1e6) as i64)
        .map_err(|_| Error::Clock(t))?;
    Ok(MicroTime(ts))
}

fn seconds(t: &MicroTime) -> f64 {
    t.0.as_microsecond() as f64 / 1e6
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Elector {
    /// An elector for `cfg` through `client`.
    pub fn new(client: kube::Client, cfg: LeaseConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            clock,
        }
    }

    fn err(&self, op: &'static str) -> impl FnOnce(kube::Error) -> Error + '_ {
        move |source| Error::Api {
            op,
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source: Box::new(source),
        }
    }

    fn spec(&self, now: f64, acquire: Option<MicroTime>, transitions: i32) -> Result<LeaseSpec> {
        let now = micro_time(now)?;
        Ok(LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.ceil() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        })
    }

    /// One attempt to acquire or renew the Lease.
    pub async fn step(&self) -> Result<Role> {
        let now = self.clock.now();
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(self.err("get"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)?),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Role::Leader),
                // Another replica created it between our read and write.
                Err(e) if is_status(&e, 409) => Ok(Role::Follower { holder: None }),
                Err(e) => Err(self.err("create")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.cfg.identity.as_str());
        let expires = spec.renew_time.as_ref().map(seconds).unwrap_or(f64::MIN)
            + f64::from(spec.lease_duration_seconds.unwrap_or(0));
        if !ours && holder.is_some() && expires > now {
            return Ok(Role::Follower { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.spec(now, spec.acquire_time, transitions)?
        } else {
            tracing::info!(previous = ?holder, identity = %self.cfg.identity, "taking over the leader Lease");
            self.spec(now, None, transitions + 1)?
        });
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Role::Leader),
            // Someone wrote the Lease after we read it: they won this round.
            Err(e) if is_status(&e, 409) => Ok(Role::Follower { holder: None }),
            Err(e) => Err(self.err("update")(e)),
        }
    }

    /// Gives the Lease up, if we hold it, so a standby takes over at once
    /// instead of waiting for it to expire.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.cfg.name)
            .await
            .map_err(self.err("get"))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(micro_time(self.clock.now())?);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => Err(self.err("update")(e)),
        }
    }

    /// Runs the election until `shutdown` flips to true, publishing
    /// leadership on `leader`, then releases the Lease if held.
    ///
    /// A leader that cannot renew steps down once its last successful renewal
    /// is older than two thirds of the lease duration, before any standby may
    /// take over, so two replicas never both believe they lead.
    pub async fn run(
        self,
        leader: watch::Sender<bool>,
        health: Arc<Health>,
        metrics: Metrics,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut last_renewed = f64::MIN;
        let set = |is_leader: bool, status: LeaseStatus| {
            health.set_lease(status);
            metrics.leader.set(i64::from(is_leader));
            leader.send_if_modified(|v| std::mem::replace(v, is_leader) != is_leader);
        };
        loop {
            match self.step().await {
                Ok(Role::Leader) => {
                    last_renewed = self.clock.now();
                    set(true, LeaseStatus::Held);
                }
                Ok(Role::Follower { holder }) => {
                    tracing::debug!(?holder, "following");
                    set(false, LeaseStatus::HeldByOther);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election step failed");
                    if *leader.borrow()
                        && self.clock.now() - last_renewed > self.cfg.duration * 2.0 / 3.0
                    {
                        tracing::warn!("could not renew the Lease in time; stepping down");
                        set(false, LeaseStatus::Unknown);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(self.cfg.retry_period)) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        let was_leader = *leader.borrow();
        set(false, LeaseStatus::Unknown);
        if was_leader {
            match self.release().await {
                Ok(()) => tracing::info!("released the leader Lease"),
                Err(e) => tracing::warn!(error = %e, "releasing the leader Lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const NOW: f64 = 1_764_320_000.0; // 2025-11-28T08:53:20Z

    /// A Lease as the API server returns it (shape copied from a real
    /// `kubectl get lease -o json`).
    fn lease_json(holder: &str, renew: &str, transitions: i32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "creationTimestamp": "2025-11-20T10:00:00Z",
                "name": "pullahead-controller",
                "namespace": "pullahead",
                "resourceVersion": "48213",
                "uid": "6a1c9e36-0f45-4c63-9a8e-2b1d0c6e9f11"
            },
            "spec": {
                "acquireTime": "2025-11-28T08:00:00.000000Z",
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "leaseTransitions": transitions,
                "renewTime": renew
            }
        })
    }

    fn elector() -> (Elector, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let cfg = LeaseConfig {
            namespace: "pullahead".into(),
            name: "pullahead-controller".into(),
            identity: "pullahead-controller-7d9f-b".into(),
            duration: 15.0,
            retry_period: 2.0,
        };
        (
            Elector::new(client, cfg, Arc::new(SimClock::new(NOW))),
            handle,
        )
    }

    fn respond(status: u16, body: Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn not_found() -> Value {
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"leases.coordination.k8s.io \"pullahead-controller\" not found",
               "reason":"NotFound","details":{"name":"pullahead-controller",
               "group":"coordination.k8s.io","kind":"leases"},"code":404})
    }

    fn conflict() -> Value {
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
               "message":"Operation cannot be fulfilled on leases.coordination.k8s.io \"pullahead-controller\": the object has been modified; please apply your changes to the latest version and try again",
               "reason":"Conflict","details":{"name":"pullahead-controller",
               "group":"coordination.k8s.io","kind":"leases"},"code":409})
    }

    /// Expects one request with `method` on `path`, answers it, and returns
    /// the request body it carried.
    async fn expect(h: &mut Handle, method: &str, path: &str, status: u16, body: Value) -> Value {
        let (req, send) = tokio::time::timeout(Duration::from_secs(5), h.next_request())
            .await
            .expect("no request within 5 s")
            .expect("service dropped");
        assert_eq!(req.method().as_str(), method);
        assert_eq!(req.uri().path(), path);
        let bytes = req.into_body().collect_bytes().await.unwrap();
        send.send_response(respond(status, body));
        if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        }
    }

    const PATH: &str =
        "/apis/coordination.k8s.io/v1/namespaces/pullahead/leases/pullahead-controller";

    async fn step(e: &Elector) -> Role {
        tokio::time::timeout(Duration::from_secs(5), e.step())
            .await
            .expect("step hung: it sent a request the test did not expect")
            .unwrap()
    }

    #[tokio::test]
    async fn a_lease_held_by_another_live_replica_is_followed_without_writing() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            let held = lease_json(
                "pullahead-controller-7d9f-a",
                "2025-11-28T08:53:18.000000Z",
                3,
            );
            expect(&mut h, "GET", PATH, 200, held).await;
            h
        });
        let role = step(&e).await;
        assert_eq!(
            role,
            Role::Follower {
                holder: Some("pullahead-controller-7d9f-a".into())
            }
        );
        let mut h = server.await.unwrap();
        drop(e);
        // The elector is gone; had it written, the request would be queued.
        assert!(h.next_request().await.is_none(), "follower must not write");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_with_the_read_resource_version() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            // Last renewed 60 s ago with a 15 s term: expired.
            let stale = lease_json(
                "pullahead-controller-7d9f-a",
                "2025-11-28T08:52:20.000000Z",
                3,
            );
            expect(&mut h, "GET", PATH, 200, stale).await;
            let mut taken = lease_json(
                "pullahead-controller-7d9f-b",
                "2025-11-28T08:53:20.000000Z",
                4,
            );
            taken["metadata"]["resourceVersion"] = json!("48214");
            expect(&mut h, "PUT", PATH, 200, taken).await
        });
        assert_eq!(step(&e).await, Role::Leader);
        let put = server.await.unwrap();
        assert_eq!(put["spec"]["holderIdentity"], "pullahead-controller-7d9f-b");
        assert_eq!(put["spec"]["leaseTransitions"], 4);
        assert_eq!(put["metadata"]["resourceVersion"], "48213");
        assert_eq!(put["spec"]["renewTime"], "2025-11-28T08:53:20.000000Z");
        assert_eq!(put["spec"]["acquireTime"], "2025-11-28T08:53:20.000000Z");
    }

    #[tokio::test]
    async fn losing_the_takeover_race_means_following() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            let stale = lease_json(
                "pullahead-controller-7d9f-a",
                "2025-11-28T08:50:00.000000Z",
                3,
            );
            expect(&mut h, "GET", PATH, 200, stale).await;
            expect(&mut h, "PUT", PATH, 409, conflict()).await;
        });
        assert_eq!(step(&e).await, Role::Follower { holder: None });
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_our_own_is_renewed() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            expect(&mut h, "GET", PATH, 404, not_found()).await;
            let created = expect(
                &mut h,
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/pullahead/leases",
                201,
                lease_json(
                    "pullahead-controller-7d9f-b",
                    "2025-11-28T08:53:20.000000Z",
                    0,
                ),
            )
            .await;
            let ours = lease_json(
                "pullahead-controller-7d9f-b",
                "2025-11-28T08:53:10.000000Z",
                2,
            );
            expect(&mut h, "GET", PATH, 200, ours.clone()).await;
            let renewed = expect(&mut h, "PUT", PATH, 200, ours).await;
            (created, renewed)
        });
        assert_eq!(step(&e).await, Role::Leader);
        assert_eq!(step(&e).await, Role::Leader);
        let (created, renewed) = server.await.unwrap();
        assert_eq!(
            created["spec"]["holderIdentity"],
            "pullahead-controller-7d9f-b"
        );
        assert_eq!(created["spec"]["leaseDurationSeconds"], 15);
        // A renewal keeps the acquire time and the transition count.
        assert_eq!(
            renewed["spec"]["acquireTime"],
            "2025-11-28T08:00:00.000000Z"
        );
        assert_eq!(renewed["spec"]["leaseTransitions"], 2);
        assert_eq!(renewed["spec"]["renewTime"], "2025-11-28T08:53:20.000000Z");
    }

    #[tokio::test]
    async fn release_clears_the_holder_only_when_it_is_us() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            let ours = lease_json(
                "pullahead-controller-7d9f-b",
                "2025-11-28T08:53:10.000000Z",
                2,
            );
            expect(&mut h, "GET", PATH, 200, ours.clone()).await;
            let released = expect(&mut h, "PUT", PATH, 200, ours).await;
            let theirs = lease_json(
                "pullahead-controller-7d9f-a",
                "2025-11-28T08:53:10.000000Z",
                3,
            );
            expect(&mut h, "GET", PATH, 200, theirs).await;
            released
        });
        e.release().await.unwrap();
        e.release().await.unwrap();
        let released = server.await.unwrap();
        assert!(
            released["spec"].get("holderIdentity").is_none(),
            "{released}"
        );
    }

    #[tokio::test]
    async fn api_errors_name_the_lease() {
        let (e, mut h) = elector();
        let server = tokio::spawn(async move {
            let forbidden = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
                "message":"leases.coordination.k8s.io \"pullahead-controller\" is forbidden: User \"system:serviceaccount:pullahead:default\" cannot get resource \"leases\"",
                "reason":"Forbidden","code":403});
            expect(&mut h, "GET", PATH, 403, forbidden).await;
        });
        let err = e.step().await.unwrap_err().to_string();
        assert!(
            err.contains("get Lease pullahead/pullahead-controller"),
            "{err}"
        );
        assert!(err.contains("forbidden"), "{err}");
        server.await.unwrap();
    }
}
