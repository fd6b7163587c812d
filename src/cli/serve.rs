//! `tern serve`: runs a node from a configuration file or the embedded default.
//!
//! Owns: the command's arguments, logging set-up (RUST_LOG or `--log-level`),
//! the SIGTERM/SIGINT handling that starts a graceful shutdown, and the exit
//! codes (0 clean stop, 1 runtime failure, 2 unusable configuration). Must
//! not touch: the engine's internals (see `engine::run`).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Args;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The node's TOML configuration (see tern.example.toml). Without it,
    /// a single loopback-only node with the `trial` account runs from ./tern-data.
    #[arg(long, short = 'c', env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log filter when RUST_LOG is not set: error, warn, info, debug, trace,
    /// or a full filter such as `tern=debug,info`.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

pub fn run(args: ServeArgs) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level));
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("tern serve: bad --log-level `{}`: {e}", args.log_level);
            return 2;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();

    let resolved = match &args.config {
        Some(path) => Config::load(path),
        None => {
            tracing::info!(
                "no --config: running the embedded default (SMPP on 127.0.0.1:2775 as \
                 trial/trial, HTTP on 127.0.0.1:8080 with API key `trial` and admin token \
                 `trial-admin`, loopback only, an embedded operator simulator, data in \
                 ./tern-data)"
            );
            Config::embedded_default().resolve_embedded()
        }
    };
    let resolved = match resolved {
        Ok(resolved) => resolved,
        Err(e) => {
            eprintln!("tern serve: bad configuration: {e}");
            return 2;
        }
    };

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&stop)) {
            eprintln!("tern serve: cannot handle signal {signal}: {e}");
            return 1;
        }
    }
    match crate::engine::run(resolved, stop, |_| {}) {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(e) => {
            eprintln!("tern serve: {e}");
            1
        }
    }
}
