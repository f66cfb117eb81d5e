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
    start_with(ebpf, Forward)
}

/// Like [`start`], to any logger (tests capture the records).
pub fn start_with<L: log::Log + 'static>(ebpf: &mut Ebpf, to: L) -> Result<Reader> {
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
/// Hands the program's records to the daemon's log (`crate::logging`),
/// target `xdp`, at their own level.
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        log::logger().log(
            &log::Record::builder()
                .args(*record.args())
                .level(record.level())
                .target("xdp")
                .build(),
        );
    }

    fn flush(&self) {}
}
