//! `cargo xtask deb` builds a package that installs and runs: it is installed
//! with `dpkg -i` into a scratch root (its own dpkg database, so the
//! machine's packages and files are not touched), the installed binary says
//! its version, prints its help, shows the man page and validates nothing
//! more (there is no `balancer check` yet: the example configuration's
//! validity is a unit test, `model::tests::the_packaged_example_is_valid`),
//! the unit runs the installed binary, then the package is purged and
//! nothing of it is left.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Runs `cmd` within `limit`; returns (success, stdout, stderr).
fn bounded(cmd: &mut Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    // Drain both pipes meanwhile: cargo's output fills them.
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut so, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut se, &mut s).ok();
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} took more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status.success(), out.join().unwrap(), err.join().unwrap())
}

fn ok(cmd: &mut Command) -> String {
    let (ok, out, err) = bounded(cmd, Duration::from_secs(60));
    assert!(ok, "{cmd:?} failed:\n{out}{err}");
    out
}

/// A directory with an empty dpkg database, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let root = std::env::temp_dir().join(format!("balancer-deb-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let admin = root.join("var/lib/dpkg");
        for d in ["info", "updates", "triggers"] {
            std::fs::create_dir_all(admin.join(d)).unwrap();
        }
        std::fs::write(admin.join("status"), "").unwrap();
        std::fs::write(admin.join("available"), "").unwrap();
        Scratch(root)
    }

    fn dpkg(&self) -> Command {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", self.0.display()));
        c
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every file (not directory) under `dir`, but dpkg's own database.
fn files(dir: &Path, root: &Path, found: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("var/lib/dpkg") {
            continue;
        }
        if p.is_dir() && !p.is_symlink() {
            files(&p, root, found);
        } else {
            found.push(rel);
        }
    }
}

/// What the machine's own dpkg database says of the package (often nothing).
fn host_state() -> String {
    let (_, out, err) = bounded(
        Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}\n", "balancer"]),
        Duration::from_secs(60),
    );
    format!("{out}{err}")
}

#[test]
fn the_package_installs_runs_and_purges() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    if !Path::new("/usr/bin/dpkg-deb").exists() {
        eprintln!("no dpkg-deb here (not Debian): nothing to package");
        return;
    }
    // Builds the release binary first: minutes on a cold target directory.
    let (built, out, err) = bounded(Command::new(XTASK).arg("deb"), Duration::from_secs(1500));
    assert!(built, "cargo xtask deb failed:\n{err}");
    let deb = PathBuf::from(out.lines().last().expect("the package's path").trim());
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        name,
        format!("balancer_{}_{}.deb", env!("CARGO_PKG_VERSION"), arch.trim()),
        "target/debian/balancer_<version>_<arch>.deb"
    );
    assert!(deb.starts_with(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian")));
    let host_had = host_state();

    let scratch = Scratch::new();
    let root = scratch.0.clone();
    // The scratch root has no libc6 package: only the dependencies are forced.
    ok(scratch.dpkg().args(["--force-depends", "-i"]).arg(&deb));
    let status = ok(scratch.dpkg().args(["-s", "balancer"]));
    assert!(status.contains("Status: install ok installed"), "{status}");

    let bin = root.join("usr/bin/balancer");
    let version = ok(Command::new(&bin).arg("--version"));
    assert_eq!(
        version.trim(),
        format!("balancer {}", env!("CARGO_PKG_VERSION"))
    );
    let help = ok(Command::new(&bin).args(["inspect", "--help"]));
    assert!(help.contains("Usage: balancer inspect"), "{help}");
    // The example configuration is there, and the installed binary finds
    // nothing wrong with it.
    let example = root.join("usr/share/doc/balancer/examples/example.toml");
    assert!(
        std::fs::read_to_string(&example)
            .unwrap()
            .contains("[[service]]"),
        "{}",
        example.display()
    );
    let checked = ok(Command::new(&bin).arg("check").arg(&example));
    assert!(checked.contains(": ok ("), "{checked}");
    // The unit runs the packaged binary.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/balancer@.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/balancer run "), "{unit}");
    // The man pages render (man -l reads the file, whatever MANPATH says).
    let page = ok(Command::new("man")
        .args(["-l", "-Tutf8"])
        .arg(root.join("usr/share/man/man1/balancer.1.gz"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80"));
    assert!(page.contains("balancer-attach"), "{page}");
    assert!(root
        .join("usr/share/man/man1/balancer-backend-add.1.gz")
        .is_file());
    // Completions: bash's script defines its function and parses.
    let bash = root.join("usr/share/bash-completion/completions/balancer");
    ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(std::fs::read_to_string(&bash)
        .unwrap()
        .contains("_balancer()"));
    for f in [
        "usr/share/zsh/vendor-completions/_balancer",
        "usr/share/fish/vendor_completions.d/balancer.fish",
    ] {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        assert!(text.contains("attach") && text.contains("backend"), "{f}");
    }

    ok(scratch.dpkg().args(["--purge", "balancer"]));
    let mut left = Vec::new();
    files(&root, &root, &mut left);
    assert!(left.is_empty(), "left after --purge: {left:?}");
    let status = ok(scratch.dpkg().args(["-l"]));
    assert!(!status.contains("balancer"), "{status}");
    // The machine's own dpkg database is as it was.
    let host_has = host_state();
    assert_eq!(host_had, host_has);
}
