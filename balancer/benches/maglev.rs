//! Maglev table build time and memory for 10, 100, 1,000 and 4,000 backends
//! (table size 65537), as the control plane builds it (`Selector::build`, the
//! code `Dataplane::sync` runs). Memory is measured, not computed: a counting
//! global allocator records the peak of live heap bytes during one build above
//! what was live before it (the table itself, the permutation and the work
//! arrays, the backends' identities), and the size of the table that is kept.
//! Run by `cargo xtask bench` (section of bench/RESULTS.md via BENCH_MAGLEV).
//! A benchmark: it measures, it does not judge.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use balancer::{model::BackendConfig, select::Selector};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const TABLE: u32 = 65537;

fn backends(n: usize) -> Vec<BackendConfig> {
    (0..n)
        .map(|i| {
            BackendConfig::new(SocketAddr::from((
                Ipv4Addr::from(0x0a00_0000u32 + 256 + i as u32),
                5060,
            )))
        })
        .collect()
}

fn main() {
    let runs: usize = std::env::var("BENCH_MAGLEV_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21);
    let mut md = format!(
        "## Maglev table build\n\n`Selector::build` (what every backend change runs) for a {TABLE}-entry table, equal weights, \
{runs} builds each (median, min-max). Peak heap = the most live heap bytes during one build above what was live \
before it, from a counting allocator; kept = the built table (one `Option<usize>` per entry, 16 B) and the backend list. \
The kernel copy of a table is {TABLE} x 8 B (array map entries are 8-byte aligned) = {} KiB per half, two halves per service.\n\n\
| backends | build ms (min-max) | peak heap during build | kept after build |\n|---:|---:|---:|---:|\n",
        TABLE as usize * 8 / 1024
    );
    for n in [10usize, 100, 1000, 4000] {
        let members = backends(n);
        let mut times = Vec::new();
        let (mut peak, mut kept) = (0, 0);
        for _ in 0..runs {
            let before = LIVE.load(Ordering::Relaxed);
            PEAK.store(before, Ordering::Relaxed);
            let t = Instant::now();
            let s = Selector::build(&members, TABLE).expect("build");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            peak = PEAK.load(Ordering::Relaxed) - before;
            kept = LIVE.load(Ordering::Relaxed) - before;
            assert!(s.table.iter().all(Option::is_some));
            drop(s);
        }
        times.sort_by(f64::total_cmp);
        let line = format!(
            "| {n} | {:.2} ({:.2}-{:.2}) | {:.0} KiB | {:.0} KiB |\n",
            times[times.len() / 2],
            times[0],
            times[times.len() - 1],
            peak as f64 / 1024.0,
            kept as f64 / 1024.0
        );
        eprint!("{line}");
        md.push_str(&line);
    }
    println!("{md}");
    if let Ok(path) = std::env::var("BENCH_MAGLEV") {
        std::fs::write(&path, &md).unwrap();
        eprintln!("wrote {path}");
    }
}
