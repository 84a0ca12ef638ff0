use super::*;
use crate::error::ErrorKind;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn lookup_keys_cover_ids_tags_and_digests() {
    assert_eq!(lookup_keys(HEX)[0], HEX);
    assert_eq!(lookup_keys(&format!("sha256:{HEX}"))[0], format!("sha256:{HEX}"));
    assert!(lookup_keys("busybox").contains(&"docker.io/library/busybox:latest".to_string()));
    let keys = lookup_keys(&format!("busybox@sha256:{HEX}"));
    assert!(keys.contains(&format!("docker.io/library/busybox@sha256:{HEX}")), "{keys:?}");
    // An id prefix as crictl shows it is passed through for the index to resolve.
    assert_eq!(lookup_keys(&HEX[..13])[0], &HEX[..13]);
    // Exact names once.
    assert_eq!(lookup_keys("docker.io/library/busybox:latest").len(), 1);
}

#[test]
fn a_reference_with_a_digest_does_not_fall_back_to_its_tag() {
    let keys = lookup_keys(&format!("busybox:1.36@sha256:{HEX}"));
    assert!(keys.contains(&format!("docker.io/library/busybox@sha256:{HEX}")), "{keys:?}");
    assert!(!keys.iter().any(|key| key.ends_with(":1.36")), "{keys:?}");
}

#[test]
fn mount_paths_unescape() {
    assert_eq!(unescape_mount_path(b"/a\\040b"), PathBuf::from("/a b"));
    assert_eq!(unescape_mount_path(b"/a\\134"), PathBuf::from("/a\\"));
    // Not an escape: left as it is.
    assert_eq!(unescape_mount_path(b"/a\\09x"), PathBuf::from("/a\\09x"));
    assert_eq!(unescape_mount_path(b"/a\\777"), PathBuf::from("/a\\777"));
    assert_eq!(mountpoint_of(Path::new("/proc/self")).unwrap(), PathBuf::from("/proc"));
}

#[test]
fn a_mount_path_that_is_not_utf8_does_not_matter() {
    let mut mountinfo = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n".to_vec();
    mountinfo.extend_from_slice(b"30 22 8:2 / /mnt/\xff\xfe rw - ext4 /dev/sdb1 rw\n");
    mountinfo.extend_from_slice(b"31 22 8:3 / /var/lib/berth rw - xfs /dev/sdc1 rw\n");
    let path = Path::new("/var/lib/berth/images");
    assert_eq!(mountpoint_in(&mountinfo, path), PathBuf::from("/var/lib/berth"));
    assert_eq!(mountpoint_in(&mountinfo, Path::new("/etc")), PathBuf::from("/"));
    let odd = PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
        b"/mnt/\xff\xfe/x".to_vec(),
    ));
    let mount = PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
        b"/mnt/\xff\xfe".to_vec(),
    ));
    assert_eq!(mountpoint_in(&mountinfo, &odd), mount);
}

/// Reads everything a ChannelReader gives, on a blocking thread.
fn read_all(rx: mpsc::Receiver<Piece>) -> tokio::task::JoinHandle<std::io::Result<Vec<u8>>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        ChannelReader::new(rx).read_to_end(&mut out).map(|_| out)
    })
}

#[tokio::test]
async fn a_channel_closed_without_its_end_is_an_error() {
    let (tx, rx) = mpsc::channel(4);
    let reading = read_all(rx);
    tx.send(Piece::Chunk(Bytes::from_static(b"half a layer"))).await.unwrap();
    drop(tx);
    let err = reading.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);

    let (tx, rx) = mpsc::channel(4);
    let reading = read_all(rx);
    tx.send(Piece::Chunk(Bytes::from_static(b"a "))).await.unwrap();
    tx.send(Piece::Chunk(Bytes::new())).await.unwrap();
    tx.send(Piece::Chunk(Bytes::from_static(b"layer"))).await.unwrap();
    tx.send(Piece::End).await.unwrap();
    drop(tx);
    assert_eq!(reading.await.unwrap().unwrap(), b"a layer");

    let (tx, rx) = mpsc::channel(4);
    let reading = read_all(rx);
    tx.send(Piece::Fail(std::io::Error::other("bad blob"))).await.unwrap();
    assert_eq!(reading.await.unwrap().unwrap_err().to_string(), "bad blob");
}

fn chunks(items: Vec<Result<&'static [u8]>>) -> impl Stream<Item = Result<Bytes>> {
    futures::stream::iter(items.into_iter().map(|item| item.map(Bytes::from_static)))
}

/// Pumps `stream` into a reader and returns both ends' results.
async fn pump_into_reader(
    stream: impl Stream<Item = Result<Bytes>>,
    size: u64,
) -> (Pumped, std::io::Result<Vec<u8>>) {
    let (tx, rx) = mpsc::channel(2);
    let reading = read_all(rx);
    let pumped = pump(stream, tx, "blob", size).await;
    (pumped, reading.await.unwrap())
}

#[tokio::test]
async fn the_end_is_sent_only_for_a_whole_verified_blob() {
    let (pumped, read) = pump_into_reader(chunks(vec![Ok(b"abc"), Ok(b"def")]), 6).await;
    assert!(matches!(pumped, Pumped::Complete));
    assert_eq!(read.unwrap(), b"abcdef");

    // A digest mismatch comes as the stream's last item: the reader fails.
    let mismatch = Error::DigestMismatch {
        what: "blob".into(),
        expected: "sha256:a".into(),
        actual: "sha256:b".into(),
    };
    let (pumped, read) =
        pump_into_reader(chunks(vec![Ok(b"abc"), Ok(b"def"), Err(mismatch)]), 6).await;
    assert!(matches!(pumped, Pumped::Failed(Error::DigestMismatch { .. })));
    assert!(read.unwrap_err().to_string().contains("digest mismatch"));

    // Short.
    let (pumped, read) = pump_into_reader(chunks(vec![Ok(b"abc")]), 6).await;
    assert!(matches!(pumped, Pumped::Failed(Error::SizeMismatch { actual: 3, .. })));
    assert!(read.is_err());

    // Long: refused at the first byte too many, the rest not read.
    let polled = Arc::new(AtomicUsize::new(0));
    let counting = {
        let polled = polled.clone();
        futures::stream::repeat_with(move || {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::from_static(b"abcd"))
        })
    };
    let (pumped, read) = pump_into_reader(counting, 6).await;
    assert!(matches!(pumped, Pumped::Failed(Error::SizeMismatch { actual: 8, .. })));
    assert!(read.is_err());
    assert_eq!(polled.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_stopped_unpacker_stops_the_download() {
    let polled = Arc::new(AtomicUsize::new(0));
    let endless = {
        let polled = polled.clone();
        futures::stream::repeat_with(move || {
            polled.fetch_add(1, Ordering::SeqCst);
            Ok(Bytes::from_static(b"abcd"))
        })
    };
    let (tx, rx) = mpsc::channel(2);
    // An unpacker that reads a little and gives up.
    let unpacker = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader::new(rx);
        let mut buf = [0u8; 4];
        reader.read_exact(&mut buf).unwrap();
    });
    let pumped = pump(endless, tx, "blob", u64::MAX).await;
    unpacker.await.unwrap();
    assert!(matches!(pumped, Pumped::UnpackerStopped));
    // What the channel holds, and the chunk that found it closed.
    assert!(polled.load(Ordering::SeqCst) <= 4, "{}", polled.load(Ordering::SeqCst));
}

fn service(root: &Path) -> ImageService {
    ImageService::open(ImageServiceOptions {
        root: root.to_path_buf(),
        registry: RegistryConfig::default(),
        pinned: Vec::new(),
        unpack: UnpackOptions::default(),
    })
    .unwrap()
}

/// A one-file layer as a snapshot; returns its chain id.
fn snapshot(service: &ImageService, name: &str) -> Digest {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(name.len() as u64);
    builder.append_data(&mut header, name, name.as_bytes()).unwrap();
    let tar = builder.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let options = UnpackOptions::default();
    service.snapshots.unpack(&diff_id, None, &diff_id, &tar[..], name, &options).unwrap();
    diff_id
}

/// Blobs and a record for an image on `chain`.
fn record(service: &ImageService, name: &str, chain: &Digest) -> ImageRecord {
    let config = format!("{{\"config\":\"{name}\"}}").into_bytes();
    let manifest = format!("{{\"manifest\":\"{name}\"}}").into_bytes();
    let (id, manifest_digest) = (Digest::of(&config), Digest::of(&manifest));
    service.content.put(&id, None, &config).unwrap();
    service.content.put(&manifest_digest, None, &manifest).unwrap();
    ImageRecord {
        id: id.clone(),
        repo_tags: vec![format!("x.io/{name}:1")],
        repo_digests: vec![format!("x.io/{name}@{manifest_digest}")],
        manifest_digest,
        config_digest: id,
        layers: vec![LayerRecord {
            digest: Digest::of(name.as_bytes()),
            diff_id: chain.clone(),
            chain_id: chain.clone(),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        }],
        size: 1,
        user: String::new(),
        created_unix_nanos: 1,
        pinned: false,
    }
}

#[tokio::test]
async fn open_collects_what_no_image_uses() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, kept_chain, orphan, orphan_blob) = {
        let service = service(dir.path());
        let kept_chain = snapshot(&service, "kept");
        let kept = service.index().unwrap().upsert(record(&service, "kept", &kept_chain));
        // What a failed pull, or a crash between a removal and its GC, leaves.
        let orphan = snapshot(&service, "orphan");
        let orphan_blob = Digest::of(b"orphan");
        service.content.put(&orphan_blob, None, b"orphan").unwrap();
        (kept.unwrap(), kept_chain, orphan, orphan_blob)
    };
    let service = service(dir.path());
    assert!(service.snapshots.exists(&kept_chain));
    assert!(!service.snapshots.exists(&orphan));
    assert!(!service.content.contains(&orphan_blob));
    assert!(service.content.contains(&kept.id) && service.content.contains(&kept.manifest_digest));
    assert_eq!(service.list().unwrap(), [kept]);
}

#[tokio::test]
async fn removing_an_unknown_image_still_collects() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let orphan = snapshot(&service, "orphan");
    service.remove("x.io/nothing:1").await.unwrap();
    assert!(!service.snapshots.exists(&orphan));
}

#[tokio::test]
async fn gc_spares_what_a_pull_in_progress_holds_without_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let chain = snapshot(&service, "pulling");
    let blob = Digest::of(b"config being pulled");
    service.content.put(&blob, None, b"config being pulled").unwrap();
    let mut pull = service.in_use.guard();
    pull.hold_chains([chain.clone()]);
    pull.hold_blobs([blob.clone()]);
    let mut other = service.in_use.guard();
    other.hold_chains([chain.clone()]);

    tokio::time::timeout(Duration::from_secs(10), service.collect_garbage())
        .await
        .expect("GC does not wait for pulls")
        .unwrap();
    assert!(service.snapshots.exists(&chain) && service.content.contains(&blob));
    // Held until the last holder lets go.
    drop(pull);
    service.collect_garbage().await.unwrap();
    assert!(service.snapshots.exists(&chain) && !service.content.contains(&blob));
    drop(other);
    assert_eq!(service.in_use.held(), (HashSet::new(), HashSet::new()));
    service.collect_garbage().await.unwrap();
    assert!(!service.snapshots.exists(&chain));
}

#[tokio::test]
async fn commit_records_only_when_every_snapshot_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let chain = snapshot(&service, "a");
    let image = record(&service, "a", &chain);
    let config = service.content.get(&image.id).unwrap();
    let blobs = vec![(image.id.clone(), config)];
    // Collected since the pull found it: not recorded, and the pull fetches it again.
    let detached = service.snapshots.detach(&chain).unwrap().unwrap();
    service.content.remove(&image.id).unwrap();
    let chains = vec![chain.clone()];
    let recorded = commit(service.collector(), chains.clone(), blobs.clone(), image.clone()).await;
    assert_eq!(recorded.unwrap(), None);
    assert!(service.list().unwrap().is_empty());
    service.snapshots.purge(&detached).unwrap();

    snapshot(&service, "a");
    let recorded = commit(service.collector(), chains, blobs, image.clone()).await.unwrap();
    assert_eq!(recorded.as_ref(), Some(&image));
    assert!(service.content.contains(&image.id));
    assert_eq!(service.list().unwrap(), [image]);
}

#[tokio::test]
async fn find_and_remove_by_id_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let chain = snapshot(&service, "a");
    let image = service.index().unwrap().upsert(record(&service, "a", &chain)).unwrap();
    let prefix = &image.id.hex()[..13];
    assert_eq!(service.find(prefix).unwrap().map(|r| r.id), Some(image.id.clone()));
    assert_eq!(service.find(&image.id.hex()[..11]).unwrap(), None);
    service.remove(prefix).await.unwrap();
    assert!(service.list().unwrap().is_empty());
    assert!(!service.snapshots.exists(&chain));
    assert!(!service.content.contains(&image.id));
}

#[tokio::test]
async fn an_image_volume_keeps_its_image_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let chain = snapshot(&service, "vol");
    let mut image = record(&service, "vol", &chain);
    image.repo_tags.push("x.io/vol:2".into());
    let image = service.index().unwrap().upsert(image).unwrap();
    let hold = Hold { chains: vec![chain.clone()], volume_images: vec![image.id.clone()] };
    service.hold("c1", &hold).unwrap();
    // One tag of several may go: the image stays.
    service.remove("x.io/vol:2").await.unwrap();
    let err = service.remove("x.io/vol:1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("c1"), "{err}");
    let err = service.remove(&image.id.to_string()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(service.find(&image.id.to_string()).unwrap().is_some());
    // Across a restart, as the container's record is.
    drop(service);
    let service = self::service(dir.path());
    assert!(service.remove(&image.id.to_string()).await.is_err());
    service.release("c1").unwrap();
    service.remove(&image.id.to_string()).await.unwrap();
    assert!(service.list().unwrap().is_empty());
    assert!(!service.snapshots.exists(&chain));
    // A container that found the image before it was removed does not get to hold it.
    let err = service.hold("c2", &hold).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_digest_reference_does_not_find_the_image_its_tag_names() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let chain = snapshot(&service, "a");
    let image = service.index().unwrap().upsert(record(&service, "a", &chain)).unwrap();
    assert!(service.find("x.io/a:1").unwrap().is_some());
    assert_eq!(service.find(&format!("x.io/a:1@sha256:{HEX}")).unwrap(), None);
    let by_digest = format!("x.io/a:1@{}", image.manifest_digest);
    assert_eq!(service.find(&by_digest).unwrap().map(|r| r.id), Some(image.id));
}
