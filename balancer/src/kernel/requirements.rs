//! What the data plane needs from the kernel, checked before the program is
//! loaded, so an operator on a kernel that is too old reads one line naming
//! what is missing instead of a verifier dump.
//!
//! The check probes capabilities (a program type, helpers from XDP, map types,
//! BTF), not version numbers: vendor kernels (RHEL 9's 5.14) carry backports.
//! The tested kernels are listed in [`TESTED`]; `cargo xtask kernels` runs the
//! eBPF tests on each, and checks that Debian 11's 5.10 is refused.

use std::path::PathBuf;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

/// The oldest kernel the project tests.
pub const MINIMUM: &str = "6.1";
/// Kernels the project tests the data plane on.
pub const TESTED: &str = "6.1, 6.12 and 6.18";

/// One thing the program uses, and the first mainline release that has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Need {
    pub what: &'static str,
    pub since: &'static str,
    probe: Probe,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    Xdp,
    Btf,
    Helper(BpfHelper),
    Map(MapType),
}

/// Everything the program uses that older kernels lack, oldest first.
pub const NEEDS: &[Need] = &[
    Need {
        what: "XDP programs",
        since: "4.8",
        probe: Probe::Xdp,
    },
    Need {
        what: "bpf_fib_lookup",
        since: "4.18",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_fib_lookup),
    },
    Need {
        what: "BTF (CONFIG_DEBUG_INFO_BTF)",
        since: "5.1",
        probe: Probe::Btf,
    },
    Need {
        what: "devmap hash maps",
        since: "5.4",
        probe: Probe::Map(MapType::DevMapHash),
    },
    Need {
        what: "bpf_ktime_get_coarse_ns",
        since: "5.11",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_ktime_get_coarse_ns),
    },
    Need {
        what: "bpf_loop",
        since: "5.17",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_loop),
    },
    Need {
        what: "bpf_xdp_load_bytes",
        since: "5.18",
        probe: Probe::Helper(BpfHelper::BPF_FUNC_xdp_load_bytes),
    },
];

/// Why the data plane cannot run here. Each is one line.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("this kernel ({release}) cannot run the data plane: it lacks {}; the balancer needs Linux {MINIMUM} or later (tested: {TESTED})", list(.missing))]
    Missing { release: String, missing: Vec<Need> },
    #[error("loading BPF programs is not permitted here ({0}): run as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON), outside a container that forbids bpf()")]
    NotPermitted(String),
    #[error("{rejected} (kernel {release}); the whole verifier log is in {} (attach it to a bug report)", .log.display())]
    Rejected {
        release: String,
        rejected: Rejected,
        log: PathBuf,
    },
}

/// The kernel's verifier refused one of the object's programs: one line (the
/// instruction it stopped at and why); the whole log is in `log`.
#[derive(Debug, thiserror::Error)]
#[error("the kernel's verifier rejected program {program}: {}", rejection_reason(.log))]
pub struct Rejected {
    pub program: String,
    pub log: String,
}

fn list(missing: &[Need]) -> String {
    missing
        .iter()
        .map(|n| format!("{} (Linux {}+)", n.what, n.since))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Probes every [`Need`]; `Ok` when the kernel has them all.
pub fn check() -> Result<(), KernelError> {
    let mut missing = Vec::new();
    for need in NEEDS {
        match has(need.probe) {
            Ok(true) => {}
            Ok(false) => missing.push(*need),
            Err(e) => return Err(KernelError::NotPermitted(e)),
        }
    }
    verdict(&release(), missing)
}

/// The decision on probe results (separate, so it is tested without a kernel).
pub fn verdict(release: &str, missing: Vec<Need>) -> Result<(), KernelError> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(KernelError::Missing {
        release: release.to_string(),
        missing,
    })
}

/// Whether the running kernel is older than the oldest tested one (it may
/// still have everything the program needs: distributions backport).
pub fn older_than_tested(release: &str) -> bool {
    let num = |s: &str| -> Option<(u32, u32)> {
        let mut it = s.split(|c: char| !c.is_ascii_digit());
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (num(release), num(MINIMUM)) {
        (Some(r), Some(m)) => r < m,
        _ => false,
    }
}

fn has(p: Probe) -> Result<bool, String> {
    match p {
        Probe::Xdp => is_program_supported(ProgramType::Xdp).map_err(|e| e.to_string()),
        Probe::Helper(h) => is_helper_supported(ProgramType::Xdp, h).map_err(|e| e.to_string()),
        Probe::Map(m) => is_map_supported(m).map_err(|e| e.to_string()),
        Probe::Btf => Ok(aya::features().btf().is_some_and(|b| b.btf_func())),
    }
}

/// One line out of a verifier log: the last instruction it looked at and what
/// it said about it (the log's closing statistics left out).
pub fn rejection_reason(log: &str) -> String {
    let stats = |l: &str| {
        l.starts_with("verification time")
            || l.starts_with("stack depth")
            || l.starts_with("processed ")
            || l.starts_with("-- END PROG LOAD LOG --")
    };
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !stats(l))
        .collect();
    let is_insn = |l: &str| {
        let digits = l.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && l[digits..].starts_with(": (")
    };
    let Some(last) = lines.len().checked_sub(1) else {
        return "no verifier output".into();
    };
    // The messages after the last instruction line, and that instruction.
    let from = (0..=last).rev().find(|&i| is_insn(lines[i]));
    let mut parts: Vec<&str> = Vec::new();
    if let Some(i) = from {
        let insn = lines[i].split(';').next().unwrap_or(lines[i]).trim();
        parts.push(insn);
        parts.extend(lines[i + 1..].iter().copied());
    } else {
        parts.push(lines[last]);
    }
    let mut s = parts.join(": ");
    if s.len() > 300 {
        // At a character boundary: truncating inside one would panic.
        let cut = (0..=300)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_needs_are_named_in_one_line() {
        let missing: Vec<Need> = NEEDS
            .iter()
            .filter(|n| n.what == "bpf_loop" || n.what == "bpf_xdp_load_bytes")
            .copied()
            .collect();
        let e = verdict("5.10.0-32-amd64", missing).unwrap_err().to_string();
        assert_eq!(
            e,
            "this kernel (5.10.0-32-amd64) cannot run the data plane: it lacks bpf_loop \
             (Linux 5.17+), bpf_xdp_load_bytes (Linux 5.18+); the balancer needs Linux 6.1 \
             or later (tested: 6.1, 6.12 and 6.18)"
        );
        assert!(verdict("6.1.0", Vec::new()).is_ok());
    }

    #[test]
    fn releases_older_than_the_oldest_tested() {
        assert!(older_than_tested("5.14.0-427.el9.x86_64"));
        assert!(older_than_tested("5.15.0-91-generic"));
        assert!(!older_than_tested("6.1.0-57-amd64"));
        assert!(!older_than_tested("6.12.117+deb12-amd64"));
        assert!(!older_than_tested("6.18.0"));
        assert!(!older_than_tested("garbage"));
    }

    #[test]
    fn a_rejection_is_told_by_its_last_instruction() {
        // The end of 6.1's log when it refused the program (a zero-length
        // helper access), as it was before the fix.
        let log = "\
769: (bf) r4 = r6                     ; R4_w=scalar(id=154,umax=4095,var_off=(0x0; 0xfff))
770: (85) call bpf_xdp_load_bytes#189
invalid access to map value, value_size=4496 off=384 size=0
R3 min value is outside of the allowed memory range
verification time 629424 usec
stack depth 280+0+0+200+88
processed 26257 insns (limit 1000000) max_states_per_insn 10 total_states 1254 peak_states 997 mark_read 39
";
        assert_eq!(
            rejection_reason(log),
            "770: (85) call bpf_xdp_load_bytes#189: invalid access to map value, \
             value_size=4496 off=384 size=0: R3 min value is outside of the allowed memory range"
        );
        assert_eq!(
            rejection_reason("BPF program is too large. Processed 1000001 insn\n"),
            "BPF program is too large. Processed 1000001 insn"
        );
        assert_eq!(rejection_reason(""), "no verifier output");
        let long = format!("{}é{}", "x".repeat(299), "y".repeat(50));
        assert_eq!(rejection_reason(&long), format!("{}...", "x".repeat(299)));
    }
}
