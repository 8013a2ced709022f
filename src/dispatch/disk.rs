//! Disk headroom on the node: pull only while the image filesystem stays
//! below a ceiling after the pull, and never while the Node has
//! `DiskPressure`.
//!
//! Kubelet starts deleting images once the image filesystem passes
//! `imageGCHighThresholdPercent` (85 by default) and evicts pods under
//! `DiskPressure`; a prefetch that pushes a node there destroys more than it
//! brings. So before every attempt the [`DiskGuard`] measures the filesystem
//! (`statfs` of `--image-fs-path`, the way kubelet does: used is capacity
//! minus what is available to unprivileged writers), adds what pulls in
//! flight have reserved and this image's estimated footprint, and holds the
//! image back (`skipped`, with a reason naming disk space) when the sum would
//! pass the ceiling.
//!
//! An image's footprint is its compressed size (from the order, or the
//! registry) times `size_factor`: containerd keeps the compressed layers in
//! its content store and unpacks them into snapshots beside them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::future::BoxFuture;
use prometheus::IntCounter;

use crate::dispatch::crd::ImageFsStatus;
use crate::dispatch::cri::CriClient;
use crate::dispatch::guard::{Admit, Attempt, PullGuard, Ticket};
use crate::dispatch::puller::{Board, Order};

/// Errors from the disk settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image filesystem path cannot be measured.
    #[error("--image-fs-path {path}: cannot statfs: {source}")]
    Statfs {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The percentages make no ceiling.
    #[error(
        "disk ceiling {high}% - {margin}% must be above 0 and at most 100 (--image-gc-high-percent, --disk-margin-percent)"
    )]
    Ceiling {
        /// Kubelet's high threshold given.
        high: f64,
        /// The margin given.
        margin: f64,
    },
    /// The footprint factor is not usable.
    #[error("--image-size-factor must be a finite number of at least 1, not {0}")]
    Factor(f64),
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Size and use of one filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsUsage {
    /// Total bytes.
    pub capacity: u64,
    /// Bytes in use, counting the root reserve as used (as kubelet does).
    pub used: u64,
}

impl FsUsage {
    /// `statfs` of `path`.
    pub fn of(path: &Path) -> io::Result<Self> {
        let s = rustix::fs::statvfs(path).map_err(io::Error::from)?;
        let frsize = s.f_frsize.max(1);
        let capacity = s.f_blocks.saturating_mul(frsize);
        let available = s.f_bavail.saturating_mul(frsize);
        Ok(Self {
            capacity,
            used: capacity.saturating_sub(available),
        })
    }
}

/// How the ceiling is set.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// The image filesystem to measure (`--image-fs-path`).
    pub path: PathBuf,
    /// Kubelet's `imageGCHighThresholdPercent` (`--image-gc-high-percent`, 85).
    pub gc_high_percent: f64,
    /// Kept below that threshold (`--disk-margin-percent`, 5).
    pub margin_percent: f64,
    /// On-disk bytes per compressed byte (`--image-size-factor`, 2).
    pub size_factor: f64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/containerd"),
            gc_high_percent: 85.0,
            margin_percent: 5.0,
            size_factor: 2.0,
        }
    }
}

impl DiskConfig {
    /// The ceiling as a percentage of capacity, checked.
    pub fn ceiling_percent(&self) -> Result<f64> {
        let c = self.gc_high_percent - self.margin_percent;
        if !(c.is_finite() && c > 0.0 && c <= 100.0) {
            return Err(Error::Ceiling {
                high: self.gc_high_percent,
                margin: self.margin_percent,
            });
        }
        Ok(c)
    }

    /// Checks every setting and that the path can be measured.
    pub fn validate(&self) -> Result<()> {
        self.ceiling_percent()?;
        if !(self.size_factor.is_finite() && self.size_factor >= 1.0) {
            return Err(Error::Factor(self.size_factor));
        }
        FsUsage::of(&self.path).map_err(|source| Error::Statfs {
            path: self.path.clone(),
            source,
        })?;
        Ok(())
    }
}

/// The compressed size assumed for an image whose order carries none (the
/// controller knows sizes only of images pulled somewhere in the cluster
/// before): the planner's own default, so both reckon alike.
pub const UNKNOWN_IMAGE_BYTES: u64 = crate::plan::settings::DEFAULT_IMAGE_BYTES;

/// Decides, before each pull, whether the image fits under the ceiling.
pub struct DiskGuard {
    cfg: DiskConfig,
    ceiling_percent: f64,
    reserved: Mutex<u64>,
    /// Woken when a pull in flight ends and gives its reservation back.
    released: tokio::sync::Notify,
    pressure: Arc<AtomicBool>,
    cri: Option<Arc<CriClient>>,
    board: Option<Arc<Board>>,
    held_back_bytes: Option<IntCounter>,
    held_back_images: Option<IntCounter>,
}

/// The bytes one admitted pull has reserved; given back when it ends.
struct Reservation {
    guard: Arc<DiskGuard>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        {
            let mut r = self.guard.lock();
            *r = r.saturating_sub(self.bytes);
        }
        self.guard.released.notify_waiters();
    }
}

impl DiskGuard {
    /// A guard for `cfg`'s filesystem (checked with [`DiskConfig::validate`]).
    pub fn new(cfg: DiskConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            ceiling_percent: cfg.ceiling_percent()?,
            cfg,
            reserved: Mutex::new(0),
            released: tokio::sync::Notify::new(),
            pressure: Arc::new(AtomicBool::new(false)),
            cri: None,
            board: None,
            held_back_bytes: None,
            held_back_images: None,
        })
    }

    /// Also reads CRI `ImageFsInfo` for the status.
    pub fn with_cri(mut self, cri: Arc<CriClient>) -> Self {
        self.cri = Some(cri);
        self
    }

    /// Publishes the measured filesystem on `board` (for the status).
    pub fn with_board(mut self, board: Arc<Board>) -> Self {
        self.board = Some(board);
        self
    }

    /// Counts held-back images and their bytes.
    pub fn with_metrics(mut self, bytes: IntCounter, images: IntCounter) -> Self {
        self.held_back_bytes = Some(bytes);
        self.held_back_images = Some(images);
        self
    }

    /// The flag the Node watcher sets while the Node has `DiskPressure`.
    pub fn pressure(&self) -> Arc<AtomicBool> {
        self.pressure.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.reserved.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ceiling in bytes for a filesystem of `capacity` bytes.
    pub fn ceiling_bytes(&self, capacity: u64) -> u64 {
        (capacity as f64 * self.ceiling_percent / 100.0) as u64
    }

    /// Measures the filesystem now and publishes it on the board.
    pub async fn measure(&self) -> io::Result<ImageFsStatus> {
        let fs = FsUsage::of(&self.cfg.path)?;
        let images_bytes = match &self.cri {
            Some(c) => match c.image_fs_info().await {
                Ok(info) => info
                    .image_filesystems
                    .iter()
                    .filter_map(|f| f.used_bytes.as_ref().map(|u| u.value))
                    .reduce(|a, b| a + b),
                Err(e) => {
                    tracing::debug!(error = %e, "CRI ImageFsInfo failed");
                    None
                }
            },
            None => None,
        };
        let ceiling = self.ceiling_bytes(fs.capacity);
        let reserved = *self.lock();
        let status = ImageFsStatus {
            capacity_bytes: fs.capacity,
            used_bytes: fs.used,
            images_bytes,
            ceiling_bytes: ceiling,
            headroom_bytes: ceiling.saturating_sub(fs.used.saturating_add(reserved)),
            disk_pressure: self.pressure.load(Ordering::Relaxed),
        };
        if let Some(b) = &self.board {
            b.set_image_fs(status.clone());
        }
        Ok(status)
    }

    /// Reserves `need` if `alone` (use plus `need`) and what pulls in
    /// flight reserved stay within `ceiling`.
    fn try_reserve(&self, alone: u64, ceiling: u64, need: u64) -> bool {
        let mut reserved = self.lock();
        if alone.saturating_add(*reserved) <= ceiling {
            *reserved += need;
            true
        } else {
            false
        }
    }

    fn skip(&self, reason: String, bytes: u64) -> Admit {
        if let Some(c) = &self.held_back_images {
            c.inc();
        }
        if let Some(c) = &self.held_back_bytes {
            c.inc_by(bytes);
        }
        Admit::Skip {
            reason,
            held_back_bytes: Some(bytes),
        }
    }

    /// The decision for one image of `bytes` compressed bytes. An image that fits only once the
    /// pulls in flight end waits for them: their bytes are partly on disk
    /// already and partly reserved, so counting both would hold back images
    /// that fit. One that does not fit even then is held back.
    pub async fn admit_bytes(self: &Arc<Self>, image: &str, bytes: u64) -> Admit {
        loop {
            if self.pressure.load(Ordering::Relaxed) {
                return self.skip(
                    "held back: the node reports DiskPressure; nothing is pulled while it lasts"
                        .into(),
                    bytes,
                );
            }
            let fs = match self.measure().await {
                Ok(s) => s,
                Err(e) => {
                    return self.skip(
                        format!(
                            "held back: cannot measure disk space on {}: {e}",
                            self.cfg.path.display()
                        ),
                        bytes,
                    );
                }
            };
            let need = (bytes as f64 * self.cfg.size_factor) as u64;
            // Registered before the check, so a release in between is seen.
            let released = self.released.notified();
            let alone = fs.used_bytes.saturating_add(need);
            if alone > fs.ceiling_bytes {
                let mib = |b: u64| b as f64 / 1_048_576.0;
                let reason = format!(
                    "held back: not enough disk space on the image filesystem: {:.0} MiB used + ~{:.0} MiB for this image > ceiling {:.0} MiB ({}% of {:.0} MiB)",
                    mib(fs.used_bytes),
                    mib(need),
                    mib(fs.ceiling_bytes),
                    self.ceiling_percent,
                    mib(fs.capacity_bytes),
                );
                tracing::info!(image, "{reason}");
                return self.skip(reason, bytes);
            }
            if self.try_reserve(alone, fs.ceiling_bytes, need) {
                return Admit::Go(Ticket::holding(Reservation {
                    guard: self.clone(),
                    bytes: need,
                }));
            }
            tracing::debug!(image, "waiting for pulls in flight before the disk check");
            // Bounded: a missed wake-up costs a re-measure, nothing more.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), released).await;
        }
    }
}

/// The guard as the pull loop sees it.
pub struct DiskCheck(pub Arc<DiskGuard>);

impl PullGuard for DiskCheck {
    fn admit<'a>(&'a self, order: &'a Order) -> BoxFuture<'a, Admit> {
        async move {
            let bytes = order.bytes.unwrap_or(UNKNOWN_IMAGE_BYTES);
            self.0.admit_bytes(&order.image, bytes).await
        }
        .boxed()
    }

    fn after<'a>(&'a self, _order: &'a Order, _attempt: Attempt<'a>) -> BoxFuture<'a, ()> {
        async {}.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(high: f64, margin: f64) -> Arc<DiskGuard> {
        let dir = std::env::temp_dir();
        Arc::new(
            DiskGuard::new(DiskConfig {
                path: dir,
                gc_high_percent: high,
                margin_percent: margin,
                size_factor: 2.0,
            })
            .unwrap(),
        )
    }

    #[test]
    fn statfs_measures_a_real_filesystem() {
        let u = FsUsage::of(&std::env::temp_dir()).unwrap();
        assert!(u.capacity > 0 && u.used <= u.capacity, "{u:?}");
        let e = FsUsage::of(Path::new("/nonexistent/x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let mut cfg = DiskConfig {
            path: std::env::temp_dir(),
            ..DiskConfig::default()
        };
        assert_eq!(cfg.ceiling_percent().unwrap(), 80.0);
        cfg.margin_percent = 90.0;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("--disk-margin-percent")
        );
        cfg.margin_percent = 5.0;
        cfg.size_factor = 0.5;
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("--image-size-factor")
        );
        cfg.size_factor = 2.0;
        cfg.path = PathBuf::from("/nonexistent/containerd");
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/containerd") && e.contains("statfs"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_image_that_would_pass_the_ceiling_is_held_back() {
        // A ceiling of 100% minus what is used now leaves exactly the free
        // space: an image twice that size cannot fit, a tiny one can.
        let g = guard(100.0, 0.0);
        let fs = g.measure().await.unwrap();
        let free = fs.ceiling_bytes - fs.used_bytes;
        match g.admit_bytes("big", free).await {
            Admit::Skip { reason, .. } => assert!(reason.contains("disk space"), "{reason}"),
            Admit::Go(_) => panic!("an image of twice the free space was admitted"),
        }
        let Admit::Go(t) = g.admit_bytes("small", 1024).await else {
            panic!("a 1 KiB image was held back");
        };
        assert_eq!(*g.lock(), 2048, "the reservation counts the footprint");
        drop(t);
        assert_eq!(
            *g.lock(),
            0,
            "dropping the ticket gives the reservation back"
        );
    }

    #[tokio::test]
    async fn reservations_of_pulls_in_flight_count() {
        let g = guard(100.0, 0.0);
        let fs = g.measure().await.unwrap();
        let free = fs.ceiling_bytes - fs.used_bytes;
        // Each takes 2 × 0.3 of the free space: the second would pass it.
        let third = free * 3 / 10;
        let Admit::Go(a) = g.admit_bytes("a", third).await else {
            panic!("first admitted");
        };
        // The second fits alone but not beside the first: it waits for it.
        let g2 = g.clone();
        let b = tokio::spawn(async move { g2.admit_bytes("b", third).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !b.is_finished(),
            "admitted beside a pull it does not fit with"
        );
        drop(a);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), b)
            .await
            .expect("admitted once the first pull ended")
            .unwrap();
        assert!(matches!(got, Admit::Go(_)));
    }

    #[tokio::test]
    async fn disk_pressure_holds_everything_back() {
        let g = guard(85.0, 5.0);
        g.pressure().store(true, Ordering::Relaxed);
        match g.admit_bytes("x", 1).await {
            Admit::Skip { reason, .. } => assert!(reason.contains("DiskPressure")),
            Admit::Go(_) => panic!("pulled under DiskPressure"),
        }
    }
}
