//! `balancer import-dispatcher FILE [--service VIP:PORT] [--set N] [--map SETID=VIP:PORT]`

use std::collections::BTreeSet;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use balancer::{
    import::kamailio::{self, FLAG_DISABLED},
    model::{parse_addr, AdminState, Algorithm, BackendConfig, Mode, Op, ServiceConfig},
};

/// Create services and backends from Kamailio's dispatcher.list, all or nothing.
///
/// Each set id becomes one service: `--service` names it when the file has one
/// set (or with `--set`); `--map SETID=VIP:PORT` names several. Missing services
/// are created. Weights (`weight=`), priorities and the disabled flag (0x4) are
/// kept; everything else the balancer does not do is listed, never dropped silently.
#[derive(clap::Args)]
pub struct Args {
    file: String,
    #[arg(long, value_parser = parse_addr)]
    service: Option<SocketAddr>,
    /// With --service: which set of the file.
    #[arg(long)]
    set: Option<u32>,
    /// SETID=VIP:PORT, for files with several sets.
    #[arg(long = "map", value_parser = parse_map)]
    maps: Vec<(u32, SocketAddr)>,
    /// For services that do not exist yet.
    #[arg(long, default_value = "call-id")]
    algorithm: Algorithm,
    #[arg(long, default_value = "dnat")]
    mode: Mode,
}

fn parse_map(s: &str) -> Result<(u32, SocketAddr), String> {
    let (set, vip) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SETID=VIP:PORT"))?;
    let set = set
        .parse()
        .map_err(|_| format!("`{set}` is not a set id"))?;
    Ok((set, parse_addr(vip).map_err(|e| e.to_string())?))
}

pub fn run(instance: &str, a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file))?;
    let dests = kamailio::parse(&text).with_context(|| a.file.clone())?;
    if dests.is_empty() {
        bail!("{}: no destinations", a.file);
    }
    let sets: BTreeSet<u32> = dests.iter().map(|d| d.setid).collect();
    let mut map: Vec<(u32, SocketAddr)> = a.maps.clone();
    if map.is_empty() {
        let set = match (a.set, sets.len()) {
            (Some(s), _) if sets.contains(&s) => s,
            (Some(s), _) => bail!("{}: there is no set {s}", a.file),
            (None, 1) => *sets.iter().next().unwrap(),
            (None, _) => bail!(
                "{} has sets {sets:?}: pick one with --set, or name a service per set with --map SETID=VIP:PORT",
                a.file
            ),
        };
        let vip = match a.service {
            Some(v) => v,
            None => {
                let vips: Vec<SocketAddr> = super::status(instance)?
                    .services
                    .iter()
                    .map(|s| s.vip)
                    .collect();
                match vips.as_slice() {
                    [one] => *one,
                    _ => bail!("name the service to import into with --service VIP:PORT"),
                }
            }
        };
        map.push((set, vip));
    }
    for (set, _) in &map {
        if !sets.contains(set) {
            bail!("{}: there is no set {set}", a.file);
        }
    }
    let existing: Vec<SocketAddr> = super::status(instance)?
        .services
        .iter()
        .map(|s| s.vip)
        .collect();
    let mut ops = Vec::new();
    for (set, vip) in &map {
        if !existing.contains(vip) {
            let mut s = ServiceConfig::new(*vip);
            s.algorithm = a.algorithm;
            s.mode = a.mode;
            ops.push(Op::ServiceAdd { service: s });
        }
        let members: Vec<_> = dests.iter().filter(|d| d.setid == *set).collect();
        let prios: BTreeSet<i32> = members.iter().map(|d| d.priority).collect();
        if prios.len() > 1 && a.algorithm != Algorithm::Priority {
            eprintln!(
                "note: set {set} mixes priorities {prios:?}: they are kept, and take effect with `--algorithm priority` (failover); otherwise traffic is spread by weight"
            );
        }
        for d in members {
            for n in &d.unsupported {
                eprintln!("{}: line {}: {n}", a.file, d.line);
            }
            ops.push(Op::BackendAdd {
                service: Some(*vip),
                backend: BackendConfig {
                    weight: d.weight,
                    priority: d.priority,
                    state: if d.flags & FLAG_DISABLED != 0 {
                        AdminState::Disabled
                    } else {
                        AdminState::Active
                    },
                    ..BackendConfig::new(d.addr)
                },
            });
        }
    }
    let skipped: Vec<u32> = sets
        .iter()
        .filter(|s| !map.iter().any(|(m, _)| m == *s))
        .copied()
        .collect();
    if !skipped.is_empty() {
        eprintln!("note: sets {skipped:?} of {} are not imported", a.file);
    }
    super::apply(instance, ops)
}
