//! Errors of the runtime crate. Only their [`ErrorKind`] crosses into the gRPC layer, where
//! cri-server turns it into a status code the kubelet can act on.

use std::path::PathBuf;

/// What a caller can do about an error; cri-server maps each to one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Io { .. } | Error::Cgroup(_) => ErrorKind::Internal,
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
