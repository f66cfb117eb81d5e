//! End to end through real XDP on veth: client, balancer host as gateway, switch,
//! three backends, each in its own network namespace; `balancer attach` run as an
//! operator would. Thousands of INVITEs with random Call-IDs, each sent several
//! times: stickiness, balance, agreement with user space, reverse NAT.

use std::collections::HashMap;
use std::net::SocketAddr;

use balancer::{model::BackendConfig, select::Selector};
use balancer_test_support::{bed, binomial, daemon, peers};
use rand::{distributions::Alphanumeric, Rng, SeedableRng};

const CALLS: usize = 3000;

/// The one backend that saw `id`, after checking it saw every copy and no other
/// backend saw any.
fn sole_holder(seen: &[HashMap<String, u32>], id: &str, copies: u32) -> usize {
    let holders: Vec<usize> = (0..seen.len())
        .filter(|&b| seen[b].contains_key(id))
        .collect();
    assert_eq!(holders.len(), 1, "{id} reached backends {holders:?}");
    let b = holders[0];
    assert_eq!(seen[b][id], copies, "{id}: every copy reached backend {b}");
    b
}

/// Checks that the calls per backend are what the weights predict for that
/// many keys (see `binomial`).
fn assert_balanced(specs: &[BackendConfig], per_backend: &[usize]) {
    let calls: usize = per_backend.iter().sum();
    let weights: Vec<u32> = specs.iter().map(|s| s.weight).collect();
    for (b, p) in binomial::shares(&weights).into_iter().enumerate() {
        let want = binomial::range(calls, p);
        assert!(
            want.contains(&per_backend[b]),
            "backend {b} (weight {}) got {} of {calls} calls, a fair spread gives {want:?}: {per_backend:?}",
            specs[b].weight,
            per_backend[b]
        );
    }
}

const REPEATS: u32 = 3;

/// A bed of three backends answering on port 5060, and `balancer attach` in
/// DNAT mode over them (instance `tag` + pid): the bed, the backends' peers,
/// their addresses, the attach arguments, the running daemon.
fn dnat_bed(
    tag: &str,
) -> (
    bed::Bed,
    Vec<peers::Uas>,
    Vec<String>,
    Vec<String>,
    daemon::Daemon,
) {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    let inst = format!("{tag}{}", std::process::id());
    let bed = bed::Bed::new(&inst, 3);
    let uas: Vec<peers::Uas> = (0..3)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), "0.0.0.0:5060"))
        .collect();
    let backends: Vec<String> = (0..3)
        .map(|i| format!("{}:5060", bed::backend_ip(i)))
        .collect();
    let args = bed::Bed::attach_args("dnat", &inst, &backends);
    let daemon = daemon::Daemon::start(&bed.ns("lb"), &args);
    (bed, uas, backends, args, daemon)
}

#[test]
fn call_ids_stick_balance_and_replies_come_from_the_vip() {
    let (bed, uas, backends, args, daemon) = dnat_bed("e2e");

    // A second daemon with the same instance name refuses to start, and says why.
    let again = daemon::in_netns(&bed.ns("lb"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already running"), "{err}");

    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let ids: Vec<String> = (0..CALLS)
        .map(|_| {
            let n = rng.gen_range(8..40);
            let s: String = (&mut rng)
                .sample_iter(&Alphanumeric)
                .take(n)
                .map(char::from)
                .collect();
            format!("{s}@10.0.1.2")
        })
        .collect();
    let vip: SocketAddr = format!("{}:5060", bed::VIP).parse().unwrap();
    let answers = peers::run_client(&bed.ns("cli"), vip, &ids, REPEATS, 64);
    let answered: u32 = answers.by_call_id.values().sum();
    if answered != CALLS as u32 * REPEATS {
        eprintln!(
            "{answered} answers of {}; the path:\n{}",
            CALLS as u32 * REPEATS,
            bed.diagnose()
        );
    }
    assert!(daemon.stop(), "balancer detaches cleanly on SIGTERM");

    let seen: Vec<HashMap<String, u32>> =
        uas.iter().map(|u| u.seen.lock().unwrap().clone()).collect();
    let specs: Vec<BackendConfig> = backends.iter().map(|b| b.parse().unwrap()).collect();
    let sel = Selector::build(&specs, 65537).unwrap();
    let mut per_backend = [0usize; 3];
    for id in &ids {
        let b = sole_holder(&seen, id, REPEATS);
        assert_eq!(
            specs[b].address,
            sel.whereis(id.as_bytes()).unwrap().address,
            "{id}: kernel and whereis agree"
        );
        per_backend[b] += 1;
    }
    assert_balanced(&specs, &per_backend);
    assert!(
        answers.wrong_source.is_empty(),
        "answers not from the VIP: {:?}",
        &answers.wrong_source[..5.min(answers.wrong_source.len())]
    );
    assert_eq!(
        answered,
        CALLS as u32 * REPEATS,
        "every request answered, through the VIP"
    );
    eprintln!("per-backend calls: {per_backend:?}; {answered} answers from {vip}");
}

/// Direct server return: the balancer changes only the MAC; backends hold the
/// VIP and answer the client themselves (their answers pass the balancer host as
/// plain routed traffic, untouched).
#[test]
fn dsr_backends_answer_from_the_vip_themselves() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
    let bed = bed::Bed::new(&format!("dsr{}", std::process::id()), 3);
    bed.vip_on_backends(3);
    let vip: SocketAddr = format!("{}:5060", bed::VIP).parse().unwrap();
    let uas: Vec<peers::Uas> = (0..3)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), &vip.to_string()))
        .collect();
    // Health probes go to the backends' own addresses.
    let _probes: Vec<peers::Uas> = (0..3)
        .map(|i| peers::Uas::start(&bed.backend_ns(i), &format!("{}:5060", bed::backend_ip(i))))
        .collect();
    let backends: Vec<String> = (0..3)
        .map(|i| format!("{}:5060", bed::backend_ip(i)))
        .collect();
    let args = bed::Bed::attach_args("dsr", &format!("dsr{}", std::process::id()), &backends);
    let daemon = daemon::Daemon::start(&bed.ns("lb"), &args);
    let ids: Vec<String> = (0..300).map(|i| format!("dsr-{i}@10.0.1.2")).collect();
    let answers = peers::run_client(&bed.ns("cli"), vip, &ids, 2, 32);
    assert!(daemon.stop());
    let seen: Vec<HashMap<String, u32>> =
        uas.iter().map(|u| u.seen.lock().unwrap().clone()).collect();
    let specs: Vec<BackendConfig> = backends.iter().map(|b| b.parse().unwrap()).collect();
    let sel = Selector::build(&specs, 65537).unwrap();
    let mut per_backend = [0usize; 3];
    for id in &ids {
        let b = sole_holder(&seen, id, 2);
        assert_eq!(
            specs[b].address,
            sel.whereis(id.as_bytes()).unwrap().address,
            "{id}: kernel and whereis agree"
        );
        per_backend[b] += 1;
    }
    assert_balanced(&specs, &per_backend);
    assert!(answers.wrong_source.is_empty());
    assert_eq!(answers.by_call_id.values().sum::<u32>(), 600);
}

/// INVITEs of about 4,000 bytes over 1500-byte links: the client's kernel
/// fragments them, the balancer dispatches the first fragment by Call-ID and the
/// rest follow it, the backend's kernel reassembles them.
#[test]
fn fragmented_invites_arrive_whole_at_one_backend() {
    let (bed, uas, backends, _, daemon) = dnat_bed("fr");
    let vip: SocketAddr = format!("{}:5060", bed::VIP).parse().unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("big-{i}@10.0.1.2")).collect();
    let (ns, ids2) = (bed.ns("cli"), ids.clone());
    let answered = std::thread::spawn(move || {
        peers::enter_netns(&ns);
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 65536];
        let mut got = 0;
        for id in &ids2 {
            let m = peers::invite_sized(id, 4000);
            assert!(m.len() > 3500);
            sock.send_to(&m, vip).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from == vip && peers::naive_call_id(&buf[..n]).as_deref() == Some(id) {
                    got += 1;
                }
            }
        }
        got
    })
    .join()
    .unwrap();
    assert!(daemon.stop());
    let seen: Vec<HashMap<String, u32>> =
        uas.iter().map(|u| u.seen.lock().unwrap().clone()).collect();
    let specs: Vec<BackendConfig> = backends.iter().map(|b| b.parse().unwrap()).collect();
    let sel = Selector::build(&specs, 65537).unwrap();
    for id in &ids {
        let b = sole_holder(&seen, id, 1);
        assert_eq!(
            specs[b].address,
            sel.whereis(id.as_bytes()).unwrap().address,
            "{id}"
        );
    }
    assert_eq!(
        answered, 200,
        "every fragmented INVITE answered through the VIP"
    );
}
