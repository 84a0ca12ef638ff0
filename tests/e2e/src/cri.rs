//! A CRI client over the daemon's unix socket, generated from berth's own proto: the same
//! messages and method paths the kubelet uses.

use std::path::{Path, PathBuf};

use berth_cri_server::proto::image_service_client::ImageServiceClient;
use berth_cri_server::proto::runtime_service_client::RuntimeServiceClient;
use berth_cri_server::proto::{VersionRequest, VersionResponse};
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
}
