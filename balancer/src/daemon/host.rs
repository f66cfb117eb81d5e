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
