//! The XDP program's log: a rare event (a state user space never writes)
//! reaches user space as one record; with the log off, nothing does and the
//! verifier drops the log calls.

use aya::{
    maps::HashMap,
    programs::{TestRun, TestRunOptions, Xdp},
};
use balancer::kernel::program_log::{off, start_with};
use balancer_common::maps::{Endpoint, Service, ALG_SOURCE, MAX_SERVICES};
use std::{net::SocketAddr, sync::mpsc};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer"));

struct Capture(mpsc::Sender<(log::Level, String)>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let _ = self.0.send((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

/// Ethernet, IPv4, UDP 10.0.1.2:5060 -> 10.0.0.10:5060, a short payload.
fn frame() -> Vec<u8> {
    let payload = b"OPTIONS sip:x SIP/2.0\r\n\r\n";
    let mut f = vec![
        0x02, 0, 0, 0, 0xff, 0x01, 0x02, 0, 0, 0, 0x01, 0x02, 0x08, 0x00,
    ];
    let tot = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0]);
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f.extend_from_slice(&[10, 0, 1, 2, 10, 0, 0, 10]);
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Runs the program once on a datagram to a service whose id has no place
/// in MAGLEV (a state user space never writes): the program passes it and
/// notes why. Returns the verdict, the verifier's instruction count and the
/// records read (the reader, dropped, has read the whole buffer).
fn run(log_off: bool) -> (u32, u32, Vec<(log::Level, String)>) {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "loads the XDP program: run as root"
    );
    let mut loader = aya::EbpfLoader::new();
    if log_off {
        off(&mut loader);
    }
    let mut ebpf = loader.load(OBJECT).unwrap();
    let prog: &mut Xdp = ebpf.program_mut("balancer").unwrap().try_into().unwrap();
    prog.load().unwrap();
    let verified = prog.info().unwrap().verified_instruction_count().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = start_with(&mut ebpf, Capture(tx)).unwrap();
    let vip: SocketAddr = "10.0.0.10:5060".parse().unwrap();
    let mut services: HashMap<_, Endpoint, Service> =
        HashMap::try_from(ebpf.map_mut("SERVICES").unwrap()).unwrap();
    let svc = Service {
        id: MAX_SERVICES + 1,
        table_size: 7,
        algorithm: ALG_SOURCE,
        ..Service::default()
    };
    services.insert(Endpoint::from(vip), svc, 0).unwrap();
    let prog: &Xdp = ebpf.program("balancer").unwrap().try_into().unwrap();
    let frame = frame();
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap();
    drop(reader);
    (r.return_value, verified, rx.try_iter().collect())
}

#[test]
fn a_rare_event_reaches_the_log() {
    let (verdict, verified, records) = run(false);
    eprintln!("log on: the verifier processed {verified} instructions");
    assert_eq!(verdict, 2, "XDP_PASS");
    let id = MAX_SERVICES + 1;
    assert_eq!(records.len(), 1, "{records:?}");
    let (level, line) = &records[0];
    assert_eq!(*level, log::Level::Error);
    assert!(
        line.starts_with(&format!("service {id}: Maglev index ")),
        "{line}"
    );
}

/// Off, the program writes no record, and the verifier has dropped the log
/// calls: it processes fewer instructions than with the log on.
#[test]
fn the_log_off_writes_nothing() {
    let (verdict, off_count, records) = run(true);
    let (_, on_count, _) = run(false);
    eprintln!("log off: the verifier processed {off_count} instructions (on: {on_count})");
    assert_eq!(verdict, 2, "XDP_PASS");
    assert!(records.is_empty(), "{records:?}");
    assert!(off_count < on_count, "off {off_count}, on {on_count}");
}
