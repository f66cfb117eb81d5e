//! `cargo xtask mutants`: mutation testing (cargo-mutants) of the code that runs
//! without a kernel, root or a network, so that a test claiming something about it
//! is seen to fail when the claim is false. Not part of `cargo xtask test`: one
//! run takes about an hour on two cores.
//!
//! Each crate's mutants are judged by that crate's own tests that need nothing
//! privileged (the kernel fixtures and netns tests would take minutes per mutant
//! and prove nothing about pure code). The report, `bench/mutants.md`, lists the
//! counts per crate and every missed mutant with the reason it does not matter,
//! read from `bench/mutants-survivors.tsv` (mutant name, TAB, reason).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The pure parts of `balancer`: globs from the workspace root, one per entry.
/// Its unit tests (`--lib`) judge their mutants.
pub const BALANCER_PURE: &[&str] = &[
    "balancer/src/model/**/*.rs",
    "balancer/src/health/config.rs",
    "balancer/src/health/tracker.rs",
    "balancer/src/health/probe.rs",
    "balancer/src/import/**/*.rs",
    "balancer/src/kernel/plan.rs",
    "balancer/src/select.rs",
    "balancer/src/control/protocol.rs",
];

/// A crate whose mutants are tested.
struct Crate {
    package: &'static str,
    /// Globs of the files to mutate; empty: all of the crate's.
    files: &'static [&'static str],
    features: &'static str,
    /// Which of its tests judge the mutants (`cargo test` target selection).
    tests: &'static [&'static str],
}

const CRATES: [Crate; 2] = [
    // All of balancer-common's tests (unit, RFC 4475 corpus, properties) are pure.
    Crate {
        package: "balancer-common",
        files: &[],
        features: "user",
        tests: &[],
    },
    Crate {
        package: "balancer",
        files: BALANCER_PURE,
        features: "",
        tests: &["--lib"],
    },
];

/// Tests that judge no mutant: one that fails on its own (a flaky test, an open
/// bug) would count every mutant as caught. Empty since the Call-ID scanner's
/// wrap at the end of a full window was fixed (it made
/// `arbitrary_bytes_never_panic_or_escape` fail at random).
const SKIP_TESTS: &[&str] = &[];

const REPORT: &str = "bench/mutants.md";
const SURVIVORS: &str = "bench/mutants-survivors.tsv";

/// Runs cargo-mutants over `packages` (all of [`CRATES`] when empty), only the
/// files matching `files` when given, then writes the report from every run's
/// outcomes. With `report_only`, just the report.
pub fn run(
    root: &Path,
    packages: &[String],
    files: &[String],
    iterate: bool,
    report_only: bool,
) -> Result<()> {
    for p in packages {
        if !CRATES.iter().any(|c| c.package == p) {
            bail!("no mutation testing set up for package {p}");
        }
    }
    if !report_only {
        install()?;
        for c in CRATES
            .iter()
            .filter(|c| packages.is_empty() || packages.iter().any(|p| p == c.package))
        {
            test_crate(root, c, files, iterate)?;
        }
    }
    report(root)
}

fn install() -> Result<()> {
    let have = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        crate::setup::say("installing cargo-mutants (cargo install cargo-mutants --locked)");
        crate::setup::run_cmd(Command::new("cargo").args([
            "install",
            "cargo-mutants",
            "--locked",
        ]))?;
    }
    Ok(())
}

/// Where a run's `mutants.out` goes: one directory per crate and file selection,
/// so a later partial run (say, one file after new tests) refines a full one
/// instead of replacing it.
fn out_dir(root: &Path, package: &str, files: &[String]) -> PathBuf {
    let label = if files.is_empty() {
        "all".to_string()
    } else {
        files
            .join("+")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    root.join("target/mutants").join(package).join(label)
}

fn test_crate(root: &Path, c: &Crate, files: &[String], iterate: bool) -> Result<()> {
    if c.package == "balancer" {
        // Its build script builds the eBPF object.
        crate::setup::run()?;
    }
    let out = out_dir(root, c.package, files);
    std::fs::create_dir_all(&out)?;
    let globs: Vec<String> = if files.is_empty() {
        c.files.iter().map(|s| s.to_string()).collect()
    } else {
        files.to_vec()
    };
    let mut args: Vec<String> = [
        "mutants",
        "--package",
        c.package,
        // Six engineers share two cores.
        "--jobs",
        "1",
        // A loaded machine slows tests down; a mutant that loops forever still
        // ends here rather than at cargo-mutants' multiple of the baseline.
        "--minimum-test-timeout",
        "60",
        "--output",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    if !c.features.is_empty() {
        args.extend(["--features".into(), c.features.into()]);
    }
    for g in &globs {
        args.extend(["--file".into(), g.clone()]);
    }
    for t in c.tests {
        args.push(format!("--cargo-test-arg={t}"));
    }
    // Every test binary runs, so a mutant's log names every test that caught it.
    args.push("--cargo-test-arg=--no-fail-fast".into());
    if iterate {
        // Only the mutants not caught last time; cargo-mutants keeps the last
        // run as mutants.out.old, which the report reads first.
        args.push("--iterate".into());
    }
    if !SKIP_TESTS.is_empty() {
        // Last: after `-- --`, what the test binaries get.
        args.push("--".into());
        args.push("--".into());
        for t in SKIP_TESTS {
            args.extend(["--skip".into(), t.to_string()]);
        }
    }
    let start = Instant::now();
    let st = crate::cargo_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        // A caught mutant fails a property test; shrinking its counterexample
        // only makes the message nicer, and can take longer than the tests.
        // (The case counts are fixed in the tests: PROPTEST_CASES would not apply.)
        .env("PROPTEST_MAX_SHRINK_ITERS", "0")
        .status()
        .context("running cargo mutants")?;
    let mut elapsed = std::fs::read_to_string(out.join("elapsed")).unwrap_or_default();
    writeln!(elapsed, "{}", start.elapsed().as_secs())?;
    std::fs::write(out.join("elapsed"), elapsed)?;
    // Exit codes 2 (missed) and 3 (timeouts) are what the report is for; 1 is a
    // usage error and 4 a failing baseline.
    match st.code() {
        Some(0 | 2 | 3) => Ok(()),
        _ => bail!("cargo mutants for {} failed ({st})", c.package),
    }
}

/// One mutant's outcome, from cargo-mutants' `outcomes.json`.
#[derive(Clone)]
struct Outcome {
    summary: String,
    file: String,
}

/// The newest outcome of every mutant of `package` over all its runs, and the
/// total run time of the runs.
fn outcomes(root: &Path, package: &str) -> Result<(BTreeMap<String, Outcome>, u64)> {
    let dir = root.join("target/mutants").join(package);
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut secs = 0;
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd {
            let run = e?.path();
            secs += std::fs::read_to_string(run.join("elapsed"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .sum::<u64>();
            for out in ["mutants.out.old", "mutants.out"] {
                let f = run.join(out).join("outcomes.json");
                if let Ok(m) = std::fs::metadata(&f) {
                    files.push((m.modified()?, f));
                }
            }
        }
    }
    files.sort();
    let mut all = BTreeMap::new();
    for (_, f) in files {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f)?)
            .with_context(|| format!("reading {}", f.display()))?;
        for o in v["outcomes"].as_array().into_iter().flatten() {
            let m = &o["scenario"]["Mutant"];
            let (Some(name), Some(file), Some(summary)) = (
                m["name"].as_str(),
                m["file"].as_str(),
                o["summary"].as_str(),
            ) else {
                continue; // the baseline
            };
            all.insert(
                name.to_string(),
                Outcome {
                    summary: summary.to_string(),
                    file: file.to_string(),
                },
            );
        }
    }
    Ok((all, secs))
}

/// `file:line:col: what` as (file, line, col), to list mutants in source order.
fn position(name: &str) -> (String, u32, u32) {
    let mut p = name.splitn(4, ':');
    let file = p.next().unwrap_or_default().to_string();
    let mut num = || p.next().and_then(|n| n.trim().parse().ok()).unwrap_or(0);
    (file, num(), num())
}

fn report(root: &Path) -> Result<()> {
    let reasons: BTreeMap<String, String> = std::fs::read_to_string(root.join(SURVIVORS))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, r)| (n.trim().to_string(), r.trim().to_string()))
        .collect();
    let mut md = String::from(
        "# Mutation testing\n\n\
         `cargo xtask mutants` (cargo-mutants, one job): each mutant of the code below is \
         judged by its crate's tests that need no root, kernel or network \
         (balancer-common: all of them, with the `user` feature; balancer: `--lib`, \
         over the pure files listed in `xtask/src/mutants.rs`). Caught: a test failed; \
         missed: every test passed; unviable: it does not build; timeout: the tests \
         did not end. Missed mutants are listed with why they do not matter \
         (`bench/mutants-survivors.tsv`). Every test binary runs for every mutant \
         (`--no-fail-fast`), and proptest does not shrink the failures \
         (`PROPTEST_MAX_SHRINK_ITERS=0`; the case counts are the tests' own).\n\n\
         | crate | mutants | caught | missed | unviable | timeout | caught of viable | run time |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut lists = String::new();
    let mut unexplained = 0;
    for c in &CRATES {
        let (all, secs) = outcomes(root, c.package)?;
        if all.is_empty() {
            continue;
        }
        let n = |s: &str| all.values().filter(|o| o.summary == s).count();
        let (caught, missed, unviable, timeout) = (
            n("CaughtMutant"),
            n("MissedMutant"),
            n("Unviable"),
            n("Timeout"),
        );
        let viable = caught + missed + timeout;
        writeln!(
            md,
            "| {} | {} | {caught} | {missed} | {unviable} | {timeout} | {:.1}% | {}m{:02}s |",
            c.package,
            all.len(),
            100.0 * caught as f64 / viable.max(1) as f64,
            secs / 60,
            secs % 60,
        )?;
        let mut files: Vec<&str> = all.values().map(|o| o.file.as_str()).collect();
        files.sort();
        files.dedup();
        writeln!(
            lists,
            "\n## {}\n\nFiles: {}.\n",
            c.package,
            files.join(", ")
        )?;
        let mut survivors: Vec<(&String, &Outcome)> = all
            .iter()
            .filter(|(_, o)| o.summary == "MissedMutant" || o.summary == "Timeout")
            .collect();
        survivors.sort_by_key(|(name, _)| position(name));
        for (name, o) in survivors {
            let why = match reasons.get(name) {
                Some(r) => r.as_str(),
                None => {
                    unexplained += 1;
                    "**no reason recorded: add a test, or the reason to bench/mutants-survivors.tsv**"
                }
            };
            let what = if o.summary == "Timeout" {
                " (timeout)"
            } else {
                ""
            };
            writeln!(lists, "- `{name}`{what}: {why}")?;
        }
    }
    md.push_str(&lists);
    std::fs::write(root.join(REPORT), md)?;
    println!("wrote {REPORT}");
    if unexplained > 0 {
        eprintln!("{unexplained} missed mutants have no reason recorded in {SURVIVORS}");
    }
    Ok(())
}
