//! `cargo xtask kernels` (and the last part of `cargo xtask test`): the tests
//! that touch the eBPF program, run again inside a VM per supported kernel.
//!
//! - the kernel fixture suite: the real verifier, BPF_PROG_TEST_RUN, exact
//!   output bytes and counters, and the verifier's headroom;
//! - the protection fixtures: reverse path, block and allow lists, per-source
//!   limits, dialog state only where dialogs begin;
//! - the netns end-to-end tests: `balancer attach` with real XDP on veth,
//!   forwarding SIP by Call-ID, DSR and fragments;
//! - the cheap hostile-network tests: forged backend addresses towards the
//!   VIP and towards a client (the strict reverse-path check), and a one-armed
//!   host whose backends' real replies must still pass it;
//! - the hitless restart: pinned maps adopted, the program replaced on its
//!   link with `bpf_link_update`, by SIGTERM, SIGKILL and after a configuration
//!   change, every dialog answered once by the backend the table names.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::{kernels, vm};

/// A step: label, test binary, its arguments.
type Step = (&'static str, &'static str, &'static [&'static str]);

/// What a supported kernel must pass.
const SUPPORTED: &[Step] = &[
    (
        "requirements",
        "kernel_requirements",
        &["--exact", "this_kernel_has_what_the_data_plane_needs"],
    ),
    ("kernel fixtures", "kernel_fixtures", &["--test-threads=2"]),
    ("protection", "kernel_protection", &["--test-threads=1"]),
    ("netns end-to-end", "netns_e2e", &["--test-threads=1"]),
    (
        "hostile network",
        "hostile_network",
        &[
            "--test-threads=1",
            "--exact",
            "invites_to_the_vip_with_a_backends_address_reach_no_backend",
            "a_backends_address_towards_a_client_is_neither_reflected_nor_learned",
            "a_one_armed_balancer_reverse_nats_real_backend_replies",
        ],
    ),
    ("affinity sync", "sync", &["--test-threads=1"]),
    (
        "hitless restart",
        "control_plane",
        &[
            "--exact",
            "restarts_lose_no_dialog_and_keep_established_ones",
        ],
    ),
];

/// What a kernel that is too old must show: a clear refusal.
const UNSUPPORTED: &[Step] = &[(
    "refused in one line",
    "kernel_requirements",
    &[
        "--ignored",
        "--exact",
        "an_older_kernel_is_refused_in_one_line",
    ],
)];

/// Longest a VM may run the suite once (it takes about 8 minutes per kernel).
const TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// Runs the suite on `names` (all supported kernels when empty): the steps
/// labelled in `only` (all when empty), each `repeat` times.
pub fn run(names: &[String], only: &[String], repeat: u32) -> Result<()> {
    if let Some(o) = only.iter().find(|o| {
        !SUPPORTED
            .iter()
            .chain(UNSUPPORTED)
            .any(|s| s.0 == o.as_str())
    }) {
        let labels: Vec<&str> = SUPPORTED.iter().chain(UNSUPPORTED).map(|s| s.0).collect();
        bail!(
            "no step is labelled {o:?} (the steps: {})",
            labels.join(", ")
        );
    }
    let kernels: Vec<&'static kernels::Kernel> = if names.is_empty() {
        kernels::KERNELS.iter().collect()
    } else {
        names
            .iter()
            .map(|n| kernels::find(n))
            .collect::<Result<_>>()?
    };
    let binaries = crate::binaries("test", SUPPORTED.iter().chain(UNSUPPORTED).map(|s| s.1))?;
    let steps = |list: &[Step]| -> Vec<vm::Step> {
        list.iter()
            .filter(|s| only.is_empty() || only.iter().any(|o| o == s.0))
            .flat_map(|s| (1..=repeat.max(1)).map(move |i| (s, i)))
            .map(|((label, bin, args), i)| vm::Step {
                label: if repeat > 1 {
                    format!("{label} #{i}")
                } else {
                    label.to_string()
                },
                argv: std::iter::once(binaries[*bin].clone())
                    .chain(args.iter().map(|a| a.to_string()))
                    .chain(["--color".to_string(), "never".to_string()])
                    .collect(),
            })
            .collect()
    };
    let root = crate::root().canonicalize()?;
    let mut summary = Vec::new();
    let mut failed = false;
    for k in kernels {
        let list = steps(if k.supported { SUPPORTED } else { UNSUPPORTED });
        if list.is_empty() {
            continue;
        }
        let p = k.prepare()?;
        eprintln!(
            "\n=== kernel {} ({}, {}) under QEMU ===",
            p.name, p.package, p.release
        );
        let out = vm::run(
            &p,
            &root,
            &list,
            &[("RUST_BACKTRACE", "1".into())],
            TIMEOUT * repeat.max(1),
        )?;
        for (label, ok) in &out.steps {
            failed |= !ok;
            summary.push(format!(
                "kernel {:<5} {:<20} {}",
                p.name,
                label,
                if *ok { "passed" } else { "FAILED" }
            ));
        }
        summary.push(format!(
            "kernel {:<5} ({}) took {} s",
            p.name,
            p.release,
            out.elapsed.as_secs()
        ));
    }
    eprintln!("\n{}", summary.join("\n"));
    if failed {
        bail!("tests failed in a VM (see above)");
    }
    Ok(())
}
