//! A change the configuration file cannot take is not made: with the file on a
//! full or read-only file system (a small tmpfs), a CLI change is refused with
//! a clear error, and both the kernel's tables and the file stay as they were.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use balancer_test_support::bed;
use balancer_test_support::daemon::{cli, cli_ok, Daemon};
use balancer_test_support::netns::require_root;
use serde_json::Value;

fn vip() -> SocketAddr {
    format!("{}:5060", bed::VIP).parse().unwrap()
}

fn backend(i: usize) -> String {
    format!("{}:5060", bed::backend_ip(i))
}

/// A 64 KiB tmpfs on a directory of its own, unmounted and removed on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn new(name: &str) -> SmallDisk {
        let dir = PathBuf::from(format!("/tmp/balancer-test-{name}-disk"));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = SmallDisk(dir);
        mount(
            &["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"],
            &disk.0,
        );
        disk
    }

    fn remount(&self, how: &str) {
        mount(&["-o", &format!("remount,{how}")], &self.0);
    }

    /// Fills what is left with a file of its own (a write ends at ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = [0u8; 4096];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
        // Even a tiny file no longer fits.
        assert!(std::fs::write(self.0.join("probe"), [0u8; 4096]).is_err());
        let _ = std::fs::remove_file(self.0.join("probe"));
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }

    /// Files other than the configuration and the filler: temporaries left
    /// behind.
    fn leftovers(&self, conf: &Path) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p != conf && p.file_name().unwrap() != "filler")
            .map(|p| p.display().to_string())
            .collect()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn mount(args: &[&str], dir: &Path) {
    let ok = Command::new("mount")
        .args(args)
        .arg(dir)
        .status()
        .expect("mount")
        .success();
    assert!(ok, "mount {args:?} {}", dir.display());
}

/// What the kernel's tables say: each backend's state and weight, and where
/// a set of Call-IDs goes.
fn kernel(inst: &str) -> (BTreeMap<String, (String, u64)>, Vec<String>) {
    let v: Value = serde_json::from_str(&cli_ok(inst, &["backend", "list", "--json"])).unwrap();
    let backends = v
        .as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                (
                    b["state"].to_string(),
                    b["weight"].as_u64().unwrap_or_default(),
                ),
            )
        })
        .collect();
    let whereis = (0..40)
        .map(|i| {
            cli_ok(inst, &["whereis", &format!("call-{i}@test")])
                .trim()
                .to_string()
        })
        .collect();
    (backends, whereis)
}

/// A change the daemon must refuse, with `why` in its error.
fn refused(inst: &str, args: &[&str], why: &str) {
    let (ok, out, err) = cli(inst, args);
    assert!(!ok, "balancer {args:?} was accepted: {out}");
    assert!(
        err.contains(why) && err.contains("nothing was changed"),
        "balancer {args:?}: the error says why: {err}"
    );
    eprintln!("refused as it should be: {}", err.trim());
}

#[test]
fn a_full_or_read_only_disk_refuses_a_change_and_applies_nothing() {
    require_root();
    let inst = format!("cs{}", std::process::id());
    let bed = bed::Bed::new(&inst, 3);
    let disk = SmallDisk::new(&inst);
    let conf = disk.0.join("balancer.toml");
    // No probes to change states while the tables are compared.
    let mut text = format!(
        "interfaces = [\"l0\"]\n\n[health]\nenabled = false\n\n[[service]]\nvip = \"{}\"\n",
        vip()
    );
    for i in [0, 1] {
        text += &format!("\n[[service.backend]]\naddress = \"{}\"\n", backend(i));
    }
    std::fs::write(&conf, text).unwrap();
    let run = [
        "run",
        "--config",
        conf.to_str().unwrap(),
        "--instance",
        &inst,
    ]
    .map(String::from);
    let d = Daemon::start(&bed.ns("lb"), &run);
    let file = std::fs::read(&conf).unwrap();
    let tables = kernel(&inst);
    assert_eq!(tables.0.len(), 2, "{tables:?}");

    // 1. Full: neither an addition nor a removal is made.
    disk.fill();
    refused(
        &inst,
        &["backend", "add", &backend(2)],
        "No space left on device",
    );
    refused(
        &inst,
        &["backend", "remove", &backend(1)],
        "No space left on device",
    );
    assert_eq!(kernel(&inst), tables, "the kernel's tables after ENOSPC");
    assert_eq!(std::fs::read(&conf).unwrap(), file, "the file after ENOSPC");
    assert_eq!(disk.leftovers(&conf), Vec::<String>::new());

    // Room again: the same change is made, in the kernel and in the file.
    disk.free();
    cli_ok(&inst, &["backend", "add", &backend(2)]);
    let added = kernel(&inst);
    assert_eq!(added.0.len(), 3, "{added:?}");
    let file = std::fs::read(&conf).unwrap();
    assert!(String::from_utf8_lossy(&file).contains(&backend(2)));
    assert_eq!(disk.leftovers(&conf), Vec::<String>::new());

    // 2. Read-only: likewise.
    disk.remount("ro");
    refused(
        &inst,
        &["backend", "remove", &backend(0)],
        "Read-only file system",
    );
    assert_eq!(kernel(&inst), added, "the kernel's tables after EROFS");
    assert_eq!(std::fs::read(&conf).unwrap(), file, "the file after EROFS");
    disk.remount("rw");
    cli_ok(&inst, &["backend", "remove", &backend(0)]);
    assert_eq!(kernel(&inst).0.len(), 2);
    assert!(!String::from_utf8_lossy(&std::fs::read(&conf).unwrap()).contains(&backend(0)));
    assert!(d.stop());
}

#[test]
fn a_start_on_a_full_disk_is_refused_before_anything_is_loaded() {
    require_root();
    let inst = format!("cz{}", std::process::id());
    let bed = bed::Bed::new(&inst, 1);
    let disk = SmallDisk::new(&inst);
    let conf = disk.0.join("balancer.toml");
    let text = format!(
        "interfaces = [\"l0\"]\n\n[[service]]\nvip = \"{}\"\n\n[[service.backend]]\naddress = \"{}\"\n",
        vip(),
        backend(0)
    );
    std::fs::write(&conf, &text).unwrap();
    disk.fill();
    let out = balancer_test_support::daemon::in_netns(&bed.ns("lb"))
        .args([
            "run",
            "--config",
            conf.to_str().unwrap(),
            "--instance",
            &inst,
        ])
        .output()
        .expect("run balancer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a full disk: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), text);
    assert_eq!(disk.leftovers(&conf), Vec::<String>::new());
    let pins = format!("/sys/fs/bpf/balancer/{inst}");
    let pinned: Vec<_> = std::fs::read_dir(&pins)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(pinned.is_empty(), "nothing pinned: {pinned:?}");
    let link =
        balancer_test_support::netns::sh_out(&format!("ip -n {} -d link show l0", bed.ns("lb")));
    assert!(!link.contains("xdp"), "nothing attached: {link}");
}
