//! `cargo xtask lab`: the demo. Builds the netns bed (client, balancer host as
//! gateway, switch, N backends), runs `balancer attach` on it, sends a burst of
//! SIP INVITEs with random Call-IDs (each several times, like retransmissions and
//! in-dialog requests), and prints where they went. Cleans up on exit and Ctrl-C.

#[path = "../tests/support/bed.rs"]
mod bed;
#[path = "../tests/support/daemon.rs"]
mod daemon;
#[path = "../tests/support/peers.rs"]
mod peers;

use std::collections::HashMap;
use std::net::SocketAddr;

use clap::Parser;
use rand::{distributions::Alphanumeric, Rng};

/// SIP XDP balancer lab: a whole gateway in network namespaces.
#[derive(Parser)]
struct Args {
    /// Number of backends (1-8).
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// Distinct Call-IDs to send.
    #[arg(long, default_value_t = 3000)]
    calls: usize,
    /// Times each Call-ID is sent.
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Weights, comma-separated, one per backend (default all 1).
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u32>,
    /// dnat, or dsr (the lab then puts the VIP on the backends' loopback).
    #[arg(long, default_value = "dnat")]
    mode: String,
}

fn main() {
    let a = Args::parse();
    assert!((1..=8).contains(&a.backends), "--backends 1 to 8");
    let bed = bed::Bed::new("lab", a.backends);
    let prefix = bed.prefix.clone();
    // Ctrl-C: remove the namespaces (which detaches everything), then exit.
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        eprintln!("\ninterrupted: cleaning up");
        bed::Bed { prefix }.cleanup();
        std::process::exit(130);
    });

    println!(
        "topology: client {} -> balancer {} | {} -> switch -> {} backends",
        bed::CLIENT,
        bed::LB_CLIENT_SIDE,
        bed::LB_BACKEND_SIDE,
        a.backends
    );
    // In dsr mode the backends hold the VIP and answer from it themselves.
    let bind = if a.mode == "dsr" {
        bed.vip_on_backends(a.backends);
        format!("{}:5060", bed::VIP)
    } else {
        "0.0.0.0:5060".to_string()
    };
    let uas: Vec<peers::Uas> = (0..a.backends)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), &bind))
        .collect();
    let backends: Vec<String> = (0..a.backends)
        .map(|i| match a.weights.get(i) {
            Some(w) => format!("{}:5060,weight={w}", bed::backend_ip(i)),
            None => format!("{}:5060", bed::backend_ip(i)),
        })
        .collect();
    let args = bed::Bed::attach_args(&a.mode, "lab", &backends);
    println!("$ balancer {}", args.join(" "));
    let d = daemon::Daemon::start(&bed.ns("lb"), &args);

    let mut rng = rand::thread_rng();
    let ids: Vec<String> = (0..a.calls)
        .map(|_| {
            let s: String = (&mut rng)
                .sample_iter(&Alphanumeric)
                .take(24)
                .map(char::from)
                .collect();
            format!("{s}@{}", bed::CLIENT)
        })
        .collect();
    let vip: SocketAddr = format!("{}:5060", bed::VIP).parse().unwrap();
    println!(
        "sending {} INVITEs ({} Call-IDs x {}) to {vip} ...",
        a.calls * a.repeats as usize,
        a.calls,
        a.repeats
    );
    let t = std::time::Instant::now();
    let sent: std::collections::HashSet<String> = ids.iter().cloned().collect();
    let answers = peers::run_client(&bed.ns("cli"), vip, &ids, a.repeats, 64);
    let secs = t.elapsed().as_secs_f64();
    let answered: u32 = answers.by_call_id.values().sum();
    if answered as usize != a.calls * a.repeats as usize {
        println!("some datagrams went missing; the path:\n{}", bed.diagnose());
    }
    assert!(d.stop(), "balancer did not detach cleanly");

    println!(
        "\n{:<26} {:>8} {:>9} {:>7}  ",
        "backend", "calls", "messages", "share"
    );
    let mut split = 0;
    for (i, u) in uas.iter().enumerate() {
        // Only the client's calls (the balancer's own OPTIONS pings reach them too).
        let seen: HashMap<String, u32> = u
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, _)| sent.contains(*id))
            .map(|(id, n)| (id.clone(), *n))
            .collect();
        let msgs: u32 = seen.values().sum();
        let share = seen.len() as f64 / a.calls as f64;
        println!(
            "{:<26} {:>8} {:>9} {:>6.1}%  {}",
            backends[i],
            seen.len(),
            msgs,
            share * 100.0,
            "#".repeat((share * 60.0) as usize)
        );
        split += seen.values().filter(|&&n| n != a.repeats).count();
    }
    println!(
        "\nanswers received from the VIP: {answered} of {} ({} from elsewhere)",
        a.calls * a.repeats as usize,
        answers.wrong_source.len()
    );
    println!("Call-IDs split across backends: {split}");
    println!("elapsed {secs:.2}s");
}
