//! The `tern` binary: the allocator and the command line, nothing else.

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = tern::cli::Cli::parse();
    std::process::exit(tern::cli::run(cli));
}
