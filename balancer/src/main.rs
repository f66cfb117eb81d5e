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
    Completions(cli::docs::CompletionsArgs),
    Man(cli::docs::ManArgs),
}

fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return usage_error(e),
    };
    // One line, `balancer: <command>: <the error and its causes>`, as the
    // README promises; anyhow's own report adds "Caused by:" lines and, with
    // RUST_BACKTRACE, a backtrace.
    let mut command = Vec::new();
    let mut m = &matches;
    while let Some((name, sub)) = m.subcommand() {
        command.push(name);
        m = sub;
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "balancer: {}: {}",
                command.join(" "),
                one_line(&format!("{e:#}"))
            );
            std::process::ExitCode::FAILURE
        }
    }
}

/// clap's errors in the same one line, `balancer: <command>: <what is
/// wrong> (...)` (exit status 2, as clap's own); help and `--version` are
/// printed as clap prints them.
fn usage_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return std::process::ExitCode::SUCCESS;
    }
    // clap's text: "error: <what>", details, a blank line, "Usage: balancer
    // <command> [OPTIONS] ...", "For more information, try '--help'."; for a
    // missing subcommand, the whole help.
    let text = e.render().to_string();
    let path = command_path();
    let command = if path.is_empty() {
        "command line".to_string()
    } else {
        path.join(" ")
    };
    let path = ["balancer".to_string()]
        .into_iter()
        .chain(path)
        .collect::<Vec<_>>()
        .join(" ");
    let what = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        "a subcommand is missing".to_string()
    } else {
        let lines: Vec<&str> = text
            .lines()
            .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
            .collect();
        let what = one_line(&lines.join("\n"));
        what.strip_prefix("error: ").unwrap_or(&what).to_string()
    };
    eprintln!("balancer: {command}: {what} (`{path} --help` says more)");
    std::process::ExitCode::from(2)
}

/// The subcommands named on the command line (`backend add`), as far as they
/// are known, for an error clap reports before it could tell us.
fn command_path() -> Vec<String> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut path = Vec::new();
    for arg in std::env::args().skip(1) {
        if cmd.get_subcommands().next().is_none() {
            break;
        }
        if arg.starts_with('-') {
            continue;
        }
        let Some(sub) = cmd.find_subcommand(&arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    path
}

/// Every line of `s`, trimmed, joined with "; ": an error's text always
/// prints as one line.
fn one_line(s: &str) -> String {
    let parts: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut out = String::new();
    for p in parts {
        if !out.is_empty() {
            out += if out.ends_with(':') { " " } else { "; " };
        }
        out += p;
    }
    out
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
        Command::Completions(a) => {
            use clap::CommandFactory;
            cli::docs::completions(Cli::command(), a)
        }
        Command::Man(a) => {
            use clap::CommandFactory;
            cli::docs::man(Cli::command(), a)
        }
    }
}
