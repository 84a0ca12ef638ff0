//! berthd's configuration: a TOML file whose every key has a default, overridden for the common
//! keys by command-line flags. Each crate owns the section it reads (`[cgroup]`, `[cni]` and
//! `[runtimes]` are the runtime's, `[registry]` the images'); this file composes them and checks
//! the whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_images::config::{ImagesConfig, RegistryConfig};
use berth_runtime::config::{CdiConfig, CgroupConfig, CniConfig, OciRuntimeConfig};
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The documented default configuration. A unit test holds it equal to `Config::default()`,
/// so the file operators read and the defaults berthd uses cannot drift apart.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../../deploy/config.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub listen: String,
    pub log: LogConfig,
    pub grpc: GrpcConfig,
    pub cgroup: CgroupConfig,
    pub cni: CniConfig,
    pub cdi: CdiConfig,
    /// External OCI runtimes offered as runtime handlers, by handler name. A file that lists
    /// any replaces the default list.
    pub runtimes: BTreeMap<String, OciRuntimeConfig>,
    pub registry: RegistryConfig,
    pub images: ImagesConfig,
    pub streaming: StreamingConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            listen: "unix:///run/berth/berth.sock".into(),
            log: LogConfig::default(),
            grpc: GrpcConfig::default(),
            cgroup: CgroupConfig::default(),
            cni: CniConfig::default(),
            cdi: CdiConfig::default(),
            runtimes: berth_runtime::config::default_runtimes(),
            registry: RegistryConfig::default(),
            images: ImagesConfig::default(),
            streaming: StreamingConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub max_recv_message_size: usize,
    pub max_send_message_size: usize,
}

/// The kubelet's CRI client allows 16 MiB each way; a smaller limit here would fail its
/// ListContainers on a busy node.
const KUBELET_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_recv_message_size: KUBELET_MAX_MESSAGE_SIZE,
            max_send_message_size: KUBELET_MAX_MESSAGE_SIZE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig { address: "127.0.0.1:0".into(), tls_cert_file: None, tls_key_file: None }
    }
}

/// berthd's own Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` where `/metrics` is served over plain HTTP; empty: not served.
    pub address: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The flags that override the file, named as containerd's and CRI-O's users know them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Directory for persistent data [config: root]
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Directory for runtime state [config: state]
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// CRI endpoint, unix:///path or /path [config: listen]
    #[arg(long, value_name = "ENDPOINT")]
    pub listen: Option<String>,
    /// Log level [config: log.level]
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// CNI network configuration directory [config: cni.conf_dir]
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory; repeat to search several, in order [config: cni.bin_dirs]
    #[arg(long, value_name = "DIR")]
    pub cni_bin_dir: Vec<PathBuf>,
}

impl Config {
    /// Reads `path`, or the default path when none is given; only the default path may be
    /// missing, since an operator who names a file means that file.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Config::default());
            }
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        Self::parse(&text)
            .map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses and validates a whole file; the error message names the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|err| err.to_string())?;
        config.validate()?;
        Ok(config)
    }

    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        let o = overrides.clone();
        if let Some(root) = o.root {
            self.root = root;
        }
        if let Some(state) = o.state {
            self.state = state;
        }
        if let Some(listen) = o.listen {
            self.listen = listen;
        }
        if let Some(level) = o.log_level {
            self.log.level = level;
        }
        if let Some(dir) = o.cni_conf_dir {
            self.cni.conf_dir = dir;
        }
        if !o.cni_bin_dir.is_empty() {
            self.cni.bin_dirs = o.cni_bin_dir;
        }
        self.validate().map_err(ConfigError::Invalid)
    }

    /// What the types cannot say; every message starts with the key it is about.
    pub fn validate(&self) -> Result<(), String> {
        for (key, dir) in
            [("root", &self.root), ("state", &self.state), ("cni.conf_dir", &self.cni.conf_dir)]
        {
            if !dir.is_absolute() {
                return Err(format!("{key} must be an absolute path, not {}", dir.display()));
            }
        }
        if let Some(dir) = self.cni.bin_dirs.iter().find(|dir| !dir.is_absolute()) {
            return Err(format!("cni.bin_dirs must hold absolute paths, not {}", dir.display()));
        }
        self.socket_path()?;
        berth_runtime::config::validate_runtimes(&self.runtimes)?;
        for (key, size) in [
            ("grpc.max_recv_message_size", self.grpc.max_recv_message_size),
            ("grpc.max_send_message_size", self.grpc.max_send_message_size),
        ] {
            if size < 4 * 1024 * 1024 {
                return Err(format!("{key} must be at least 4 MiB (4194304), not {size}"));
            }
        }
        self.registry.validate()?;
        self.images.validate()?;
        self.streaming
            .address
            .parse::<SocketAddr>()
            .map_err(|err| format!("streaming.address {:?}: {err}", self.streaming.address))?;
        if self.streaming.tls_cert_file.is_some() != self.streaming.tls_key_file.is_some() {
            return Err("streaming.tls_cert_file and streaming.tls_key_file go together".into());
        }
        if !self.metrics.address.is_empty() {
            self.metrics
                .address
                .parse::<SocketAddr>()
                .map_err(|err| format!("metrics.address {:?}: {err}", self.metrics.address))?;
        }
        Ok(())
    }

    /// The unix socket path of `listen`; the CRI is served on unix sockets only, as the kubelet
    /// expects of a node-local runtime.
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        let path = match self.listen.split_once("://") {
            Some(("unix", path)) => path,
            Some((scheme, _)) => {
                return Err(format!(
                    "listen {:?}: scheme {scheme:?} is not supported, use unix:///path",
                    self.listen
                ))
            }
            None => self.listen.as_str(),
        };
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(format!("listen {:?}: the socket path must be absolute", self.listen));
        }
        Ok(path)
    }

    /// Where the lock that keeps a second berthd off the same root lives.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("berthd.lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_file_is_the_default() {
        let parsed = Config::parse(DEFAULT_CONFIG_TOML).expect("deploy/config.toml parses");
        assert_eq!(parsed, Config::default());
        // Every key the defaults have is written out in the file, and nothing else is.
        let file: toml::Table = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        assert_eq!(file, defaults);
    }

    /// The air-gapped example the README gives is a valid configuration.
    #[test]
    fn readme_registry_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("fetched from the internet:").expect("the README's example");
        let block: Vec<&str> = readme[start..]
            .lines()
            .skip(2)
            .take_while(|line| line.is_empty() || line.starts_with("    "))
            .map(|line| line.strip_prefix("    ").unwrap_or(line))
            .collect();
        let config = Config::parse(&block.join("\n")).expect("the README example parses");
        let docker = &config.registry.hosts["docker.io"];
        assert!(!docker.fallback_to_origin);
        assert_eq!(docker.mirrors[0].prefix.as_deref(), Some("docker.io"));
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let config = Config::parse("[cgroup]\nnest_under_self = true\n").unwrap();
        assert!(config.cgroup.nest_under_self);
        assert_eq!(config.cni, CniConfig::default());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("[cni]\nconf_dirr = \"/x\"", "conf_dirr"),
            ("[log]\nlevel = \"loud\"", "loud"),
            ("[cgroup]\ndriver = \"systemd\"", "systemd"),
            ("root = 5", "root"),
            ("root = \"relative\"", "root"),
            ("listen = \"tcp://0.0.0.0:1\"", "listen"),
            ("listen = \"unix://relative.sock\"", "listen"),
            ("[grpc]\nmax_recv_message_size = 10", "grpc.max_recv_message_size"),
            ("[registry]\nmax_concurrent_downloads = 0", "registry.max_concurrent_downloads"),
            ("[streaming]\naddress = \"nowhere\"", "streaming.address"),
            ("[runtimes.Runc]\npath = \"runc\"", "runtimes.\"Runc\""),
            ("[runtimes.default]\npath = \"runc\"", "runtimes.\"default\""),
            ("[runtimes.runc]\npath = \"sbin/runc\"", "runtimes.runc.path"),
            ("[runtimes.runc]\npath = \"runc\"\nroot = \"r\"", "runtimes.runc.root"),
            ("[runtimes.runc]\npth = \"runc\"", "pth"),
            ("[streaming]\ntls_cert_file = \"/c\"", "streaming.tls_cert_file"),
            ("[metrics]\naddress = \"localhost\"", "metrics.address"),
            ("[metrics]\nport = 9090", "port"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).expect_err(text);
            assert!(err.contains(key), "error for {text:?} should name {key:?}: {err}");
        }
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert!(Config::default().metrics.address.is_empty());
        let config = Config::parse("[metrics]\naddress = \"127.0.0.1:9101\"").unwrap();
        assert_eq!(config.metrics.address, "127.0.0.1:9101");
    }

    #[test]
    fn runtimes_listed_replace_the_defaults() {
        let defaults = Config::default();
        assert_eq!(defaults.runtimes.keys().collect::<Vec<_>>(), ["crun", "runc"]);
        let config = Config::parse(
            "[runtimes.kata]\npath = \"/opt/kata/bin/kata-runtime\"\nroot = \"/run/k\"",
        )
        .unwrap();
        let kata = &config.runtimes["kata"];
        assert_eq!(kata.path, PathBuf::from("/opt/kata/bin/kata-runtime"));
        assert_eq!(kata.root, Some(PathBuf::from("/run/k")));
        assert_eq!(config.runtimes.len(), 1);
        // An empty table: the embedded executor alone.
        assert!(Config::parse("[runtimes]\n").unwrap().runtimes.is_empty());
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut config = Config::parse("root = \"/a\"\n[cni]\nbin_dirs = [\"/b\"]").unwrap();
        let overrides = Overrides {
            root: Some("/x".into()),
            listen: Some("/y/berth.sock".into()),
            log_level: Some(LogLevel::Debug),
            cni_bin_dir: vec!["/c".into(), "/d".into()],
            ..Default::default()
        };
        config.apply(&overrides).unwrap();
        assert_eq!(config.root, PathBuf::from("/x"));
        assert_eq!(config.socket_path().unwrap(), PathBuf::from("/y/berth.sock"));
        assert_eq!(config.log.level, LogLevel::Debug);
        assert_eq!(config.cni.bin_dirs, vec![PathBuf::from("/c"), PathBuf::from("/d")]);
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }
}
