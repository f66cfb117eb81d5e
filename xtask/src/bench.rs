//! `cargo xtask bench`: every benchmark, each writing its section to bench/,
//! then bench/RESULTS.md assembled from them under one header (machine, kernel,
//! commit, date). `--smoke` runs everything with tiny durations (a check that
//! the harness works, not figures to quote).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::goals;

/// (section file in bench/, bench target, environment variable naming the
/// file, prefix of the figures it hands to the goals summary)
const SECTIONS: &[(&str, &str, &str, &str)] = &[
    ("dataplane.md", "dataplane", "BENCH_DATAPLANE", "dataplane."),
    ("live_frames.md", "live_frames", "BENCH_LIVE", "live."),
    ("maglev.md", "maglev", "BENCH_MAGLEV", "maglev."),
    ("throughput.md", "throughput", "BENCH_THROUGHPUT", "bed."),
    ("HEALTH.md", "health", "BENCH_HEALTH", "health."),
];

pub fn run(root: &Path, smoke: bool, only: Option<&str>) -> Result<()> {
    let dir = root.join("bench");
    let known = |name: &str| SECTIONS.iter().any(|s| s.1 == name) || name == "verifier";
    if let Some(name) = only.filter(|n| !known(n)) {
        anyhow::bail!(
            "no bench section {name}: dataplane, live_frames, maglev, throughput, health, verifier"
        );
    }
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    if smoke {
        for (k, v) in [
            ("BENCH_TESTRUN_RUNS", "500"),
            ("BENCH_ROTATION", "2000"),
            ("BENCH_LIVE_FRAMES", "20000"),
            ("BENCH_LIVE_ROUNDS", "3"),
            ("BENCH_MAGLEV_RUNS", "3"),
            ("BENCH_SECONDS", "1"),
            ("BENCH_REPS", "1"),
            ("BENCH_RATES", "50000,0"),
        ] {
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }
    // The throughput bench runs the generator binary of the loadgen crate.
    super::cargo(&[
        "build",
        "--release",
        "-p",
        "loadgen",
        "-p",
        "balancer",
        "--bins",
    ])?;
    std::env::set_var("LOADGEN_BIN", root.join("target/release/sip-loadgen"));
    std::env::set_var("BENCH_SVG", dir.join("throughput.svg"));
    let stamp = run_stamp(root, smoke);
    let mut store = goals::Store::read(&dir.join(goals::FIGURES))?;
    let handed =
        std::env::temp_dir().join(format!("balancer-bench-figures-{}", std::process::id()));
    std::env::set_var("BENCH_FIGURES", &handed);
    for (file, bench, var, prefix) in SECTIONS.iter().filter(|s| wanted(s.1)) {
        std::env::set_var(var, dir.join(file));
        let _ = std::fs::remove_file(&handed);
        super::cargo(&["bench", "-p", "balancer", "--bench", bench])?;
        // A bench that hands no figures leaves its prefix empty: figures of an
        // earlier run of the same section are not kept beside new ones.
        let text = std::fs::read_to_string(&handed).unwrap_or_default();
        store.replace(prefix, goals::parse(&text)?, &stamp);
    }
    let _ = std::fs::remove_file(&handed);
    if wanted("verifier") {
        let (verifier, figures) = verifier_section(smoke)?;
        std::fs::write(dir.join(VERIFIER), verifier)?;
        store.replace("verifier.", figures, &stamp);
    }
    store.write(&dir.join(goals::FIGURES))?;
    let mut out = header(root, smoke);
    if let Some(name) = only {
        out += &format!(
            "- this run: only the {name} section; the others are as an earlier run left them (their own headers are not kept: see git log; the goals below say which run each figure is from)\n"
        );
    }
    out.push('\n');
    out.push_str(&goals::summary(&store));
    for file in SECTIONS.iter().map(|s| s.0).chain([VERIFIER]) {
        let path = dir.join(file);
        if !path.exists() {
            eprintln!("bench/{file}: not run yet, left out of RESULTS.md");
            continue;
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("reading bench/{file}"))?;
        out.push('\n');
        // Each section becomes a level-2 heading of RESULTS.md.
        out.push_str(&demote_title(&text));
    }
    let path = dir.join("RESULTS.md");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Which run figures come from: date, commit, and whether it was a smoke run.
fn run_stamp(root: &Path, smoke: bool) -> String {
    format!(
        "{}, {}{}{}",
        out("date -u '+%Y-%m-%d %H:%M UTC'", root),
        out(
            "git rev-parse --short HEAD 2>/dev/null || echo unknown",
            root
        ),
        dirty(root),
        if smoke { ", smoke run" } else { "" }
    )
}

/// The verifier section's file in bench/.
const VERIFIER: &str = "verifier.md";

/// The `verifier` bench on the host and in a VM per supported kernel: the
/// instructions each kernel's verifier processes and the time a load takes.
fn verifier_section(smoke: bool) -> Result<(String, Vec<(String, f64)>)> {
    let runs = if smoke { "1" } else { "5" };
    let bin = crate::binaries("bench", ["verifier"].into_iter())?["verifier"].clone();
    let mut rows = Vec::new();
    let host = Command::new(&bin)
        .env("BENCH_VERIFIER_RUNS", runs)
        .output()
        .context("running the verifier bench")?;
    if !host.status.success() {
        anyhow::bail!(
            "the verifier bench failed on the host: {}",
            String::from_utf8_lossy(&host.stderr)
        );
    }
    rows.push(("host", String::from_utf8_lossy(&host.stdout).into_owned()));
    let root = crate::root().canonicalize()?;
    for k in crate::kernels::KERNELS.iter().filter(|k| k.supported) {
        let p = k.prepare()?;
        let step = crate::vm::Step {
            label: "verifier".into(),
            argv: vec![bin.clone()],
        };
        let env = [
            ("BENCH_VERIFIER_RUNS", runs.to_string()),
            ("BENCH_VERIFIER_ROW", "/run/vm/out/row".to_string()),
        ];
        let out = crate::vm::run(
            &p,
            &root,
            &[step],
            &env,
            std::time::Duration::from_secs(600),
        )?;
        let row = out
            .outputs
            .get("row")
            .with_context(|| format!("the verifier bench left no result in the {} VM", p.name))?;
        rows.push(("QEMU (TCG)", row.clone()));
    }
    verifier_table(&rows, runs)
}

/// The section's text, and the instructions each kernel's verifier processed
/// for `balancer` (figures `verifier.<kernel release>`).
fn verifier_table(rows: &[(&str, String)], runs: &str) -> Result<(String, Vec<(String, f64)>)> {
    const LIMIT: u64 = 1_000_000;
    let mut t = format!(
        "# Verifier: instructions processed and load time per kernel

The verifier's work for the `balancer` program (its limit is {LIMIT} instructions; `kernel_fixtures::verifier_budget_has_headroom` keeps every tested kernel at least 30% below it) and for the trivial baseline, and the wall time of a whole load (maps and both programs), median (min-max) of {runs}. VM rows run under QEMU's software CPU emulation: their times are many times those of real hardware, comparable with each other only.

| kernel | where | `balancer` instructions | headroom | `xdp_trivial` | load time, ms |
|---|---|---:|---:|---:|---|
"
    );
    let mut figures = Vec::new();
    for (place, row) in rows {
        let f: Vec<&str> = row.trim().split('\t').collect();
        let n: u64 = match (f.len(), f.get(1).map(|n| n.parse())) {
            (6, Some(Ok(n))) => n,
            _ => anyhow::bail!("the verifier bench printed {row:?} ({place})"),
        };
        figures.push((format!("verifier.{}", f[0]), n as f64));
        let headroom = 100.0 * (LIMIT.saturating_sub(n)) as f64 / LIMIT as f64;
        t += &format!(
            "| {} | {place} | {} | {headroom:.0}% | {} | {} ({}-{}) |\n",
            f[0], f[1], f[2], f[3], f[4], f[5]
        );
    }
    Ok((t, figures))
}

/// A `# Title` first line becomes `## Title`.
fn demote_title(text: &str) -> String {
    match text.strip_prefix("# ") {
        Some(rest) => format!("## {rest}"),
        None => text.to_string(),
    }
}

fn out(cmd: &str, root: &Path) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// " (with uncommitted changes)" when the measured code differs from the commit.
fn dirty(root: &Path) -> &'static str {
    // bench/ is what this run writes: it does not make the measured code dirty.
    if out(
        "git status --porcelain --untracked-files=no -- . ':!bench'",
        root,
    )
    .is_empty()
    {
        ""
    } else {
        " (with uncommitted changes)"
    }
}

fn header(root: &Path, smoke: bool) -> String {
    let cpu = out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", root);
    let dirty = dirty(root);
    format!(
        "# Benchmark results\n\nWritten by `cargo xtask bench{}`{}. Each section below is also in its own file in bench/.\n\n\
- machine: {cpu}, {} CPUs, {} MiB memory\n- kernel: {}\n- commit: {}{dirty}\n- date: {}\n",
        if smoke { " --smoke" } else { "" },
        if smoke {
            ": SMOKE RUN, tiny durations, not figures to quote"
        } else {
            ""
        },
        out("nproc --all", root),
        out("awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo", root),
        out("uname -r", root),
        out("git rev-parse --short HEAD 2>/dev/null || echo unknown", root),
        out("date -u '+%Y-%m-%d %H:%M UTC'", root),
    )
}
