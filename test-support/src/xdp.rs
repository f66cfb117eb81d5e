//! The loaded program driven directly: one frame through it with
//! BPF_PROG_TEST_RUN, and the maps it uses read and written beside the
//! `Dataplane` API.

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
