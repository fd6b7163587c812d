//! `tern store-node` (hidden): one store node in its own process, driven by
//! line commands on stdin and answering on stdout, so integration tests can
//! run a real cluster on loopback and SIGKILL its members.
//!
//! Owns: the line protocol below. Must not touch: store internals beyond
//! `store::driver`'s public API.
//!
//! Requests (one per line; `<tag>` is echoed so answers can be matched):
//!   account <tag>                     propose the filler account
//!   propose <tag> <worker> <seq> <n>  propose filler message (worker, seq) of n bytes
//!   status <tag>                      -> status <tag> <leader> <term> <applied> <voters,> <learners,> <snapshots installed>
//!   has <tag> <worker>:<seq> ...      -> has <tag> <missing-count>
//!   digest <tag>                      -> digest <tag> <applied> <message-count> <crc32c of the state>
//!   add-voter <tag> <id> <addr>       -> ok <tag> | err <tag> <reason>
//!   remove <tag> <id>                 -> ok <tag> | err <tag> <reason>
//!   transfer <tag> <id>               -> ok <tag>
//!   exit                              clean shutdown
//! Proposals answer `ok <tag> <outcome>` once committed or `err <tag> <reason>`.
//! Start-up prints `ready <listen address>`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;

use crate::store::driver::{
    filler_account_command, filler_command, filler_id, PendingReply, ProposeError, Store,
    StoreConfig, StoreHandle,
};
use crate::store::state::AppState;
use crate::store::StateMachine;

#[derive(Debug, clap::Args)]
pub struct StoreNodeArgs {
    #[arg(long)]
    pub id: u64,
    #[arg(long)]
    pub listen: SocketAddr,
    /// Another node, as ID=ADDR; repeat for each.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(u64, SocketAddr)>,
    /// Initial voters of a new cluster, comma-separated; omit to join an existing one.
    #[arg(long, value_delimiter = ',')]
    pub voters: Vec<u64>,
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cluster secret in hex.
    #[arg(long)]
    pub secret_hex: String,
    #[arg(long, default_value_t = 20)]
    pub tick_ms: u64,
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub snapshot_log_bytes: u64,
    /// Raft entries kept behind the applied index when compacting.
    #[arg(long, default_value_t = 1000)]
    pub compact_keep_entries: u64,
    /// Compact only once that drops at least this many entries.
    #[arg(long, default_value_t = 256)]
    pub compact_min_entries: u64,
}

fn parse_peer(text: &str) -> Result<(u64, SocketAddr), String> {
    let (id, addr) = text.split_once('=').ok_or("expected ID=ADDR")?;
    let id = id.parse().map_err(|e| format!("peer id: {e}"))?;
    let addr = addr.parse().map_err(|e| format!("peer address: {e}"))?;
    Ok((id, addr))
}

/// Runs the node until stdin closes or says `exit`; returns the exit code.
pub fn run(args: StoreNodeArgs) -> i32 {
    // Logs go to stderr; stdout carries the line protocol only.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let secret = match hex::decode(&args.secret_hex) {
        Ok(secret) => secret,
        Err(e) => {
            eprintln!("store-node: --secret-hex: {e}");
            return 2;
        }
    };
    let mut config = StoreConfig::new(args.id, args.listen, args.data_dir, secret);
    config.peers = args.peers;
    config.initial_voters = args.voters;
    config.tick_interval_ms = args.tick_ms;
    config.snapshot_interval_log_bytes = args.snapshot_log_bytes;
    config.compact_keep_entries = args.compact_keep_entries;
    config.compact_min_entries = args.compact_min_entries;
    let store = match Store::start(config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("store-node: start-up failed: {e}");
            return 1;
        }
    };
    println!("ready {}", args.listen);
    let handle = store.handle();
    let (waiter_tx, waiter_rx) = crossbeam_channel::bounded::<(String, PendingReply)>(1 << 16);
    let waiter = thread::spawn(move || {
        for (tag, pending) in waiter_rx {
            match pending.wait() {
                Ok(outcome) => println!("ok {tag} {outcome:?}"),
                Err(e) => println!("err {tag} {e}"),
            }
        }
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"exit") {
            break;
        }
        if let Err(e) = serve_line(&handle, &words, &waiter_tx) {
            println!("err {} {e}", words.get(1).unwrap_or(&"-"));
        }
    }
    drop(waiter_tx);
    let _ = waiter.join();
    match store.shutdown() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("store-node: shutdown: {e}");
            1
        }
    }
}

fn number<T: std::str::FromStr>(words: &[&str], at: usize) -> Result<T, String> {
    words
        .get(at)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("argument {at} missing or not a number"))
}

fn serve_line(
    handle: &StoreHandle,
    words: &[&str],
    waiter: &crossbeam_channel::Sender<(String, PendingReply)>,
) -> Result<(), String> {
    let command = words.first().copied().unwrap_or("");
    let tag = words.get(1).copied().unwrap_or("-").to_string();
    let stopped = |e: ProposeError| e.to_string();
    match command {
        "account" | "propose" => {
            let bytes = if command == "account" {
                filler_account_command()
            } else {
                filler_command(number(words, 2)?, number(words, 3)?, number(words, 4)?)
            };
            let pending = handle.try_propose(bytes).map_err(stopped)?;
            waiter
                .send((tag, pending))
                .map_err(|_| "waiter stopped".to_string())
        }
        "status" => {
            let status = handle.status_blocking().map_err(stopped)?;
            let join = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            // An empty list prints as "-" so the columns stay positional.
            let list = |ids: &[u64]| {
                if ids.is_empty() {
                    "-".to_string()
                } else {
                    join(ids)
                }
            };
            println!(
                "status {tag} {} {} {} {} {} {}",
                status.leader_id,
                status.term,
                status.applied_index,
                list(&status.voters),
                list(&status.learners),
                handle.metrics().snapshots_installed
            );
            Ok(())
        }
        "has" => {
            let mut ids = Vec::with_capacity(words.len().saturating_sub(2));
            for word in words.iter().skip(2) {
                let (worker, seq) = word.split_once(':').ok_or("expected worker:seq")?;
                let worker = worker.parse().map_err(|_| "bad worker")?;
                let seq = seq.parse().map_err(|_| "bad seq")?;
                ids.push(filler_id(worker, seq));
            }
            let missing = handle
                .query_blocking(move |state: &AppState| {
                    ids.iter().filter(|id| state.message(id).is_none()).count()
                })
                .map_err(stopped)?;
            println!("has {tag} {missing}");
            Ok(())
        }
        "digest" => {
            let (applied, count, crc) = handle
                .query_blocking(|state: &AppState| {
                    (
                        state.applied_index(),
                        state.message_count(),
                        crc32c::crc32c(&state.snapshot()),
                    )
                })
                .map_err(stopped)?;
            println!("digest {tag} {applied} {count} {crc:08x}");
            Ok(())
        }
        "add-voter" => {
            let id = number(words, 2)?;
            let addr = number(words, 3)?;
            handle.add_voter_blocking(id, addr)?;
            println!("ok {tag}");
            Ok(())
        }
        "remove" => {
            handle.remove_node_blocking(number(words, 2)?)?;
            println!("ok {tag}");
            Ok(())
        }
        "transfer" => {
            handle.transfer_leader(number(words, 2)?).map_err(stopped)?;
            println!("ok {tag}");
            Ok(())
        }
        other => Err(format!("unknown request {other:?}")),
    }
}
