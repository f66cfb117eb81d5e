//! The distribution kernels the data plane is tested on, fetched from Debian's
//! archive with `apt-get download` (never installed as the host's kernel) and
//! prepared for booting under QEMU: extracted, module dependencies computed, the
//! uncompressed vmlinux cut out of the bzImage (QEMU boots it directly, which
//! skips decompressing under emulation), and an initramfs with a static busybox
//! and the modules the VM needs. Everything is cached per package.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::setup::{run_cmd, say};

/// A kernel the VM tests boot: a Debian package family, newest version wins.
pub struct Kernel {
    /// What the README and the reports call it.
    pub name: &'static str,
    /// Package name around a version number: `{prefix}N{suffix}`.
    prefix: &'static str,
    suffix: &'static str,
    /// A Debian release other than the host's to fetch it from (through
    /// private package lists: the host's apt sources are left alone).
    suite: Option<&'static str>,
    /// Supported: the eBPF tests must pass on it. Not supported: the balancer
    /// must refuse it in one line.
    pub supported: bool,
}

/// Debian 12's stock kernel and the 6.12 that bookworm carries too (Debian 13's
/// and Ubuntu 24.04's series); Debian 11's 5.10, too old (no `bpf_loop`, no
/// `bpf_xdp_load_bytes`). The host's own kernel is tested by `cargo test`.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
        suite: None,
        supported: true,
    },
    Kernel {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
        suite: None,
        supported: true,
    },
    Kernel {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64-unsigned",
        suite: Some("bullseye"),
        supported: false,
    },
];

/// Modules the VM loads before it mounts the host's root (9p over virtio) and
/// the ones the tests need (veth pairs, the bed's switch).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth", "bridge"];

/// A kernel ready to boot.
pub struct Prepared {
    pub name: &'static str,
    pub package: String,
    /// `uname -r` inside the VM.
    pub release: String,
    /// vmlinux (or the bzImage when no vmlinux could be cut out).
    pub image: PathBuf,
    pub initramfs: PathBuf,
}

pub fn find(name: &str) -> Result<&'static Kernel> {
    KERNELS.iter().find(|k| k.name == name).ok_or_else(|| {
        let names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        anyhow!(
            "no kernel {name}: the tested kernels are {}",
            names.join(", ")
        )
    })
}

/// Where prepared kernels are kept: `$BALANCER_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/balancer/kernels`, else `~/.cache/balancer/kernels`.
fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BALANCER_KERNEL_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    base.join("balancer/kernels")
}

impl Kernel {
    /// `apt-get` or `apt-cache`, reading the private lists of `suite` if set.
    fn apt(&self, tool: &str) -> Result<Command> {
        let mut cmd = Command::new(tool);
        if let Some(suite) = self.suite {
            let dir = cache_dir().join(format!("apt-{suite}"));
            std::fs::create_dir_all(dir.join("lists/partial"))?;
            std::fs::create_dir_all(dir.join("cache/archives/partial"))?;
            let list = dir.join("sources.list");
            std::fs::write(
                &list,
                format!("deb http://deb.debian.org/debian {suite} main\n"),
            )?;
            for (k, v) in [
                ("Dir::Etc::SourceList", list),
                ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
                ("Dir::State::Lists", dir.join("lists")),
                ("Dir::Cache", dir.join("cache")),
            ] {
                cmd.arg("-o").arg(format!("{k}={}", v.display()));
            }
        }
        Ok(cmd)
    }

    /// The newest package of the family the archive has.
    fn package(&self) -> Result<String> {
        if let Some(p) = self.newest()? {
            return Ok(p);
        }
        // Package lists never fetched (a new machine, another suite) know none.
        run_cmd(self.apt("apt-get")?.args(["update", "-q"]))?;
        self.newest()?.ok_or_else(|| {
            anyhow!(
                "Debian's archive has no {}N{} package (apt-cache pkgnames)",
                self.prefix,
                self.suffix
            )
        })
    }

    fn newest(&self) -> Result<Option<String>> {
        let out = self
            .apt("apt-cache")?
            .args(["pkgnames", self.prefix])
            .output()
            .context("running apt-cache")?;
        let names = String::from_utf8_lossy(&out.stdout);
        Ok(names
            .lines()
            .filter_map(|n| {
                let v = n.strip_prefix(self.prefix)?.strip_suffix(self.suffix)?;
                Some((v.parse::<u32>().ok()?, n.to_string()))
            })
            .max()
            .map(|(_, n)| n))
    }

    /// Fetches (once) and prepares the newest package of the family.
    pub fn prepare(&'static self) -> Result<Prepared> {
        let mut package = self.package()?;
        let mut dir = cache_dir().join(&package);
        if !dir.join("ready").exists() {
            say(&format!(
                "fetching {package} (kernel {}, for the VM tests)",
                self.name
            ));
            if let Err(e) = fetch(self.apt("apt-get")?, &package, &dir) {
                // Old package lists name a version the archive no longer has.
                say(&format!(
                    "{e:#}: updating the package lists and trying again"
                ));
                run_cmd(self.apt("apt-get")?.args(["update", "-q"]))?;
                package = self.package()?;
                dir = cache_dir().join(&package);
                fetch(self.apt("apt-get")?, &package, &dir)?;
            }
        }
        let release = std::fs::read_to_string(dir.join("ready"))?
            .trim()
            .to_string();
        let vmlinux = dir.join("vmlinux");
        let image = if vmlinux.exists() {
            vmlinux
        } else {
            dir.join(format!("root/boot/vmlinuz-{release}"))
        };
        Ok(Prepared {
            name: self.name,
            package,
            release,
            image,
            initramfs: dir.join("initramfs.cpio"),
        })
    }
}

/// Downloads, extracts and prepares `package` into `dir` (built aside, then
/// renamed: an interrupted run leaves no half-prepared kernel behind).
fn fetch(mut apt_get: Command, package: &str, dir: &Path) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let dl = tmp.join("dl");
    std::fs::create_dir_all(&dl)?;
    // apt downloads as its own user where it can: let it write here.
    let _ = Command::new("chown").arg("_apt").arg(&dl).status();
    run_cmd(apt_get.args(["download", "-q", package]).current_dir(&dl))?;
    let deb = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    let root = tmp.join("root");
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::remove_dir_all(&dl)?;
    let release = std::fs::read_dir(root.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("{package} holds no modules"))?;
    run_cmd(Command::new("depmod").arg("-b").arg(&root).arg(&release))?;
    cut_vmlinux(
        &root.join(format!("boot/vmlinuz-{release}")),
        &tmp.join("vmlinux"),
    )?;
    initramfs(&root, &release, &tmp)?;
    // Booting needs the images only; the modules are in the initramfs.
    std::fs::remove_dir_all(root.join("lib"))?;
    std::fs::write(tmp.join("ready"), format!("{release}\n"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir)?;
    Ok(())
}

/// The uncompressed kernel inside a bzImage (xz for 6.1, zstd for 6.12),
/// found by its compressor's magic number. Without it the bzImage boots, a few
/// seconds slower under emulation.
fn cut_vmlinux(vmlinuz: &Path, out: &Path) -> Result<()> {
    let image = std::fs::read(vmlinuz)?;
    let formats: [(&[u8], &str, &[&str]); 2] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
    ];
    for (magic, tool, args) in formats {
        let Some(at) = image.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        let file = std::fs::File::create(out)?;
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {tool}"))?;
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped");
            // The decompressor stops at the end of its stream and may close
            // its input before the trailing bytes: not an error.
            let _ = stdin.write_all(&image[at..]);
        }
        let _ = child.wait();
        let head = std::fs::read(out).map(|b| b.get(..4) == Some(b"\x7fELF"));
        if head.unwrap_or(false) {
            return Ok(());
        }
        let _ = std::fs::remove_file(out);
    }
    say(&format!(
        "no vmlinux found in {}: booting the bzImage",
        vmlinuz.display()
    ));
    Ok(())
}

/// A newc archive: busybox, `init`, and the modules of [`MODULES`] with their
/// dependencies, decompressed, in load order (listed in `/modules`).
fn initramfs(root: &Path, release: &str, out_dir: &Path) -> Result<()> {
    let moddir = root.join("lib/modules").join(release);
    let deps = std::fs::read_to_string(moddir.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let ir = out_dir.join("initramfs");
    std::fs::create_dir_all(ir.join("bin"))?;
    std::fs::create_dir_all(ir.join("m"))?;
    for d in ["proc", "sys", "dev", "newroot"] {
        std::fs::create_dir_all(ir.join(d))?;
    }
    let busybox = which("busybox")?;
    std::fs::copy(&busybox, ir.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", ir.join("bin/sh"))?;
    let init = ir.join("init");
    std::fs::write(&init, include_str!("vm/init.sh"))?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for m in MODULES {
        load_order(m, &deps, &builtin, &mut seen, &mut order)?;
    }
    let mut names = Vec::new();
    for (i, path) in order.iter().enumerate() {
        let name = format!("{i:02}.ko");
        decompress(&moddir.join(path), &ir.join("m").join(&name))?;
        names.push(name);
    }
    std::fs::write(ir.join("modules"), names.join("\n") + "\n")?;

    let archive = std::fs::File::create(out_dir.join("initramfs.cpio"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet")
        .current_dir(&ir)
        .stdout(archive)
        .spawn()
        .context("running cpio")?;
    if !child.wait()?.success() {
        bail!("cpio failed building the initramfs");
    }
    std::fs::remove_dir_all(&ir)?;
    Ok(())
}

/// Appends `module`'s dependencies, then the module (its path in
/// modules.dep), unless built in or already there.
fn load_order(
    module: &str,
    deps: &str,
    builtin: &str,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) -> Result<()> {
    let is = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        stem.replace('-', "_") == module.replace('-', "_")
    };
    if builtin.lines().any(is) {
        return Ok(());
    }
    let line = deps
        .lines()
        .find(|l| l.split(':').next().is_some_and(is))
        .ok_or_else(|| anyhow!("module {module} is neither in modules.dep nor built in"))?;
    let (path, rest) = line.split_once(':').expect("found by its colon");
    if !seen.insert(path.to_string()) {
        return Ok(());
    }
    // modules.dep lists every dependency, deepest last: load from the end.
    for dep in rest.split_whitespace().rev() {
        if seen.insert(dep.to_string()) {
            order.push(dep.to_string());
        }
    }
    order.push(path.to_string());
    Ok(())
}

/// Copies a module, decompressing `.ko.xz` and `.ko.zst` (busybox's insmod
/// takes plain ones).
fn decompress(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        std::fs::copy(from, to)?;
        return Ok(());
    };
    let out = std::fs::File::create(to)?;
    let st = Command::new(tool)
        .arg("-dc")
        .arg(from)
        .stdout(out)
        .status()
        .with_context(|| format!("running {tool}"))?;
    if !st.success() {
        bail!("{tool} -dc {} failed", from.display());
    }
    Ok(())
}

fn which(bin: &str) -> Result<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if p.is_empty() {
        bail!("{bin} not found (cargo xtask setup installs it)");
    }
    Ok(PathBuf::from(p))
}
