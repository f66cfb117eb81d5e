//! The loaded program driven directly: one frame through it with
//! BPF_PROG_TEST_RUN, and the maps it uses read and written beside the
//! `Dataplane` API; constant-verdict programs for the peers of veths.

/// Runs `prog` once on `frame` as received on `ingress` (BPF_PROG_TEST_RUN with
/// an `xdp_md` context); the output frame lands in `out`.
pub fn run_xdp(
    dp: &mut balancer::kernel::Dataplane,
    prog: &str,
    frame: &[u8],
    ingress: u32,
    out: &mut Vec<u8>,
) -> aya::programs::TestRunResult {
    use aya::programs::{TestRun, TestRunOptions};
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    out.resize(frame.len() + 256, 0);
    let r = dp
        .program(prog)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ctx_in: Some(&ctx),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    r
}

/// A map of the loaded main program, found by name among the maps it uses.
pub fn program_map(dp: &mut balancer::kernel::Dataplane, name: &str) -> aya::maps::Map {
    let ids = dp
        .program(balancer::kernel::PROGRAM)
        .unwrap()
        .info()
        .unwrap()
        .map_ids()
        .unwrap()
        .expect("the kernel reports the program's maps");
    for id in ids {
        let md = aya::maps::MapData::from_id(id).unwrap();
        if md.info().unwrap().name_as_str() == Some(name) {
            return aya::maps::Map::from_map_data(md).unwrap();
        }
    }
    panic!("the program uses no map {name}");
}

/// Sets the hashing algorithm (`maps::ALG_*`) of the installed service at `vip`
/// by rewriting its SERVICES entry (`install_service` writes `ALG_CALL_ID` as
/// long as `ServiceSpec` carries no algorithm).
pub fn set_algorithm(
    dp: &mut balancer::kernel::Dataplane,
    vip: std::net::SocketAddr,
    algorithm: u32,
) {
    use balancer_common::maps::{Endpoint, Service};
    let mut m: aya::maps::HashMap<aya::maps::MapData, Endpoint, Service> =
        program_map(dp, "SERVICES").try_into().unwrap();
    let key = balancer_common::maps::Endpoint::from(vip);
    let mut s = m.get(&key, 0).expect("service installed");
    s.algorithm = algorithm;
    m.insert(key, s, 0).unwrap();
}

/// The round-robin counter of service `id` on `cpu`.
pub fn rr_counter(dp: &mut balancer::kernel::Dataplane, id: u32, cpu: usize) -> u32 {
    let m: aya::maps::PerCpuArray<aya::maps::MapData, u32> =
        program_map(dp, "RR").try_into().unwrap();
    m.get(&id, 0).unwrap()[cpu]
}

/// Pins the calling thread to the CPU it runs on (BPF_PROG_TEST_RUN runs the
/// program there, so per-CPU state stays put); returns that CPU.
pub fn pin_to_current_cpu() -> usize {
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0);
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
        cpu as usize
    }
}

/// XDP verdicts, as the kernel numbers them.
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;

/// Runs `prog` on `frames` frames, each a copy of `frame` as received on
/// `ingress`, in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18):
/// the kernel runs the program on batches of `batch` frames from a page pool
/// and really carries out the verdicts, redirects included (flushed after
/// each batch, as a driver's NAPI poll does). Returns the wall time of the
/// syscall, and the kernel's own time per frame (its timer runs around the
/// batches only: not the page pool's set-up and teardown).
///
/// The page pool initialises a page's data only when it allocates the page:
/// a recycled page holds the frame as the program left it, so only a program
/// whose rewrite is idempotent sees `frame` every time (check its counters).
pub fn run_xdp_live(
    dp: &mut balancer::kernel::Dataplane,
    prog: &str,
    frame: &[u8],
    ingress: u32,
    frames: u32,
    batch: u32,
) -> (std::time::Duration, std::time::Duration) {
    use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let p = dp.program(prog).unwrap();
    let t = std::time::Instant::now();
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (Linux 5.18 or later)");
    (t.elapsed(), r.duration)
}

/// Attaches an XDP program that returns `action` for every frame
/// (`r0 = action; exit`) to `dev` in namespace `ns`, in native mode. Loaded
/// with the bpf syscall, pinned for as long as `ip` takes to attach it
/// (netlink: the attachment then lives with the device, which goes with the
/// namespace), then unpinned. On a veth, a program on the peer is what makes
/// the peer accept redirected frames (`ndo_xdp_xmit`).
pub fn attach_verdict(ns: &str, dev: &str, action: i32) {
    use std::process::Command;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    // mov64 r0, action; exit
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&action.to_ne_bytes());
    insns[8] = 0x95;
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..55].copy_from_slice(b"verdict");
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "loading an XDP program returning {action}: {}",
        std::io::Error::last_os_error()
    );
    let pin = format!("/sys/fs/bpf/balancer-test-verdict{action}-{ns}-{dev}\0");
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(pin.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    let pinned = std::io::Error::last_os_error();
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "pinning the XDP program at {pin}: {pinned}");
    let pin = pin.trim_end_matches('\0');
    // `nsenter`, not `ip -n`: the latter remounts /sys, which hides bpffs.
    let attached = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ip", "link", "set", "dev", dev, "xdpdrv", "pinned", pin])
        .status();
    let _ = std::fs::remove_file(pin);
    assert!(
        attached.is_ok_and(|s| s.success()),
        "attaching an XDP program returning {action} to {dev} in {ns}"
    );
}
