//! The command line: argument definitions (clap) and one function per
//! subcommand. Owns: parsing, human and JSON output. Must not touch: protocol
//! or storage internals beyond their public APIs.

use clap::{Parser, Subcommand};

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
    Pdu(PduCommand),
}

#[derive(Debug, Subcommand)]
pub enum PduCommand {
    /// Decode a PDU given as hex (argument or stdin; spaces, newlines and 0x tolerated).
    Decode {
        /// The PDU in hex. Read from stdin when absent.
        hex: Option<String>,
        /// Print JSON instead of a readable listing.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Pdu(PduCommand::Decode { .. }) => {
            eprintln!("tern: pdu decode is not built yet");
            2
        }
    }
}
