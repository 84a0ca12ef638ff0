//! berthd: the berth container runtime daemon.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use berth_cri_server::config::{Config, LogFormat, LogLevel, Overrides, DEFAULT_CONFIG_TOML};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "berthd", version = version_text(), about = "berth: a Kubernetes CRI container runtime")]
struct Cli {
    /// Configuration file [default: /etc/berth/config.toml, optional]
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the full default configuration, every key documented.
    Default,
    /// Print the configuration berthd would run with: the file, then the flags.
    Show,
}

/// What `berthd --version` prints after the name: enough to tell an operator which build runs
/// and which kubelets it can serve.
fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\ncommit: {}\nCRI: {} (k8s.io/cri-api {})",
            env!("CARGO_PKG_VERSION"),
            env!("BERTH_COMMIT"),
            berth_cri_server::RUNTIME_API_VERSION,
            env!("BERTH_CRI_API_UPSTREAM"),
        )
    })
}

fn main() -> ExitCode {
    // A pod's monitor is this binary too, but must stay small and single-threaded: it is
    // dispatched before anything else (arguments, logging, the async runtime) is set up.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == "monitor") {
        let code = berth_runtime::monitor::main(&args[2..]);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    if let Some(Command::Config { action: ConfigAction::Default }) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let config = match load(&cli) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("berthd: {err}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Config { action: ConfigAction::Show }) = cli.command {
        return match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("berthd: {err}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(config.log.level, config.log.format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("berthd: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_cri_server::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "berthd failed");
            eprintln!("berthd: {err}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli) -> Result<Config, berth_cri_server::config::ConfigError> {
    let mut config = Config::load(cli.config.as_deref())?;
    config.apply(&cli.overrides)?;
    Ok(config)
}

fn init_logging(level: LogLevel, format: LogFormat) {
    let level = match level {
        LogLevel::Error => tracing::Level::ERROR,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Trace => tracing::Level::TRACE,
    };
    // Dependencies (h2, hyper, tower) are chatty at debug; only berth's own crates follow the
    // configured level below INFO.
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level.min(tracing::Level::INFO))
        .with_target("berth_cri_server", level)
        .with_target("berth_runtime", level)
        .with_target("berth_images", level)
        .with_target("berthd", level);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .with(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .with(filter)
            .init(),
    }
}
