//! The XDP program's log: its rare events (a map update refused, a state user
//! space should never have left it in), written by aya-log into a ring buffer,
//! as lines on stderr like the daemon's own (`warning: xdp: ...`).
//!
//! A thread of its own reads the ring buffer, so the log works before and
//! outside any async runtime; it stops when the returned [`Reader`] is dropped.
//! Without a reader the program's records are dropped when the buffer is full:
//! nothing else changes.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;

/// Starts forwarding the program's log records to stderr. Call it after the
/// object is loaded (the ring buffer map exists) and keep the [`Reader`] as long
/// as the program runs. An error leaves the data plane as it is, without the log.
pub fn start(ebpf: &mut Ebpf) -> Result<Reader> {
    start_with(ebpf, Stderr)
}

fn start_with<L: log::Log + 'static>(ebpf: &mut Ebpf, to: L) -> Result<Reader> {
    let mut logger =
        EbpfLogger::init_with_logger(ebpf, to).context("opening the XDP program's log")?;
    // SAFETY: eventfd returns a new descriptor or -1.
    let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if stop < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd for the XDP log reader");
    }
    // SAFETY: `stop` is a descriptor of our own, owned from here on.
    let stop = unsafe { OwnedFd::from_raw_fd(stop) };
    let wake = stop.try_clone().context("eventfd for the XDP log reader")?;
    let thread = std::thread::Builder::new()
        .name("xdp-log".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            loop {
                // SAFETY: two valid pollfd entries.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                if rc < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
                logger.flush();
                if fds[1].revents != 0 {
                    return;
                }
            }
        })
        .context("starting the XDP log reader")?;
    Ok(Reader {
        stop,
        thread: Some(thread),
    })
}

/// Turns the program's log off before it is loaded: the verifier then drops
/// the log calls (aya-log's level is a read-only global), and the program
/// writes no records.
pub fn off(loader: &mut EbpfLoader<'_>) {
    static OFF: u8 = 0;
    loader.override_global(aya_log::LEVEL, &OFF, false);
}

/// Reads the log until dropped (what is in the buffer then is read first).
pub struct Reader {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Records as the daemon writes its own lines.
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug | log::Level::Trace => "debug",
        };
        eprintln!("{level}: xdp: {}", record.args());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::{
        maps::HashMap,
        programs::{TestRun, TestRunOptions, Xdp},
    };
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
}
