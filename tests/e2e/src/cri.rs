//! A CRI client over the daemon's unix socket, generated from berth's own proto: the same
//! messages and method paths the kubelet uses.

use std::path::{Path, PathBuf};

use berth_cri_server::proto::image_service_client::ImageServiceClient;
use berth_cri_server::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri_server::proto::{
    AuthConfig, Image, ImageFilter, ImageSpec, ImageStatusRequest, ImageStatusResponse,
    ListImagesRequest, PullImageRequest, RemoveImageRequest, VersionRequest, VersionResponse,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// As the kubelet's client allows.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by the API but unused: every connection goes to the socket.
        let channel = Endpoint::from_static("http://berth.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        })
    }

    pub async fn version(&mut self) -> Result<VersionResponse, tonic::Status> {
        let request = VersionRequest { version: "v1".into() };
        Ok(self.runtime.version(request).await?.into_inner())
    }

    /// Pulls as the kubelet does; returns the image ref (the image id).
    pub async fn pull(&mut self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with_auth(image, None).await
    }

    pub async fn pull_with_auth(
        &mut self,
        image: &str,
        auth: Option<AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let request = PullImageRequest { image: Some(spec(image)), auth, sandbox_config: None };
        Ok(self.images.pull_image(request).await?.into_inner().image_ref)
    }

    pub async fn image_status(
        &mut self,
        image: &str,
        verbose: bool,
    ) -> Result<ImageStatusResponse, tonic::Status> {
        let request = ImageStatusRequest { image: Some(spec(image)), verbose };
        Ok(self.images.image_status(request).await?.into_inner())
    }

    /// The image `image` names, or None when the runtime has no such image.
    pub async fn image(&mut self, image: &str) -> Option<Image> {
        self.image_status(image, false).await.expect("ImageStatus").image
    }

    pub async fn list_images(&mut self, filter: Option<&str>) -> Vec<Image> {
        let filter = filter.map(|image| ImageFilter { image: Some(spec(image)) });
        let request = ListImagesRequest { filter };
        self.images.list_images(request).await.expect("ListImages").into_inner().images
    }

    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        self.images.remove_image(RemoveImageRequest { image: Some(spec(image)) }).await?;
        Ok(())
    }
}

pub fn spec(image: &str) -> ImageSpec {
    ImageSpec { image: image.to_string(), ..Default::default() }
}
