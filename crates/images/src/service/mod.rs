//! The image service: pulls into the content store and the snapshot store, and the image
//! records kubelet lists, inspects and removes.
//!
//! Concurrency: pulls of one reference queue on its key, and layer downloads on their chain
//! id, so shared work happens once. A pull registers the chain ids and blobs it works on in
//! [`InUse`] before it looks at the stores, and the garbage collector spares them; neither waits
//! for the other's long part. The only lock they share, `gc_lock`, is held for GC's decision
//! and detaching (renames and unlinks, not the recursive deletes), and for a pull's final check
//! that its snapshots are there and the record's write: so a GC that decided before the pull
//! registered cannot remove a snapshot between the pull's "exists" check and its record.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};

use crate::auth::{AuthConfig, Credentials, CredentialsFile};
use crate::config::RegistryConfig;
use crate::content::ContentStore;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::holds::{Hold, Holds};
use crate::hosts::RegistryHosts;
use crate::keyed::KeyedLocks;
use crate::manifest::{self, Descriptor};
use crate::metadata::{ImageIndex, ImageRecord, LayerRecord};
use crate::reference::Reference;
use crate::remote::{Remote, Resolved};
use crate::snapshot::{chain_ids, SnapshotStore};
use crate::unpack::UnpackOptions;

/// Chunks in flight between the download and the unpacking thread: enough to keep both busy,
/// small enough that a layer is never held in memory.
const UNPACK_QUEUE: usize = 16;

/// A GC that started before a pull registered its layers may remove one the pull found
/// present; the pull then fetches it again. After one round its layers are registered, so a
/// second is enough; the third is for safety.
const COMMIT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct ImageServiceOptions {
    /// `<berth root>/images`.
    pub root: PathBuf,
    pub registry: RegistryConfig,
    /// References reported as pinned (normalised at open).
    pub pinned: Vec<String>,
    pub unpack: UnpackOptions,
}

pub struct ImageService {
    root: PathBuf,
    content: Arc<ContentStore>,
    snapshots: Arc<SnapshotStore>,
    index: Arc<Mutex<ImageIndex>>,
    remote: Remote,
    credentials_file: PathBuf,
    unpack: UnpackOptions,
    /// Normalised repo tags and digests of the pinned images.
    pinned: Vec<String>,
    downloads: Arc<Semaphore>,
    pulls: KeyedLocks,
    layers: Arc<KeyedLocks>,
    /// What pulls in progress own: the GC spares it.
    in_use: Arc<InUse>,
    /// What containers use: the GC spares it too.
    holds: Arc<Holds>,
    /// Taken on blocking threads only, never across an await: see the module doc.
    gc_lock: Arc<Mutex<()>>,
    /// Layer bytes received from registries since start (berthd's metrics).
    downloaded: Arc<AtomicU64>,
}

/// What a container needs of its image.
#[derive(Debug, Clone)]
pub struct ContainerImage {
    pub record: ImageRecord,
    pub run: crate::manifest::RunConfig,
    /// The layers' snapshot directories (`…/fs`), top layer first: overlay's lowerdir order.
    pub layers: Vec<PathBuf>,
    /// Chain ids of the layers, base first: what a container holds against GC.
    pub chain_ids: Vec<Digest>,
}

/// An image and, when asked, its config for `ImageStatus` verbose.
pub struct ImageDetails {
    pub record: ImageRecord,
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub path: PathBuf,
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

impl ImageService {
    /// Opens (or creates) the stores and collects what no image uses (leftovers of a crash
    /// between a removal and its GC, or of failed pulls); blocking, called once at start.
    pub fn open(options: ImageServiceOptions) -> Result<ImageService> {
        let root = options.root;
        std::fs::create_dir_all(&root).map_err(Error::io("creating", &root))?;
        let content = ContentStore::open(&root.join("content"))?;
        let snapshots = SnapshotStore::open(&root.join("snapshots"))?;
        let index = ImageIndex::open(&root.join("images.json"))?;
        let stall = Duration::from_secs(options.registry.stall_timeout_secs);
        let downloads = options.registry.max_concurrent_downloads.max(1);
        let mut pinned = Vec::new();
        for image in &options.pinned {
            let reference: Reference = image.parse()?;
            pinned.extend(reference.tagged());
            if let Some(digest) = &reference.digest {
                pinned.push(reference.with_digest(digest));
            }
        }
        let service = ImageService {
            content: Arc::new(content),
            snapshots: Arc::new(snapshots),
            index: Arc::new(Mutex::new(index)),
            remote: Remote::new(RegistryHosts::new(&options.registry), stall),
            credentials_file: options.registry.credentials_file.clone(),
            unpack: options.unpack,
            pinned,
            downloads: Arc::new(Semaphore::new(downloads)),
            pulls: KeyedLocks::default(),
            layers: Arc::new(KeyedLocks::default()),
            in_use: Arc::default(),
            holds: Arc::new(Holds::open(&root.join("holds"))?),
            gc_lock: Arc::default(),
            downloaded: Arc::default(),
            root,
        };
        // Only space is at stake: a failure is retried at the next RemoveImage.
        if let Err(err) = service.collector().run() {
            tracing::warn!(error = %err, "cannot collect unused images at start");
        }
        Ok(service)
    }

    fn collector(&self) -> Collector {
        Collector {
            content: self.content.clone(),
            snapshots: self.snapshots.clone(),
            index: self.index.clone(),
            in_use: self.in_use.clone(),
            holds: self.holds.clone(),
            lock: self.gc_lock.clone(),
        }
    }

    fn index(&self) -> Result<std::sync::MutexGuard<'_, ImageIndex>> {
        self.index.lock().map_err(|_| Error::Internal("image index lock poisoned".into()))
    }

    /// Pulls `image` (any form kubelet or crictl sends) and returns its record.
    pub async fn pull(&self, image: &str, auth: Option<&AuthConfig>) -> Result<ImageRecord> {
        let reference: Reference = image.parse()?;
        let request_credentials = match auth {
            Some(auth) => Credentials::from_request(auth)?,
            None => None,
        };
        let _same_image = self.pulls.lock(&reference.to_string()).await;

        let file = CredentialsFile::load(&self.credentials_file)?;
        let origin = reference.registry.clone();
        let resolved = self
            .remote
            .resolve(&reference, |endpoint| {
                // The request's credentials are for the image's registry; a mirror, another
                // host, gets only what the node's credentials file has for it.
                if !endpoint.mirror {
                    if let Some(credentials) = &request_credentials {
                        return Some(credentials.clone());
                    }
                    return file.lookup(&origin);
                }
                file.lookup(&endpoint.host)
            })
            .await?;
        tracing::debug!(
            image = %reference,
            host = %resolved.source.endpoint.host,
            manifest = %resolved.manifest_digest,
            "resolved"
        );
        let record = self.fetch(&reference, &resolved).await?;
        tracing::info!(image = %reference, id = %record.id, "image pulled");
        Ok(self.with_pin(record))
    }

    async fn fetch(&self, reference: &Reference, resolved: &Resolved) -> Result<ImageRecord> {
        let what = reference.to_string();
        let manifest = &resolved.manifest;
        let config_descriptor = &manifest.config;
        // Registered before the stores are looked at, and until the image is recorded or the
        // pull fails: the GC leaves alone what this pull found present or is fetching.
        let mut in_use = self.in_use.guard();
        in_use.hold_blobs([
            config_descriptor.digest.clone(),
            resolved.manifest_digest.clone(),
            resolved.top_digest.clone(),
        ]);
        let config_bytes = match self.content.get(&config_descriptor.digest) {
            Ok(bytes) => bytes,
            Err(Error::NotFound { .. }) => {
                resolved.source.small_blob(&format!("config of {what}"), config_descriptor).await?
            }
            Err(err) => return Err(err),
        };
        let config = manifest::parse_config(&what, &config_bytes)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(Error::BadManifest {
                reference: what,
                reason: format!(
                    "{} layers in the manifest but {} diff ids in the config",
                    manifest.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let chains = chain_ids(diff_ids);
        in_use.hold_chains(chains.iter().cloned());

        let blobs: Vec<(Digest, Vec<u8>)> = [
            Some((config_descriptor.digest.clone(), config_bytes.clone())),
            Some((resolved.manifest_digest.clone(), resolved.manifest_bytes.clone())),
            resolved.index.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids.iter().zip(&chains))
            .map(|(layer, (diff_id, chain_id))| LayerRecord {
                digest: layer.digest.clone(),
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
                size: layer.size,
                media_type: layer.media_type.clone(),
            })
            .collect();
        let size = manifest.layers.iter().map(|l| l.size).sum::<u64>() + config_descriptor.size;
        let record = ImageRecord {
            id: config_descriptor.digest.clone(),
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.with_digest(&resolved.top_digest)],
            manifest_digest: resolved.manifest_digest.clone(),
            config_digest: config_descriptor.digest.clone(),
            layers,
            size,
            user: config.config.and_then(|c| c.user).unwrap_or_default(),
            created_unix_nanos: now_nanos(),
            pinned: false,
        };

        for attempt in 1..=COMMIT_ATTEMPTS {
            // Every layer not yet unpacked, in parallel up to the download limit; each layer
            // unpacks into a directory of its own, so order does not matter. The first failure
            // drops the others, which cancels their downloads; their unpackers then find their
            // pipes closed, and stop.
            let (unpacking, mut unpackers_gone) = mpsc::channel::<()>(1);
            let jobs = manifest.layers.iter().enumerate().map(|(i, layer)| {
                let job = LayerJob {
                    layer,
                    chain_id: &chains[i],
                    parent: i.checked_sub(1).map(|p| chains[p].clone()),
                    diff_id: &diff_ids[i],
                };
                self.fetch_layer(resolved, &what, job, unpacking.clone())
            });
            let fetched = futures::future::try_join_all(jobs).await;
            // Each unpacker holds a sender until it returns, having removed its temp dir: a
            // failed pull leaves nothing half unpacked behind when it answers.
            drop(unpacking);
            while unpackers_gone.recv().await.is_some() {}
            fetched?;

            // Metadata last: once the image is recorded, everything it names is on disk.
            let recorded =
                commit(self.collector(), chains.clone(), blobs.clone(), record.clone()).await?;
            match recorded {
                Some(record) => return Ok(record),
                None => tracing::warn!(
                    image = %what,
                    attempt,
                    "a layer was collected before the image was recorded; fetching it again"
                ),
            }
        }
        Err(Error::Internal(format!(
            "{what}: its layers were collected {COMMIT_ATTEMPTS} times before it was recorded"
        )))
    }

    async fn fetch_layer(
        &self,
        resolved: &Resolved,
        image: &str,
        job: LayerJob<'_>,
        unpacking: mpsc::Sender<()>,
    ) -> Result<()> {
        let LayerJob { layer, chain_id, parent, diff_id } = job;
        let _same_layer = self.layers.lock(chain_id.hex()).await;
        if self.snapshots.exists(chain_id) {
            return Ok(());
        }
        let _slot = self
            .downloads
            .acquire()
            .await
            .map_err(|_| Error::Internal("download limit closed".into()))?;
        let what = format!("layer {} of {image}", layer.digest);
        // The source verifies the blob's digest (oci-client, or direct.rs for mutual TLS): the
        // stream ends only once every byte hashed to the descriptor's digest, and a mismatch
        // is its last item, an error.
        let downloaded = self.downloaded.clone();
        let stream = resolved.source.blob(&what, layer).await?.inspect(move |piece| {
            if let Ok(chunk) = piece {
                downloaded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });

        let (tx, rx) = mpsc::channel::<Piece>(UNPACK_QUEUE);
        let snapshots = self.snapshots.clone();
        let (chain, expected_diff, options, name) =
            (chain_id.clone(), diff_id.clone(), self.unpack.clone(), what.clone());
        let unpacking = tokio::task::spawn_blocking(move || {
            let _running = unpacking;
            snapshots.unpack(
                &chain,
                parent.as_ref(),
                &expected_diff,
                ChannelReader::new(rx),
                &name,
                &options,
            )
        });
        let pumped = pump(stream, tx, &what, layer.size).await;
        let unpacked =
            unpacking.await.map_err(|err| Error::Internal(format!("unpacking {what}: {err}")))?;
        match (pumped, unpacked) {
            // What the download found wrong is the cause of whatever the unpacker then said.
            (Pumped::Failed(err), _) => Err(err),
            // An unpacker that stopped early explains itself (or found the layer committed by
            // another pull meanwhile).
            (_, Err(err)) => Err(err),
            (_, Ok(info)) => {
                tracing::debug!(layer = %layer.digest, chain_id = %info.chain_id, size = info.size, "layer fetched");
                Ok(())
            }
        }
    }

    /// Layer bytes received from registries since start, failed downloads included.
    pub fn downloaded_bytes(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    /// Finds an image by what kubelet or crictl pass: an id (`sha256:<hex>`, or its hex), a
    /// reference in any form (`busybox`, `docker.io/library/busybox:latest`,
    /// `name@sha256:…`).
    pub fn find(&self, image: &str) -> Result<Option<ImageRecord>> {
        let index = self.index()?;
        for key in lookup_keys(image) {
            if let Some(record) = index.resolve(&key) {
                return Ok(Some(self.with_pin(record)));
            }
        }
        Ok(None)
    }

    /// Pinning follows the configuration of the day, so it is decided when an image is
    /// reported rather than stored.
    fn with_pin(&self, mut record: ImageRecord) -> ImageRecord {
        record.pinned |= record
            .repo_tags
            .iter()
            .chain(&record.repo_digests)
            .any(|name| self.pinned.contains(name));
        record
    }

    /// The image a new container of `image` runs on; None when it is not pulled.
    pub fn for_container(&self, image: &str) -> Result<Option<ContainerImage>> {
        let Some(record) = self.find(image)? else { return Ok(None) };
        let bytes = self.content.get(&record.config_digest)?;
        let config = crate::manifest::parse_config(&record.id.to_string(), &bytes)?;
        let chain_ids: Vec<Digest> = record.layers.iter().map(|l| l.chain_id.clone()).collect();
        let mut layers = Vec::with_capacity(chain_ids.len());
        for chain in chain_ids.iter().rev() {
            if !self.snapshots.exists(chain) {
                return Err(Error::Corrupt {
                    path: self.snapshots.layer_dir(chain),
                    reason: format!("a layer of image {} is missing; pull it again", record.id),
                });
            }
            layers.push(self.snapshots.layer_dir(chain));
        }
        Ok(Some(ContainerImage {
            record,
            run: config.config.unwrap_or_default(),
            layers,
            chain_ids,
        }))
    }

    /// Keeps the snapshots `hold.chains` from GC, and the images `hold.volume_images` from
    /// RemoveImage, for as long as `owner` (a container) holds them, across restarts: the hold
    /// is a file, written before the container may use them.
    /// An image volume's image removed since the caller found it is NotFound: checked under
    /// the lock RemoveImage takes, so that no container mounts an image whose removal
    /// succeeded.
    pub fn hold(&self, owner: &str, hold: &Hold) -> Result<()> {
        let _locked = lock_ignoring_poison(&self.gc_lock);
        {
            let index = self.index()?;
            if let Some(gone) =
                hold.volume_images.iter().find(|id| index.resolve(&id.to_string()).is_none())
            {
                return Err(Error::NotFound { what: format!("image {gone} (removed meanwhile)") });
            }
        }
        self.holds.hold(owner, hold)
    }

    pub fn release(&self, owner: &str) -> Result<()> {
        self.holds.release(owner)
    }

    /// Who holds anything: for the containers' recovery to release the holds of containers
    /// that a crash left unrecorded.
    pub fn holders(&self) -> Vec<String> {
        self.holds.holders()
    }

    pub fn status(&self, image: &str, verbose: bool) -> Result<Option<ImageDetails>> {
        let Some(record) = self.find(image)? else { return Ok(None) };
        let config = match verbose {
            true => {
                let bytes = self.content.get(&record.config_digest)?;
                Some(serde_json::from_slice(&bytes).map_err(|err| Error::Corrupt {
                    path: self.content.path(&record.config_digest),
                    reason: err.to_string(),
                })?)
            }
            false => None,
        };
        Ok(Some(ImageDetails { record, config }))
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        Ok(self.index()?.list().into_iter().map(|record| self.with_pin(record)).collect())
    }

    /// Removes the image `image` names (by tag: that tag; by id or digest: the whole image),
    /// then collects what no image uses any more. Unknown images are not an error, and still
    /// collect: the kubelet retries a removal whose GC failed.
    /// An image a container mounts as an image volume is refused (FailedPrecondition) while
    /// that container exists, as CRI-O refuses images in use: its record is what the volume's
    /// status names, and a kubelet's GC that tried it finds it again next round.
    pub async fn remove(&self, image: &str) -> Result<()> {
        let removed = {
            // Under the GC lock, which a hold takes too: a container holding the image now
            // either is seen here or finds the image gone.
            let _no_holds = lock_ignoring_poison(&self.gc_lock);
            let mut index = self.index()?;
            let mut removed = None;
            for key in lookup_keys(image) {
                if index.resolve(&key).is_some() {
                    if let Some(id) = index.removal(&key) {
                        let containers = self.holds.volume_users(&id);
                        if !containers.is_empty() {
                            return Err(Error::InUse { image: id.to_string(), containers });
                        }
                    }
                    removed = index.remove(&key)?;
                    break;
                }
            }
            removed
        };
        if let Some(record) = removed {
            tracing::info!(id = %record.id, "image removed");
        }
        self.collect_garbage().await
    }

    /// Removes snapshots and blobs that no image references and no pull in progress uses.
    pub async fn collect_garbage(&self) -> Result<()> {
        let collector = self.collector();
        spawn_blocking(move || collector.run()).await
    }

    /// Usage of the image filesystem, for ImageFsInfo: the usage each snapshot recorded when it
    /// was committed, plus the (small) content store, so that polling it stays cheap.
    pub async fn fs_usage(&self) -> Result<FsUsage> {
        let (snapshots, content, root) =
            (self.snapshots.clone(), self.content.clone(), self.root.clone());
        spawn_blocking(move || {
            let (snap_bytes, snap_inodes) = snapshots.usage()?;
            let (blob_bytes, blob_inodes) = content.usage()?;
            Ok(FsUsage {
                mountpoint: mountpoint_of(&root)?,
                path: root,
                used_bytes: snap_bytes + blob_bytes,
                inodes_used: snap_inodes + blob_inodes,
            })
        })
        .await
    }
}

/// One layer for [`ImageService::fetch_layer`].
struct LayerJob<'a> {
    layer: &'a Descriptor,
    chain_id: &'a Digest,
    parent: Option<Digest>,
    diff_id: &'a Digest,
}

/// The keys an image name may be stored under, most specific first. The name as given comes
/// first: [`ImageIndex::resolve`] takes ids, bare hex ids and unique id prefixes (what
/// `crictl rmi` passes) as they are. A reference with a digest names that digest only: its
/// tag must not find another image when the digest is absent.
fn lookup_keys(image: &str) -> Vec<String> {
    let mut keys = vec![image.to_string()];
    if let Ok(reference) = image.parse::<Reference>() {
        match &reference.digest {
            Some(digest) => keys.push(reference.with_digest(digest)),
            None => keys.extend(reference.tagged()),
        }
    }
    let mut seen = HashSet::new();
    keys.retain(|key| seen.insert(key.clone()));
    keys
}

/// What the GC needs, owned, to run on a blocking thread.
struct Collector {
    content: Arc<ContentStore>,
    snapshots: Arc<SnapshotStore>,
    index: Arc<Mutex<ImageIndex>>,
    in_use: Arc<InUse>,
    holds: Arc<Holds>,
    lock: Arc<Mutex<()>>,
}

impl Collector {
    /// Blocking. Decides and detaches under the lock; deletes the detached snapshots after.
    fn run(&self) -> Result<()> {
        let mut detached: Vec<OsString> = Vec::new();
        let decided = self.detach_unused(&mut detached);
        // Purge what was detached even if detaching the rest failed; what cannot go now is
        // removed when the store next opens.
        let mut purged = Ok(());
        for name in &detached {
            if let Err(err) = self.snapshots.purge(name) {
                tracing::warn!(error = %err, "cannot delete a collected snapshot");
                purged = purged.and(Err(err));
            }
        }
        decided.and(purged)
    }

    fn detach_unused(&self, detached: &mut Vec<OsString>) -> Result<()> {
        let _locked = lock_ignoring_poison(&self.lock);
        // Listed before the pulls in progress are read: a snapshot a pull commits is
        // registered before it appears, so one listed here is seen as in use.
        let snapshots = self.snapshots.list()?;
        let blobs = self.content.list()?;
        let (referenced_chains, referenced_blobs) = {
            let index = self
                .index
                .lock()
                .map_err(|_| Error::Internal("image index lock poisoned".into()))?;
            (index.referenced_chain_ids(), index.referenced_blobs())
        };
        let (mut busy_chains, busy_blobs) = self.in_use.held();
        busy_chains.extend(self.holds.held()?);
        for info in snapshots {
            let chain = &info.chain_id;
            if referenced_chains.contains(chain) || busy_chains.contains(chain) {
                continue;
            }
            tracing::debug!(chain_id = %chain, "removing unused snapshot");
            detached.extend(self.snapshots.detach(chain)?);
        }
        for digest in blobs {
            if !referenced_blobs.contains(&digest) && !busy_blobs.contains(&digest) {
                self.content.remove(&digest)?;
            }
        }
        Ok(())
    }
}

/// A pull's last step: under the GC lock, checks that its snapshots are (still) there and
/// records the image. None when one is missing: the pull fetches it again.
async fn commit(
    stores: Collector,
    chains: Vec<Digest>,
    blobs: Vec<(Digest, Vec<u8>)>,
    record: ImageRecord,
) -> Result<Option<ImageRecord>> {
    spawn_blocking(move || {
        // Written before the lock, so that the lock is not held over fsyncs; written again
        // (a stat, usually) under it, in case a GC that decided before the pull registered
        // them has just removed them.
        let put = |(digest, bytes): &(Digest, Vec<u8>)| stores.content.put(digest, None, bytes);
        blobs.iter().try_for_each(put)?;
        let _no_gc = lock_ignoring_poison(&stores.lock);
        if let Some(missing) = chains.iter().find(|chain| !stores.snapshots.exists(chain)) {
            tracing::debug!(chain_id = %missing, "snapshot collected before its image was recorded");
            return Ok(None);
        }
        blobs.iter().try_for_each(put)?;
        let mut index =
            stores.index.lock().map_err(|_| Error::Internal("image index lock poisoned".into()))?;
        index.upsert(record).map(Some)
    })
    .await
}

fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The chain ids and blobs that pulls in progress own, counted: two pulls may share a layer.
#[derive(Default)]
struct InUse {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    chains: HashMap<Digest, usize>,
    blobs: HashMap<Digest, usize>,
}

impl InUse {
    fn guard(self: &Arc<Self>) -> InUseGuard {
        InUseGuard { owner: self.clone(), chains: Vec::new(), blobs: Vec::new() }
    }

    /// The chain ids and the blobs held now.
    fn held(&self) -> (HashSet<Digest>, HashSet<Digest>) {
        let held = lock_ignoring_poison(&self.held);
        (held.chains.keys().cloned().collect(), held.blobs.keys().cloned().collect())
    }
}

/// One pull's registrations, released when it is dropped.
struct InUseGuard {
    owner: Arc<InUse>,
    chains: Vec<Digest>,
    blobs: Vec<Digest>,
}

impl InUseGuard {
    fn hold_chains(&mut self, chains: impl IntoIterator<Item = Digest>) {
        let mut held = lock_ignoring_poison(&self.owner.held);
        for chain in chains {
            *held.chains.entry(chain.clone()).or_default() += 1;
            self.chains.push(chain);
        }
    }

    fn hold_blobs(&mut self, blobs: impl IntoIterator<Item = Digest>) {
        let mut held = lock_ignoring_poison(&self.owner.held);
        for blob in blobs {
            *held.blobs.entry(blob.clone()).or_default() += 1;
            self.blobs.push(blob);
        }
    }
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut held = lock_ignoring_poison(&self.owner.held);
        let held = &mut *held;
        for (mine, counts) in [(&self.chains, &mut held.chains), (&self.blobs, &mut held.blobs)] {
            for digest in mine {
                if let Some(count) = counts.get_mut(digest) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(digest);
                    }
                }
            }
        }
    }
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}

/// The mount point of the filesystem holding `path`: the longest mount point that prefixes it.
fn mountpoint_of(path: &Path) -> Result<PathBuf> {
    // Bytes: a mount elsewhere on the host may have a path that is not UTF-8.
    let mountinfo = std::fs::read("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    let path = path.canonicalize().map_err(Error::io("resolving", path))?;
    Ok(mountpoint_in(&mountinfo, &path))
}

fn mountpoint_in(mountinfo: &[u8], path: &Path) -> PathBuf {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape_mount_path)
        .filter(|mount| path.starts_with(mount))
        .max_by_key(|mount| mount.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo path.
fn unescape_mount_path(field: &[u8]) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits.iter().fold(0u16, |value, d| value * 8 + u16::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// What goes down the download → unpack pipe. The end is said explicitly, and only once the
/// whole blob is verified: a channel that closes without it (a download dropped or failed) is
/// an error to the unpacker, never the end of a complete layer.
enum Piece {
    Chunk(Bytes),
    End,
    Fail(std::io::Error),
}

/// What became of a blob's download.
enum Pumped {
    /// Every byte was sent, the size and digest are right, and the end was sent.
    Complete,
    Failed(Error),
    /// The unpacker stopped reading (it failed, or found the layer committed meanwhile); the
    /// rest was not downloaded.
    UnpackerStopped,
}

/// Feeds a blob's stream to the unpacker. The stream verifies the digest (see
/// [`crate::remote::Source::blob`]); this checks the size, and stops at the first byte beyond
/// it. The end is sent only after the stream ended cleanly with exactly `size` bytes.
async fn pump(
    stream: impl Stream<Item = Result<Bytes>>,
    tx: mpsc::Sender<Piece>,
    what: &str,
    size: u64,
) -> Pumped {
    let mut stream = std::pin::pin!(stream);
    let mut received: u64 = 0;
    let failure = loop {
        match stream.next().await {
            None if received == size => break None,
            None => {
                break Some(Error::SizeMismatch {
                    what: what.into(),
                    expected: size,
                    actual: received,
                })
            }
            Some(Err(err)) => break Some(err),
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if received > size {
                    break Some(Error::SizeMismatch {
                        what: what.into(),
                        expected: size,
                        actual: received,
                    });
                }
                if tx.send(Piece::Chunk(chunk)).await.is_err() {
                    return Pumped::UnpackerStopped;
                }
            }
        }
    };
    match failure {
        Some(err) => {
            let _ = tx.send(Piece::Fail(std::io::Error::other(err.to_string()))).await;
            Pumped::Failed(err)
        }
        None => match tx.send(Piece::End).await {
            Ok(()) => Pumped::Complete,
            Err(_) => Pumped::UnpackerStopped,
        },
    }
}

/// The blocking side of the download → unpack pipe.
struct ChannelReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Piece>) -> Self {
        ChannelReader { rx, current: Bytes::new(), ended: false }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Chunk(chunk)) => self.current = chunk,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Fail(err)) => return Err(err),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the layer's download stopped before the end of the blob",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
