//! Budgets beyond the node: pulls in flight per registry host across the
//! cluster, nodes prefetching at once, and `429 Too Many Requests` waited
//! out by every agent.
//!
//! Agents coordinate through counting semaphores of Kubernetes Leases
//! ([`LeaseSlots`]): a group (`registry-<host>`, `nodes`) of N slots is N
//! Leases named `pullahead-slot-<group>-<i>`, labelled with the group. An
//! agent takes a slot by creating a missing Lease, or by replacing a free or
//! expired one with the resourceVersion it read, so two agents racing for one
//! slot cannot both win (the API server answers the second with 409). It
//! renews the slot while the pull runs and frees it when the pull ends; a
//! slot of an agent that died frees itself when its Lease expires. One list
//! by label shows the group's slots and its cool-down Lease, written by the
//! agent that met a 429: until it expires no agent takes a slot of that
//! group. [`LocalSlots`] is the same protocol in memory, for one process.
//! `docs/dispatch.md` gives the API cost under a burst.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{ListParams, PostParams};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::clock::Clock;
use crate::dispatch::cri;
use crate::dispatch::guard::{Admit, Attempt, PullGuard, Ticket};
use crate::dispatch::puller::Order;
use crate::registry::registry_host;

/// Errors from the budgets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Lease call failed.
    #[error("{op} Lease {name}: {source}")]
    Api {
        /// What was being done.
        op: &'static str,
        /// The Lease (or the group's label selector).
        name: String,
        /// The client's error.
        source: Box<kube::Error>,
    },
    /// A `--registry-parallel` value is not `HOST=N`.
    #[error("invalid --registry-parallel {0:?}: expected HOST=N with N at least 1")]
    BadHostBudget(String),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The API refused the Lease calls for good (no RBAC, no such
    /// namespace): waiting cannot help.
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Api { source, .. } if matches!(**source, kube::Error::Api(ref s) if s.code == 403 || s.code == 404))
    }
}

/// Pulls in flight allowed per registry host, cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBudgets {
    /// For hosts not named below.
    pub default: usize,
    /// Per host (`host[:port]`, Docker Hub as `docker.io`).
    pub per_host: BTreeMap<String, usize>,
}

impl HostBudgets {
    /// Parses `HOST=N` entries over `default`.
    pub fn parse(default: usize, entries: &[String]) -> Result<Self> {
        let mut per_host = BTreeMap::new();
        for e in entries {
            let bad = || Error::BadHostBudget(e.clone());
            let (h, n) = e.rsplit_once('=').ok_or_else(bad)?;
            let n: usize = n.trim().parse().map_err(|_| bad())?;
            if n == 0 || h.trim().is_empty() {
                return Err(bad());
            }
            per_host.insert(h.trim().to_string(), n);
        }
        Ok(Self {
            default: default.max(1),
            per_host,
        })
    }

    /// The budget of `host`.
    pub fn of(&self, host: &str) -> usize {
        self.per_host.get(host).copied().unwrap_or(self.default)
    }
}

/// A taken slot; its store frees it when the handle is dropped.
pub struct Held {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Held {
    /// A handle that runs `release` once, on drop.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            r();
        }
    }
}

/// The answer of one try for a slot.
pub enum Take {
    /// A slot, held until dropped.
    Got(Held),
    /// Every slot is taken.
    Busy,
    /// The group is cooling down after a 429 until this clock time.
    CoolingDown(f64),
}

/// Where slots live.
pub trait SlotStore: Send + Sync {
    /// Tries once to take one of `slots` slots of `group`.
    fn try_take<'a>(&'a self, group: &'a str, slots: usize) -> BoxFuture<'a, Result<Take>>;
    /// Makes every agent leave `group` alone until clock time `until`.
    fn cool_down<'a>(&'a self, group: &'a str, until: f64) -> BoxFuture<'a, Result<()>>;
}

/// Slots in one process's memory.
#[derive(Default)]
pub struct LocalSlots {
    state: Arc<Mutex<HashMap<String, (usize, f64)>>>,
    clock: Option<Arc<dyn Clock>>,
}

impl LocalSlots {
    /// Slots judged against `clock` for cool-downs.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Arc::default(),
            clock: Some(clock),
        }
    }

    fn now(&self) -> f64 {
        self.clock.as_ref().map_or(0.0, |c| c.now())
    }
}

impl SlotStore for LocalSlots {
    fn try_take<'a>(&'a self, group: &'a str, slots: usize) -> BoxFuture<'a, Result<Take>> {
        let now = self.now();
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let e = st.entry(group.to_string()).or_insert((0, f64::MIN));
        let out = if e.1 > now {
            Take::CoolingDown(e.1)
        } else if e.0 >= slots {
            Take::Busy
        } else {
            e.0 += 1;
            let state = self.state.clone();
            let group = group.to_string();
            Take::Got(Held::new(move || {
                let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(e) = st.get_mut(&group) {
                    e.0 = e.0.saturating_sub(1);
                }
            }))
        };
        async move { Ok(out) }.boxed()
    }

    fn cool_down<'a>(&'a self, group: &'a str, until: f64) -> BoxFuture<'a, Result<()>> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let e = st.entry(group.to_string()).or_insert((0, f64::MIN));
        e.1 = e.1.max(until);
        async { Ok(()) }.boxed()
    }
}

/// The label that marks a Lease as one of a group's slots (or its cool-down).
pub const GROUP_LABEL: &str = "pullahead.io/slot-group";

/// Slots as Leases in one namespace, shared by every agent.
pub struct LeaseSlots {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
    clock: Arc<dyn Clock>,
}

/// A DNS-label-safe form of a group name (`127.0.0.1:5000` → `127-0-0-1-5000`).
pub fn group_label(group: &str) -> String {
    let mut s: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(50);
    s.trim_matches('-').to_string()
}

fn micro(t: f64) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_microsecond((t * 1e6) as i64)
        .ok()
        .map(MicroTime)
}

fn secs(t: &MicroTime) -> f64 {
    t.0.as_microsecond() as f64 / 1e6
}

/// When a Lease stops being valid, by its own renew time and duration.
fn expiry(l: &Lease) -> f64 {
    let s = l.spec.as_ref();
    let renew = s.and_then(|s| s.renew_time.as_ref()).map_or(f64::MIN, secs);
    renew + s.and_then(|s| s.lease_duration_seconds).unwrap_or(0) as f64
}

fn holder(l: &Lease) -> Option<&str> {
    l.spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl LeaseSlots {
    /// Slots in the namespace of `api`, held as `identity` (the node), each
    /// valid for `duration` without a renewal.
    pub fn new(
        api: Api<Lease>,
        identity: String,
        duration: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            api,
            identity,
            duration,
            clock,
        }
    }

    fn lease(&self, name: &str, group: &str, holder: Option<&str>, secs: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some([(GROUP_LABEL.to_string(), group_label(group))].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(secs),
                renew_time: micro(self.clock.now()),
                ..LeaseSpec::default()
            }),
        }
    }

    fn duration_secs(&self) -> i32 {
        self.duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    fn api_err<'a>(op: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
        move |e| Error::Api {
            op,
            name: name.to_string(),
            source: Box::new(e),
        }
    }

    async fn list(&self, group: &str) -> Result<Vec<Lease>> {
        let sel = format!("{GROUP_LABEL}={}", group_label(group));
        Ok(self
            .api
            .list(&ListParams::default().labels(&sel))
            .await
            .map_err(Self::api_err("list", &sel))?
            .items)
    }

    /// Writes `lease` over `current` (create when absent); `None` on a lost race.
    async fn put(
        &self,
        name: &str,
        current: Option<&Lease>,
        mut lease: Lease,
    ) -> Result<Option<Lease>> {
        let r = match current {
            None => self.api.create(&PostParams::default(), &lease).await,
            Some(c) => {
                lease.metadata.resource_version = c.metadata.resource_version.clone();
                self.api.replace(name, &PostParams::default(), &lease).await
            }
        };
        match r {
            Ok(l) => Ok(Some(l)),
            Err(e) if is_status(&e, 409) => Ok(None),
            Err(e) => Err(Self::api_err("write", name)(e)),
        }
    }

    /// Keeps `name` renewed until `stop` fires, then frees it.
    fn hold(self: &Arc<Self>, name: String, group: String, mut lease: Lease) -> Held {
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let me = self.clone();
        tokio::spawn(async move {
            let every = me.duration / 3;
            loop {
                tokio::select! {
                    _ = &mut stop_rx => break,
                    _ = tokio::time::sleep(every) => {}
                }
                let fresh = me.lease(&name, &group, Some(&me.identity), me.duration_secs());
                match me.put(&name, Some(&lease), fresh).await {
                    Ok(Some(l)) => lease = l,
                    // Someone took it over (we were too slow): it is theirs.
                    Ok(None) => return,
                    Err(e) => tracing::warn!(lease = %name, error = %e, "cannot renew pull slot"),
                }
            }
            let free = me.lease(&name, &group, None, me.duration_secs());
            if let Err(e) = me.put(&name, Some(&lease), free).await {
                tracing::debug!(lease = %name, error = %e, "cannot free pull slot; it expires");
            }
        });
        Held::new(move || {
            let _ = stop_tx.send(());
        })
    }

    fn cooldown_name(group: &str) -> String {
        format!("pullahead-cooldown-{}", group_label(group))
    }

    /// As [`SlotStore::try_take`], on a shared handle (the slot's renewal
    /// task needs one).
    pub async fn take(self: &Arc<Self>, group: &str, slots: usize) -> Result<Take> {
        let now = self.clock.now();
        let leases = self.list(group).await?;
        let by_name: HashMap<&str, &Lease> = leases
            .iter()
            .filter_map(|l| l.metadata.name.as_deref().map(|n| (n, l)))
            .collect();
        if let Some(c) = by_name.get(Self::cooldown_name(group).as_str())
            && holder(c).is_some()
            && expiry(c) > now
        {
            return Ok(Take::CoolingDown(expiry(c)));
        }
        let mut order: Vec<usize> = (0..slots).collect();
        order.shuffle(&mut rand::rng());
        for i in order {
            let name = format!("pullahead-slot-{}-{i}", group_label(group));
            let current = by_name.get(name.as_str()).copied();
            if current.is_some_and(|l| holder(l).is_some() && expiry(l) > now) {
                continue;
            }
            let mine = self.lease(&name, group, Some(&self.identity), self.duration_secs());
            if let Some(l) = self.put(&name, current, mine).await? {
                return Ok(Take::Got(self.hold(name, group.to_string(), l)));
            }
        }
        Ok(Take::Busy)
    }

    /// As [`SlotStore::cool_down`].
    pub async fn set_cool_down(&self, group: &str, until: f64) -> Result<()> {
        let name = Self::cooldown_name(group);
        for _ in 0..3 {
            let current = self
                .api
                .get_opt(&name)
                .await
                .map_err(Self::api_err("get", &name))?;
            if current
                .as_ref()
                .is_some_and(|c| holder(c).is_some() && expiry(c) >= until)
            {
                return Ok(());
            }
            let secs = (until - self.clock.now()).ceil().clamp(1.0, 86_400.0) as i32;
            let l = self.lease(&name, group, Some(&self.identity), secs);
            if self.put(&name, current.as_ref(), l).await?.is_some() {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// [`LeaseSlots`] behind the [`SlotStore`] trait.
pub struct SharedLeaseSlots(pub Arc<LeaseSlots>);

impl SlotStore for SharedLeaseSlots {
    fn try_take<'a>(&'a self, group: &'a str, slots: usize) -> BoxFuture<'a, Result<Take>> {
        self.0.take(group, slots).boxed()
    }

    fn cool_down<'a>(&'a self, group: &'a str, until: f64) -> BoxFuture<'a, Result<()>> {
        self.0.set_cool_down(group, until).boxed()
    }
}

/// How the budget guard behaves.
#[derive(Clone, Debug)]
pub struct BudgetConfig {
    /// Pulls in flight per registry host, cluster-wide.
    pub hosts: HostBudgets,
    /// Nodes pulling at once, cluster-wide (0: no cap).
    pub max_nodes: usize,
    /// Cool-down after a 429 whose Retry-After cannot be learnt.
    pub default_retry_after: Duration,
    /// Registries reached over plain HTTP (for the Retry-After probe).
    pub plain_http: Vec<String>,
    /// First wait when every slot is taken; grows to `poll_max`.
    pub poll_min: Duration,
    /// Longest wait between two tries for a slot.
    pub poll_max: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            hosts: HostBudgets {
                default: 32,
                per_host: BTreeMap::new(),
            },
            max_nodes: 0,
            default_retry_after: Duration::from_secs(30),
            plain_http: Vec::new(),
            poll_min: Duration::from_millis(200),
            poll_max: Duration::from_secs(5),
        }
    }
}

/// The node's use of its cluster-wide node slot: taken by the first pull,
/// given back when the last one ends.
#[derive(Default)]
struct NodeUse {
    active: usize,
    slot: Option<Held>,
}

/// Takes a registry-host slot (and the node's slot) before each attempt, and
/// spreads a registry's 429 to every agent.
pub struct BudgetGuard {
    cfg: BudgetConfig,
    store: Arc<dyn SlotStore>,
    clock: Arc<dyn Clock>,
    node: Arc<tokio::sync::Mutex<NodeUse>>,
    local_cool: Mutex<HashMap<String, f64>>,
}

struct NodeTicket(Arc<tokio::sync::Mutex<NodeUse>>);

impl Drop for NodeTicket {
    fn drop(&mut self) {
        let node = self.0.clone();
        // The count must drop even when no runtime is left to run a task.
        if let Ok(mut n) = node.try_lock() {
            n.active = n.active.saturating_sub(1);
            if n.active == 0 {
                n.slot = None;
            }
            return;
        }
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let mut n = node.lock().await;
                n.active = n.active.saturating_sub(1);
                if n.active == 0 {
                    n.slot = None;
                }
            });
        }
    }
}

/// The slot group of a registry host.
pub fn host_group(host: &str) -> String {
    format!("registry-{host}")
}

impl BudgetGuard {
    /// A guard taking slots from `store`.
    pub fn new(cfg: BudgetConfig, store: Arc<dyn SlotStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            cfg,
            store,
            clock,
            node: Arc::default(),
            local_cool: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for one slot of `group`.
    async fn wait_for(&self, group: &str, slots: usize) -> Held {
        let mut poll = self.cfg.poll_min;
        loop {
            let local = self
                .local_cool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(group)
                .copied();
            let now = self.clock.now();
            let wait = match local.filter(|u| *u > now) {
                Some(until) => Duration::from_secs_f64(until - now),
                None => match self.store.try_take(group, slots).await {
                    Ok(Take::Got(h)) => return h,
                    Ok(Take::CoolingDown(until)) => {
                        Duration::from_secs_f64((until - self.clock.now()).max(0.05))
                    }
                    Ok(Take::Busy) => jitter(poll),
                    // Without Leases (RBAC, namespace) no agent can
                    // coordinate: pull under the node's own limit rather
                    // than never, and say so loudly.
                    Err(e) if e.is_refused() => {
                        tracing::error!(group, error = %e, "the API refuses budget Leases; pulling without the cluster-wide budget");
                        return Held::new(|| {});
                    }
                    Err(e) => {
                        tracing::warn!(group, error = %e, "cannot take a pull slot; retrying");
                        jitter(poll)
                    }
                },
            };
            tokio::time::sleep(wait).await;
            poll = (poll * 2).min(self.cfg.poll_max);
        }
    }

    /// Records a 429 from `host`, locally and for every agent.
    pub async fn rate_limited(&self, host: &str, retry_after: Duration) {
        let group = host_group(host);
        let until = self.clock.now() + retry_after.as_secs_f64();
        {
            let mut m = self
                .local_cool
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let e = m.entry(group.clone()).or_insert(f64::MIN);
            *e = e.max(until);
        }
        tracing::info!(
            host,
            retry_after_s = retry_after.as_secs_f64(),
            "registry rate-limited; every agent waits"
        );
        if let Err(e) = self.store.cool_down(&group, until).await {
            tracing::warn!(host, error = %e, "cannot share the registry's cool-down");
        }
    }
}

/// Uniform over [d/2, d]: waiters that met a full group together do not
/// come back together.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

impl PullGuard for BudgetGuard {
    fn admit<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, Admit> {
        async move {
            let mut ticket = Ticket::empty();
            if self.cfg.max_nodes > 0 {
                let mut n = self.node.lock().await;
                if n.slot.is_none() {
                    n.slot = Some(self.wait_for("nodes", self.cfg.max_nodes).await);
                }
                n.active += 1;
                ticket.join(Ticket::holding(NodeTicket(self.node.clone())));
            }
            let host = registry_host(&order.image);
            let slot = self
                .wait_for(&host_group(&host), self.cfg.hosts.of(&host))
                .await;
            ticket.join(Ticket::holding(slot));
            Admit::Go(ticket)
        }
        .boxed()
    }

    fn after<'a>(&'a self, order: &'a Order, attempt: Attempt<'a>) -> BoxFuture<'a, ()> {
        async move {
            if let Attempt::Failed(e @ cri::Error::RateLimited { .. }) = attempt {
                let url = manifest_url(&order.image, &self.cfg.plain_http);
                let wait = retry_after(e, url.as_deref(), self.cfg.default_retry_after).await;
                self.rate_limited(&registry_host(&order.image), wait).await;
            }
        }
        .boxed()
    }
}

/// How long a 429 asks to wait: a `Retry-After` in the runtime's message,
/// else the one the registry gives to a HEAD of the URL in the message or of
/// `manifest` (containerd 1.6 says only `pulling from host H failed with
/// status code [manifests TAG]: 429 Too Many Requests`, dropping the
/// header), else `default`. A registry that wants a token answers the
/// anonymous probe 401, and `default` applies.
pub async fn retry_after(e: &cri::Error, manifest: Option<&str>, default: Duration) -> Duration {
    let msg = e.to_string();
    if let Some(d) = retry_after_in_text(&msg) {
        return d;
    }
    if let Some(url) = url_in(&msg).or(manifest)
        && let Some(d) = probe(url).await
    {
        return d;
    }
    default
}

/// The manifest URL of `image` (`http` for loopback hosts and those in
/// `plain_http`, as containerd does).
pub fn manifest_url(image: &str, plain_http: &[String]) -> Option<String> {
    let full = crate::normalize::full_reference(image);
    let (_, path) = full.split_once('/')?;
    let host = registry_host(&full);
    // Docker Hub's API lives on another name than its references use.
    let api_host = if host == "docker.io" {
        "index.docker.io"
    } else {
        host.as_str()
    };
    let plain =
        plain_http.contains(&host) || host.starts_with("127.") || host.starts_with("localhost");
    let scheme = if plain { "http" } else { "https" };
    let (repo, reference) = match path.split_once('@') {
        Some((repo, digest)) => (repo, digest),
        None => match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (path, "latest"),
        },
    };
    if repo.is_empty() || reference.is_empty() {
        return None;
    }
    Some(format!(
        "{scheme}://{api_host}/v2/{repo}/manifests/{reference}"
    ))
}

/// A `Retry-After: N` (seconds) written in `text`.
pub fn retry_after_in_text(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    let at = lower.find("retry-after")?;
    let rest = text[at + "retry-after".len()..].trim_start_matches([':', '=', ' ', '"']);
    parse_retry_after(
        rest.split([',', ';', '"', ')'])
            .next()
            .unwrap_or(rest)
            .trim(),
    )
}

/// A `Retry-After` value: delta seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.split_whitespace().next().unwrap_or(v).parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let t = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let d = t.duration_since(jiff::Timestamp::now());
    Duration::try_from(d).ok()
}

/// The first `http://` or `https://` URL in a message, without a trailing colon.
pub fn url_in(msg: &str) -> Option<&str> {
    let at = msg.find("http://").or_else(|| msg.find("https://"))?;
    let url = msg[at..].split_whitespace().next()?;
    Some(url.trim_end_matches([':', '"', ',', ')']))
}

async fn probe(url: &str) -> Option<Duration> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let resp = client.head(url).send().await.ok()?;
    if resp.status().as_u16() != 429 {
        return None;
    }
    let v = resp.headers().get("retry-after")?.to_str().ok()?;
    parse_retry_after(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SimClock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn host_budgets_parse_and_refuse_bad_entries() {
        let b = HostBudgets::parse(8, &["docker.io=4".into(), "127.0.0.1:5000=2".into()]).unwrap();
        assert_eq!(
            (b.of("docker.io"), b.of("127.0.0.1:5000"), b.of("ghcr.io")),
            (4, 2, 8)
        );
        for bad in ["docker.io", "docker.io=0", "=3", "x=many"] {
            let e = HostBudgets::parse(8, &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--registry-parallel") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn retry_after_is_read_from_text_headers_and_dates() {
        assert_eq!(
            retry_after_in_text("429 Too Many Requests (Retry-After: 7)"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after_in_text("429 Too Many Requests"), None);
        assert_eq!(parse_retry_after("12"), Some(Duration::from_secs(12)));
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
        let date = jiff::fmt::rfc2822::to_string(&soon.to_zoned(jiff::tz::TimeZone::UTC)).unwrap();
        let d = parse_retry_after(&date).unwrap();
        assert!((55..=61).contains(&d.as_secs()), "{date} -> {d:?}");
        assert_eq!(
            manifest_url("127.0.0.1:5000/burst/n0:v1", &[]).as_deref(),
            Some("http://127.0.0.1:5000/v2/burst/n0/manifests/v1")
        );
        assert_eq!(
            manifest_url("docker.io/library/nginx:1.25", &[]).as_deref(),
            Some("https://index.docker.io/v2/library/nginx/manifests/1.25")
        );
        assert_eq!(
            manifest_url("nginx", &[]).as_deref(),
            Some("https://index.docker.io/v2/library/nginx/manifests/latest")
        );
        assert_eq!(
            manifest_url(
                "reg.example:8443/team/app@sha256:ab12",
                &["reg.example:8443".into()]
            )
            .as_deref(),
            Some("http://reg.example:8443/v2/team/app/manifests/sha256:ab12")
        );
        assert_eq!(
            url_in(
                "unexpected status from HEAD request to http://127.0.0.1:5/v2/a/manifests/1: 429 Too Many Requests"
            ),
            Some("http://127.0.0.1:5/v2/a/manifests/1")
        );
    }

    #[test]
    fn group_labels_are_dns_safe() {
        assert_eq!(
            group_label("registry-127.0.0.1:5000"),
            "registry-127-0-0-1-5000"
        );
        assert_eq!(group_label("registry-Docker.IO"), "registry-docker-io");
    }

    #[tokio::test]
    async fn pulls_per_host_never_exceed_the_budget_across_guards() {
        // Ten "nodes", each with its own guard, share one store.
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(0.0));
        let store: Arc<dyn SlotStore> = Arc::new(LocalSlots::new(clock.clone()));
        let cfg = BudgetConfig {
            hosts: HostBudgets::parse(3, &[]).unwrap(),
            poll_min: Duration::from_millis(1),
            poll_max: Duration::from_millis(5),
            ..BudgetConfig::default()
        };
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..10 {
            let g = Arc::new(BudgetGuard::new(cfg.clone(), store.clone(), clock.clone()));
            for i in 0..3 {
                let (g, running, peak) = (g.clone(), running.clone(), peak.clone());
                tasks.spawn(async move {
                    let o = Order::new(format!("reg:5000/n{n}/i{i}:1"));
                    let Admit::Go(t) = g.admit(&o).await else {
                        panic!("skipped")
                    };
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(t);
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_cool_down_holds_every_guard_back() {
        let clock = Arc::new(SimClock::new(100.0));
        let store: Arc<dyn SlotStore> = Arc::new(LocalSlots::new(clock.clone()));
        store.cool_down("registry-r", 150.0).await.unwrap();
        assert!(
            matches!(store.try_take("registry-r", 4).await.unwrap(), Take::CoolingDown(u) if u == 150.0)
        );
        assert!(matches!(
            store.try_take("registry-other", 4).await.unwrap(),
            Take::Got(_)
        ));
        clock.set(151.0);
        assert!(matches!(
            store.try_take("registry-r", 4).await.unwrap(),
            Take::Got(_)
        ));
    }

    #[tokio::test]
    async fn the_node_cap_lets_only_so_many_nodes_pull() {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(0.0));
        let store: Arc<dyn SlotStore> = Arc::new(LocalSlots::new(clock.clone()));
        let cfg = BudgetConfig {
            max_nodes: 1,
            poll_min: Duration::from_millis(1),
            poll_max: Duration::from_millis(2),
            ..BudgetConfig::default()
        };
        let a = BudgetGuard::new(cfg.clone(), store.clone(), clock.clone());
        let b = BudgetGuard::new(cfg, store.clone(), clock.clone());
        let o = Order::new("r/x:1");
        let Admit::Go(t1) = a.admit(&o).await else {
            panic!()
        };
        // The same node may run more pulls under its one node slot.
        let Admit::Go(t2) = a.admit(&o).await else {
            panic!()
        };
        let other = tokio::time::timeout(Duration::from_millis(50), b.admit(&o)).await;
        assert!(other.is_err(), "a second node pulled past the cap of 1");
        drop((t1, t2));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let got = tokio::time::timeout(Duration::from_millis(200), b.admit(&o)).await;
        assert!(
            matches!(got, Ok(Admit::Go(_))),
            "the freed node slot was not taken"
        );
    }
}
