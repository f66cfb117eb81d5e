//! The control socket's connections, each in a task of its own: a client that
//! idles, sends half a request, sends too much or never reads its answer costs
//! one task until its timeout, never the daemon or another client.
//!
//! A connection task reads one request line and hands it to the daemon's loop
//! as a [`Job`]; the loop answers jobs one at a time, in the order they came,
//! so changes are serialised and each stays all or nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::protocol::Reply;
use crate::control::{Request, Response};

/// The longest request line: far more than any change the CLI sends (a
/// dispatcher list of thousands of backends is a few hundred kB).
pub(super) const MAX_REQUEST: usize = 1 << 20;
/// How long a client has to send its whole request line.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to take its whole answer.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed request waiting for the daemon's loop, and where its answer goes.
pub(super) struct Job {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

/// The answer line, and for `detach`, who to tell once it is written (the
/// daemon exits after that, which ends every task).
pub(super) struct Answer {
    pub line: String,
    pub written: Option<oneshot::Sender<()>>,
}

impl Answer {
    pub(super) fn of(resp: &Response<Reply>) -> Answer {
        Answer {
            line: line_of(resp),
            written: None,
        }
    }
}

fn line_of<T: serde::Serialize>(resp: &Response<T>) -> String {
    let mut out = serde_json::to_string(resp).unwrap_or_default();
    out.push('\n');
    out
}

/// Binds the socket (mode 0600; a stale file is replaced: the caller holds the
/// instance lock) and accepts connections until the receiver is dropped.
pub(super) fn listen(path: &Path) -> Result<mpsc::Receiver<Job>> {
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // Bounded: a flood of requests waits in the connection tasks (each under
    // its own timeouts), not in an ever-growing queue.
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: pause rather than spin.
                    log::info!("control socket: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            tokio::spawn(converse(stream, tx.clone()));
        }
    });
    Ok(rx)
}

/// Why a request line was not read.
enum Unread {
    /// Closed before a request, or the connection failed: nobody to answer.
    Gone,
    TooLong,
    TimedOut,
}

async fn read_request(stream: &mut BufReader<UnixStream>) -> Result<Vec<u8>, Unread> {
    let mut line = Vec::new();
    // One byte over the limit tells a line of exactly the limit from a longer one.
    let mut limited = (&mut *stream).take(MAX_REQUEST as u64 + 1);
    let read = tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await;
    match read {
        Err(_) => Err(Unread::TimedOut),
        Ok(Err(_)) | Ok(Ok(0)) => Err(Unread::Gone),
        Ok(Ok(_)) if line.last() == Some(&b'\n') => Ok(line),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Err(Unread::TooLong),
        // The client closed its end after a last line without a newline.
        Ok(Ok(_)) => Ok(line),
    }
}

/// One connection: read a request, wait for the daemon's answer, write it.
async fn converse(stream: UnixStream, jobs: mpsc::Sender<Job>) {
    let mut stream = BufReader::new(stream);
    let refuse = |e: String| Answer {
        line: line_of(&Response::<()>::error(e)),
        written: None,
    };
    let answer = match read_request(&mut stream).await {
        Ok(line) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if jobs
                    .send(Job {
                        request,
                        answer: tx,
                    })
                    .await
                    .is_err()
                {
                    return; // the daemon is exiting
                }
                match rx.await {
                    Ok(a) => a,
                    Err(_) => return,
                }
            }
            Err(e) => refuse(format!("bad request: {e}")),
        },
        Err(Unread::TooLong) => refuse(format!(
            "bad request: longer than {MAX_REQUEST} bytes without a newline"
        )),
        Err(Unread::TimedOut) => refuse(format!(
            "bad request: no whole line within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Err(Unread::Gone) => return,
    };
    let stream = stream.get_mut();
    let write = async {
        stream.write_all(answer.line.as_bytes()).await?;
        stream.shutdown().await
    };
    // A client that does not take its answer in time loses it; nobody waits.
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
    if let Some(w) = answer.written {
        let _ = w.send(());
    }
}
