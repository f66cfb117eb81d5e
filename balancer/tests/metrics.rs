//! `--metrics IP:PORT`: `/metrics` in the OpenMetrics text format, with the
//! traffic per service and backend, health, verdicts and affinity entries;
//! `promtool check metrics` finds nothing wrong with it; and a real
//! Prometheus server, started here, scrapes it and answers a query.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use balancer_test_support::bed::{self, Bed};
use balancer_test_support::daemon::Daemon;
use balancer_test_support::netns::require_root;
use balancer_test_support::peers::{enter_netns, Stream, Uas};
use balancer_test_support::until;

/// `GET path` from inside namespace `ns`: the body.
fn get(ns: &str, addr: SocketAddr, path: &str) -> Option<String> {
    let (ns, path) = (ns.to_string(), path.to_string());
    std::thread::spawn(move || {
        enter_netns(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    })
    .join()
    .ok()
    .flatten()
}

fn tool(name: &str) -> bool {
    let there = Command::new(name).arg("--version").output().is_ok();
    if !there {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs {name} (cargo xtask setup installs prometheus)"
        );
        eprintln!("skipped the {name} part: not installed");
    }
    there
}

struct Killed(Child, std::path::PathBuf);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[test]
fn prometheus_scrapes_the_metrics() {
    require_root();
    let bed = Bed::new("met", 2);
    let inst = "test-metrics";
    let backend = |i: usize| format!("{}:5060", bed::backend_ip(i));
    let _uas: Vec<Uas> = (0..2)
        .map(|i| Uas::start(&bed.backend_ns(i), &backend(i)))
        .collect();
    let listen: SocketAddr = format!("{}:9464", bed::LB_CLIENT_SIDE).parse().unwrap();
    let mut args = Bed::attach_args("dnat", inst, &[backend(0), backend(1)]);
    args.extend(["--metrics".to_string(), listen.to_string()]);
    let d = Daemon::start(&bed.ns("lb"), &args);
    let vip = format!("{}:5060", bed::VIP).parse().unwrap();
    let stream = Stream::start(&bed.ns("cli"), vip, Duration::from_millis(5), "met");
    std::thread::sleep(Duration::from_millis(500));
    stream.finish();

    let cli = bed.ns("cli");
    let text = get(&cli, listen, "/metrics").expect("no /metrics");
    assert!(
        text.contains("# TYPE balancer_verdicts_total counter"),
        "{text}"
    );
    let value = |line_start: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let b0 = format!(
        "balancer_backend_packets_total{{service=\"{vip}\",backend=\"{}\"}}",
        backend(0)
    );
    let b1 = format!(
        "balancer_backend_packets_total{{service=\"{vip}\",backend=\"{}\"}}",
        backend(1)
    );
    let sent = value(&b0).unwrap_or(0.0) + value(&b1).unwrap_or(0.0);
    assert!(sent > 0.0, "no backend traffic counted:\n{text}");
    for want in [
        "balancer_build_info{version=",
        "balancer_service_packets_total{service=",
        "balancer_service_bytes_total{service=",
        "balancer_backend_bytes_total{",
        "balancer_backend_up{",
        "balancer_backend_state{",
        "balancer_backend_probe_rtt_seconds{",
        "balancer_verdicts_total{reason=\"callid\"}",
        "balancer_health_table_rebuilds_total",
        "balancer_affinity_entries{map=\"client\"}",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(
        value("balancer_affinity_entries{map=\"client\"}").unwrap() >= 1.0,
        "{text}"
    );
    assert!(get(&cli, listen, "/").is_none(), "only /metrics is served");

    if tool("promtool") {
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let o = p.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    if tool("prometheus") {
        // A real server in the client's namespace, scraping every second.
        let dir = std::env::temp_dir().join(format!("balancer-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: balancer\n    static_configs:\n      - targets: ['{listen}']\n"),
        )
        .unwrap();
        let web: SocketAddr = format!("{}:9090", bed::CLIENT).parse().unwrap();
        let server = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{cli}"))
            .arg("--")
            .arg("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _server = Killed(server, dir);
        let query = "/api/v1/query?query=balancer_backend_packets_total";
        let mut last = String::new();
        let scraped = until(Duration::from_secs(30), Duration::from_millis(500), || {
            last = get(&cli, web, query).unwrap_or_default();
            last.contains("\"status\":\"success\"") && last.contains(&backend(0))
        });
        assert!(
            scraped,
            "Prometheus never had the balancer's series: {last}"
        );
        let up = get(&cli, web, "/api/v1/query?query=up").unwrap_or_default();
        assert!(
            up.contains("\"value\"") && up.contains(",\"1\"]"),
            "target not up: {up}"
        );
    }
    assert!(d.stop());
}
