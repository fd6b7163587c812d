//! The command line: argument definitions (clap) and one function per
//! subcommand. Owns: parsing, human and JSON output. Must not touch: protocol
//! or storage internals beyond their public APIs.

pub mod pdu;

use clap::{Parser, Subcommand};

pub mod bench_store;
pub mod serve;
pub mod store_node;

#[derive(Debug, Parser)]
#[command(
    name = "tern",
    version,
    about = "A2P SMS appliance: SMPP 3.4 and HTTP in, operator SMSCs out, delivery receipts back",
    long_about = "tern is a single-binary A2P SMS gateway. Three appliances form one Raft group \
so that any node takes any bind and any delivery receipt, and no acknowledged message is lost.\n\n\
Start with `tern pdu decode HEX` to read a PDU from a log or capture."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decode or encode SMPP PDUs: the first tool when troubleshooting an operator link.
    #[command(subcommand)]
    Pdu(pdu::PduCommand),
    /// Run a node: SMPP for customers on the replicated store.
    Serve(serve::ServeArgs),
    /// Load generators that measure this machine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Runs one store node driven over stdin/stdout (for integration tests).
    #[command(hide = true)]
    StoreNode(store_node::StoreNodeArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Committed proposals per second and commit latency of the replicated store.
    Store {
        /// 1 (a single appliance) or 3 (three voters on loopback TCP in this process).
        #[arg(long, default_value_t = 1)]
        voters: u8,
        /// Size of each proposed command in bytes.
        #[arg(long, default_value_t = 200)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 10)]
        duration_s: u64,
        /// Proposer threads.
        #[arg(long, default_value_t = 4)]
        proposers: usize,
        /// Proposals each proposer keeps in flight.
        #[arg(long, default_value_t = 4096)]
        window: usize,
        /// What is proposed: `accept` (a message Accept each, the state grows)
        /// or `no-op` (a command that changes nothing: the replication path alone).
        #[arg(long, value_enum, default_value_t = bench_store::Workload::Accept)]
        workload: bench_store::Workload,
        /// Raft entry (proposal batch) size limit in bytes.
        #[arg(long, default_value_t = 64 * 1024)]
        max_batch_bytes: usize,
        /// Where the nodes' data goes (a scratch directory inside it is removed afterwards).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Print one JSON line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Pdu(command) => pdu::run(command),
        Command::Serve(args) => serve::run(args),
        Command::Bench(BenchCommand::Store {
            voters,
            payload_bytes,
            duration_s,
            proposers,
            window,
            workload,
            max_batch_bytes,
            data_dir,
            json,
        }) => bench_store::run(bench_store::BenchStoreArgs {
            voters,
            payload_bytes,
            duration_s,
            proposers,
            window,
            workload,
            max_batch_bytes,
            data_dir,
            json,
        }),
        Command::StoreNode(args) => store_node::run(args),
    }
}
