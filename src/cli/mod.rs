//! The command line: argument definitions (clap) and one function per
//! subcommand. Owns: parsing, human and JSON output. Must not touch: protocol
//! or storage internals beyond their public APIs.

pub mod bench;
pub mod pdu;
pub mod sim;

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
    /// Operator SMSC simulator: answers binds and submits, sends receipts and MO, injects faults.
    Sim(sim::SimArgs),
    /// Load generators that measure this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Runs one store node driven over stdin/stdout (for integration tests).
    #[command(hide = true)]
    StoreNode(store_node::StoreNodeArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Pdu(command) => pdu::run(command),
        Command::Serve(args) => serve::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Bench(command) => bench::run(command),
        Command::StoreNode(args) => store_node::run(args),
    }
}
