//! Health checks, measured: how long from a backend dying until the kernel table
//! no longer names it, and what probing 1,000 backends costs. Real prober, real
//! UDP responders on loopback answering SIP OPTIONS, real kernel tables. Run by
//! `cargo xtask bench`, which writes bench/HEALTH.md. It measures, it does not judge.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use balancer::{
    health::Prober,
    health::{Health, HealthConfig, Params, Tracker},
    kernel::Dataplane,
    model::{BackendConfig, Config, ServiceConfig},
};

/// A SIP server stand-in on loopback: answers every request with 200, echoing
/// Call-ID and CSeq, until told to die.
struct Responder {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
}

/// `n` responders on consecutive ports, served by one thread of their own (so
/// the machine's two cores are not spent on a thousand threads).
fn responders(n: usize, base_port: u16) -> Vec<Responder> {
    let socks: Vec<UdpSocket> = (0..n)
        .map(|i| {
            let s = UdpSocket::bind(("127.0.0.1", base_port + i as u16)).expect("bind responder");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let out: Vec<Responder> = socks
        .iter()
        .map(|s| Responder {
            addr: s.local_addr().unwrap(),
            alive: Arc::new(AtomicBool::new(true)),
            answered: Arc::new(AtomicU64::new(0)),
        })
        .collect();
    let flags: Vec<(Arc<AtomicBool>, Arc<AtomicU64>)> = out
        .iter()
        .map(|r| (r.alive.clone(), r.answered.clone()))
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (sock, (alive, answered)) in socks.into_iter().zip(flags) {
                let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok((len, from)) = sock.recv_from(&mut buf).await else {
                            continue;
                        };
                        if !alive.load(Ordering::Relaxed) {
                            continue;
                        }
                        let msg = String::from_utf8_lossy(&buf[..len]);
                        let h = |name: &str| {
                            msg.lines()
                                .find_map(|l| l.strip_prefix(name))
                                .unwrap_or("")
                                .trim()
                                .to_string()
                        };
                        let reply = format!(
                            "SIP/2.0 200 OK\r\nVia: {}\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
                            h("Via:"),
                            h("Call-ID:"),
                            h("CSeq:")
                        );
                        let _ = sock.send_to(reply.as_bytes(), from).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `n` backends, each dying at a random moment; from each death to the sync
/// that takes it out of the live kernel table.
fn detection(dp: &mut Dataplane, h: HealthConfig, n: usize, base_port: u16) -> String {
    let params: Params = h.params().unwrap();
    let rs = responders(n, base_port);
    let mut svc = ServiceConfig::new("10.0.0.10:5060".parse().unwrap());
    svc.backends = rs.iter().map(|r| BackendConfig::new(r.addr)).collect();
    let config = Config {
        interfaces: vec!["lo".into()],
        services: vec![svc],
        ..Default::default()
    };
    dp.set_down(HashSet::new());
    dp.sync(&config).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut detect_ms = Vec::new();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut prober = Prober::new(tx).await.unwrap();
        let want: Vec<(SocketAddr, Params)> = rs.iter().map(|r| (r.addr, params.clone())).collect();
        prober.update(&want);
        let mut trackers: std::collections::HashMap<SocketAddr, Tracker> = Default::default();
        // Let everyone be seen up, then kill them one by one, at moments spread
        // over several probe cycles (so their phases differ), far enough apart
        // that one table rebuild does not delay the next detection.
        let settle = tokio::time::Instant::now() + params.interval * 2;
        let mut deaths: Vec<(SocketAddr, Instant)> = Vec::new();
        let mut next_death = 0usize;
        let spacing = params.interval * 7 / n as u32 + Duration::from_millis(3);
        let mut down: HashSet<SocketAddr> = HashSet::new();
        while down.len() < n {
            let now = tokio::time::Instant::now();
            if now >= settle + spacing * next_death as u32 && next_death < n {
                rs[next_death].alive.store(false, Ordering::Relaxed);
                deaths.push((rs[next_death].addr, Instant::now()));
                next_death += 1;
            }
            let ev = match tokio::time::timeout(Duration::from_millis(1), rx.recv()).await {
                Ok(Some(ev)) => ev,
                _ => continue,
            };
            let t = trackers.entry(ev.backend).or_default();
            if let Some(tr) = t.record(&params, &ev.outcome) {
                if tr.to == Health::Down {
                    down.insert(ev.backend);
                    dp.set_down(down.clone());
                    dp.sync(&config).unwrap();
                    let died = deaths.iter().find(|(a, _)| *a == ev.backend).unwrap().1;
                    detect_ms.push(died.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    });
    let bound = params.interval * params.fall + params.timeout;
    let mut v = detect_ms.clone();
    format!(
        "| {} | {} | {} | {n} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
        balancer::model::fmt_duration(params.interval),
        balancer::model::fmt_duration(params.timeout),
        params.fall,
        pct(&mut v, 0.0),
        pct(&mut v, 0.5),
        pct(&mut v, 0.9),
        pct(&mut v, 1.0),
        bound.as_secs_f64() * 1e3
    )
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    Duration::from_secs(ru.ru_utime.tv_sec as u64 + ru.ru_stime.tv_sec as u64)
        + Duration::from_micros(ru.ru_utime.tv_usec as u64 + ru.ru_stime.tv_usec as u64)
}

/// 1,000 backends probed every second for `secs`: the prober's own CPU (its
/// runtime is one thread, as in the daemon) and its packets per second.
fn load(n: usize, secs: u64, base_port: u16) -> String {
    let rs = responders(n, base_port);
    let params = HealthConfig::default().params().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (probes, ups, cpu, wall) = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut prober = Prober::new(tx).await.unwrap();
        let want: Vec<(SocketAddr, Params)> = rs.iter().map(|r| (r.addr, params.clone())).collect();
        // Warm up one interval, then measure.
        prober.update(&want);
        let warm = tokio::time::Instant::now() + params.interval;
        while tokio::time::Instant::now() < warm {
            let _ = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        }
        let (cpu0, t0) = (thread_cpu(), Instant::now());
        let end = tokio::time::Instant::now() + Duration::from_secs(secs);
        let (mut probes, mut ups) = (0u64, 0u64);
        while tokio::time::Instant::now() < end {
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await {
                probes += 1;
                ups += matches!(
                    ev.outcome,
                    balancer::health::Outcome::Reply { code: 200, .. }
                ) as u64;
            }
        }
        (probes, ups, thread_cpu() - cpu0, t0.elapsed())
    });
    let answered: u64 = rs.iter().map(|r| r.answered.load(Ordering::Relaxed)).sum();
    format!(
        "Probe load: {n} backends, interval 1s, for {secs} s: {probes} probes ({:.0} probes/s, {:.0} packets/s counting answers), \
{ups} answered 200 ({answered} answers sent by the responders in all); the prober's thread used {:.1}% of one CPU ({:.1} µs per probe).\n",
        probes as f64 / wall.as_secs_f64(),
        2.0 * probes as f64 / wall.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        1e6 * cpu.as_secs_f64() / probes.max(1) as f64
    )
}

fn main() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask bench)"
    );
    let mut dp = Dataplane::load().expect("load the data plane");
    let mut table = String::from(
        "| interval | timeout | fall | backends | min ms | median ms | p90 ms | max ms | bound interval*fall+timeout ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    table.push_str(&detection(
        &mut dp,
        HealthConfig {
            interval: Some(Duration::from_millis(200)),
            timeout: Some(Duration::from_millis(100)),
            fall: Some(3),
            ..Default::default()
        },
        20,
        21000,
    ));
    table.push_str(&detection(&mut dp, HealthConfig::default(), 20, 21100));
    let load = load(1000, 10, 22000);
    let report = format!(
        "# Health-check benchmark\n\nDetection time: from a backend's responder going silent (at a random moment of its probe cycle) \
to the kernel table without it (prober, state machine, Maglev rebuild and swap), for {} backends dying one after another. \
Real prober and kernel tables; responders are UDP sockets on loopback answering OPTIONS with 200.\n\n\
- kernel: {}\n- date: {}\n\n{table}\n{load}",
        20,
        String::from_utf8_lossy(&std::process::Command::new("uname").arg("-r").output().unwrap().stdout).trim(),
        String::from_utf8_lossy(&std::process::Command::new("date").args(["-u", "+%Y-%m-%d"]).output().unwrap().stdout).trim(),
    );
    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_HEALTH") {
        std::fs::write(&path, &report).unwrap();
        eprintln!("wrote {path}");
    }
}
