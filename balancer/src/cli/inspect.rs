//! `balancer inspect [--json] FILE...`

use anyhow::{Context, Result};
use balancer::inspect::inspect;

/// Show the Call-ID and hash the kernel would extract from SIP message files.
#[derive(clap::Args)]
pub struct Args {
    /// One JSON object per line: file, call_id, call_id_hex, hash, reason.
    #[arg(long)]
    json: bool,
    #[arg(required = true)]
    files: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    for f in &a.files {
        let msg = std::fs::read(f).with_context(|| format!("reading {f}"))?;
        let r = inspect(f, &msg);
        if a.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            match (&r.call_id, &r.hash) {
                (Some(id), Some(h)) => println!("{f}: call-id {id:?} hash {h}"),
                _ => println!(
                    "{f}: no call-id (source-address fallback, counted as {})",
                    r.reason
                ),
            }
        }
    }
    Ok(())
}
