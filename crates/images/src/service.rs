//! The image service: pulls into the content store and the snapshot store, and the image
//! records kubelet lists, inspects and removes.
//!
//! Concurrency: pulls of one reference queue on its key, and layer downloads on their chain
//! id, so shared work happens once; the garbage collector takes `gc_lock` for writing, pulls
//! for reading, so that it never sees a pull's fresh snapshots before their image is recorded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tokio::sync::{RwLock, Semaphore};

use crate::auth::{AuthConfig, Credentials, CredentialsFile};
use crate::config::RegistryConfig;
use crate::content::ContentStore;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
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
    gc_lock: RwLock<()>,
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
    /// Opens (or creates) the stores; blocking, called once at start.
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
        Ok(ImageService {
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
            gc_lock: RwLock::new(()),
            root,
        })
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
        let _no_gc = self.gc_lock.read().await;

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
        let config_bytes = match self.content.contains(&config_descriptor.digest) {
            true => self.content.get(&config_descriptor.digest)?,
            false => {
                resolved.source.small_blob(&format!("config of {what}"), config_descriptor).await?
            }
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

        // Every layer not yet unpacked, in parallel up to the download limit; each layer
        // unpacks into a directory of its own, so order does not matter.
        let mut jobs = Vec::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let parent = i.checked_sub(1).map(|p| chains[p].clone());
            jobs.push(self.fetch_layer(resolved, &what, layer, &chains[i], parent, &diff_ids[i]));
        }
        for result in futures::future::join_all(jobs).await {
            result?;
        }

        // Metadata last: once the image is recorded, everything it names is on disk.
        let content = self.content.clone();
        let blobs: Vec<(Digest, Vec<u8>)> = [
            Some((config_descriptor.digest.clone(), config_bytes.clone())),
            Some((resolved.manifest_digest.clone(), resolved.manifest_bytes.clone())),
            resolved.index.clone(),
        ]
        .into_iter()
        .flatten()
        .collect();
        spawn_blocking(move || {
            blobs.iter().try_for_each(|(digest, bytes)| content.put(digest, None, bytes))
        })
        .await?;

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
        let index = self.index.clone();
        spawn_blocking(move || {
            let mut index =
                index.lock().map_err(|_| Error::Internal("image index lock poisoned".into()))?;
            index.upsert(record)
        })
        .await
    }

    async fn fetch_layer(
        &self,
        resolved: &Resolved,
        image: &str,
        layer: &Descriptor,
        chain_id: &Digest,
        parent: Option<Digest>,
        diff_id: &Digest,
    ) -> Result<()> {
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
        let mut stream = resolved.source.blob(&what, layer).await?;

        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(UNPACK_QUEUE);
        let snapshots = self.snapshots.clone();
        let (chain, expected_diff, options, name) =
            (chain_id.clone(), diff_id.clone(), self.unpack.clone(), what.clone());
        let unpacking = tokio::task::spawn_blocking(move || {
            snapshots.unpack(
                &chain,
                parent.as_ref(),
                &expected_diff,
                ChannelReader::new(rx),
                &name,
                &options,
            )
        });

        let mut hasher = Hasher::new();
        let mut failure: Option<Error> = None;
        let mut unpacker_open = true;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    if hasher.len() > layer.size {
                        failure = Some(Error::SizeMismatch {
                            what: what.clone(),
                            expected: layer.size,
                            actual: hasher.len(),
                        });
                        break;
                    }
                    // Once the unpacker has stopped (a layer it refuses or cannot read), the
                    // rest is still hashed: a corrupt blob is best reported as what it is.
                    if unpacker_open && tx.send(Ok(chunk)).await.is_err() {
                        unpacker_open = false;
                    }
                }
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        // The unpacker commits only after reading to the end of the stream, and the end is
        // sent only once the blob's size and digest are right: a bad blob never becomes a
        // snapshot, even when its uncompressed content happens to be fine.
        if failure.is_none() {
            let len = hasher.len();
            let actual = hasher.finish();
            if len != layer.size {
                failure = Some(Error::SizeMismatch {
                    what: what.clone(),
                    expected: layer.size,
                    actual: len,
                });
            } else if actual != layer.digest {
                failure = Some(Error::DigestMismatch {
                    what: what.clone(),
                    expected: layer.digest.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        if let Some(err) = &failure {
            let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
        }
        drop(tx);
        let unpacked =
            unpacking.await.map_err(|err| Error::Internal(format!("unpacking {what}: {err}")))?;
        match (failure, unpacked) {
            (Some(err), _) => Err(err),
            (None, Err(err)) => Err(err),
            (None, Ok(info)) => {
                tracing::debug!(layer = %layer.digest, chain_id = %info.chain_id, size = info.size, "layer fetched");
                Ok(())
            }
        }
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
    /// then collects what no image uses any more. Unknown images are not an error.
    pub async fn remove(&self, image: &str) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        let removed = {
            let mut index = self.index()?;
            let mut removed = None;
            for key in lookup_keys(image) {
                if index.resolve(&key).is_some() {
                    removed = index.remove(&key)?;
                    break;
                }
            }
            removed
        };
        if let Some(record) = removed {
            tracing::info!(id = %record.id, "image removed");
            self.collect_garbage_locked().await?;
        }
        Ok(())
    }

    /// Removes snapshots and blobs that no image references.
    pub async fn collect_garbage(&self) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        self.collect_garbage_locked().await
    }

    async fn collect_garbage_locked(&self) -> Result<()> {
        let (chains, blobs) = {
            let index = self.index()?;
            (index.referenced_chain_ids(), index.referenced_blobs())
        };
        let (snapshots, content) = (self.snapshots.clone(), self.content.clone());
        spawn_blocking(move || {
            for info in snapshots.list()? {
                if !chains.contains(&info.chain_id) {
                    tracing::debug!(chain_id = %info.chain_id, "removing unused snapshot");
                    snapshots.remove(&info.chain_id)?;
                }
            }
            for digest in content.list()? {
                if !blobs.contains(&digest) {
                    content.remove(&digest)?;
                }
            }
            Ok(())
        })
        .await
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

/// The keys an image name may be stored under, most specific first.
fn lookup_keys(image: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let hex_id = image.len() == 64 && image.bytes().all(|b| b.is_ascii_hexdigit());
    if hex_id {
        keys.push(format!("sha256:{image}"));
    }
    if image.parse::<Digest>().is_ok() {
        keys.push(image.to_string());
    }
    if let Ok(reference) = image.parse::<Reference>() {
        if let Some(digest) = &reference.digest {
            keys.push(reference.with_digest(digest));
        }
        if let Some(tagged) = reference.tagged() {
            keys.push(tagged);
        }
    }
    keys
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
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(Error::io("reading", "/proc/self/mountinfo"))?;
    let path = path.canonicalize().map_err(Error::io("resolving", path))?;
    let best = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|mount| path.starts_with(mount))
        .max_by_key(|mount| mount.as_os_str().len());
    Ok(best.unwrap_or_else(|| PathBuf::from("/")))
}

fn unescape_mount_path(field: &str) -> PathBuf {
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The blocking side of the download → unpack pipe.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>) -> Self {
        ChannelReader { rx, current: bytes::Bytes::new() }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_keys_cover_ids_tags_and_digests() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(lookup_keys(hex), vec![format!("sha256:{hex}")]);
        assert_eq!(lookup_keys(&format!("sha256:{hex}"))[0], format!("sha256:{hex}"));
        assert!(lookup_keys("busybox").contains(&"docker.io/library/busybox:latest".to_string()));
        let keys = lookup_keys(&format!("busybox@sha256:{hex}"));
        assert!(keys.contains(&format!("docker.io/library/busybox@sha256:{hex}")), "{keys:?}");
    }

    #[test]
    fn mount_paths_unescape() {
        assert_eq!(unescape_mount_path("/a\\040b"), PathBuf::from("/a b"));
        assert_eq!(mountpoint_of(Path::new("/proc/self")).unwrap(), PathBuf::from("/proc"));
    }
}
