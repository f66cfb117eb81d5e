//! What the daemon needs from the host: an instance lock, bpffs, forwarding.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::control;

/// A file removed when the daemon exits, however it exits.
pub(super) struct RemoveOnDrop(pub PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An exclusive lock per instance name, so two daemons never share pins or a socket.
pub(super) fn instance_lock(name: &str) -> Result<std::fs::File> {
    let dir = Path::new(control::RUN_DIR);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(format!("{name}.lock"));
    let f = std::fs::File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "instance `{name}` is already running (lock {} held); pick another --instance",
            path.display()
        );
    }
    Ok(f)
}

/// Pins need bpffs at /sys/fs/bpf; mount it when the host has not.
pub(super) fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let root = std::ffi::CString::new("/sys/fs/bpf")?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fs = std::ffi::CString::new("bpf")?;
    if unsafe { libc::mount(fs.as_ptr(), root.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) } != 0 {
        bail!(
            "no bpffs at /sys/fs/bpf and mounting one failed ({}): mount it (mount -t bpf bpf /sys/fs/bpf), or give the container one",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// With `--persist`, the pins must outlive this process: refused when the
/// bpffs at /sys/fs/bpf belongs to a mount namespace of this process alone,
/// as under `ip netns exec`, which gives its command a private mount
/// namespace with a fresh /sys (and the bpffs mounted there vanishes with
/// it). The bpffs is the host's when this process shares its mount namespace
/// with PID 1 or with the nearest ancestor in another mount namespace, or
/// when that ancestor sees the same bpffs (a systemd unit with a private
/// mount namespace shares the host's /sys/fs/bpf). What cannot be read (a
/// container's hidden PID 1) is taken to be the host's.
pub(super) fn check_pins_outlive() -> Result<()> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(own) = ns("self") else {
        return Ok(());
    };
    if ns("1").as_ref() == Some(&own) {
        return Ok(());
    }
    let own_dev = match std::fs::metadata("/sys/fs/bpf") {
        Ok(m) => std::os::unix::fs::MetadataExt::dev(&m),
        Err(_) => return Ok(()),
    };
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..64 {
        if pid <= 1 {
            return Ok(());
        }
        let Some(theirs) = ns(&pid.to_string()) else {
            return Ok(());
        };
        if theirs != own {
            let seen = std::fs::metadata(format!("/proc/{pid}/root/sys/fs/bpf"))
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            return match seen {
                Ok(dev) if dev == own_dev => Ok(()),
                Ok(_) => bail!(
                    "--persist: /sys/fs/bpf here is private to this process's mount namespace (as under `ip netns exec`, which remounts /sys), so the pins would vanish when it exits: run it as `nsenter --net=/run/netns/NAME balancer ...` or give it `--netns NAME`"
                ),
                Err(_) => Ok(()),
            };
        }
        pid = match parent_of(pid) {
            Some(p) => p,
            None => return Ok(()),
        };
    }
    Ok(())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `--netns NAME`: moves the process into the network namespace
/// /run/netns/NAME (as `ip netns add` makes them), network only, so bpffs and
/// /run stay the host's. Must run before any thread is started: `setns`
/// moves the calling thread, and threads inherit it from their creator.
pub fn enter_netns(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--netns {name}: expected the name of a namespace in /run/netns");
    }
    let path = Path::new("/run/netns").join(name);
    let f = std::fs::File::open(&path)
        .with_context(|| format!("--netns {name}: opening {}", path.display()))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "--netns {name}: entering {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

pub(super) fn warn_forwarding(v4: bool) {
    let path = if v4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        log::warn!("{path} is 0: in dnat mode this host is a router; the kernel refuses to forward and rewritten datagrams are dropped");
    }
}
