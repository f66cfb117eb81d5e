//! The throughput section of bench/RESULTS.md and the plot of delivered
//! against offered load, written by hand as SVG (no plotting dependency).

use crate::contenders::Contender;
use crate::{Knobs, Sample};

pub struct Row {
    pub contender: Contender,
    /// Requested rate, 0 = flat out.
    pub rate: u64,
    pub samples: Vec<Sample>,
}

/// Median, minimum and maximum.
pub fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (med, v[0], v[n - 1])
}

impl Row {
    fn of(&self, f: impl Fn(&Sample) -> f64) -> (f64, f64, f64) {
        spread(self.samples.iter().map(f).collect())
    }
    pub fn offered(&self) -> (f64, f64, f64) {
        self.of(|s| s.offered_pps)
    }
    pub fn delivered(&self) -> (f64, f64, f64) {
        self.of(|s| s.delivered_pps)
    }
    pub fn forwarded(&self) -> (f64, f64, f64) {
        self.of(|s| s.forwarded_pps)
    }
    pub fn loss(&self) -> (f64, f64, f64) {
        self.of(|s| s.loss() * 100.0)
    }
    pub fn us(&self) -> (f64, f64, f64) {
        self.of(Sample::us_per_packet)
    }
    /// Lost at the balancer's ingress ring, at the switch port and at the
    /// sinks, % of sent.
    pub fn lost_where(&self) -> (f64, f64, f64) {
        let sent: u64 = self.samples.iter().map(|s| s.sent).sum::<u64>().max(1);
        let pct = |f: fn(&Sample) -> u64| {
            self.samples.iter().map(f).sum::<u64>() as f64 * 100.0 / sent as f64
        };
        (
            pct(|s| s.ingress_drops),
            pct(|s| s.switch_drops),
            pct(|s| s.sink_drops),
        )
    }
    pub fn share(&self) -> (f64, f64, f64) {
        self.of(|s| s.cpu_share * 100.0)
    }
}

fn k(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn rate_name(r: u64) -> String {
    if r == 0 {
        "flat out".into()
    } else {
        k(r as f64)
    }
}

/// The best delivered rate (median over repetitions) of a contender over all
/// steps, and the step's median loss.
fn best(rows: &[Row], c: Contender) -> Option<(f64, f64)> {
    rows.iter()
        .filter(|r| r.contender == c)
        .map(|r| (r.delivered().0, r.loss().0))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// The best delivered rate at a step where no repetition lost more than 0.1 %.
fn best_clean(rows: &[Row], c: Contender) -> Option<f64> {
    rows.iter()
        .filter(|r| r.contender == c && r.loss().2 <= 0.1)
        .map(|r| r.delivered().0)
        .max_by(f64::total_cmp)
}

pub fn markdown(knobs: &Knobs, rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "## Throughput through the netns bed\n\n\
`sip-loadgen send` in the client namespace on CPU 0 offers SIP datagrams to the VIP ({}; \
10,000 Call-IDs in turn; 16 source ports; batches of 32 per `sendmmsg`), paced at each rate or flat out; `sip-loadgen sink` in each of the {} backend \
namespaces (also on CPU 0) counts what arrives (`recvmmsg`). The balancer host's work is pinned to \
CPU 1: the threaded NAPI of its ingress veth, where XDP and the kernel's forwarding path run, and \
Kamailio (`taskset -c 1`). CPU is the on-CPU time of the balancer host's threads, from the scheduler's own \
accounting (/proc/TID/schedstat) over the run and a 0.25 s drain: the NAPI threads of its two veths (XDP, the \
kernel's forwarding path and socket delivery run there), Kamailio's processes, the balancer daemon. The switch \
port has a NAPI thread of its own, so the bed's forwarding and the backends' receive path are not counted. \
{} runs of {} s per step, median (min-max). Loss = 1 - delivered/sent; \
of it, what the client's veth dropped because the balancer's ingress ring (256 frames) was full, what \
the switch port refused from the balancer host (its ring full: its NAPI thread shares the two CPUs with the generator \
and the sinks, a limit of the bed past the balancer), and what the sinks' sockets dropped (receive buffer full), \
over all runs of the step.\n\n",
        crate::MESSAGES.get().map_or("", String::as_str),
        crate::contenders::BACKENDS,
        knobs.reps,
        knobs.seconds
    ));
    s.push_str("Contenders: `trivial` is `xdp_trivial` (rewrite destination, redirect to one fixed backend: the least a DNAT balancer does); \
`dnat`/`dsr` are `balancer attach l0` with the Call-ID algorithm and dialog affinity on (health checks pinging but not marking down, as the sinks do not answer); \
Kamailio 5.6 is a stateless dispatcher (`ds_select_dst(\"1\",\"0\")`, `forward()`, no tm, probing off, `-x tlsf`, 4 MB receive buffer, ");
    s.push_str(&format!(
        "{} worker(s)); nftables is a `dnat to jhash udp sport mod 3` rule on the forwarding path (conntrack).\n\n",
        knobs.kamailio_children
    ));
    s.push_str("| contender | rate asked | offered/s | delivered/s | loss % | of which ingress ring / switch port / sinks % | host CPU % | CPU µs per delivered | vs trivial |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (o, o0, o1) = r.offered();
        let (d, d0, d1) = r.delivered();
        let (l, l0, l1) = r.loss();
        let (sh, _, _) = r.share();
        let (u, u0, u1) = r.us();
        let base = rows
            .iter()
            .find(|b| b.contender == Contender::Trivial && b.rate == r.rate)
            .map(|b| b.us().0);
        let vs = match base {
            Some(b) if b.is_finite() && u.is_finite() => format!("{:.2}x", u / b),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} ({}-{}) | {} ({}-{}) | {:.2} ({:.2}-{:.2}) | {:.2} / {:.2} / {:.2} | {:.0} | {:.2} ({:.2}-{:.2}) | {vs} |\n",
            r.contender.key(),
            rate_name(r.rate),
            k(o),
            k(o0),
            k(o1),
            k(d),
            k(d0),
            k(d1),
            l,
            l0,
            l1,
            r.lost_where().0,
            r.lost_where().1,
            r.lost_where().2,
            sh,
            u,
            u0,
            u1,
        ));
    }
    s.push_str("\nBest delivered rate per contender (median of its best step; \"clean\" = the best step where no run lost more than 0.1 %):\n\n");
    s.push_str(
        "| contender | best delivered/s (loss %) | best clean delivered/s |\n|---|---:|---:|\n",
    );
    for c in Contender::ALL {
        if let Some((d, l)) = best(rows, c) {
            s.push_str(&format!(
                "| {} | {} ({:.2}) | {} |\n",
                c.title(),
                k(d),
                l,
                best_clean(rows, c).map_or("-".into(), k)
            ));
        }
    }
    // Flat out, the switch port (a bed limit) refuses part of what the XDP
    // contenders forward: what left the balancer host is their throughput.
    let most = |c: Contender| -> Option<f64> {
        rows.iter()
            .filter(|r| r.contender == c)
            .map(|r| r.forwarded().0)
            .max_by(f64::total_cmp)
    };
    let fwd: Vec<String> = Contender::ALL
        .iter()
        .filter_map(|&c| most(c).map(|f| format!("{} {}", c.key(), k(f))))
        .collect();
    if !fwd.is_empty() {
        s.push_str(&format!(
            "\nMost forwarded by the balancer host per second (delivered plus what the switch port then refused; median of the best step): {}.",
            fwd.join(", ")
        ));
        if let (Some(d), Some(t), Some(m)) = (
            most(Contender::Dnat),
            most(Contender::Trivial),
            most(Contender::Kamailio),
        ) {
            s.push_str(&format!(
                " dnat forwarded {:.0}% of the trivial program's and {:.1}x Kamailio's.",
                100.0 * d / t,
                d / m
            ));
        }
        s.push('\n');
    }
    let ratio = |a: Contender, b: Contender| -> String {
        match (best(rows, a), best(rows, b)) {
            (Some((x, _)), Some((y, _))) if y > 0.0 => format!("{:.1}x", x / y),
            _ => "-".into(),
        }
    };
    s.push_str(&format!(
        "\nRatios of best delivered rates: dnat/Kamailio {}, dsr/Kamailio {}, dnat/trivial {}, dsr/trivial {}, nftables/trivial {}.\n",
        ratio(Contender::Dnat, Contender::Kamailio),
        ratio(Contender::Dsr, Contender::Kamailio),
        ratio(Contender::Dnat, Contender::Trivial),
        ratio(Contender::Dsr, Contender::Trivial),
        ratio(Contender::Nftables, Contender::Trivial),
    ));
    s.push_str(&capacity(rows));
    s.push_str(&cpu_ratios(rows));
    s.push_str("Where the XDP contenders deliver everything that is offered even flat out, the generator (one CPU, also serving the sinks) is the ceiling, not the balancer: compare CPU per delivered datagram, and the in-kernel ns/packet above.\n\n![delivered against offered load](throughput.svg)\n");
    s
}

/// CPU per delivered datagram of every contender at the highest rate Kamailio
/// still delivers cleanly, and what one CPU would carry at that cost: the
/// capacity comparison the generator's ceiling does not cap.
fn capacity(rows: &[Row]) -> String {
    // The highest paced rate at which every one of `cs` lost at most 0.1 %
    // (median): CPU per datagram falls with load (bigger NAPI batches), so
    // two contenders are compared at the same rate.
    let clean = |cs: &[Contender]| -> Option<u64> {
        rows.iter()
            .filter(|r| r.rate > 0)
            .map(|r| r.rate)
            .filter(|&rate| {
                cs.iter().all(|&c| {
                    rows.iter()
                        .any(|r| r.contender == c && r.rate == rate && r.loss().0 <= 0.1)
                })
            })
            .max()
    };
    let us = |c: Contender, rate: u64| {
        rows.iter()
            .find(|r| r.contender == c && r.rate == rate)
            .map(|r| r.us().0)
            .filter(|u| u.is_finite() && *u > 0.0)
    };
    let Some(rate) = clean(&[Contender::Kamailio]) else {
        return String::new();
    };
    let mut s = format!(
        "\nThe balancer host's CPU per delivered datagram at {} (the highest rate at which Kamailio's median loss is at most 0.1 %), and what one CPU would carry at that cost:",
        rate_name(rate)
    );
    for c in Contender::ALL {
        if let Some(u) = us(c, rate) {
            s.push_str(&format!(" {} {u:.2} µs ({}/s);", c.key(), k(1e6 / u)));
        }
    }
    s.pop();
    s.push('.');
    if let (Some(kam), Some(d)) = (us(Contender::Kamailio, rate), us(Contender::Dnat, rate)) {
        s.push_str(&format!(
            " Capacity per CPU: dnat {:.1}x Kamailio's.",
            kam / d
        ));
    }
    if let Some(both) = clean(&[Contender::Dnat, Contender::Trivial]) {
        if let (Some(d), Some(t)) = (us(Contender::Dnat, both), us(Contender::Trivial, both)) {
            s.push_str(&format!(
                " At {}, the highest rate both lose at most 0.1 %: dnat {d:.2} µs, trivial {t:.2} µs, dnat {:.0}% of the trivial program's capacity.",
                rate_name(both),
                100.0 * t / d
            ));
        }
    }
    s.push_str(" These per-datagram figures move by up to a fifth between runs of the bench on this VM.\n\n");
    s
}

/// The rates the CPU goals name (per delivered datagram: dnat
/// against trivial, Kamailio against dnat).
const GOAL_RATES: [u64; 2] = [50_000, 100_000];

/// Median CPU per delivered datagram of `c` at `rate`, and its median loss %.
fn us_at(rows: &[Row], c: Contender, rate: u64) -> Option<(f64, f64)> {
    rows.iter()
        .find(|r| r.contender == c && r.rate == rate)
        .map(|r| (r.us().0, r.loss().0))
        .filter(|(u, _)| u.is_finite() && *u > 0.0)
}

/// The ratios of CPU per delivered datagram at the goal rates:
/// (figure name, value) for `cargo xtask bench`'s goals summary.
pub fn figures(rows: &[Row]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for rate in GOAL_RATES {
        let k = rate / 1000;
        let dnat = us_at(rows, Contender::Dnat, rate);
        if let (Some((d, _)), Some((t, _))) = (dnat, us_at(rows, Contender::Trivial, rate)) {
            out.push((format!("bed.dnat_trivial.{k}k"), d / t));
        }
        if let (Some((d, _)), Some((m, _))) = (dnat, us_at(rows, Contender::Kamailio, rate)) {
            out.push((format!("bed.kamailio_dnat.{k}k"), m / d));
        }
        // A ratio means little where a contender dropped part of what it was
        // offered: the summary shows the losses beside it.
        for c in [Contender::Trivial, Contender::Dnat, Contender::Kamailio] {
            if let Some((_, loss)) = us_at(rows, c, rate) {
                out.push((format!("bed.loss.{}.{k}k", c.key()), loss));
            }
        }
    }
    out
}

/// One line per goal rate: dnat's CPU per delivered datagram against the
/// trivial program's, Kamailio's against dnat's.
fn cpu_ratios(rows: &[Row]) -> String {
    let mut parts = Vec::new();
    for rate in GOAL_RATES {
        let Some((d, dl)) = us_at(rows, Contender::Dnat, rate) else {
            continue;
        };
        let mut p = format!("at {}: dnat {d:.2} µs (lost {dl:.2} %)", rate_name(rate));
        if let Some((t, tl)) = us_at(rows, Contender::Trivial, rate) {
            p += &format!(", {:.2}x trivial's {t:.2} µs (lost {tl:.2} %)", d / t);
        }
        if let Some((m, ml)) = us_at(rows, Contender::Kamailio, rate) {
            p += &format!(
                "; Kamailio {m:.2} µs (lost {ml:.2} %), {:.1}x dnat's",
                m / d
            );
            if ml > 0.1 {
                p += " (Kamailio overloaded: it drops part of what it is offered)";
            }
        }
        parts.push(p);
    }
    if parts.is_empty() {
        return String::new();
    }
    format!(
        "CPU per delivered datagram, medians of this run: {}.\n\n",
        parts.join("; ")
    )
}

pub fn svg(rows: &[Row]) -> String {
    let (w, h) = (760.0, 480.0);
    let (left, right, top, bottom) = (80.0, 230.0, 30.0, 60.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let max = rows
        .iter()
        .flat_map(|r| [r.offered().2, r.delivered().2])
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max);
    // A round axis end: 1, 2 or 5 times a power of ten.
    let mag = 10f64.powf(max.log10().floor());
    let top_val = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|v| *v >= max)
        .unwrap();
    let x = |v: f64| left + v / top_val * pw;
    let y = |v: f64| top + ph - v / top_val * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
<text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">Delivered vs offered SIP datagrams/s (median, bars: min-max)</text>\n",
        left + pw / 2.0
    );
    for i in 0..=5 {
        let v = top_val * i as f64 / 5.0;
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{yy}\" x2=\"{xe}\" y2=\"{yy}\" stroke=\"#ddd\"/>\n\
<line x1=\"{xx}\" y1=\"{top}\" x2=\"{xx}\" y2=\"{yb}\" stroke=\"#ddd\"/>\n\
<text x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{lbl}</text>\n\
<text x=\"{xx}\" y=\"{bx}\" text-anchor=\"middle\">{lbl}</text>\n",
            yy = y(v),
            xe = left + pw,
            xx = x(v),
            yb = top + ph,
            lx = left - 6.0,
            ty = y(v) + 4.0,
            bx = top + ph + 18.0,
            lbl = k(v),
        ));
    }
    s.push_str(&format!(
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"4 4\"/>\n\
<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered/s</text>\n\
<text x=\"20\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {})\">delivered/s</text>\n\
<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n",
        x(0.0),
        y(0.0),
        x(top_val),
        y(top_val),
        left + pw / 2.0,
        h - 20.0,
        top + ph / 2.0,
        top + ph / 2.0
    ));
    let mut legend = 0;
    for c in Contender::ALL {
        let mut pts: Vec<&Row> = rows.iter().filter(|r| r.contender == c).collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.offered().0.total_cmp(&b.offered().0));
        let col = c.colour();
        let path: Vec<String> = pts
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.offered().0), y(r.delivered().0)))
            .collect();
        s.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        ));
        for r in &pts {
            let (d, d0, d1) = r.delivered();
            let xo = x(r.offered().0);
            s.push_str(&format!(
                "<line x1=\"{xo:.1}\" y1=\"{:.1}\" x2=\"{xo:.1}\" y2=\"{:.1}\" stroke=\"{col}\"/>\n\
<circle cx=\"{xo:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{col}\"/>\n",
                y(d0),
                y(d1),
                y(d)
            ));
        }
        let ly = top + 10.0 + legend as f64 * 20.0;
        let lx = left + pw + 15.0;
        s.push_str(&format!(
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{col}\" stroke-width=\"3\"/>\n\
<text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            c.title()
        ));
        legend += 1;
    }
    s.push_str("</svg>\n");
    s
}
