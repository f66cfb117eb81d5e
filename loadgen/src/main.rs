//! `sip-loadgen`: the benchmark's SIP/UDP traffic. `send` offers realistic SIP
//! datagrams (INVITE with SDP, OPTIONS, BYE, 200 OK; Call-IDs from a pool, early
//! and late in the headers) to a VIP with batched `sendmmsg`; `sink` counts what
//! reaches a backend with `recvmmsg`. Both print one JSON object on stdout.

mod send;
mod sink;
mod sip;
mod sys;

use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "SIP/UDP load generator and counting sink for the balancer benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send SIP datagrams to a target; prints {"sent", "seconds", "rate", ...}.
    Send {
        #[arg(long, default_value = "10.0.0.10:5060")]
        target: SocketAddr,
        /// Datagrams per second; 0 = flat out.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// How long to send, in seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// How many distinct Call-IDs, used in turn.
        #[arg(long, default_value_t = 10_000)]
        pool: u64,
        /// Weighted mix of invite, invite-late, options, bye, ok (e.g. `invite=2,ok`).
        #[arg(long, default_value = "invite,invite-late,options,bye,ok")]
        mix: String,
        /// Datagrams per sendmmsg call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Sockets (source ports) used in turn, one per batch.
        #[arg(long, default_value_t = 16)]
        sockets: usize,
        /// The backend whose request a 200 OK answers (its second Via).
        #[arg(long, default_value = "192.0.2.1:5060")]
        origin: SocketAddr,
        /// Run on this CPU only.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// Count datagrams arriving at an address; prints {"received", ...} on SIGTERM/SIGINT or after --duration.
    Sink {
        #[arg(long, default_value = "0.0.0.0:5060")]
        bind: SocketAddr,
        #[arg(long)]
        duration: Option<f64>,
        /// Receive buffer in bytes (forced past rmem_max when root).
        #[arg(long, default_value_t = 32 << 20)]
        rcvbuf: i32,
        /// Sources not counted (e.g. the balancer host's health probes).
        #[arg(long)]
        ignore: Vec<IpAddr>,
        /// Datagrams per recvmmsg call.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

fn main() -> Result<()> {
    let out = match Cli::parse().cmd {
        Cmd::Send {
            target,
            rate,
            duration,
            pool,
            mix,
            batch,
            sockets,
            origin,
            cpu,
        } => {
            if let Some(c) = cpu {
                sys::pin_to_cpu(c)?;
            }
            sys::tight_timer_slack();
            let mix = sip::parse_mix(&mix).map_err(anyhow::Error::msg)?;
            send::run(&send::SendArgs {
                target,
                rate,
                seconds: duration,
                pool,
                mix,
                batch,
                sockets,
                origin,
            })?
        }
        Cmd::Sink {
            bind,
            duration,
            rcvbuf,
            ignore,
            batch,
            cpu,
        } => {
            if let Some(c) = cpu {
                sys::pin_to_cpu(c)?;
            }
            sink::run(&sink::SinkArgs {
                bind,
                seconds: duration,
                rcvbuf,
                ignore,
                batch,
            })?
        }
    };
    println!("{out}");
    Ok(())
}
