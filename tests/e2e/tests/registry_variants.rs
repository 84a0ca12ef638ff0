//! The registry variants and crafted images that the image-pull suites build on: a registry
//! that wants a password, a second registry on another port, a blob corrupted in storage, an
//! address where nothing listens, and the hostile images.

use std::io::ErrorKind;
use std::net::TcpStream;

use berth_e2e::crafted;
use berth_e2e::images::{self, Pusher, TestImages};
use berth_e2e::registry::{self, basic_authorization};
use berth_e2e::{Node, Registry};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

const USER: &str = "puller";
const PASSWORD: &str = "pa55:word with spaces";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[test]
fn registry_variants_serve_what_the_pull_tests_need() {
    let node = Node::start();
    let locked = Registry::start_with_auth(&node, "127.0.0.1:5002", USER, PASSWORD);
    let mirror = Registry::start_on(&node, "127.0.0.1:5001");
    assert_eq!(locked.credentials, Some((USER.to_owned(), PASSWORD.to_owned())));
    assert!(locked.root.starts_with(node.dir()) && mirror.root.starts_with(node.dir()));
    assert_ne!(locked.root, mirror.root);
    let images = TestImages::get();
    let oci = &images.oci;
    let many = crafted::many_files(1_500);

    node.block_on(|| async {
        // htpasswd over plain HTTP: no password, no push.
        let err = images::push_image(&locked.addr, oci).await.unwrap_err();
        assert!(format!("{err:?}").contains("401"), "{err:?}");
        let wrong = Pusher::with_auth(&locked.addr, RegistryAuth::Basic(USER.into(), "x".into()));
        assert!(wrong.push(oci).await.is_err());
        let right = Pusher::with_auth(
            &locked.addr,
            RegistryAuth::Basic(USER.to_owned(), PASSWORD.to_owned()),
        );
        right.push(oci).await.expect("pushing with the password");

        images::push_extra(&mirror.addr).await.expect("pushing zstd and plain");
        crafted::push_hostile(&mirror.addr).await.expect("pushing the hostile images");
        images::push_image(&mirror.addr, &many.image).await.expect("pushing many-files");
    });

    // What the registries now serve, byte for byte.
    let layer = &oci.layers[1];
    let blob_url = |repo: &str, digest: &str| format!("/v2/{repo}/blobs/{digest}");
    node.in_netns(|| {
        let url = blob_url(oci.repository(), &layer.digest);
        let (status, body) = locked.http_get(&url).unwrap();
        assert_eq!((status, sha256(&body)), (200, layer.digest.clone()));
        let (status, _) = registry::http_get(&locked.addr, &url, None).unwrap();
        assert_eq!(status, 401, "no credentials");
        let bad = basic_authorization(USER, "wrong");
        let (status, _) = registry::http_get(&locked.addr, &url, Some(&bad)).unwrap();
        assert_eq!(status, 401, "wrong password");
        let (status, _) =
            locked.http_get(&blob_url(oci.repository(), &images.zstd.layers[0].digest)).unwrap();
        assert_eq!(status, 404, "the mirror's images are not on the locked registry");

        for case in crafted::hostile_images() {
            let hostile = case.layer();
            let (status, body) =
                mirror.http_get(&blob_url(crafted::HOSTILE_REPO, &hostile.digest)).unwrap();
            assert_eq!((status, sha256(&body)), (200, hostile.digest.clone()), "{}", case.name);
        }
        let (status, body) =
            mirror.http_get(&blob_url(crafted::HOSTILE_REPO, &many.layer().digest)).unwrap();
        assert_eq!((status, body.len()), (200, many.layer().size()));

        // Nothing listens on the down address: refused at once.
        let err = TcpStream::connect(registry::down_addr()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    });

    // A blob corrupted in storage is served with its length, under its digest, but the bytes
    // hash to something else.
    let zstd_layer = &images.zstd.layers[2];
    assert!(mirror.blob_path(&zstd_layer.digest).is_file());
    mirror.corrupt_blob(&zstd_layer.digest);
    // An impostor: valid gzip of another tar, as long as the real layer.
    let gzip_layer = &oci.layers[2];
    let impostor = images::impostor_layer(gzip_layer);
    locked.replace_blob(&gzip_layer.digest, &impostor);
    node.in_netns(|| {
        let (status, body) =
            mirror.http_get(&blob_url(images.zstd.repository(), &zstd_layer.digest)).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body.len(), zstd_layer.size());
        assert_ne!(sha256(&body), zstd_layer.digest);
        assert!(body.iter().zip(&zstd_layer.bytes).all(|(a, b)| a != b), "every byte differs");

        let (status, body) =
            locked.http_get(&blob_url(oci.repository(), &gzip_layer.digest)).unwrap();
        assert_eq!((status, &body), (200, &impostor));
        assert_ne!(sha256(&body), gzip_layer.digest);
    });
}
