//! The goals summary at the top of bench/RESULTS.md: each performance goal of
//! issue 15, the figure measured for it, whether it is met, and which run the
//! figure is from. Benches hand their figures over as `name<TAB>value` lines
//! (test-support's `figures`); they are kept in bench/figures.tsv with the run
//! they come from, so a section not run this time keeps its last figures.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

/// The store's file in bench/.
pub const FIGURES: &str = "figures.tsv";

/// Figure name -> (value, run).
pub struct Store(BTreeMap<String, (f64, String)>);

impl Store {
    /// The store as an earlier run left it (empty if there is none).
    pub fn read(path: &Path) -> Result<Store> {
        let mut m = BTreeMap::new();
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(Store(m));
        };
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let f: Vec<&str> = line.split('\t').collect();
            match f[..] {
                [name, value, run] => {
                    let v = value
                        .parse()
                        .with_context(|| format!("{}: {line:?}", path.display()))?;
                    m.insert(name.to_string(), (v, run.to_string()));
                }
                _ => anyhow::bail!("{}: bad line {line:?}", path.display()),
            }
        }
        Ok(Store(m))
    }

    /// A section ran: its figures (names beginning with `prefix`) are now these.
    pub fn replace(&mut self, prefix: &str, figures: Vec<(String, f64)>, run: &str) {
        self.0.retain(|k, _| !k.starts_with(prefix));
        for (k, v) in figures.into_iter().filter(|(k, _)| k.starts_with(prefix)) {
            self.0.insert(k, (v, run.to_string()));
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut t = String::from(
            "# Written by `cargo xtask bench`: the latest figure of each goal, with the run it is from.\n",
        );
        for (k, (v, run)) in &self.0 {
            t += &format!("{k}\t{v}\t{run}\n");
        }
        std::fs::write(path, t).with_context(|| format!("writing {}", path.display()))
    }

    /// The figures whose names begin with `prefix`.
    fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, f64, &'a str)> {
        self.0
            .iter()
            .filter(move |(k, _)| k.starts_with(prefix))
            .map(|(k, (v, run))| (k.as_str(), *v, run.as_str()))
    }
}

/// A bench's `name<TAB>value` lines.
pub fn parse(text: &str) -> Result<Vec<(String, f64)>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once('\t')
                .with_context(|| format!("a bench handed the figure line {l:?}"))?;
            Ok((k.to_string(), v.trim().parse()?))
        })
        .collect()
}

enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

enum Unit {
    /// A ratio, shown as `1.23x`.
    Times,
    /// A share, shown as a percentage.
    Share,
    /// Already a percentage.
    Percent,
    /// A count, shown with thousands separators.
    Count,
}

struct Goal {
    what: &'static str,
    /// The figure's name; with `max`, the prefix of figures whose largest counts.
    figure: &'static str,
    max: bool,
    bound: Bound,
    unit: Unit,
    /// Figures shown beside the measured one: (label, figure name, unit).
    beside: &'static [(&'static str, &'static str, Unit)],
    /// Beside figures (by label) that are losses (%) of the programs the goal
    /// is about: above 0.1 % the ratio does not say whether the goal is met.
    /// (Kamailio's loss only shows it overloaded: its CPU per delivered
    /// datagram is then what it costs at that rate.)
    losses: &'static [&'static str],
}

const fn goal(what: &'static str, figure: &'static str, bound: Bound, unit: Unit) -> Goal {
    Goal {
        what,
        figure,
        max: false,
        bound,
        unit,
        beside: &[],
        losses: &[],
    }
}

/// A goal through the bed at `k` thousand datagrams/s, with the losses of the
/// contenders it compares beside it.
const fn bed(
    what: &'static str,
    figure: &'static str,
    bound: Bound,
    beside: &'static [(&'static str, &'static str, Unit)],
) -> Goal {
    Goal {
        beside,
        losses: &["dnat lost", "trivial lost"],
        ..goal(what, figure, bound, Unit::Times)
    }
}

/// Issue 15's goals.
const GOALS: &[Goal] = &[
    goal(
        "In-kernel time, INVITE 917 B (Call-ID second header), balancer / trivial",
        "dataplane.invite",
        Bound::AtMost(2.0),
        Unit::Times,
    ),
    Goal {
        beside: &[("Call-IDs", "dataplane.rotation", Unit::Count)],
        ..goal(
            "The same with many Call-IDs in rotation, each a live dialog (out of the CPU caches)",
            "dataplane.invite_rotation",
            Bound::AtMost(2.0),
            Unit::Times,
        )
    },
    goal(
        "In-kernel time, INVITE 1,401 B with the Call-ID last, balancer / trivial",
        "dataplane.invite_late",
        Bound::AtMost(3.5),
        Unit::Times,
    ),
    goal(
        "In-kernel time, CRLF keepalive, balancer / trivial",
        "dataplane.keepalive",
        Bound::AtMost(1.5),
        Unit::Times,
    ),
    goal(
        "In-kernel time, 200 OK from a backend (reverse NAT), balancer / trivial",
        "dataplane.reply",
        Bound::AtMost(1.5),
        Unit::Times,
    ),
    Goal {
        beside: &[(
            "by the kernel's own time per frame",
            "live.invite_kernel",
            Unit::Percent,
        )],
        ..goal(
            "Live frames, INVITE 917 B: balancer's packets/s per CPU (DSR) / trivial's",
            "live.invite",
            Bound::AtLeast(0.9),
            Unit::Share,
        )
    },
    bed(
        "Through the bed at 50k/s: CPU per delivered datagram, dnat / trivial",
        "bed.dnat_trivial.50k",
        Bound::AtMost(1.2),
        &[
            ("dnat lost", "bed.loss.dnat.50k", Unit::Percent),
            ("trivial lost", "bed.loss.trivial.50k", Unit::Percent),
        ],
    ),
    bed(
        "Through the bed at 100k/s: CPU per delivered datagram, dnat / trivial",
        "bed.dnat_trivial.100k",
        Bound::AtMost(1.2),
        &[
            ("dnat lost", "bed.loss.dnat.100k", Unit::Percent),
            ("trivial lost", "bed.loss.trivial.100k", Unit::Percent),
        ],
    ),
    bed(
        "Through the bed at 50k/s: CPU per delivered datagram, Kamailio / dnat",
        "bed.kamailio_dnat.50k",
        Bound::AtLeast(10.0),
        &[
            ("Kamailio lost", "bed.loss.kamailio.50k", Unit::Percent),
            ("dnat lost", "bed.loss.dnat.50k", Unit::Percent),
        ],
    ),
    bed(
        "Through the bed at 100k/s: CPU per delivered datagram, Kamailio / dnat",
        "bed.kamailio_dnat.100k",
        Bound::AtLeast(10.0),
        &[
            ("Kamailio lost", "bed.loss.kamailio.100k", Unit::Percent),
            ("dnat lost", "bed.loss.dnat.100k", Unit::Percent),
        ],
    ),
    Goal {
        what: "Instructions the verifier processes for `balancer`, on every tested kernel",
        figure: "verifier.",
        max: true,
        bound: Bound::AtMost(500_000.0),
        unit: Unit::Count,
        beside: &[],
        losses: &[],
    },
];

fn show(v: f64, unit: &Unit) -> String {
    match unit {
        Unit::Times => format!("{v:.2}x"),
        Unit::Share => format!("{:.0}%", v * 100.0),
        Unit::Percent => format!("{v:.2} %"),
        Unit::Count => {
            let s = format!("{v:.0}");
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
    }
}

/// The summary's Markdown.
pub fn summary(store: &Store) -> String {
    let mut t = String::from(
        "## Goals (issue 15)\n\nEach goal, the figure measured for it (ratios of medians measured in one run, the two contenders alternating) and the run it comes from: a section that an invocation did not run keeps its last figures. Through the bed, CPU per delivered datagram compares contenders only where they delivered what they were offered: their losses (median % of what was sent) are beside the ratio, and where the balancer or the trivial program lost more than 0.1 % the summary does not say whether the goal is met (Kamailio's loss only shows it overloaded: its CPU per delivered datagram is then what it costs at that rate). Details in the sections below.\n\n| goal | target | measured | met | from run |\n|---|---:|---:|---|---|\n",
    );
    for g in GOALS {
        let target = match g.bound {
            Bound::AtMost(b) => format!("<= {}", show(b, &g.unit)),
            Bound::AtLeast(b) => format!(">= {}", show(b, &g.unit)),
        };
        let found: Option<(f64, String, String)> = if g.max {
            let all: Vec<_> = store.with_prefix(g.figure).collect();
            all.iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, v, run)| {
                    let which = k.trim_start_matches(g.figure);
                    let note = format!(" (the most of {} kernels: {which})", all.len());
                    (*v, note, run.to_string())
                })
        } else {
            store
                .with_prefix(g.figure)
                .find(|(k, _, _)| *k == g.figure)
                .map(|(_, v, run)| (v, String::new(), run.to_string()))
        };
        match found {
            Some((v, mut note, run)) => {
                let beside: Vec<(String, bool)> = g
                    .beside
                    .iter()
                    .filter_map(|(label, f, unit)| {
                        let (_, v, _) = store.with_prefix(f).find(|(k, _, _)| k == f)?;
                        Some((
                            format!("{label}: {}", show(v, unit)),
                            g.losses.contains(label) && v > 0.1,
                        ))
                    })
                    .collect();
                let lossy = beside.iter().any(|(_, lost)| *lost);
                let beside: Vec<String> = beside.into_iter().map(|(t, _)| t).collect();
                if !beside.is_empty() {
                    note += &format!(" ({})", beside.join(", "));
                }
                let met = match g.bound {
                    Bound::AtMost(b) => v <= b,
                    Bound::AtLeast(b) => v >= b,
                };
                t += &format!(
                    "| {} | {target} | {}{note} | {} | {run} |\n",
                    g.what,
                    show(v, &g.unit),
                    match (met, lossy) {
                        (_, true) =>
                            "unclear: the balancer or the trivial program lost more than 0.1 %",
                        (true, false) => "yes",
                        (false, false) => "no",
                    }
                );
            }
            None => t += &format!("| {} | {target} | not measured yet | - | - |\n", g.what),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_that_runs_replaces_only_its_own_figures() {
        let mut s = Store(BTreeMap::new());
        s.replace(
            "dataplane.",
            parse("dataplane.invite\t5.5\n").unwrap(),
            "run 1",
        );
        s.replace(
            "bed.",
            parse("bed.dnat_trivial.50k\t1.1\n").unwrap(),
            "run 1",
        );
        // The dataplane runs again, without the figure it handed before.
        s.replace(
            "dataplane.",
            parse("dataplane.reply\t1.4\n").unwrap(),
            "run 2",
        );
        let names: Vec<_> = s.0.keys().cloned().collect();
        assert_eq!(names, ["bed.dnat_trivial.50k", "dataplane.reply"]);
        assert_eq!(s.0["bed.dnat_trivial.50k"].1, "run 1");
        assert_eq!(s.0["dataplane.reply"].1, "run 2");
    }

    #[test]
    fn the_summary_says_met_not_met_and_not_measured() {
        let mut s = Store(BTreeMap::new());
        s.replace(
            "dataplane.",
            parse("dataplane.invite\t2.5\ndataplane.reply\t1.4\n").unwrap(),
            "r1",
        );
        s.replace(
            "verifier.",
            vec![
                ("verifier.6.1".into(), 600_000.0),
                ("verifier.6.18".into(), 100.0),
            ],
            "r2",
        );
        let t = summary(&s);
        let row = |what: &str| t.lines().find(|l| l.contains(what)).unwrap().to_string();
        assert!(row("INVITE 917 B").contains("| 2.50x | no | r1 |"));
        assert!(row("reverse NAT").contains("| 1.40x | yes | r1 |"));
        assert!(row("keepalive").contains("not measured yet"));
        assert!(row("verifier").contains("600,000 (the most of 2 kernels: 6.1) | no | r2"));
    }

    #[test]
    fn a_ratio_with_losses_is_unclear() {
        let mut s = Store(BTreeMap::new());
        let figures =
            "bed.dnat_trivial.50k\t1.1\nbed.loss.dnat.50k\t0.0\nbed.loss.trivial.50k\t0.05\n\
bed.kamailio_dnat.50k\t12\nbed.loss.kamailio.50k\t26\n";
        s.replace("bed.", parse(figures).unwrap(), "r");
        let t = summary(&s);
        let row = |what: &str| t.lines().find(|l| l.contains(what)).unwrap().to_string();
        assert!(row("50k/s: CPU per delivered datagram, dnat / trivial").contains("| yes |"));
        assert!(row("50k/s: CPU per delivered datagram, Kamailio").contains("| yes |"));
        s.replace(
            "bed.",
            parse("bed.kamailio_dnat.50k\t12\nbed.loss.dnat.50k\t0.5\n").unwrap(),
            "r",
        );
        let t = summary(&s);
        assert!(t
            .lines()
            .any(|l| l.contains("Kamailio / dnat") && l.contains("| unclear")));
    }

    #[test]
    fn store_round_trip() {
        let dir = std::env::temp_dir().join(format!("goals-test-{}", std::process::id()));
        let mut s = Store(BTreeMap::new());
        s.replace(
            "live.",
            parse("live.invite\t0.32\n").unwrap(),
            "2026-11-30 11:11 UTC, abc",
        );
        s.write(&dir).unwrap();
        let back = Store::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(back.0, s.0);
    }
}
