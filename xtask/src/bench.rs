//! `cargo xtask bench`: every benchmark, each writing its section to bench/,
//! then bench/RESULTS.md assembled from them under one header (machine, kernel,
//! commit, date). `--smoke` runs everything with tiny durations (a check that
//! the harness works, not figures to quote).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// (section file in bench/, bench target, environment variable naming the file)
const SECTIONS: &[(&str, &str, &str)] = &[
    ("dataplane.md", "dataplane", "BENCH_DATAPLANE"),
    ("maglev.md", "maglev", "BENCH_MAGLEV"),
    ("throughput.md", "throughput", "BENCH_THROUGHPUT"),
    ("HEALTH.md", "health", "BENCH_HEALTH"),
];

pub fn run(root: &Path, smoke: bool) -> Result<()> {
    let dir = root.join("bench");
    if smoke {
        for (k, v) in [
            ("BENCH_TESTRUN_RUNS", "500"),
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
    for (file, bench, var) in SECTIONS {
        std::env::set_var(var, dir.join(file));
        super::cargo(&["bench", "-p", "balancer", "--bench", bench])?;
    }
    let mut out = header(root, smoke);
    for (file, _, _) in SECTIONS {
        let text = std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading bench/{file}"))?;
        out.push('\n');
        // Each section becomes a level-2 heading of RESULTS.md.
        out.push_str(&demote_title(&text));
    }
    let path = dir.join("RESULTS.md");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
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

fn header(root: &Path, smoke: bool) -> String {
    let cpu = out("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2", root);
    // bench/ is what this run writes: it does not make the measured code dirty.
    let dirty = if out(
        "git status --porcelain --untracked-files=no -- . ':!bench'",
        root,
    )
    .is_empty()
    {
        ""
    } else {
        " (with uncommitted changes)"
    };
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
