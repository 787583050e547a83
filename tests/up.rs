//! `coflow up` and `coflow open` as separate processes: a data dir with no key is served with
//! its page only, until the page names the node; then the node runs, `status` gives the page's
//! URL and `open` hands it to the browser; a stopped node leaves no URL behind. (The page in a
//! real browser: `tests/web.rs`.)

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::bin;
use serde_json::Value;

fn coflow(home: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_remove("COFLOW_HOME")
        .env_remove("COFLOW_TEST_KEY_SEED")
        .arg("--home")
        .arg(home)
        .stdin(Stdio::null());
    c
}

/// Starts `coflow up` on `home` (no browser, a free port); returns it and the URL it printed.
fn up(home: &Path) -> (Child, String) {
    let mut child = coflow(home)
        .args([
            "up",
            "--no-open",
            "--web",
            "127.0.0.1:0",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

/// One HTTP/1.1 request to the page's server; the status and the raw response.
fn request(origin: &str, head: &str, body: &str) -> (u16, String) {
    let authority = origin.trim_start_matches("http://");
    let mut s = TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out)
}

/// Logs in with the URL's token; the cookie header to send.
fn log_in(url: &str) -> String {
    let (origin, query) = url.split_once("/login").unwrap();
    let host = origin.trim_start_matches("http://");
    let (status, res) = request(
        origin,
        &format!("GET /login{query} HTTP/1.1\r\nHost: {host}"),
        "",
    );
    assert_eq!(status, 303, "{res}");
    let cookie = res
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap();
    cookie.split(';').next().unwrap().to_string()
}

/// A call from the page: its status and its JSON answer.
fn call(origin: &str, cookie: &str, json: &str) -> (u16, Value) {
    let host = origin.trim_start_matches("http://");
    let (status, res) = request(
        origin,
        &format!(
            "POST /v1/call HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nCookie: {cookie}\r\n\
             Content-Type: application/json"
        ),
        json,
    );
    let body = res.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap())
}

fn json(home: &Path, args: &[&str]) -> Value {
    let out = coflow(home).arg("--json").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_on_a_fresh_dir_asks_for_a_name_then_runs_and_open_hands_the_page_to_the_browser() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("alice");
    let (child, url) = up(&home);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/login?token="), "{url}");
    let origin = url.split("/login").next().unwrap().to_string();
    let cookie = log_in(&url);

    // Until the page names the node, it has no key: the CLI says so, the page is asked.
    assert!(!home.join("identity.key").exists());
    let (status, v) = call(&origin, &cookie, r#"{"call":"status"}"#);
    assert_eq!(status, 200);
    assert_eq!(v["Status"]["setup"], true, "{v}");
    assert_eq!(v["Status"]["web"], url.as_str());
    let (status, v) = call(&origin, &cookie, r#"{"call":"flow_list"}"#);
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("no name yet"), "{v}");
    // A name the key file cannot hold is refused, and the page may try again.
    let (status, v) = call(&origin, &cookie, r#"{"call":"init","name":""}"#);
    assert_eq!(status, 400, "{v}");
    assert!(!home.join("identity.key").exists());

    let (status, v) = call(&origin, &cookie, r#"{"call":"init","name":"Alice"}"#);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Id"]["name"], "Alice");
    let node_id = v["Id"]["node_id"].as_str().unwrap().to_string();
    assert!(home.join("identity.key").exists());

    // Now a node like any other: the CLI talks to it, and its status gives the page.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = coflow(&home).args(["--json", "status"]).output().unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["running"] == true {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "the node never answered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["node_id"], node_id.as_str());
    assert_eq!(status["setup"], false);
    assert_eq!(status["web"], url.as_str());
    // The same cookie works on; a second init is refused.
    let (status, v) = call(&origin, &cookie, r#"{"call":"init","name":"Mallory"}"#);
    assert_eq!(status, 400, "{v}");
    assert_eq!(json(&home, &["id"])["name"], "Alice");
    let (status, v) = call(
        &origin,
        &cookie,
        r#"{"call":"flow_new","title":"Suit","need":"A suit","role":"customer"}"#,
    );
    assert_eq!(status, 200, "{v}");
    let flow = v["Created"]["id"].as_str().unwrap();
    assert_eq!(json(&home, &["flow", "list"])[0]["id"], flow);

    // `coflow open` prints the URL and hands it to the browser ($BROWSER here).
    let seen = root.path().join("browser-saw");
    let script = root.path().join("browser.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" > '{}'\n", seen.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = coflow(&home)
        .arg("open")
        .env("BROWSER", format!("{} %s", script.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.exists() {
        assert!(Instant::now() < deadline, "the browser was not started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), url);

    // `coflow` again, while the node runs, opens its page rather than a second node.
    std::fs::remove_file(&seen).unwrap();
    let out = coflow(&home)
        .env("BROWSER", format!("{} %s", script.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.exists() {
        assert!(Instant::now() < deadline, "the browser was not started");
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(home.join("web.url").exists());
    assert!(stop(child).success());
    assert!(
        !home.join("web.url").exists(),
        "a stopped node leaves no URL"
    );
    // Without a node, `open` says how to start one.
    let out = coflow(&home).arg("open").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coflow up"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn the_page_is_served_on_loopback_only_and_a_stop_during_setup_is_clean() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("bob");
    for addr in ["0.0.0.0:0", "192.0.2.1:7780"] {
        let out = coflow(&home)
            .args(["node", "--no-mdns", "--web", addr])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{addr}");
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(last.contains("loopback only"), "{addr}: {err}");
    }
    // `node` with no key and no page has no way to get one: it says how.
    let out = coflow(&home)
        .args(["node", "--no-mdns", "--no-web"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("coflow init"), "{err}");
    // Stopped while it waits for a name: it exits cleanly and makes no key.
    let (child, url) = up(&home);
    assert!(url.contains("/login?token="));
    assert!(stop(child).success());
    assert!(!home.join("identity.key").exists());
    assert!(!home.join("web.url").exists());
}
