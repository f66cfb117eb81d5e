//! `balancer completions SHELL` and `balancer man`: shell completions and the
//! man page, generated from the CLI's own definition (what the package ships).

use std::io::Write;

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Print the shell completion script for bash, zsh or fish.
///
/// bash: `balancer completions bash > /usr/share/bash-completion/completions/balancer`;
/// zsh: `_balancer` in a directory of `$fpath`; fish: `balancer.fish` in
/// `~/.config/fish/completions`. The Debian package installs all three.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    shell: String,
}

/// Print the man page, balancer(1), as roff (`balancer man | man -l -`).
#[derive(clap::Args)]
pub struct ManArgs {
    /// Instead, write balancer.1 and a page per subcommand (balancer-attach.1,
    /// balancer-backend-add.1, ...) into this directory.
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
}

pub fn completions(mut cmd: clap::Command, a: CompletionsArgs) -> Result<()> {
    let shell = match a.shell.as_str() {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        _ => Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "balancer", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("writing the completions")
}

pub fn man(cmd: clap::Command, a: ManArgs) -> Result<()> {
    let cmd = cmd.name("balancer");
    if let Some(dir) = a.dir {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("writing the man pages into {}", dir.display()));
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the man page")?;
    std::io::stdout()
        .write_all(&out)
        .context("writing the man page")
}
