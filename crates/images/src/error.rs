//! Errors of the images crate. Only their [`ErrorKind`] crosses into the gRPC layer, where
//! cri-server turns it into a status code the kubelet can act on.

use std::path::PathBuf;

/// What a caller can do about an error; cri-server maps each to one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    InvalidArgument,
    /// Credentials missing or refused.
    Unauthenticated,
    Unavailable,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
}

/// The text the CRI reserves for "the registry could not be reached"; the kubelet shows it
/// as the reason of an image pull back-off.
pub const REGISTRY_UNAVAILABLE: &str = "RegistryUnavailable";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// Credentials a pull request carries that cannot be used as given.
    #[error("bad registry credentials: {reason}")]
    BadCredentials { reason: String },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{registry}: authentication failed: {reason}")]
    Unauthorized { registry: String, reason: String },
    #[error("{REGISTRY_UNAVAILABLE}: {registry}: {reason}")]
    RegistryUnavailable { registry: String, reason: String },
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("{what}: no data received for {secs}s")]
    Stalled { what: String, secs: u64 },
    #[error("{reference}: {reason}")]
    BadManifest { reference: String, reason: String },
    #[error("{reference}: no manifest for platform {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("layer {layer}: refused: {reason}")]
    HostileLayer { layer: String, reason: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// An image that existing containers mount as an image volume.
    #[error("image {image} is in use as an image volume by container(s) {}", containers.join(", "))]
    InUse { image: String, containers: Vec<String> },
    #[error("registry configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::BadCredentials { .. } => ErrorKind::InvalidArgument,
            Error::NotFound { .. } | Error::NoMatchingPlatform { .. } => ErrorKind::NotFound,
            Error::Unauthorized { .. } => ErrorKind::Unauthenticated,
            Error::RegistryUnavailable { .. } => ErrorKind::Unavailable,
            Error::Stalled { .. } => ErrorKind::DeadlineExceeded,
            Error::DigestMismatch { .. }
            | Error::SizeMismatch { .. }
            | Error::BadManifest { .. }
            | Error::HostileLayer { .. }
            | Error::InUse { .. } => ErrorKind::FailedPrecondition,
            Error::Io { .. } | Error::Corrupt { .. } | Error::Config(_) | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }

    /// Wraps an I/O error with what was being done and on which path, so that the message a
    /// client gets names the file.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The atomic writes of the stores keep the message they had when they lived in this crate.
impl From<berth_fsutil::Error> for Error {
    fn from(err: berth_fsutil::Error) -> Self {
        match err {
            berth_fsutil::Error::Io { what, path, source } => Error::Io { what, path, source },
            berth_fsutil::Error::NoParent(_) => Error::Internal(err.to_string()),
        }
    }
}
