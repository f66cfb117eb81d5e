//! Figures a benchmark hands to `cargo xtask bench` for the goals summary at
//! the top of bench/RESULTS.md: one `name<TAB>value` line per figure, in the
//! file BENCH_FIGURES names (nothing is written without it). xtask stamps
//! them with the run they come from and keeps them until that section runs
//! again.

pub fn write(figures: &[(String, f64)]) {
    let Ok(path) = std::env::var("BENCH_FIGURES") else {
        return;
    };
    let text: String = figures
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| format!("{k}\t{v}\n"))
        .collect();
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path}: {e}"));
}
