//! `balancer inspect --json` over the whole RFC 4475 corpus matches expected.tsv,
//! and messages longer than the kernel's 4,096-byte scan window are reported
//! as the kernel treats them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

#[test]
fn inspect_json_matches_expected_tsv() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../balancer-common/tests/rfc4475");
    let tsv = std::fs::read_to_string(dir.join("expected.tsv")).unwrap();
    let mut expected = HashMap::new();
    let mut files = Vec::new();
    for line in tsv.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        let first_hex = c[5].split(" || ").next().unwrap().to_string();
        let path = dir.join(c[0]).display().to_string();
        expected.insert(path.clone(), (c[3] != "0").then_some(first_hex));
        files.push(path);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(["inspect", "--json"])
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = v["file"].as_str().unwrap();
        let want = &expected[file];
        assert_eq!(
            v["call_id_hex"].as_str().map(str::to_string),
            *want,
            "{file}"
        );
        assert_eq!(v["hash"].is_null(), want.is_none(), "{file}");
        let counted = if want.is_some() {
            "callid"
        } else {
            "fallback_no_callid"
        };
        assert_eq!(v["reason"], counted, "{file}");
        if let Some(h) = v["hash"].as_str() {
            assert_eq!(h.len(), 8);
            let raw: Vec<u8> = (0..want.as_ref().unwrap().len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&want.as_ref().unwrap()[i..i + 2], 16).unwrap())
                .collect();
            assert_eq!(
                h,
                format!("{:08x}", balancer_common::hash::hash_bytes(&raw))
            );
        }
        n += 1;
    }
    assert_eq!(n, 50);
}

#[test]
fn inspect_reports_a_missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(["inspect", "/nonexistent/msg.sip"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/msg.sip"));
}

/// An INVITE of `total` bytes whose Call-ID value `id` ends at byte `end`
/// (exclusive), padded before it by one header and after it by a body (as
/// `kernel_fixtures.rs` builds its window-edge cases).
fn call_id_ending_at(id: &str, end: usize, total: usize) -> Vec<u8> {
    let head =
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.2:5060;branch=z9hG4bK7\r\n";
    let pad = end - id.len() - head.len() - "X-Pad: \r\nCall-ID: ".len();
    let mut m = format!("{head}X-Pad: {}\r\nCall-ID: {id}", "p".repeat(pad));
    if total > end {
        let rest = "\r\nContent-Length: 00000\r\n\r\n".len();
        let body = total - end - rest;
        m.push_str(&format!(
            "\r\nContent-Length: {body:05}\r\n\r\n{}",
            "b".repeat(body)
        ));
    }
    assert_eq!(m.len(), total);
    m.into_bytes()
}

/// A directory of message files, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(tag: &str) -> Files {
        let d = std::env::temp_dir().join(format!("inspect-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Files(d)
    }

    fn write(&self, name: &str, m: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, m).unwrap();
        p.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn inspect(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_balancer"))
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The kernel examines the first 4,096 bytes of a datagram (`callid::SCAN_MAX`).
/// A Call-ID whose end it cannot see there gets the source-address fallback,
/// counted `fallback_no_callid` (`call_ids_reaching_the_windows_last_word` and
/// `long_keys_hash_alike_in_kernel_and_user_space` in kernel_fixtures.rs show
/// the kernel doing so); `inspect` must say the same, for messages up to a
/// jumbo frame's 9,000 bytes.
#[test]
fn a_call_id_past_the_scan_window_is_the_fallback() {
    const WINDOW: usize = 4096;
    let id = format!("edge-{}", "k".repeat(295));
    let files = Files::new("window");
    // (name, where the Call-ID ends, datagram length, whether it counts)
    let cases = [
        ("ends-3-before", WINDOW - 3, 9000, true),
        ("ends-2-before", WINDOW - 2, 9000, false),
        ("ends-with-window", WINDOW, WINDOW + 300, false),
        ("whole-datagram-is-window", WINDOW, WINDOW, true),
        ("past-window", WINDOW + 100, WINDOW + 300, false),
        ("runs-to-9000", 9000, 9000, false),
        ("early-in-9000", 500, 9000, true),
    ];
    let mut paths = vec![];
    for (name, end, total, _) in cases {
        let m = call_id_ending_at(&id, end, total);
        paths.push(files.write(name, &m));
    }
    let mut args = vec!["--json"];
    args.extend(paths.iter().map(String::as_str));
    let json = inspect(&args);
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), cases.len());
    for ((name, _, _, counts), line) in cases.iter().zip(lines) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if *counts {
            assert_eq!(v["call_id"], id.as_str(), "{name}");
            let hash = format!("{:08x}", balancer_common::hash::hash_bytes(id.as_bytes()));
            assert_eq!(v["hash"], hash.as_str(), "{name}");
            assert_eq!(v["reason"], "callid", "{name}");
        } else {
            for k in ["call_id", "call_id_hex", "hash"] {
                assert!(v[k].is_null(), "{name}: {k} = {}", v[k]);
            }
            assert_eq!(v["reason"], "fallback_no_callid", "{name}");
        }
    }
    // The text form says the same.
    let text = inspect(&[&paths[5], &paths[6]]);
    let mut text = text.lines();
    assert_eq!(
        text.next().unwrap(),
        format!(
            "{}: no call-id (source-address fallback, counted as fallback_no_callid)",
            paths[5]
        )
    );
    assert!(text.next().unwrap().contains(&format!("call-id {id:?}")));
}

#[test]
fn keepalives_are_their_own_fallback() {
    let files = Files::new("keepalive");
    for (name, m, reason) in [
        ("empty", &b""[..], "fallback_keepalive"),
        ("crlf", b"\r\n\r\n", "fallback_keepalive"),
        ("junk", b"\x00\xff garbage", "fallback_no_callid"),
    ] {
        let p = files.write(name, m);
        let v: serde_json::Value = serde_json::from_str(&inspect(&["--json", &p])).unwrap();
        assert_eq!(v["reason"], reason, "{name}");
        assert!(v["call_id"].is_null(), "{name}");
    }
}
