use clap::{Parser, Subcommand};

mod cli;

/// SIP load balancer in XDP: dispatches SIP/UDP by Call-ID in the kernel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Attach(cli::attach::Args),
    Inspect(cli::inspect::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Attach(a) => cli::attach::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
    }
}
