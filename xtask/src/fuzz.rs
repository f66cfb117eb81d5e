//! `cargo xtask fuzz [TARGET] [--runs N | --time SECONDS]`: the libFuzzer
//! targets of `fuzz/` (cargo-fuzz, installed when missing). Not part of
//! `cargo xtask test`: fuzzing is open-ended.
//!
//! - `callid`, `keys`: the header scans and key searches on any bytes, checked
//!   by `balancer-common/tests/properties` (the property tests' checks).
//! - `frame`: any Ethernet frame through the loaded XDP program
//!   (BPF_PROG_TEST_RUN); needs root.
//!
//! Each target keeps what it learns in `fuzz/work/TARGET` (not in git) and
//! starts from it and the seeds in `fuzz/corpus/TARGET`; findings land in
//! `fuzz/artifacts/TARGET`. The closing lines give executions, executions per
//! second and corpus size per target.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

struct Target {
    name: &'static str,
    /// libFuzzer's `-max_len`.
    max_len: usize,
    /// Cargo features of the fuzz crate it needs.
    features: &'static str,
    root: bool,
}

const TARGETS: [Target; 3] = [
    // Datagrams up to a jumbo frame's payload: twice the 4,096-byte window.
    Target {
        name: "callid",
        max_len: 9000,
        features: "",
        root: false,
    },
    Target {
        name: "keys",
        max_len: 9000,
        features: "",
        root: false,
    },
    // What BPF_PROG_TEST_RUN takes without fragments (`MAX_FRAME` there).
    Target {
        name: "frame",
        max_len: 3500,
        features: "frame",
        root: true,
    },
];

/// How long each target runs.
pub enum Budget {
    Runs(u64),
    Seconds(u64),
}

struct Figures {
    target: &'static str,
    executions: u64,
    per_second: u64,
    /// Inputs in libFuzzer's corpus at the end (the work directory also keeps
    /// the ones later inputs replaced).
    corpus: usize,
    findings: usize,
}

pub fn run(root: &Path, target: Option<&str>, budget: Budget) -> Result<()> {
    let chosen: Vec<&Target> = match target {
        Some(t) => vec![TARGETS
            .iter()
            .find(|x| x.name == t)
            .with_context(|| format!("no fuzz target {t} (callid, keys, frame)"))?],
        None => TARGETS.iter().collect(),
    };
    let is_root = unsafe { libc::geteuid() } == 0;
    install_cargo_fuzz()?;
    let dir = root.join("fuzz");
    let mut figures = vec![];
    for t in chosen {
        if t.root && !is_root {
            if target.is_some() {
                bail!("run as root: the {} target loads the XDP program", t.name);
            }
            eprintln!("fuzz: skipping {} (needs root)", t.name);
            continue;
        }
        figures.push(fuzz(&dir, t, &budget)?);
    }
    for f in &figures {
        println!(
            "fuzz {}: {} executions, {} exec/s, corpus {} inputs, {} findings",
            f.target, f.executions, f.per_second, f.corpus, f.findings
        );
    }
    let found: usize = figures.iter().map(|f| f.findings).sum();
    if found > 0 {
        bail!("{found} findings in fuzz/artifacts: minimise them (cargo fuzz tmin) into regression tests");
    }
    Ok(())
}

/// cargo-fuzz runs libFuzzer under nightly (`cargo +nightly fuzz`).
fn install_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !nightly {
        bail!("cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly");
    }
    eprintln!("fuzz: installing cargo-fuzz");
    let st = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()
        .context("running cargo install")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed ({st})");
    }
    Ok(())
}

fn fuzz(dir: &Path, t: &Target, budget: &Budget) -> Result<Figures> {
    let work = dir.join("work").join(t.name);
    std::fs::create_dir_all(&work)?;
    let artifacts = dir.join("artifacts").join(t.name);
    let before = count(&artifacts);
    let mut args: Vec<String> = ["+nightly", "fuzz", "run", t.name, "--release"]
        .map(String::from)
        .into();
    // The targets are safe Rust apart from the scan buffer's masked word loads,
    // which the checks' junk-past-the-window comparison covers: coverage
    // feedback without AddressSanitizer runs some three times as many inputs.
    args.extend(["--sanitizer", "none"].map(String::from));
    if !t.features.is_empty() {
        args.extend(["--features".into(), t.features.into()]);
    }
    // New inputs go to the first directory; the seeds stay as they are.
    args.push(format!("work/{}", t.name));
    args.push(format!("corpus/{}", t.name));
    args.push("--".into());
    args.push(format!("-max_len={}", t.max_len));
    if t.max_len > 4096 {
        args.push("-dict=sip.dict".into());
    }
    args.push("-print_final_stats=1".into());
    args.push(match budget {
        Budget::Runs(n) => format!("-runs={n}"),
        Budget::Seconds(s) => format!("-max_total_time={s}"),
    });
    eprintln!("+ cargo {}", args.join(" "));
    let mut cmd = Command::new("cargo");
    cmd.args(&args)
        .current_dir(dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .stderr(Stdio::piped());
    // The frame target's balancer crate builds the eBPF object.
    if let Some(tc) = crate::setup::ebpf_toolchain() {
        cmd.env("BALANCER_EBPF_TOOLCHAIN", tc);
    }
    let mut child = cmd.spawn().context("running cargo fuzz")?;
    let err = child.stderr.take().expect("piped");
    let (mut executions, mut per_second, mut corpus) = (0, 0, 0);
    for line in BufReader::new(err).lines() {
        let line = line?;
        eprintln!("{line}");
        let stat = |name: &str| {
            line.strip_prefix(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = stat("stat::number_of_executed_units:") {
            executions = n;
        }
        if let Some(n) = stat("stat::average_exec_per_sec:") {
            per_second = n;
        }
        // Status lines: `#N  NEW  cov: C ft: F corp: INPUTS/SIZE ...`.
        if let Some(n) = line
            .split_once(" corp: ")
            .and_then(|(_, r)| r.split('/').next())
            .and_then(|n| n.parse().ok())
        {
            corpus = n;
        }
    }
    let st = child.wait()?;
    let findings = count(&artifacts).saturating_sub(before);
    if !st.success() && findings == 0 {
        bail!("cargo fuzz run {} failed ({st})", t.name);
    }
    Ok(Figures {
        target: t.name,
        executions,
        per_second,
        corpus,
        findings,
    })
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}
