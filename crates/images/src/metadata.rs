//! The node's image records: which images are present, under which names, on which layers.
//!
//! All records live in one versioned JSON file, `images.json`, rewritten atomically on every
//! change. A node holds at most a few hundred images, so rewriting the whole file is cheap, and
//! one file makes a tag moving from one image to another a single atomic change: a crash can
//! never leave the tag on both images or on neither.
//!
//! Every change is computed on a copy, persisted, and only then made visible in memory, so a
//! failed write leaves the index agreeing with the disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::ErrorKind as IoErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};
use berth_fsutil::atomic_write;

/// The format version this code writes and reads.
const VERSION: u32 = 1;

/// Shortest id prefix `resolve` accepts: crictl shows 13 hex characters and docker 12, and a
/// shorter prefix is too likely to name the wrong image on a busy node.
const MIN_ID_PREFIX: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest: the image ID the kubelet sees.
    pub id: Digest,
    /// Normalised names such as "docker.io/library/busybox:latest"; sorted, no duplicates.
    pub repo_tags: Vec<String>,
    /// "docker.io/library/busybox@sha256:<manifest or index digest>"; sorted, no duplicates.
    pub repo_digests: Vec<String>,
    /// The platform manifest the image was unpacked from.
    pub manifest_digest: Digest,
    /// Always equal to `id`.
    pub config_digest: Digest,
    /// Base layer first.
    pub layers: Vec<LayerRecord>,
    /// What ImageStatus reports: compressed layer sizes plus the config size.
    pub size: u64,
    /// The config's User, "" if none.
    pub user: String,
    /// When this node pulled the image.
    pub created_unix_nanos: i64,
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the compressed blob, as in the manifest.
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    images: Vec<ImageRecord>,
}

/// Read first, alone, so that a file from a newer berth is refused for its version rather than
/// for whatever field it added.
#[derive(Deserialize)]
struct FileVersion {
    version: u32,
}

/// How a key named an image; removal treats a tag differently from the image's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    Id,
    Tag,
    RepoDigest,
}

/// The image records in memory, with lookups by tag and repo digest. Not synchronised: the
/// owner serialises access (and, since every change fsyncs, keeps it off async threads).
#[derive(Debug)]
pub struct ImageIndex {
    path: PathBuf,
    records: BTreeMap<Digest, ImageRecord>,
    by_tag: HashMap<String, Digest>,
    by_repo_digest: HashMap<String, Digest>,
}

impl ImageIndex {
    /// Loads the index from `path`; a missing file is an empty index. A file that cannot be
    /// read as an index is an error rather than an empty start, which would silently forget
    /// every image on the node.
    pub fn open(path: &Path) -> Result<ImageIndex> {
        let records = match fs::read(path) {
            Ok(bytes) => parse(path, &bytes)?,
            Err(err) if err.kind() == IoErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(Error::io("reading", path)(err)),
        };
        let (by_tag, by_repo_digest) = build_lookups(&records)
            .map_err(|reason| Error::Corrupt { path: path.into(), reason })?;
        Ok(ImageIndex { path: path.to_path_buf(), records, by_tag, by_repo_digest })
    }

    /// Every image, ordered by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.records.values().cloned().collect()
    }

    /// Finds the image `key` names, as the kubelet and crictl pass images: a full id
    /// "sha256:<hex>", a bare hex id, a unique id prefix of at least 12 hex characters (with or
    /// without "sha256:"), a repo tag, or a repo digest "name@sha256:<hex>". Tags and repo
    /// digests must already be normalised; they are compared exactly.
    pub fn resolve(&self, key: &str) -> Option<ImageRecord> {
        self.lookup(key).and_then(|(id, _)| self.records.get(&id)).cloned()
    }

    /// Adds `record`, or merges its names into the image with the same id. Names are unique
    /// across images: a tag or repo digest another image held moves to this one, and that
    /// image stays even if left with no name, as docker and containerd keep it (addressable by
    /// id until removed or collected). Returns the record as stored, after persisting it.
    pub fn upsert(&mut self, mut record: ImageRecord) -> Result<ImageRecord> {
        if record.id != record.config_digest {
            return Err(Error::Internal(format!(
                "image record {}: config digest {} differs from the id",
                record.id, record.config_digest
            )));
        }
        let mut records = self.records.clone();
        if let Some(old) = records.get(&record.id) {
            record.repo_tags.extend(old.repo_tags.iter().cloned());
            record.repo_digests.extend(old.repo_digests.iter().cloned());
            // The first pull's time is when the node got the image; a pin set by anyone (such as
            // the sandbox image) survives a later pull that did not ask for one.
            record.created_unix_nanos = old.created_unix_nanos;
            record.pinned |= old.pinned;
        }
        record.repo_tags.sort();
        record.repo_tags.dedup();
        record.repo_digests.sort();
        record.repo_digests.dedup();

        for other in records.values_mut().filter(|other| other.id != record.id) {
            other.repo_tags.retain(|tag| record.repo_tags.binary_search(tag).is_err());
            other.repo_digests.retain(|name| record.repo_digests.binary_search(name).is_err());
        }
        records.insert(record.id.clone(), record.clone());
        // A re-pull of an image already present changes nothing: no write, no fsync.
        if records == self.records {
            return Ok(record);
        }
        self.commit(records)?;
        Ok(record)
    }

    /// Removes what `key` names. An id or repo digest names the image: it goes with all its
    /// names. A tag names only itself: the tag goes, and the image with it if that was its last
    /// tag (its repo digests then go too; an image is not kept alive by its digests alone once
    /// the user removed its last tag). Returns the record if the image is gone; an unknown key
    /// is Ok(None), so a retried removal succeeds.
    pub fn remove(&mut self, key: &str) -> Result<Option<ImageRecord>> {
        let Some((id, named)) = self.lookup(key) else { return Ok(None) };
        let mut records = self.records.clone();
        let Some(record) = records.get_mut(&id) else { return Ok(None) };
        if !removes_image(named, record, key) {
            record.repo_tags.retain(|tag| tag != key);
            self.commit(records)?;
            return Ok(None);
        }
        let removed = records.remove(&id);
        self.commit(records)?;
        Ok(removed)
    }

    /// The id of the image [`ImageIndex::remove`] of `key` would remove whole (not just a tag
    /// of it), if any.
    pub fn removal(&self, key: &str) -> Option<Digest> {
        let (id, named) = self.lookup(key)?;
        let record = self.records.get(&id)?;
        removes_image(named, record, key).then_some(id)
    }

    /// Chain ids of every image's layers: the GC keeps these snapshots.
    pub fn referenced_chain_ids(&self) -> BTreeSet<Digest> {
        self.records.values().flat_map(|r| r.layers.iter().map(|l| l.chain_id.clone())).collect()
    }

    /// Blobs the content store must keep: every image's manifest and config, and the manifest
    /// or index each repo digest names (kept so the image can be served by that digest).
    pub fn referenced_blobs(&self) -> BTreeSet<Digest> {
        let mut blobs = BTreeSet::new();
        for record in self.records.values() {
            blobs.insert(record.manifest_digest.clone());
            blobs.insert(record.config_digest.clone());
            for name in &record.repo_digests {
                if let Some(digest) = name.rsplit_once('@').and_then(|(_, d)| d.parse().ok()) {
                    blobs.insert(digest);
                }
            }
        }
        blobs
    }

    /// Pins or unpins the image `key` names (pinned images are exempt from the kubelet's GC).
    pub fn set_pinned(&mut self, key: &str, pinned: bool) -> Result<()> {
        let Some((id, _)) = self.lookup(key) else {
            return Err(Error::NotFound { what: format!("image {key:?}") });
        };
        let mut records = self.records.clone();
        match records.get_mut(&id) {
            Some(record) if record.pinned != pinned => record.pinned = pinned,
            Some(_) => return Ok(()),
            None => return Err(Error::NotFound { what: format!("image {key:?}") }),
        }
        self.commit(records)
    }

    /// Ids first: a "sha256:<hex>" key is an image id before anything else, as in containerd.
    fn lookup(&self, key: &str) -> Option<(Digest, Named)> {
        if let Some(id) = self.lookup_id(key) {
            return Some((id, Named::Id));
        }
        if let Some(id) = self.by_tag.get(key) {
            return Some((id.clone(), Named::Tag));
        }
        self.by_repo_digest.get(key).map(|id| (id.clone(), Named::RepoDigest))
    }

    fn lookup_id(&self, key: &str) -> Option<Digest> {
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() < MIN_ID_PREFIX || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let mut matches = self.records.keys().filter(|id| id.hex().starts_with(hex));
        let first = matches.next()?;
        if matches.next().is_some() {
            tracing::debug!(key, "image id prefix is ambiguous");
            return None;
        }
        Some(first.clone())
    }

    /// Persists `records` and only then makes them the index's state.
    fn commit(&mut self, records: BTreeMap<Digest, ImageRecord>) -> Result<()> {
        let (by_tag, by_repo_digest) = build_lookups(&records).map_err(|reason| {
            Error::Internal(format!("image index {}: {reason}", self.path.display()))
        })?;
        let file = FileFormat { version: VERSION, images: records.values().cloned().collect() };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|err| {
            Error::Internal(format!("encoding image index {}: {err}", self.path.display()))
        })?;
        atomic_write(&self.path, &bytes)?;
        self.records = records;
        self.by_tag = by_tag;
        self.by_repo_digest = by_repo_digest;
        Ok(())
    }
}

/// Whether removing `key`, which names `record` as `named`, removes the image rather than one
/// of its tags.
fn removes_image(named: Named, record: &ImageRecord, key: &str) -> bool {
    named != Named::Tag || record.repo_tags.iter().all(|tag| tag == key)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<Digest, ImageRecord>> {
    let corrupt = |reason: String| Error::Corrupt { path: path.to_path_buf(), reason };
    let FileVersion { version } = serde_json::from_slice(bytes)
        .map_err(|err| corrupt(format!("not an image index: {err}")))?;
    if version != VERSION {
        return Err(corrupt(format!(
            "image index format version {version}, but this berth reads only version {VERSION}"
        )));
    }
    let file: FileFormat =
        serde_json::from_slice(bytes).map_err(|err| corrupt(format!("bad image index: {err}")))?;
    let mut records = BTreeMap::new();
    for record in file.images {
        if record.id != record.config_digest {
            return Err(corrupt(format!(
                "image {} has config digest {}",
                record.id, record.config_digest
            )));
        }
        let id = record.id.clone();
        if records.insert(id.clone(), record).is_some() {
            return Err(corrupt(format!("image {id} appears twice")));
        }
    }
    Ok(records)
}

/// Image ids by repo tag, and by repo digest.
type Lookups = (HashMap<String, Digest>, HashMap<String, Digest>);

/// Builds the name lookups, refusing a name held by two images (the index's invariant).
fn build_lookups(records: &BTreeMap<Digest, ImageRecord>) -> Result<Lookups, String> {
    let mut by_tag = HashMap::new();
    let mut by_repo_digest = HashMap::new();
    for record in records.values() {
        for (names, lookup) in
            [(&record.repo_tags, &mut by_tag), (&record.repo_digests, &mut by_repo_digest)]
        {
            for name in names {
                if let Some(other) = lookup.insert(name.clone(), record.id.clone()) {
                    if other != record.id {
                        return Err(format!("{name:?} names both image {other} and {}", record.id));
                    }
                }
            }
        }
    }
    Ok((by_tag, by_repo_digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerRecord {
        LayerRecord {
            digest: Digest::of(&[b'b', n]),
            diff_id: Digest::of(&[b'd', n]),
            chain_id: Digest::of(&[b'c', n]),
            size: 100 + u64::from(n),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    fn image(config: &str, tags: &[&str], digests: &[&str]) -> ImageRecord {
        let id = Digest::of(config.as_bytes());
        ImageRecord {
            id: id.clone(),
            repo_tags: tags.iter().map(|t| t.to_string()).collect(),
            repo_digests: digests.iter().map(|d| d.to_string()).collect(),
            manifest_digest: Digest::of(format!("manifest of {config}").as_bytes()),
            config_digest: id,
            layers: vec![layer(config.len() as u8), layer(1)],
            size: 1234,
            user: "nobody".into(),
            created_unix_nanos: 1_700_000_000_000_000_000,
            pinned: false,
        }
    }

    fn repo_digest(name: &str, content: &str) -> String {
        format!("{name}@{}", Digest::of(content.as_bytes()))
    }

    const BUSYBOX: &str = "docker.io/library/busybox:latest";

    #[test]
    fn round_trip_through_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        assert!(index.list().is_empty());
        assert!(!path.exists(), "opening must not create the file");

        let busybox = repo_digest("docker.io/library/busybox", "index");
        let stored = index
            .upsert(image("a", &[BUSYBOX, "docker.io/library/busybox:1.36", BUSYBOX], &[&busybox]))
            .unwrap();
        assert_eq!(stored.repo_tags, ["docker.io/library/busybox:1.36", BUSYBOX]);
        index.upsert(image("b", &["registry.k8s.io/pause:3.9"], &[])).unwrap();
        index.set_pinned("registry.k8s.io/pause:3.9", true).unwrap();

        let reopened = ImageIndex::open(&path).unwrap();
        assert_eq!(reopened.list(), index.list());
        assert_eq!(reopened.list().len(), 2);
        assert!(reopened.resolve("registry.k8s.io/pause:3.9").unwrap().pinned);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    #[test]
    fn resolve_by_id_hex_prefix_tag_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ImageIndex::open(&dir.path().join("images.json")).unwrap();
        let busybox = repo_digest("docker.io/library/busybox", "index");
        let record = index.upsert(image("a", &[BUSYBOX], &[&busybox])).unwrap();
        let id = record.id.clone();

        for key in [
            id.to_string(),
            id.hex().to_string(),
            id.hex()[..12].to_string(),
            format!("sha256:{}", &id.hex()[..13]),
            BUSYBOX.to_string(),
            busybox.clone(),
        ] {
            assert_eq!(index.resolve(&key).as_ref(), Some(&record), "{key}");
        }
        let bare_digest = busybox.rsplit_once('@').unwrap().1;
        for key in [&id.hex()[..11], "docker.io/library/busybox", bare_digest, "", "sha256:"] {
            assert_eq!(index.resolve(key), None, "{key:?}");
        }
        // The manifest digest is not the image id.
        assert_eq!(index.resolve(&record.manifest_digest.to_string()), None);
    }

    #[test]
    fn ambiguous_prefix_resolves_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ImageIndex::open(&dir.path().join("images.json")).unwrap();
        let with_id = |hex: String| {
            let mut record = image("a", &[], &[]);
            record.id = format!("sha256:{hex}").parse().unwrap();
            record.config_digest = record.id.clone();
            record
        };
        let shared = "0123456789abcd";
        let a = index.upsert(with_id(format!("{shared}{}", "0".repeat(50)))).unwrap();
        let b = index.upsert(with_id(format!("{shared}{}", "1".repeat(50)))).unwrap();

        assert_eq!(index.resolve(shared), None);
        assert_eq!(index.resolve(&format!("sha256:{shared}")), None);
        assert_eq!(index.resolve(&format!("{shared}0")).unwrap().id, a.id);
        assert_eq!(index.resolve(&format!("{shared}1")).unwrap().id, b.id);
        // Upper case is not hex as digests spell it.
        assert_eq!(index.resolve(&format!("{shared}1").to_uppercase()), None);
    }

    #[test]
    fn tag_moves_between_images_and_names_merge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        let old_digest = repo_digest("docker.io/library/busybox", "old index");
        let old = index.upsert(image("old", &[BUSYBOX], &[&old_digest])).unwrap();
        let new_digest = repo_digest("docker.io/library/busybox", "new index");
        let new = index.upsert(image("new", &[BUSYBOX], &[&new_digest])).unwrap();

        assert_eq!(index.resolve(BUSYBOX).unwrap().id, new.id);
        // The old image stays, untagged, still reachable by its id and repo digest.
        let old_now = index.resolve(&old_digest).unwrap();
        assert_eq!(old_now.id, old.id);
        assert!(old_now.repo_tags.is_empty());

        // A later pull of the same image merges names and keeps the first pull's time and pin.
        index.set_pinned(&new.id.to_string(), true).unwrap();
        let mut again = image("new", &["docker.io/library/busybox:1.36"], &[&new_digest]);
        again.created_unix_nanos += 5;
        let merged = index.upsert(again).unwrap();
        assert_eq!(merged.repo_tags, ["docker.io/library/busybox:1.36", BUSYBOX]);
        assert_eq!(merged.repo_digests, [new_digest]);
        assert_eq!(merged.created_unix_nanos, new.created_unix_nanos);
        assert!(merged.pinned);

        let reopened = ImageIndex::open(&path).unwrap();
        assert_eq!(reopened.resolve(BUSYBOX).unwrap().id, new.id);
        assert!(reopened.resolve(&old.id.to_string()).unwrap().repo_tags.is_empty());

        let blobs = reopened.referenced_blobs();
        for digest in [&old.manifest_digest, &old.id, &new.manifest_digest, &new.id] {
            assert!(blobs.contains(digest), "{digest}");
        }
        assert!(blobs.contains(&Digest::of(b"new index")));
        assert!(blobs.contains(&Digest::of(b"old index")));
        assert_eq!(blobs.len(), 6);
        let chains = reopened.referenced_chain_ids();
        assert!(chains.contains(&layer(1).chain_id));
        assert!(chains.contains(&layer(3).chain_id));
    }

    #[test]
    fn an_upsert_that_changes_nothing_does_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        let stored = index.upsert(image("a", &[BUSYBOX], &[])).unwrap();
        // Gone from the disk: only a write would bring it back.
        fs::remove_file(&path).unwrap();

        let mut again = image("a", &[BUSYBOX], &[]);
        again.created_unix_nanos += 5;
        assert_eq!(index.upsert(again).unwrap(), stored);
        assert!(!path.exists());

        // A new name is a change.
        let tagged = index.upsert(image("a", &["x.io/a:1"], &[])).unwrap();
        assert_eq!(tagged.repo_tags, ["docker.io/library/busybox:latest", "x.io/a:1"]);
        assert_eq!(ImageIndex::open(&path).unwrap().list(), [tagged]);
        // So is a tag moving off another image, even when the upserted record is unchanged.
        let b = index.upsert(image("b", &["x.io/b:1"], &[])).unwrap();
        index.upsert(image("a", &["x.io/b:1"], &[])).unwrap();
        index.upsert(b.clone()).unwrap();
        assert_eq!(ImageIndex::open(&path).unwrap().resolve("x.io/b:1").unwrap().id, b.id);
    }

    #[test]
    fn remove_by_tag_id_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        let digest = repo_digest("docker.io/library/busybox", "index");
        let two_tags = index
            .upsert(image("a", &[BUSYBOX, "docker.io/library/busybox:1.36"], &[&digest]))
            .unwrap();

        // Removing one of two tags keeps the image.
        assert_eq!(index.remove(BUSYBOX).unwrap(), None);
        let left = index.resolve(&two_tags.id.to_string()).unwrap();
        assert_eq!(left.repo_tags, ["docker.io/library/busybox:1.36"]);
        // Its last tag takes the image and its repo digests with it.
        let gone = index.remove("docker.io/library/busybox:1.36").unwrap().unwrap();
        assert_eq!(gone.id, two_tags.id);
        assert_eq!(gone.repo_tags, ["docker.io/library/busybox:1.36"]);
        assert_eq!(gone.repo_digests, std::slice::from_ref(&digest));
        assert!(index.resolve(&digest).is_none());
        assert!(index.list().is_empty());
        // Idempotent.
        assert_eq!(index.remove("docker.io/library/busybox:1.36").unwrap(), None);
        assert_eq!(index.remove(&two_tags.id.to_string()).unwrap(), None);

        // By id: every tag goes.
        let b = index.upsert(image("b", &["x.io/b:1", "x.io/b:2"], &[])).unwrap();
        assert_eq!(index.remove(b.id.hex()).unwrap().unwrap().id, b.id);
        assert!(index.resolve("x.io/b:2").is_none());

        // By repo digest: the whole image.
        let c_digest = repo_digest("x.io/c", "c manifest");
        let c = index.upsert(image("c", &["x.io/c:1"], &[&c_digest])).unwrap();
        assert_eq!(index.remove(&c_digest).unwrap().unwrap().id, c.id);
        assert!(index.resolve("x.io/c:1").is_none());

        assert!(ImageIndex::open(&path).unwrap().list().is_empty());
    }

    #[test]
    fn set_pinned_unknown_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = ImageIndex::open(&dir.path().join("images.json")).unwrap();
        let err = index.set_pinned("x.io/nothing:1", true).unwrap_err();
        assert!(matches!(&err, Error::NotFound { what } if what.contains("x.io/nothing:1")));
    }

    #[test]
    fn upsert_refuses_an_id_that_is_not_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        let mut record = image("a", &[], &[]);
        record.config_digest = Digest::of(b"other");
        assert!(index.upsert(record).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn corrupt_or_future_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let image_json = serde_json::to_string(&image("a", &["x.io/a:1"], &[])).unwrap();
        let twice = serde_json::to_string(&image("b", &["x.io/a:1"], &[])).unwrap();
        for (content, why) in [
            ("{\"version\":1,\"images\":[".to_string(), "not an image index"),
            ("garbage".to_string(), "not an image index"),
            (
                "{\"version\":1,\"images\":[{\"id\":\"sha256:nope\"}]}".to_string(),
                "bad image index",
            ),
            (format!("{{\"version\":2,\"images\":[{image_json}]}}"), "version 2"),
            (format!("{{\"version\":1,\"images\":[{image_json},{twice}]}}"), "names both"),
        ] {
            fs::write(&path, &content).unwrap();
            match ImageIndex::open(&path).unwrap_err() {
                Error::Corrupt { path: named, reason } => {
                    assert_eq!(named, path);
                    assert!(reason.contains(why), "{content}: {reason}");
                }
                other => panic!("{content}: want Corrupt, got {other}"),
            }
        }
    }

    #[test]
    fn leftover_temp_file_from_a_crashed_write_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.json");
        let mut index = ImageIndex::open(&path).unwrap();
        let record = index.upsert(image("a", &[BUSYBOX], &[])).unwrap();
        // What a crash between the temp write and the rename of atomic_write leaves.
        fs::write(dir.path().join(".tmp-crashed"), b"{\"version\":1,\"images\":[{").unwrap();

        let mut reopened = ImageIndex::open(&path).unwrap();
        assert_eq!(reopened.list(), [record]);
        reopened.upsert(image("b", &["x.io/b:1"], &[])).unwrap();
        assert_eq!(ImageIndex::open(&path).unwrap().list().len(), 2);
    }
}
