use clap::{Parser, Subcommand};

mod cli;

/// SIP load balancer in XDP: dispatches SIP/UDP by Call-ID in the kernel.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Instance name: selects the control socket and the bpffs pin directory.
    #[arg(
        long,
        global = true,
        env = "BALANCER_INSTANCE",
        default_value = "default"
    )]
    instance: String,
    /// The daemon's log level: error, warn, info (default), debug, trace or
    /// off (default: `RUST_LOG`, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Attach(cli::attach::AttachArgs),
    Run(cli::attach::RunArgs),
    #[command(subcommand)]
    Service(cli::service::Command),
    #[command(subcommand)]
    Backend(cli::backend::Command),
    #[command(subcommand)]
    Block(cli::block::Command),
    Whereis(cli::whereis::Args),
    Stats(cli::stats::Args),
    Peers(cli::peers::Args),
    Detach(cli::detach::Args),
    ImportDispatcher(cli::import::Args),
    Inspect(cli::inspect::Args),
    Check(cli::check::Args),
    Reload(cli::reload::Args),
    Top(cli::top::Args),
}

fn main() -> std::process::ExitCode {
    // One line (the error and its causes, joined), as the README promises;
    // anyhow's own report adds "Caused by:" lines and, with RUST_BACKTRACE,
    // a backtrace.
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    balancer::logging::init(
        balancer::logging::level(cli.log_level.as_deref()).map_err(anyhow::Error::msg)?,
    );
    let i = cli.instance;
    match cli.command {
        Command::Attach(a) => cli::attach::attach(&i, a),
        Command::Run(a) => cli::attach::run(&i, a),
        Command::Service(c) => cli::service::run(&i, c),
        Command::Backend(c) => cli::backend::run(&i, c),
        Command::Block(c) => cli::block::run(&i, c),
        Command::Whereis(a) => cli::whereis::run(&i, a),
        Command::Stats(a) => cli::stats::run(&i, a),
        Command::Peers(a) => cli::peers::run(&i, a),
        Command::Detach(a) => cli::detach::run(&i, a),
        Command::ImportDispatcher(a) => cli::import::run(&i, a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Check(a) => cli::check::run(a),
        Command::Reload(a) => cli::reload::run(&i, a),
        Command::Top(a) => cli::top::run(&i, a),
    }
}
