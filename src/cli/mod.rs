//! The command line: argument definitions (clap) and one function per
//! subcommand. Owns: parsing, human and JSON output. Must not touch: protocol
//! or storage internals beyond their public APIs.

pub mod admin;
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
    /// Run a node: SMPP and HTTP for customers, operator links, the replicated store.
    Serve(serve::ServeArgs),
    /// Operator SMSC simulator: answers binds and submits, sends receipts and MO, injects faults.
    Sim(sim::SimArgs),
    /// Load generators that measure this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Accounts (customers): list, show, create or change, delete.
    #[command(long_about = admin::remote_help())]
    Account(admin::AccountArgs),
    /// Operator connectors (SMSCs): list, show, create or change, delete.
    #[command(long_about = admin::remote_help())]
    Connector(admin::ConnectorArgs),
    /// Routes from customers to connectors: list, show, create or change, delete.
    #[command(long_about = admin::remote_help())]
    Route(admin::RouteArgs),
    /// Number ranges (which account gets MO messages): list, show, set, delete.
    #[command(long_about = admin::remote_help())]
    NumberRange(admin::NumberRangeArgs),
    /// Cluster state seen from a node: members, leader, indexes, binds, connectors.
    #[command(long_about = admin::remote_help())]
    Status(admin::StatusArgs),
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
        Command::Account(args) => admin::run_account(args),
        Command::Connector(args) => admin::run_connector(args),
        Command::Route(args) => admin::run_route(args),
        Command::NumberRange(args) => admin::run_number_range(args),
        Command::Status(args) => admin::run_status(args),
    }
}
