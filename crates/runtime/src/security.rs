//! Plain types of the node's security facilities (seccomp, AppArmor, SELinux) as the CRI names
//! them: below both `seccomp`/`lsm`, which interpret them, and `container`, whose config holds
//! them (and re-exports them).

use serde::{Deserialize, Serialize};

/// A seccomp or AppArmor profile, as the CRI names one (cri-server has already resolved the
/// deprecated string forms and what an absent field means).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityProfile {
    /// None at all.
    #[default]
    Unconfined,
    /// The runtime's own: for seccomp berth's built-in profile, for AppArmor `berth-default`.
    RuntimeDefault,
    /// For seccomp the path of a JSON profile on the node; for AppArmor a loaded profile's name.
    Localhost(String),
}

/// CRI `SELinuxOption`: the parts of the process label to set; an empty part is taken from the
/// node's default container context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelinuxOptions {
    pub user: String,
    pub role: String,
    pub r#type: String,
    pub level: String,
}
