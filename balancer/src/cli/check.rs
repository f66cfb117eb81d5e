//! `balancer check FILE`

use anyhow::{Context, Result};
use balancer::model::Config;

/// Checks a configuration file without touching the kernel or a running
/// daemon, as `keepalived -t` or `haproxy -c` do: exit 0, or one line per
/// problem with its line number and exit 1.
#[derive(clap::Args)]
pub struct Args {
    file: String,
}

pub fn run(a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file))?;
    let mut problems: Vec<String> = Config::check(&text)
        .iter()
        .map(ToString::to_string)
        .collect();
    if problems.is_empty() {
        let c = Config::parse(&text)?;
        // What only the start reads: the sync key's file.
        if let Some(s) = &c.sync {
            if let Err(e) = s.load_key() {
                problems.push(e.to_string());
            }
        }
        if problems.is_empty() {
            println!(
                "{}: ok ({} services, {} backends)",
                a.file,
                c.services.len(),
                c.services.iter().map(|s| s.backends.len()).sum::<usize>()
            );
            return Ok(());
        }
    }
    // One line per problem, as every error of the CLI is one line.
    for p in &problems {
        eprintln!("balancer: {}: {p}", a.file);
    }
    std::process::exit(1)
}
