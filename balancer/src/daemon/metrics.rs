//! `[metrics]` / `--metrics IP:PORT`: Prometheus' `/metrics`, in the
//! OpenMetrics text format (prometheus-client). A scrape is answered by a
//! task of the runtime: it counts the affinity entries in a blocking thread
//! (a walk of the pinned maps, which can take a fraction of a second when
//! they are full), then asks the main loop for the rest, built from the
//! same state `balancer stats` reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::Daemon;
use crate::kernel::affinity::AffinityMaps;

/// What a scrape asks the main loop for.
pub(super) struct Scrape {
    /// Entries of `AFFINITY` and `LEARNED`, counted by the task.
    pub affinity: Option<(u64, u64)>,
    pub answer: oneshot::Sender<String>,
}

/// Longest a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on `listen`; scrapes come out of the returned channel.
pub(super) async fn serve(listen: SocketAddr, pins: PathBuf) -> Result<mpsc::Receiver<Scrape>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("metrics: listening on {listen}"))?;
    let (tx, rx) = mpsc::channel(8);
    log::info!("metrics: http://{listen}/metrics");
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (tx, pins) = (tx.clone(), pins.clone());
            tokio::spawn(async move {
                let _ = answer(conn, tx, pins).await;
            });
        }
    });
    Ok(rx)
}

async fn answer(
    mut conn: tokio::net::TcpStream,
    tx: mpsc::Sender<Scrape>,
    pins: PathBuf,
) -> Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    // The request line and headers, up to 4 KiB.
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
        let r = tokio::time::timeout(READ_TIMEOUT, conn.read(&mut buf[n..])).await??;
        if r == 0 {
            break;
        }
        n += r;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = if !head.starts_with("GET ") {
        (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        )
    } else if path != "/metrics" && !path.starts_with("/metrics?") {
        ("404 Not Found", "text/plain", "try /metrics\n".to_string())
    } else {
        let affinity =
            tokio::task::spawn_blocking(move || AffinityMaps::open(&pins).ok().map(|m| m.count()))
                .await
                .ok()
                .flatten();
        let (answer, text) = oneshot::channel();
        tx.send(Scrape { affinity, answer }).await?;
        let text = text.await?;
        // Prometheus asks for OpenMetrics; other clients (promtool, curl)
        // get the classic text format.
        if head
            .to_ascii_lowercase()
            .contains("application/openmetrics-text")
        {
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        } else {
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                classic(&text),
            )
        }
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await?;
    Ok(())
}

/// The OpenMetrics text as the classic Prometheus text format: a counter's
/// HELP and TYPE name its samples (`x_total`), no UNIT lines, no `# EOF`.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for l in openmetrics.lines() {
        if l.starts_with("# UNIT ") || l == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = l.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out += renamed.as_deref().unwrap_or(l);
        out.push('\n');
    }
    out
}

type Labels = Vec<(String, String)>;

fn counter_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

fn gauge_family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Daemon {
    /// The exposition of one scrape.
    pub(super) fn metrics_text(&self, affinity: Option<(u64, u64)>) -> Result<String> {
        let stats = self.stats()?;
        let mut reg = Registry::with_prefix("balancer");
        // A gauge of 1 rather than OpenMetrics' `info` type, which the
        // classic text parsers (promtool's among them) do not know.
        let build = gauge_family(&mut reg, "build_info", "The balancer's version");
        build
            .get_or_create(&labels(&[(
                "version",
                env!("CARGO_PKG_VERSION").to_string(),
            )]))
            .set(1);
        let svc_packets = counter_family(
            &mut reg,
            "service_packets",
            "Datagrams the program sent to a service's backends",
            None,
        );
        let svc_bytes = counter_family(
            &mut reg,
            "service",
            "Bytes the program sent to a service's backends",
            Some(Unit::Bytes),
        );
        let packets = counter_family(
            &mut reg,
            "backend_packets",
            "Datagrams the program sent to a backend",
            None,
        );
        let bytes = counter_family(
            &mut reg,
            "backend",
            "Bytes the program sent to a backend",
            Some(Unit::Bytes),
        );
        let up = gauge_family(
            &mut reg,
            "backend_up",
            "1 while the health checks hold the backend up",
        );
        let state = gauge_family(
            &mut reg,
            "backend_state",
            "1 for the backend's state (as backend list shows it)",
        );
        let weight = gauge_family(
            &mut reg,
            "backend_weight",
            "The backend's configured weight",
        );
        let probes = counter_family(
            &mut reg,
            "backend_probes",
            "Health probes sent to the backend",
            None,
        );
        let failures = counter_family(
            &mut reg,
            "backend_probe_failures",
            "Health probes that failed",
            None,
        );
        let rtt = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        reg.register_with_unit(
            "backend_probe_rtt",
            "Round trip of the last answered health probe",
            Unit::Seconds,
            rtt.clone(),
        );
        for s in &stats.status.services {
            let l = labels(&[("service", s.vip.to_string())]);
            svc_packets.get_or_create(&l).inc_by(s.packets);
            svc_bytes.get_or_create(&l).inc_by(s.bytes);
            for b in &s.backends {
                let l = labels(&[
                    ("service", s.vip.to_string()),
                    ("backend", b.address.to_string()),
                ]);
                packets.get_or_create(&l).inc_by(b.packets);
                bytes.get_or_create(&l).inc_by(b.bytes);
                up.get_or_create(&l)
                    .set((b.health == crate::health::Health::Up) as i64);
                weight.get_or_create(&l).set(b.weight as i64);
                probes.get_or_create(&l).inc_by(b.probes);
                failures.get_or_create(&l).inc_by(b.probe_failures);
                if let Some(ms) = b.rtt_last_ms {
                    rtt.get_or_create(&l).set(ms / 1000.0);
                }
                let mut sl = l.clone();
                sl.push(("state".to_string(), b.state.name().to_string()));
                state.get_or_create(&sl).set(1);
            }
        }
        let verdicts = counter_family(
            &mut reg,
            "verdicts",
            "Datagrams by what the program did with them, by reason",
            None,
        );
        for (reason, n) in &stats.reasons {
            verdicts
                .get_or_create(&labels(&[("reason", reason.clone())]))
                .inc_by(*n);
        }
        let rebuilds: Counter = Counter::default();
        rebuilds.inc_by(self.health_rebuilds);
        reg.register(
            "health_table_rebuilds",
            "Table rebuilds caused by health changes",
            rebuilds,
        );
        if let Some((client, learned)) = affinity {
            let a = gauge_family(&mut reg, "affinity_entries", "Entries in the affinity maps (client: dialogs clients started; learned: dialogs backends started)");
            a.get_or_create(&labels(&[("map", "client".into())]))
                .set(client as i64);
            a.get_or_create(&labels(&[("map", "learned".into())]))
                .set(learned as i64);
        }
        if let Some(t) = &stats.sync {
            let c = counter_family(
                &mut reg,
                "sync_entries",
                "Affinity entries of the [sync] peers, by what happened to them",
                None,
            );
            for (what, n) in [
                ("made", t.events),
                ("sent", t.sent_entries),
                ("received", t.received_entries),
                ("applied", t.applied),
                ("kept_newer", t.kept_newer),
                ("unknown_service", t.unknown_service),
                ("unknown_backend", t.unknown_backend),
            ] {
                c.get_or_create(&labels(&[("what", what.into())])).inc_by(n);
            }
            let r = counter_family(
                &mut reg,
                "sync_refused_datagrams",
                "Sync datagrams refused (peer: from a peer; other: from elsewhere)",
                None,
            );
            r.get_or_create(&labels(&[("from", "peer".into())]))
                .inc_by(t.rejected);
            r.get_or_create(&labels(&[("from", "other".into())]))
                .inc_by(t.not_a_peer);
        }
        let mut out = String::new();
        encode(&mut out, &reg)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let om = "# HELP balancer_verdicts Datagrams.\n# TYPE balancer_verdicts counter\nbalancer_verdicts_total{reason=\"tx\"} 3\n# HELP balancer_rtt Rtt.\n# TYPE balancer_rtt gauge\n# UNIT balancer_rtt seconds\nbalancer_rtt 0.5\n# EOF\n";
        assert_eq!(
            super::classic(om),
            "# HELP balancer_verdicts_total Datagrams.\n# TYPE balancer_verdicts_total counter\nbalancer_verdicts_total{reason=\"tx\"} 3\n# HELP balancer_rtt Rtt.\n# TYPE balancer_rtt gauge\nbalancer_rtt 0.5\n"
        );
    }
}
