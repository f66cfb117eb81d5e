//! `balancer check FILE`: exit 0 on a good file; one line per problem, each
//! with its line number, and exit 1 on a bad one; nothing else touched (no
//! daemon, no kernel: it runs without root).

use std::process::Command;

use balancer_test_support::daemon::balancer_bin;

fn check(text: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!("balancer-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.toml", text.len() * 31 + text.lines().count()));
    std::fs::write(&path, text).unwrap();
    let o = Command::new(balancer_bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_good_file_passes() {
    let (ok, out, err) = check(
        "interfaces = [\"eth0\"]\n\n[[service]]\nvip = \"10.0.0.10:5060\"\n\n[[service.backend]]\naddress = \"10.0.2.11:5060\"\n\n[health]\ninterval = \"1m30s\"\ntimeout = \"1.5s\"\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("ok (1 services, 1 backends)"), "{out}");
    assert!(err.is_empty(), "{err}");
}

#[test]
fn every_problem_is_one_line_with_its_line_number() {
    let text = "interfaces = [\"eth0\"]

[[service]]
vip = \"10.0.0.10:5060\"
table_size = 100

[[service.backend]]
address = \"10.0.2.11:5060\"

[[service.backend]]
address = \"10.0.2.11:5060\"

[[service]]
vip = \"10.0.0.11:5060\"
[service.limits]
block_for = \"1500ms\"
";
    let (ok, out, err) = check(text);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().all(|l| l.starts_with("balancer: ")), "{err}");
    assert!(
        lines[0].contains("line 4: ") && lines[0].contains("prime"),
        "{err}"
    );
    assert!(
        lines[1].contains("line 11: ") && lines[1].contains("already"),
        "{err}"
    );
    assert!(
        lines[2].contains("line 16: ") && lines[2].contains("whole seconds"),
        "{err}"
    );
}

#[test]
fn a_syntax_error_is_one_line_with_its_line_number() {
    let (ok, _, err) = check("interfaces = [\"eth0\"]\n[[service]]\nvip = 10.0.0.1\n");
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("balancer: ") && err.contains("line 3"),
        "{err}"
    );
    let (ok, _, err) = check("interfaces = [\"eth0\"]\n[health]\ninterval = \"soon\"\n");
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 3") && err.contains("not a duration"),
        "{err}"
    );
}
