//! The daemon's log (the `log` crate): one line per event on stderr, with
//! its level. Under systemd, whose journal reads stderr (`$JOURNAL_STREAM`
//! is set), each line starts with its syslog priority (`<3>` error to `<7>`
//! debug, as sd-daemon(3) reads them), so the journal keeps the levels;
//! elsewhere errors and warnings say so (`error: `, `warning: `) and
//! information is bare. The level comes from `--log-level`, else
//! `RUST_LOG` (a level, e.g. `debug`), else info. The XDP program's own
//! records (aya-log) come through here too, with target `xdp`.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Stderr {
    journal: bool,
}

impl Log for Stderr {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let xdp = if r.target() == "xdp" { "xdp: " } else { "" };
        let line = if self.journal {
            let p = match r.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            format!("<{p}>{xdp}{}\n", r.args())
        } else {
            let prefix = match r.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
                Level::Debug | Level::Trace => "debug: ",
            };
            format!("{prefix}{xdp}{}\n", r.args())
        };
        // One write per line: lines of several threads do not interleave.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// The level `--log-level` or `RUST_LOG` asks for: a level name
/// (`error`, `warn`, `info`, `debug`, `trace`, `off`); in `RUST_LOG`, the
/// last bare level of a list (`info,aya=warn` is info).
pub fn level(arg: Option<&str>) -> Result<LevelFilter, String> {
    if let Some(a) = arg {
        return a.parse().map_err(|_| {
            format!("--log-level {a}: expected error, warn, info, debug, trace or off")
        });
    }
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    Ok(env
        .split(',')
        .filter(|p| !p.contains('='))
        .filter_map(|p| p.trim().parse().ok())
        .next_back()
        .unwrap_or(LevelFilter::Info))
}

/// Installs the logger (once; later calls change only the level).
pub fn init(level: LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let _ = log::set_boxed_logger(Box::new(Stderr { journal }));
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_come_from_the_flag_then_the_environment() {
        assert_eq!(level(Some("debug")).unwrap(), LevelFilter::Debug);
        assert!(level(Some("loud")).is_err());
    }
}
