//! The CLI's end of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

use super::{check_instance, socket_path, Request, Response};

/// Sends one request to the instance's daemon and returns its answer, typed as
/// the request's answer (see [`Request`]).
pub fn call<T: DeserializeOwned>(instance: &str, req: &Request) -> Result<T> {
    check_instance(instance)?;
    let path = socket_path(instance);
    let mut s = UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
            "no balancer daemon for instance `{instance}` ({}): start one with `balancer attach` or `balancer run`",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("{}: permission denied (only root may control the balancer)", path.display())
        }
        _ => anyhow!("connecting to {}: {e}", path.display()),
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .context("reading the daemon's answer")?;
    let r: Response<T> = serde_json::from_str(&answer)
        .with_context(|| format!("the daemon's answer is not understood: {answer}"))?;
    match (r.ok, r.data) {
        (true, Some(data)) => Ok(data),
        (true, None) => bail!("the daemon's answer has no data: {answer}"),
        (false, _) => bail!("{}", r.error.unwrap_or_else(|| "failed".into())),
    }
}
