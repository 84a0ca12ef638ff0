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
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
    /// The pod's monitor process cannot be reached.
    #[error("{0}")]
    MonitorGone(String),
    /// A deadline the request set passed (ExecSync's `timeout`).
    #[error("{0}")]
    Timeout(String),
    /// No usable CNI network configuration or plugin; the reason names the directories.
    #[error("network not ready: {0}")]
    NetworkNotReady(String),
    /// A CNI plugin reported an error (or failed without a readable one).
    #[error("CNI plugin {plugin} failed on {command}: {msg}{}", cni_error_suffix(details, *code))]
    CniPlugin {
        plugin: String,
        command: &'static str,
        /// The CNI error code, when the plugin printed an error object.
        code: Option<u64>,
        msg: String,
        details: String,
    },
    #[error("CNI plugin {plugin} timed out on {command} after {timeout:?}")]
    CniTimeout { plugin: String, command: &'static str, timeout: std::time::Duration },
    /// Anything else that goes wrong around CNI: unreadable results, a broken cache.
    #[error("CNI: {0}")]
    Cni(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Timeout(_) => ErrorKind::DeadlineExceeded,
            Error::MonitorGone(_) => ErrorKind::Unavailable,
            Error::Io { .. } | Error::Cgroup(_) => ErrorKind::Internal,
            Error::NetworkNotReady(_) => ErrorKind::FailedPrecondition,
            // CNI code 11 is "try again later".
            Error::CniPlugin { code: Some(11), .. } => ErrorKind::Unavailable,
            Error::CniPlugin { .. } | Error::Cni(_) => ErrorKind::Internal,
            Error::CniTimeout { .. } => ErrorKind::DeadlineExceeded,
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

/// The tail of a [`Error::CniPlugin`] message: the details and the code, when there are any.
fn cni_error_suffix(details: &str, code: Option<u64>) -> String {
    let mut suffix = String::new();
    if !details.is_empty() {
        suffix.push_str(": ");
        suffix.push_str(details);
    }
    if let Some(code) = code {
        suffix.push_str(&format!(" (CNI error code {code})"));
    }
    suffix
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
