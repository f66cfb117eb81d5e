//! What the announcer last wrote, kept in `/run/balancer/INSTANCE.announced`:
//! the place (table, protocol), the network namespace and the VIPs. A daemon
//! killed under `--persist` leaves its routes (its data plane still runs); a
//! later `balancer detach`, with no daemon to ask, removes the data plane and
//! must then withdraw exactly these routes, from the namespace they are in.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::announce::{self, Place};

/// The record's path for `instance`.
pub fn path(instance: &str) -> PathBuf {
    Path::new(crate::control::RUN_DIR).join(format!("{instance}.announced"))
}

/// A network namespace, as `stat` names it (device and inode of its nsfs file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Netns {
    pub dev: u64,
    pub ino: u64,
}

impl Netns {
    /// The calling thread's.
    pub fn current() -> std::io::Result<Netns> {
        Netns::of(Path::new("/proc/thread-self/ns/net"))
    }

    fn of(p: &Path) -> std::io::Result<Netns> {
        let m = std::fs::metadata(p)?;
        Ok(Netns {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub place: Place,
    pub netns: Netns,
    pub vips: BTreeSet<IpAddr>,
}

impl Record {
    pub fn text(&self) -> String {
        let mut s = String::from(
            "# balancer [announce]: the routes this instance wrote, for `balancer detach`\n",
        );
        s += &format!(
            "table {}\nprotocol {}\n",
            self.place.table, self.place.protocol
        );
        s += &format!("netns {}:{}\n", self.netns.dev, self.netns.ino);
        for v in &self.vips {
            s += &format!("vip {v}\n");
        }
        s
    }

    pub fn parse(text: &str) -> Option<Record> {
        let (mut table, mut protocol, mut netns) = (None, None, None);
        let mut vips = BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once(' ')?;
            match k {
                "table" => table = Some(v.parse().ok()?),
                "protocol" => protocol = Some(v.parse().ok()?),
                "netns" => {
                    let (d, i) = v.split_once(':')?;
                    netns = Some(Netns {
                        dev: d.parse().ok()?,
                        ino: i.parse().ok()?,
                    });
                }
                "vip" => {
                    vips.insert(v.parse().ok()?);
                }
                _ => return None,
            }
        }
        Some(Record {
            place: Place {
                table: table?,
                protocol: protocol?,
            },
            netns: netns?,
            vips,
        })
    }
}

/// Writes the record (replacing it whole), or removes it when `vips` is
/// empty. Called by the announcer's thread after each successful write.
pub fn save(path: &Path, place: Place, vips: &BTreeSet<IpAddr>) -> std::io::Result<()> {
    if vips.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let r = Record {
        place,
        netns: Netns::current()?,
        vips: vips.clone(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("announced.tmp");
    std::fs::write(&tmp, r.text())?;
    std::fs::rename(&tmp, path)
}

/// Withdraws what `instance`'s record names and removes the record; `None`
/// when there is no record. Runs in a thread of its own, which enters the
/// record's namespace if it is not the caller's: one of `/run/netns/*`
/// (`--netns`, `ip netns add`).
pub fn withdraw(instance: &str) -> Result<Option<Vec<IpAddr>>> {
    let path = path(instance);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(r) = Record::parse(&text) else {
        bail!("{}: not a record of announcement routes", path.display());
    };
    let done = std::thread::scope(|s| s.spawn(|| withdraw_in_netns(&r)).join())
        .map_err(|_| anyhow::anyhow!("withdrawing the announcement routes: a thread panicked"))??;
    let _ = std::fs::remove_file(&path);
    Ok(Some(done))
}

fn withdraw_in_netns(r: &Record) -> Result<Vec<IpAddr>> {
    let hint = format!(
        "`ip route flush table {} proto {}` there removes them",
        r.place.table, r.place.protocol
    );
    if Netns::current()? != r.netns {
        let found = std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| Netns::of(p).ok() == Some(r.netns));
        let Some(p) = found else {
            bail!("the announcement routes are in another network namespace, not one of /run/netns: {hint}");
        };
        let f = std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "entering {}: {}; {hint}",
                p.display(),
                std::io::Error::last_os_error()
            );
        }
    }
    announce::remove(&r.vips, r.place).with_context(|| format!("removing the routes: {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let r = Record {
            place: Place {
                table: 252,
                protocol: 252,
            },
            netns: Netns {
                dev: 4,
                ino: 4026531840,
            },
            vips: ["10.0.0.10".parse().unwrap(), "fd00::10".parse().unwrap()].into(),
        };
        assert_eq!(Record::parse(&r.text()), Some(r));
        assert_eq!(Record::parse("table 252\nprotocol x\nnetns 1:2\n"), None);
        assert_eq!(Record::parse("table 252\nnetns 1:2\n"), None);
    }
}
