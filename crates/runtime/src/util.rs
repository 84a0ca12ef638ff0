//! Small helpers the runtime's services share.

use std::path::Path;

use crate::error::{Error, Result};

/// Wall-clock time in nanoseconds since the epoch, as the CRI reports times.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Removes a directory tree; one that is already gone is fine (removals are idempotent).
pub fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("removing", dir)(err))
        }
        _ => Ok(()),
    }
}

/// Runs file-system or kernel work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}
