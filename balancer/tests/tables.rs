//! Table updates in the real kernel maps (no traffic needed): Maglev's (nearly)
//! minimal disruption read back from the live table, and pinned state adopted by a
//! second data plane as a restarted daemon would.

use std::net::SocketAddr;

use balancer::{
    kernel::{remove_pins, Dataplane},
    model::{BackendConfig, Config, ServiceConfig},
};

fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root (cargo xtask test)"
    );
}

const VIP: &str = "10.0.0.10:5060";

fn config(backends: &[usize]) -> Config {
    let mut s = ServiceConfig::new(VIP.parse().unwrap());
    s.backends = backends
        .iter()
        .map(|i| BackendConfig::new(format!("10.0.2.{}:5060", 11 + i).parse().unwrap()))
        .collect();
    Config {
        interfaces: vec!["lo".into()],
        services: vec![s],
        ..Default::default()
    }
}

/// The live kernel table's answer for `n` spread-out hashes (no traffic has
/// run, so no affinity entry exists).
fn snapshot(dp: &Dataplane, n: u32) -> Vec<Option<SocketAddr>> {
    (0..n)
        .map(|i| {
            dp.lookup(VIP.parse().unwrap(), i.wrapping_mul(2_654_435_761))
                .unwrap()
                .0
        })
        .collect()
}

#[test]
fn removing_one_backend_moves_only_its_keys() {
    require_root();
    let mut dp = Dataplane::load().expect("the verifier accepts the program");
    let r = dp.sync(&config(&[0, 1, 2, 3, 4])).unwrap();
    eprintln!("first table: in the kernel after {:?}", r.to_kernel);
    let before = snapshot(&dp, 20_000);
    let gone: SocketAddr = "10.0.2.13:5060".parse().unwrap();
    let r = dp.sync(&config(&[0, 1, 3, 4])).unwrap();
    eprintln!(
        "one backend removed: in the kernel after {:?}, {:?} with the grace period",
        r.to_kernel, r.total
    );
    assert_eq!(r.tables, 1);
    let after = snapshot(&dp, 20_000);
    let (mut moved, mut others) = (0, 0);
    for (b, a) in before.iter().zip(&after) {
        if *b == Some(gone) {
            assert_ne!(*a, Some(gone));
            assert!(a.is_some());
            moved += 1;
        } else if a != b {
            others += 1;
        }
    }
    let n = before.len() as f64;
    eprintln!(
        "keys of the removed backend moved: {moved} ({:.4}); keys of the others moved: {others} ({:.4})",
        moved as f64 / n,
        others as f64 / n
    );
    assert!((moved as f64 / n - 0.2).abs() < 0.02);
    // Maglev's disruption is minimal up to a small collateral: the fill order
    // shifts a few entries among the remaining backends (Maglev paper, 5.3).
    // Measured here: 9 of 20000 keys. Dialog affinity keeps their dialogs.
    assert!(
        others as f64 / n < 0.002,
        "{others} keys of remaining backends moved"
    );

    // Adding it back restores exactly the first table (order-independent build).
    dp.sync(&config(&[4, 3, 2, 1, 0])).unwrap();
    assert_eq!(snapshot(&dp, 20_000), before);

    // An unchanged configuration writes nothing.
    let r = dp.sync(&config(&[0, 1, 2, 3, 4])).unwrap();
    assert_eq!(r.tables, 0);
}

#[test]
fn a_second_data_plane_adopts_the_pinned_one() {
    require_root();
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/balancer/tables-test-{}",
        std::process::id()
    ));
    let _ = remove_pins(&pins);
    let mut first = Dataplane::open(Some(&pins)).unwrap();
    first.sync(&config(&[0, 1, 2])).unwrap();
    let before = snapshot(&first, 5000);
    drop(first);

    let mut second = Dataplane::open(Some(&pins)).unwrap();
    assert_eq!(second.adopted_services(), 1);
    // Before its first sync, the live tables are the first one's.
    assert_eq!(snapshot(&second, 5000), before);
    let r = second.sync(&config(&[0, 1, 2])).unwrap();
    assert_eq!(
        r.tables, 1,
        "the adopted service is rewritten once, into its idle half"
    );
    assert_eq!(snapshot(&second, 5000), before);
    second.sync(&config(&[0, 1])).unwrap();
    assert!(snapshot(&second, 5000)
        .iter()
        .all(|b| *b != Some("10.0.2.13:5060".parse().unwrap())));
    second.unpin().unwrap();
    assert!(!pins.exists());
}
