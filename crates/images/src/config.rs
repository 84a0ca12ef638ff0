//! `[registry]`: how images are fetched. Every key has a default, so berthd runs with no file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Node-wide registry credentials in docker's `config.json` format. A missing file means
    /// no credentials beyond those a pull request carries.
    pub credentials_file: PathBuf,
    /// Layers of one pull fetched at the same time.
    pub max_concurrent_downloads: usize,
    /// A download that receives no byte for this long fails, so that a wedged registry
    /// connection cannot hold a pull (and the kubelet's pod start) forever.
    pub stall_timeout_secs: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            credentials_file: PathBuf::from("/etc/berth/auth.json"),
            max_concurrent_downloads: 3,
            stall_timeout_secs: 60,
        }
    }
}

impl RegistryConfig {
    /// Checks what the types alone cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_downloads == 0 {
            return Err("registry.max_concurrent_downloads must be at least 1".into());
        }
        if self.stall_timeout_secs == 0 {
            return Err("registry.stall_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}
