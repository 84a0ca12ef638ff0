//! Pushing the test images to a registry: blobs before the manifests that need them, an
//! index's children before the index.

use super::*;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing {what} to {target}: {source}")]
    Registry {
        what: String,
        target: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("media type {0:?} is not a valid Content-Type")]
    MediaType(String),
}

/// Pushes every test image to the plain-HTTP registry at `registry`
/// (`127.0.0.1:5000`): blobs before the manifests that need them, an index's
/// children before the index, and every tag (`busybox:oci`, `busybox:latest`,
/// `busybox:docker`, `multiarch:latest`).
pub async fn push_all(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().all()).await
}

/// Pushes `busybox:zstd` and `busybox:plain`.
pub async fn push_extra(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().extra()).await
}

/// Pushes the `berth-test/run:*` images.
pub async fn push_run(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(TestImages::get().run.all()).await
}

/// Pushes one image (an index with its children) anonymously.
pub async fn push_image(registry: &str, image: &TestImage) -> Result<(), PushError> {
    Pusher::new(registry).push(image).await
}

/// An oci-client over plain HTTP to one registry, with the credentials to push with.
pub struct Pusher {
    client: Client,
    registry: String,
    auth: RegistryAuth,
}

impl Pusher {
    /// Anonymous pushes to `registry` (`host:port`).
    pub fn new(registry: &str) -> Pusher {
        Pusher::with_auth(registry, RegistryAuth::Anonymous)
    }

    /// Pushes with `auth`, e.g. `RegistryAuth::Basic(user, password)` for a
    /// registry from [`crate::Registry::start_with_auth`].
    pub fn with_auth(registry: &str, auth: RegistryAuth) -> Pusher {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            // A wedged registry should fail the test, not hang it.
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        Pusher { client, registry: registry.to_owned(), auth }
    }

    /// Anonymous pushes over HTTPS to `registry`, trusting the PEM CA certificate(s) `ca_pem`
    /// (besides the system's), e.g. those of a [`crate::Registry::start_with_tls`] registry.
    pub fn with_tls(registry: &str, ca_pem: impl Into<Vec<u8>>) -> Pusher {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: ca_pem.into(),
            }],
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        Pusher { client, registry: registry.to_owned(), auth: RegistryAuth::Anonymous }
    }

    /// Pushes `image`: an index's children first, then the index; blobs
    /// before the manifest; the manifest under its tag and every alias.
    pub async fn push(&self, image: &TestImage) -> Result<(), PushError> {
        for child in &image.children {
            self.push_manifest(child).await?;
        }
        self.push_manifest(image).await
    }

    pub async fn push_each<'a>(
        &self,
        images: impl IntoIterator<Item = &'a TestImage>,
    ) -> Result<(), PushError> {
        for image in images {
            self.push(image).await?;
        }
        Ok(())
    }

    /// Pushes one manifest (not its children) with its blobs and tags.
    pub(super) async fn push_manifest(&self, image: &TestImage) -> Result<(), PushError> {
        let (client, registry) = (&self.client, self.registry.as_str());
        let repository = image.repository();
        let registry_err = |what: &str, target: &Reference| {
            let what = what.to_owned();
            let target = target.whole();
            move |source: OciDistributionError| PushError::Registry { what, target, source }
        };

        let by_digest = |digest: &str| {
            Reference::with_digest(registry.to_owned(), repository.to_owned(), digest.to_owned())
        };
        let this = by_digest(&image.manifest.digest);
        client
            .auth(&this, &self.auth, RegistryOperation::Push)
            .await
            .map_err(registry_err("auth", &this))?;

        let blobs = image.layers.iter().chain((!image.is_index()).then_some(&image.config));
        for blob in blobs {
            let target = by_digest(&blob.digest);
            // Layers are shared between tags of a repository; the registry would
            // accept them again, but skipping them keeps the push quick.
            let exists = client
                .blob_exists(&target, &blob.digest)
                .await
                .map_err(registry_err("blob check", &target))?;
            if !exists {
                client
                    .push_blob(&target, blob.bytes.clone(), &blob.digest)
                    .await
                    .map_err(registry_err(&blob.media_type, &target))?;
            }
        }

        let mut targets = vec![];
        match image.tag() {
            Some(tag) => targets.push(Reference::with_tag(
                registry.to_owned(),
                repository.to_owned(),
                tag.to_owned(),
            )),
            None => targets.push(this),
        }
        for alias in image.aliases {
            let (repository, tag) = split_reference(alias);
            targets.push(Reference::with_tag(
                registry.to_owned(),
                repository.to_owned(),
                tag.unwrap_or("latest").to_owned(),
            ));
        }
        for target in &targets {
            let content_type = image
                .manifest
                .media_type
                .parse()
                .map_err(|_| PushError::MediaType(image.manifest.media_type.clone()))?;
            client
                .push_manifest_raw(target, image.manifest.bytes.clone(), content_type)
                .await
                .map_err(registry_err(&image.manifest.media_type, target))?;
        }
        Ok(())
    }
}
