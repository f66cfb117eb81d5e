//! Runs commands as root inside a QEMU VM booting a [`Prepared`] kernel, with
//! the host's root shared read-only over 9p (so the VM sees the workspace, the
//! test binaries and the host's tools at their usual paths) and private /run,
//! /tmp, /dev, /sys and bpffs. QEMU emulates the CPU (TCG): KVM is not usable on
//! the machines this runs on; `BALANCER_VM_ACCEL=kvm` uses it where it is.
//!
//! TCG runs both virtual CPUs on one host thread (`thread=single`). With a
//! thread per CPU (QEMU 7.2's default), a CPU can still run code another one
//! has just patched: when the XDP program is replaced under traffic, the
//! kernel patches `bpf_dispatcher_xdp_func` with `text_poke_bp` and the NAPI
//! thread on the other CPU executes the temporary int3 after the patch is
//! done, an oops and a panic (6.12, hitless restart; rare).
//! Real CPUs serialise on the kernel's IPIs; the emulator's translated code
//! does not always. `BALANCER_VM_ACCEL=tcg,thread=multi` brings it back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::kernels::Prepared;

/// One command of a VM run, and what to call it in the summary.
pub struct Step {
    pub label: String,
    pub argv: Vec<String>,
}

/// What a VM run reports: per step, whether it passed, and the files the
/// steps left in the guest's /run/vm/out (by name).
pub struct Outcome {
    pub steps: Vec<(String, bool)>,
    pub outputs: std::collections::BTreeMap<String, String>,
    pub elapsed: Duration,
}

/// Boots `kernel`, runs `steps` one after the other in `cwd` (every step runs,
/// failed or not), powers off. `env` is passed to the steps. The guest's
/// console is this process's stdout. Errors: the VM could not be started, did
/// not report back (kernel panic) or ran past `timeout`.
pub fn run(
    kernel: &Prepared,
    cwd: &Path,
    steps: &[Step],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<Outcome> {
    let share = tempdir()?;
    let result = boot(kernel, cwd, steps, env, timeout, &share);
    let _ = std::fs::remove_dir_all(&share);
    result
}

fn boot(
    kernel: &Prepared,
    cwd: &Path,
    steps: &[Step],
    env: &[(&str, String)],
    timeout: Duration,
    share: &Path,
) -> Result<Outcome> {
    // The workspace stays visible when it lies under /tmp, which the VM
    // replaces with a private tmpfs.
    let keep = if cwd.starts_with("/tmp/") {
        cwd.display().to_string()
    } else {
        String::new()
    };
    std::fs::write(share.join("env"), format!("KEEP={}\n", quote(&keep)))?;
    std::fs::write(share.join("cmd.sh"), script(cwd, steps, env))?;
    std::fs::create_dir(share.join("out"))?;

    let accel = std::env::var("BALANCER_VM_ACCEL").unwrap_or_else(|_| "tcg,thread=single".into());
    let cpu = if accel.starts_with("kvm") {
        "host"
    } else {
        "max"
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-machine", "q35", "-accel", &accel, "-cpu", cpu])
        .args(["-m", "2G", "-smp", "2"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&kernel.initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=share,security_model=none",
            share.display()
        ))
        .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    loop {
        if let Some(st) = child.try_wait()? {
            if !st.success() {
                bail!("qemu exited with {st}");
            }
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the {} VM ran past {} s and was stopped",
                kernel.name,
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = start.elapsed();
    let status = std::fs::read_to_string(share.join("status")).unwrap_or_default();
    if !share.join("rc").exists() {
        bail!(
            "the {} VM reported no result (kernel panic or boot failure: see its console above)",
            kernel.name
        );
    }
    let steps = steps
        .iter()
        .map(|s| {
            let ok = status
                .lines()
                .any(|l| l.strip_prefix("ok ") == Some(s.label.as_str()));
            (s.label.clone(), ok)
        })
        .collect();
    let mut outputs = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(share.join("out"))? {
        let e = e?;
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        outputs.insert(e.file_name().to_string_lossy().into_owned(), text);
    }
    Ok(Outcome {
        steps,
        outputs,
        elapsed,
    })
}

/// The guest's shell script: environment, working directory, each step with
/// its result appended to /run/vm/status. A step that ran no test failed: a
/// renamed test must not turn a kernel's check into a silent pass.
fn script(cwd: &Path, steps: &[Step], env: &[(&str, String)]) -> String {
    let mut s = String::from(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n",
    );
    for (k, v) in env {
        s += &format!("export {k}={}\n", quote(v));
    }
    s += &format!("cd {} || exit 1\n", quote(&cwd.display().to_string()));
    s += "echo \"vm: kernel $(uname -r)\"\n";
    for step in steps {
        let argv: Vec<String> = step.argv.iter().map(|a| quote(a)).collect();
        let label = quote(&step.label);
        s += &format!("echo \"vm: == \"{label}\n");
        s += &format!(
            "{} > /tmp/step.out 2>&1; rc=$?; cat /tmp/step.out\n",
            argv.join(" ")
        );
        s += &format!(
            "if [ $rc = 0 ] && ! grep -q '^running 0 tests' /tmp/step.out; then echo ok {label} >> /run/vm/status; else echo failed {label} >> /run/vm/status; fi\n"
        );
    }
    s
}

/// Single-quoted for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn tempdir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("balancer-vm-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    bail!("cannot make a directory in {}", base.display())
}
