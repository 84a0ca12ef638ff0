//! The one place where errors become gRPC statuses. The kubelet acts on the codes (NOT_FOUND
//! means "gone", UNAVAILABLE means "try again"), so each domain error kind maps to exactly one.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(transparent)]
    Runtime(#[from] berth_runtime::Error),
    #[error(transparent)]
    Images(#[from] berth_images::Error),
    /// A request that is malformed before it reaches the domain crates.
    #[error("{0}")]
    InvalidRequest(String),
    /// A lookup (a status or stats query) by an id that cannot name anything: the empty one.
    #[error("{0}")]
    NoSuchId(String),
    /// The streaming server holds as many unused URLs as it will.
    #[error(transparent)]
    Streaming(#[from] crate::streaming::CacheError),
}

pub type CriResult<T> = Result<T, CriError>;

impl CriError {
    fn code(&self) -> Code {
        use berth_images::ErrorKind as I;
        use berth_runtime::ErrorKind as R;
        match self {
            CriError::InvalidRequest(_) => Code::InvalidArgument,
            CriError::NoSuchId(_) => Code::NotFound,
            CriError::Streaming(crate::streaming::CacheError::Full) => Code::ResourceExhausted,
            CriError::Streaming(crate::streaming::CacheError::Random(_)) => Code::Internal,
            CriError::Runtime(err) => match err.kind() {
                R::NotFound => Code::NotFound,
                R::AlreadyExists => Code::AlreadyExists,
                R::InvalidArgument => Code::InvalidArgument,
                R::FailedPrecondition => Code::FailedPrecondition,
                R::Unavailable => Code::Unavailable,
                R::DeadlineExceeded => Code::DeadlineExceeded,
                R::Internal => Code::Internal,
            },
            CriError::Images(err) => match err.kind() {
                I::NotFound => Code::NotFound,
                I::InvalidArgument => Code::InvalidArgument,
                I::Unauthenticated => Code::Unauthenticated,
                I::Unavailable => Code::Unavailable,
                I::DeadlineExceeded => Code::DeadlineExceeded,
                I::FailedPrecondition => Code::FailedPrecondition,
                I::Internal => Code::Internal,
            },
        }
    }
}

impl From<CriError> for Status {
    fn from(err: CriError) -> Status {
        // The whole source chain: "reading /x: permission denied" helps, "I/O error" does not.
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Status::new(err.code(), message)
    }
}

/// Checkpoint and restore (of a container or a whole pod) need CRIU to freeze and dump the
/// processes; berth does not drive CRIU, so these calls say so rather than pretend.
pub fn checkpoint_unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "berth does not implement runtime.v1.RuntimeService/{rpc}: checkpoint and restore need \
         CRIU, which berth does not drive"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn codes_follow_kinds_and_messages_keep_the_cause() {
        let err = berth_runtime::Error::Io {
            what: "reading",
            path: PathBuf::from("/x/y"),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let status = Status::from(CriError::from(err));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("/x/y"), "{}", status.message());
        assert!(status.message().contains("permission denied"), "{}", status.message());

        let err = berth_runtime::Error::InvalidArgument("bad".into());
        assert_eq!(Status::from(CriError::from(err)).code(), Code::InvalidArgument);
        let status = Status::from(CriError::InvalidRequest("pod id is empty".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "pod id is empty");
        let status = Status::from(CriError::NoSuchId("no pod sandbox has an empty id".into()));
        assert_eq!(status.code(), Code::NotFound);
    }
}
