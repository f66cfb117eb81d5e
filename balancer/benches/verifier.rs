//! What loading the data plane costs on this kernel: the instructions the
//! verifier processed for each program (its limit is 1,000,000) and the wall
//! time of a whole load (maps created, both programs verified), median of
//! BENCH_VERIFIER_RUNS loads (default 5). `cargo xtask bench` runs it on the
//! host and in a VM per supported kernel and puts the rows together in
//! bench/RESULTS.md. A benchmark: it measures, it does not judge (the headroom
//! is checked by `kernel_fixtures::verifier_budget_has_headroom`).
//!
//! Output: one tab-separated line, `release, balancer instructions, trivial
//! instructions, median ms, min ms, max ms`, to stdout and, if set, to the
//! file BENCH_VERIFIER_ROW.

use std::time::Instant;

use balancer::kernel::{Dataplane, PROGRAM, TRIVIAL};

fn main() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "loading XDP programs needs root (cargo xtask bench)"
    );
    let runs: usize = std::env::var("BENCH_VERIFIER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut ms = Vec::with_capacity(runs);
    let mut insns = (0, 0);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        let mut dp = Dataplane::load().expect("the verifier accepts the program");
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        let mut count = |name| {
            dp.program(name)
                .and_then(|p| Ok(p.info()?))
                .ok()
                .and_then(|i| i.verified_instruction_count())
                .unwrap_or(0)
        };
        insns = (count(PROGRAM), count(TRIVIAL));
    }
    ms.sort_by(f64::total_cmp);
    let release = balancer::kernel::requirements::release();
    let row = format!(
        "{release}\t{}\t{}\t{:.0}\t{:.0}\t{:.0}\n",
        insns.0,
        insns.1,
        ms[ms.len() / 2],
        ms[0],
        ms[ms.len() - 1]
    );
    print!("{row}");
    if let Ok(path) = std::env::var("BENCH_VERIFIER_ROW") {
        std::fs::write(&path, &row).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
}
