//! Developer and CI entry points: `cargo xtask setup|build|deb|test|lab|bench|mutants|fuzz`.
//!
//! Every command that builds calls `setup` first, so a fresh Debian machine needs
//! nothing but the Rust toolchain from rustup and this repository.

mod bench;
mod deb;
mod fuzz;
mod goals;
mod kernel_suite;
mod kernels;
mod mutants;
mod setup;
mod vm;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer and CI tasks for the SIP XDP balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF object needs (idempotent; says what it does).
    /// Leaves no service of what it installs enabled or running.
    Setup {
        /// Only print the packages whose services setup keeps disabled and
        /// stopped, one per line (for tests/setup.rs).
        #[arg(long, hide = true)]
        list: bool,
    },
    /// Build the balancer binary (release) with its embedded XDP object.
    Build,
    /// Build the Debian package target/debian/balancer_<version>_<arch>.deb:
    /// the release binary, the systemd unit, man pages, completions, an example
    /// configuration.
    Deb,
    /// Run every test: formatting, clippy, host tests, kernel fixtures, netns
    /// end-to-end, then the eBPF tests again on each supported kernel under QEMU.
    Test {
        /// Skip the VMs (the host's kernel only).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter); with them
        /// the VMs are skipped (`cargo xtask kernels` runs them alone).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The tests that touch the eBPF program (kernel fixtures, netns end-to-end,
    /// hitless restart), inside QEMU booting each supported Debian kernel.
    Kernels {
        /// Only this kernel (6.1, 6.12); repeat for several. Default: all.
        #[arg(long = "kernel")]
        kernels: Vec<String>,
        /// Only the step with this label ("hitless restart"); repeat for several.
        #[arg(long = "only")]
        only: Vec<String>,
        /// Run each step this many times in the same VM (chasing a rare failure).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// The lab demo: a netns topology, sipp calls through the balancer, a live per-backend table, a backend killed
    /// midway (`--balancers 3`: several balancers behind a BGP/ECMP router, one cut off).
    // `--help` goes to the lab itself, which lists its knobs.
    #[command(disable_help_flag = true)]
    Lab {
        /// Arguments for the lab (`cargo xtask lab --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks: in-kernel ns/packet, live-frames packets/s, Maglev build, throughput through the netns bed
    /// against Kamailio, nftables and a trivial XDP rewrite, health detection
    /// (writes bench/RESULTS.md, bench/throughput.svg and one file per section).
    Bench {
        /// Tiny durations: checks the harness end to end in about a minute.
        #[arg(long)]
        smoke: bool,
        /// Run only this section (dataplane, live_frames, maglev, throughput,
        /// health, verifier); RESULTS.md keeps the others' last figures.
        #[arg(long)]
        only: Option<String>,
    },
    /// Mutation testing of the pure code (balancer-common, balancer's pure files)
    /// against its crate's unprivileged tests; writes bench/mutants.md. Not part of
    /// `test`: about an hour.
    Mutants {
        /// Only this crate (balancer-common, balancer); repeat for several.
        #[arg(long = "package", short = 'p')]
        packages: Vec<String>,
        /// Only the files matching this glob (from the workspace root); repeat for
        /// several. The report keeps the other mutants' last outcomes.
        #[arg(long = "file", short = 'f')]
        files: Vec<String>,
        /// Only the mutants the last run of this selection did not catch.
        #[arg(long)]
        iterate: bool,
        /// Only rewrite the report from the last runs' outcomes.
        #[arg(long)]
        report: bool,
    },
    /// Fuzzing with cargo-fuzz (installed when missing): the header scans
    /// (`callid`), the key searches (`keys`) and, as root, frames through the XDP
    /// program (`frame`). Not part of `test`. Default: each target for 60 s.
    Fuzz {
        /// Only this target (callid, keys, frame).
        target: Option<String>,
        /// Stop each target after this many inputs.
        #[arg(long, conflicts_with = "time")]
        runs: Option<u64>,
        /// Stop each target after this many seconds.
        #[arg(long)]
        time: Option<u64>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup { list: true } => {
            for p in setup::quiet_packages() {
                println!("{p}");
            }
            Ok(())
        }
        Cmd::Setup { list: false } => setup::run(),
        Cmd::Build => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "balancer"])
        }
        Cmd::Deb => {
            setup::run()?;
            deb::run(&root()).map(|_| ())
        }
        Cmd::Test { host_only, args } => {
            require_root("the tests load XDP programs and create network namespaces")?;
            setup::run()?;
            cargo(&["fmt", "--all", "--", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            cargo(&["build", "-p", "balancer", "--bins"])?;
            let vms = !host_only && args.is_empty();
            let mut a = vec!["test".to_string()];
            a.extend(args);
            test(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
            if vms {
                kernel_suite::run(&[], &[], 1)?;
            }
            Ok(())
        }
        Cmd::Kernels {
            kernels,
            only,
            repeat,
        } => {
            require_root("the VMs share the host's root over 9p, which needs root")?;
            setup::run()?;
            cargo(&["build", "-p", "balancer", "--bins"])?;
            kernel_suite::run(&kernels, &only, repeat)
        }
        Cmd::Lab { args } => {
            require_root("the lab creates network namespaces and attaches XDP")?;
            setup::run()?;
            // The example runs target/release/balancer: build it first, or a stale one runs.
            cargo(&["build", "--release", "-p", "balancer", "--bins"])?;
            let mut a = vec![
                "run",
                "--release",
                "-p",
                "balancer",
                "--example",
                "lab",
                "--",
            ];
            a.extend(args.iter().map(String::as_str));
            cargo(&a)
        }
        Cmd::Bench { smoke, only } => {
            require_root("the benchmark loads XDP programs and makes network namespaces")?;
            setup::run()?;
            bench::run(&root(), smoke, only.as_deref())
        }
        Cmd::Mutants {
            packages,
            files,
            iterate,
            report,
        } => mutants::run(&root(), &packages, &files, iterate, report),
        Cmd::Fuzz { target, runs, time } => {
            let budget = match (runs, time) {
                (Some(n), _) => fuzz::Budget::Runs(n),
                (None, t) => fuzz::Budget::Seconds(t.unwrap_or(60)),
            };
            fuzz::run(&root(), target.as_deref(), budget)
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn require_root(why: &str) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root: {why}");
    }
    Ok(())
}

/// `cargo test`, passing its output through, then one closing line with the
/// totals over all test binaries (cargo's own last lines are per binary).
fn test(args: &[&str]) -> Result<()> {
    let mut cmd = cargo_cmd(args);
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running cargo test")?;
    let out = child.stdout.take().expect("piped");
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut w = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (w.next(), w.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    _ => {}
                }
            }
        }
    }
    let st = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn cargo_cmd(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    if let Some(t) = setup::ebpf_toolchain() {
        cmd.env("BALANCER_EBPF_TOOLCHAIN", t);
    }
    eprintln!("+ cargo {}", args.join(" "));
    cmd
}

/// Runs cargo in the workspace root with the eBPF toolchain chosen by setup.
fn cargo(args: &[&str]) -> Result<()> {
    let mut cmd = cargo_cmd(args);
    let st = cmd.status().context("running cargo")?;
    if !st.success() {
        bail!("cargo {} failed ({st})", args.join(" "));
    }
    Ok(())
}

/// Builds the named integration tests (`kind` "test") or benchmarks ("bench")
/// of the `balancer` crate and returns their executables by name.
fn binaries<'a>(
    kind: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<std::collections::HashMap<String, String>> {
    let mut args = vec![kind, "--no-run", "--message-format=json", "-p", "balancer"];
    let names: std::collections::BTreeSet<&str> = names.collect();
    let flag = format!("--{kind}");
    for n in &names {
        args.extend([flag.as_str(), *n]);
    }
    let out = cargo_cmd(&args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("building the {kind} binaries"))?;
    if !out.status.success() {
        bail!("building the {kind} binaries failed");
    }
    let mut found = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str())
        else {
            continue;
        };
        let kinds = v["target"]["kind"].as_array();
        if names.contains(&name) && kinds.is_some_and(|k| k.iter().any(|k| k == kind)) {
            found.insert(name.to_string(), exe.to_string());
        }
    }
    for n in names {
        if !found.contains_key(n) {
            bail!("cargo built no {kind} binary {n}");
        }
    }
    Ok(found)
}
