//! ImageService: PullImage, ImageStatus, ListImages, StreamImages, RemoveImage, ImageFsInfo.
//! Translation only; the work is in `berth_images`.

use std::collections::HashMap;
use std::time::Instant;

use berth_images::auth::AuthConfig;
use berth_images::metadata::ImageRecord;

use crate::clock::now_nanos;
use crate::cri::Cri;
use crate::error::{CriError, CriResult};
use crate::proto::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, StreamImagesResponse, UInt64Value,
};
use crate::rpc_layer::record_image;

/// Images per StreamImages message: small messages, few of them.
const STREAM_BATCH: usize = 64;

fn image_name(spec: Option<&ImageSpec>) -> CriResult<&str> {
    match spec.map(|s| s.image.as_str()) {
        Some(name) if !name.is_empty() => {
            record_image(name);
            Ok(name)
        }
        _ => Err(CriError::InvalidRequest("image spec with an image name is required".into())),
    }
}

pub async fn pull_image(cri: &Cri, request: PullImageRequest) -> CriResult<PullImageResponse> {
    let name = image_name(request.image.as_ref())?;
    let auth = request.auth.map(|a| AuthConfig {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    });
    let started = Instant::now();
    let pulled = cri.images.pull(name, auth.as_ref()).await;
    cri.metrics.observe_pull(pulled.is_ok(), started.elapsed());
    Ok(PullImageResponse { image_ref: pulled?.id.to_string() })
}

pub async fn image_status(
    cri: &Cri,
    request: ImageStatusRequest,
) -> CriResult<ImageStatusResponse> {
    let name = image_name(request.image.as_ref())?;
    let Some(details) = cri.images.status(name, request.verbose)? else {
        // An absent image is an empty answer, not an error: kubelet pulls on it.
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if let Some(config) = details.config {
        let verbose = serde_json::json!({
            "imageSpec": config,
            "manifestDigest": details.record.manifest_digest.to_string(),
            "chainIDs": details.record.layers.iter().map(|l| l.chain_id.to_string()).collect::<Vec<_>>(),
        });
        info.insert("info".into(), verbose.to_string());
    }
    Ok(ImageStatusResponse { image: Some(image(&details.record)), info })
}

pub async fn list_images(cri: &Cri, request: ListImagesRequest) -> CriResult<ListImagesResponse> {
    Ok(ListImagesResponse { images: filtered(cri, request.filter.and_then(|f| f.image))? })
}

pub async fn stream_images(
    cri: &Cri,
    filter: Option<ImageSpec>,
) -> CriResult<Vec<StreamImagesResponse>> {
    let images = filtered(cri, filter)?;
    Ok(images
        .chunks(STREAM_BATCH)
        .map(|batch| StreamImagesResponse { images: batch.to_vec() })
        .collect())
}

fn filtered(cri: &Cri, filter: Option<ImageSpec>) -> CriResult<Vec<Image>> {
    let wanted = filter.map(|spec| spec.image).filter(|name| !name.is_empty());
    let records = match wanted {
        // A filter names one image, in any form the other RPCs accept.
        Some(name) => cri.images.find(&name)?.into_iter().collect(),
        None => cri.images.list()?,
    };
    Ok(records.iter().map(image).collect())
}

pub async fn remove_image(
    cri: &Cri,
    request: RemoveImageRequest,
) -> CriResult<RemoveImageResponse> {
    let name = image_name(request.image.as_ref())?;
    cri.images.remove(name).await?;
    Ok(RemoveImageResponse {})
}

pub async fn image_fs_info(
    cri: &Cri,
    _request: ImageFsInfoRequest,
) -> CriResult<ImageFsInfoResponse> {
    let usage = cri.images.fs_usage().await?;
    let timestamp = now_nanos();
    let filesystem = FilesystemUsage {
        timestamp,
        fs_id: Some(FilesystemIdentifier { mountpoint: usage.mountpoint.display().to_string() }),
        used_bytes: Some(UInt64Value { value: usage.used_bytes }),
        inodes_used: Some(UInt64Value { value: usage.inodes_used }),
    };
    Ok(ImageFsInfoResponse { image_filesystems: vec![filesystem], container_filesystems: vec![] })
}

/// The CRI's view of an image record. The config's `User` gives a uid when it is numeric
/// (`1000`, `1000:1000`) and a user name otherwise, as kubelet's runAsNonRoot check expects.
fn image(record: &ImageRecord) -> Image {
    let user = record.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    Image {
        id: record.id.to_string(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(ImageSpec { image: record.id.to_string(), ..Default::default() }),
        pinned: record.pinned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str) -> ImageRecord {
        let digest: berth_images::Digest =
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse()
                .unwrap();
        ImageRecord {
            id: digest.clone(),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![],
            manifest_digest: digest.clone(),
            config_digest: digest,
            layers: vec![],
            size: 7,
            user: user.into(),
            created_unix_nanos: 0,
            pinned: false,
        }
    }

    #[test]
    fn user_becomes_uid_or_username() {
        assert_eq!(image(&record("1000:1000")).uid, Some(Int64Value { value: 1000 }));
        assert_eq!(image(&record("0")).uid, Some(Int64Value { value: 0 }));
        let named = image(&record("nobody:nogroup"));
        assert_eq!((named.uid, named.username.as_str()), (None, "nobody"));
        let none = image(&record(""));
        assert_eq!((none.uid, none.username.as_str()), (None, ""));
    }
}
