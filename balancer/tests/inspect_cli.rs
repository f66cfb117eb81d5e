//! `balancer inspect --json` over the whole RFC 4475 corpus matches expected.tsv.

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
