//! `cargo xtask deb`: `target/debian/balancer_<version>_<arch>.deb`, built
//! with `dpkg-deb --build` from a staged tree (nothing to install beyond dpkg):
//!
//! - `/usr/bin/balancer`, the release binary;
//! - `/lib/systemd/system/balancer@.service`, dist/'s unit running
//!   `/usr/bin/balancer` (neither enabled nor started by the package: there
//!   are no maintainer scripts);
//! - `/usr/share/man/man1/balancer*.1.gz`, from the CLI (`balancer man --dir`);
//! - completions for bash, zsh and fish (`balancer completions SHELL`);
//! - `/usr/share/doc/balancer/examples/example.toml` (dist/example.toml) and
//!   the copyright.
//!
//! `xtask/tests/deb.rs` installs it into a scratch root, runs it and purges it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn run(root: &Path) -> Result<PathBuf> {
    // Directories 0755, whatever the caller's umask.
    unsafe { libc::umask(0o022) };
    crate::cargo(&["build", "--release", "-p", "balancer", "--bins"])?;
    let bin = root.join("target/release/balancer");
    let version = output(Command::new(&bin).arg("--version"))?;
    let Some(version) = version.trim().strip_prefix("balancer ").map(str::to_string) else {
        bail!("{} --version said {version:?}", bin.display());
    };
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = root.join("target/debian");
    let stage = out.join(format!("balancer_{version}_{arch}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }

    install(&bin, &stage.join("usr/bin/balancer"), 0o755)?;
    let unit = std::fs::read_to_string(root.join("dist/balancer@.service"))?;
    if !unit.contains("/usr/local/bin/balancer") {
        bail!("dist/balancer@.service no longer runs /usr/local/bin/balancer: update xtask/src/deb.rs");
    }
    write(
        &stage.join("lib/systemd/system/balancer@.service"),
        unit.replace("/usr/local/bin/balancer", "/usr/bin/balancer")
            .as_bytes(),
        0o644,
    )?;
    let man = stage.join("usr/share/man/man1");
    crate::setup::run_cmd(Command::new(&bin).arg("man").arg("--dir").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        let page = page?.path();
        // -n: no name or time stamp inside, so the package builds the same twice.
        crate::setup::run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).arg(&page))?;
        set_mode(&page.with_extension("1.gz"), 0o644)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/balancer"),
        ("zsh", "usr/share/zsh/vendor-completions/_balancer"),
        ("fish", "usr/share/fish/vendor_completions.d/balancer.fish"),
    ] {
        let text = output(Command::new(&bin).args(["completions", shell]))?;
        write(&stage.join(path), text.as_bytes(), 0o644)?;
    }
    let doc = stage.join("usr/share/doc/balancer");
    install(
        &root.join("dist/example.toml"),
        &doc.join("examples/example.toml"),
        0o644,
    )?;
    write(
        &doc.join("copyright"),
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: balancer\n\n\
          Files: *\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;

    let depends = depends(&stage).unwrap_or_else(|e| {
        eprintln!("deb: dpkg-shlibdeps failed ({e:#}); depending on libc6 alone");
        "libc6".into()
    });
    let size_kib = du_kib(&stage)?;
    let control = format!(
        "Package: balancer\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: SIP XDP balancer developers <balancer@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: {depends}\n\
         Recommends: iproute2\n\
         Section: net\n\
         Priority: optional\n\
         Description: SIP load balancer in XDP\n \
         An XDP program reads the Call-ID of every SIP/UDP datagram sent to a\n \
         virtual IP, picks a backend by Maglev consistent hashing and forwards it\n \
         from the driver. The daemon keeps the tables, probes the backends with\n \
         SIP OPTIONS and is driven by the `balancer` CLI. Start an instance with\n \
         `systemctl enable --now balancer@NAME` after writing\n \
         /etc/balancer/NAME.toml (see\n \
         /usr/share/doc/balancer/examples/example.toml).\n"
    );
    write(&stage.join("DEBIAN/control"), control.as_bytes(), 0o644)?;

    let deb = out.join(format!("balancer_{version}_{arch}.deb"));
    crate::setup::run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    std::fs::remove_dir_all(&stage)?;
    println!("{}", deb.display());
    Ok(deb)
}

/// The shared libraries' packages, as dpkg-shlibdeps says (it wants a
/// debian/control beside it).
fn depends(stage: &Path) -> Result<String> {
    let tmp = stage.with_extension("shlibdeps");
    std::fs::create_dir_all(tmp.join("debian"))?;
    std::fs::write(
        tmp.join("debian/control"),
        "Source: balancer\n\nPackage: balancer\nArchitecture: any\n",
    )?;
    let o = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(stage.join("usr/bin/balancer"))
        .current_dir(&tmp)
        .stderr(std::process::Stdio::null())
        .output();
    let _ = std::fs::remove_dir_all(&tmp);
    let o = o.context("running dpkg-shlibdeps")?;
    let text = String::from_utf8_lossy(&o.stdout);
    match text.lines().find_map(|l| l.strip_prefix("shlibs:Depends=")) {
        Some(d) if o.status.success() && !d.trim().is_empty() => Ok(d.trim().to_string()),
        _ => bail!("no shlibs:Depends in {text:?}"),
    }
}

fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        total += if m.is_dir() {
            du_kib(&e.path())? * 1024
        } else {
            m.len()
        };
    }
    Ok(total.div_ceil(1024))
}

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().expect("a file in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    set_mode(to, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}
