//! The daemon's own threads (`[sync]`, `[announce]`), watched: a panic in one
//! is caught and kept, and the main loop, which looks every second, ends the
//! daemon with it as its error. Running on without the thread would fail
//! quietly (a balancer that no longer shares its dialogs splits them at the
//! next failover); an exit is seen, and the service manager restarts the
//! daemon (`Restart=on-failure`), the data plane running on under `--persist`.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A thread started by [`spawn`].
pub(super) struct Watched {
    name: &'static str,
    handle: Option<JoinHandle<()>>,
    panicked: Arc<Mutex<Option<String>>>,
}

/// Starts `f` on a thread called `name`, catching its panic.
pub(super) fn spawn(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<Watched> {
    let panicked = Arc::new(Mutex::new(None));
    let keep = panicked.clone();
    let handle = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                *keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            }
        })?;
    Ok(Watched {
        name,
        handle: Some(handle),
        panicked,
    })
}

impl Watched {
    /// Why the thread stopped, if it panicked: `"the sync thread panicked: <message>"`.
    pub(super) fn failure(&self) -> Option<String> {
        let p = self.panicked.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref()
            .map(|why| format!("the {} thread panicked: {why}", self.name))
    }

    /// Waits for the thread to end (after it was told to).
    pub(super) fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_kept_and_an_end_is_not_one() {
        let t = spawn("test-panics", || panic!("index out of bounds")).unwrap();
        let why = wait(&t);
        assert_eq!(
            why.as_deref(),
            Some("the test-panics thread panicked: index out of bounds")
        );
        t.join();

        let n = 7;
        let t = spawn("test-formats", move || panic!("entry {n} too long")).unwrap();
        assert_eq!(
            wait(&t).as_deref(),
            Some("the test-formats thread panicked: entry 7 too long")
        );

        let t = spawn("test-ends", || {}).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(t.failure(), None);
        t.join();
    }

    fn wait(t: &Watched) -> Option<String> {
        for _ in 0..200 {
            if let Some(w) = t.failure() {
                return Some(w);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}
