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

/// A login session: the cookie header to send, and the key.
struct Session {
    cookie: String,
    key: String,
}

/// Logs in with the URL's code; the session's cookie and key.
fn log_in(url: &str) -> Session {
    let (origin, query) = url.split_once("/login").unwrap();
    let host = origin.trim_start_matches("http://");
    let (status, res) = request(
        origin,
        &format!("GET /login{query} HTTP/1.1\r\nHost: {host}"),
        "",
    );
    assert_eq!(status, 200, "{res}");
    let cookie = res
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    // The key comes in the login's answer (the page), never in a URL.
    let key = res
        .split_once("<meta name=\"coflow-key\" content=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(key, _)| key.to_string())
        .unwrap();
    Session { cookie, key }
}

/// A call from the page: its status and its JSON answer.
fn call(origin: &str, session: &Session, json: &str) -> (u16, Value) {
    let host = origin.trim_start_matches("http://");
    let (status, res) = request(
        origin,
        &format!(
            "POST /v1/call HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nCookie: {}\r\n\
             X-Coflow-Key: {}\r\nContent-Type: application/json",
            session.cookie, session.key
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

/// `coflow ARGS` prints `url` and hands it to the browser: `script`, as `$BROWSER`, which
/// writes what it was given to `seen`.
fn opens_in_browser(home: &Path, args: &[&str], script: &Path, seen: &Path, url: &str) {
    let _ = std::fs::remove_file(seen);
    let out = coflow(home)
        .args(args)
        .env("BROWSER", format!("{} %s", script.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), url, "{args:?}");
    // The browser is given a file only this user may read, which sends it on to the URL: a
    // URL on its command line would be every local user's to read, and to use first.
    let deadline = Instant::now() + Duration::from_secs(10);
    let given = loop {
        let saw = std::fs::read_to_string(seen).unwrap_or_default();
        if !saw.trim().is_empty() {
            break saw.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{args:?}: no browser was started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !given.contains("code="),
        "{args:?}: the browser was given {given}"
    );
    let file = given
        .strip_prefix("file://")
        .unwrap_or_else(|| panic!("{args:?}: the browser was given {given}"));
    assert!(
        !file.contains(' '),
        "a file URL is percent-encoded: {given}"
    );
    let file = &percent_decoded(file);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{file} is this user's only");
    let page = std::fs::read_to_string(file).unwrap();
    assert!(
        page.contains(&format!(
            "<meta http-equiv=\"refresh\" content=\"0;url={url}\">"
        )),
        "{page}"
    );
}

/// `s` with its `%XX` escapes decoded.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
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
    // A space in the data dir's path, as in "Application Support".
    let home = root.path().join("alice home");
    let (child, url) = up(&home);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/login?code="), "{url}");
    let origin = url.split("/login").next().unwrap().to_string();
    let cookie = log_in(&url);
    // The code is used up: it logs nobody in again.
    let host = origin.trim_start_matches("http://");
    let query = url.split_once("/login").unwrap().1;
    let (status, _) = request(
        &origin,
        &format!("GET /login{query} HTTP/1.1\r\nHost: {host}"),
        "",
    );
    assert_eq!(status, 403);

    // Until the page names the node, it has no key: the CLI says so, the page is asked.
    assert!(!home.join("identity.key").exists());
    let (status, v) = call(&origin, &cookie, r#"{"call":"status"}"#);
    assert_eq!(status, 200);
    assert_eq!(v["Status"]["setup"], true, "{v}");
    // A new login URL, the first one being used.
    let next = v["Status"]["web"].as_str().unwrap().to_string();
    assert!(next.starts_with(&format!("{origin}/login?code=")), "{next}");
    assert_ne!(next, url);
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
    // The same login URL until it is used.
    assert_eq!(status["web"], next.as_str());
    let url = next;
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
    opens_in_browser(&home, &["open"], &script, &seen, &url);
    // `coflow` again, while the node runs, opens its page rather than a second node.
    opens_in_browser(&home, &[], &script, &seen, &url);

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
    assert!(url.contains("/login?code="));
    assert!(stop(child).success());
    assert!(!home.join("identity.key").exists());
    assert!(!home.join("web.url").exists());
}

/// Requests no browser sends, and a first run's files: what the hostile review of the page
/// tried. A data dir made by `coflow up` is this user's only; `coflow init` does not race the
/// page for the name; two Host or Origin headers, a URI naming another host, a content type
/// that only starts like JSON are refused; another site's odd cookie does not log the page out.
#[test]
fn the_page_refuses_requests_no_browser_sends_and_a_first_run_keeps_its_dir_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("carol");
    let (child, url) = up(&home);
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data dir's mode");
    // The CLI does not name a node whose page waits for a name.
    let out = coflow(&home)
        .args(["init", "--name", "Mallory"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("choose the name on its page"), "{err}");
    assert!(!home.join("identity.key").exists());

    let origin = url.split("/login").next().unwrap().to_string();
    let host = origin.trim_start_matches("http://").to_string();
    let s = log_in(&url);
    let head = |extra: &str| {
        format!(
            "POST /v1/call HTTP/1.1\r\nHost: {host}\r\nCookie: {}\r\nX-Coflow-Key: {}\r\n{extra}",
            s.cookie, s.key
        )
    };
    let status = r#"{"call":"status"}"#;
    let json = "Content-Type: application/json";
    let with_origin = format!("Origin: {origin}\r\n{json}");
    // The call as a browser makes it passes; every variation below is refused.
    assert_eq!(request(&origin, &head(&with_origin), status).0, 200);
    let two_hosts = format!("Host: evil.example\r\n{with_origin}");
    assert_eq!(request(&origin, &head(&two_hosts), status).0, 403);
    let two_origins = format!("Origin: {origin}\r\nOrigin: http://evil.example\r\n{json}");
    assert_eq!(request(&origin, &head(&two_origins), status).0, 403);
    let not_json = format!("Origin: {origin}\r\nContent-Type: application/jsonfoo");
    assert_eq!(request(&origin, &head(&not_json), status).0, 415);
    let upper = format!("Origin: {origin}\r\nContent-Type: APPLICATION/JSON; charset=utf-8");
    assert_eq!(request(&origin, &head(&upper), status).0, 200);
    let absolute = format!(
        "POST http://evil.example/v1/call HTTP/1.1\r\nHost: {host}\r\nCookie: {}\r\n\
         X-Coflow-Key: {}\r\n{with_origin}",
        s.cookie, s.key
    );
    assert_eq!(request(&origin, &absolute, status).0, 403);
    // Another site's cookie on 127.0.0.1 that is not ASCII hides nothing.
    let odd = format!(
        "POST /v1/call HTTP/1.1\r\nHost: {host}\r\nCookie: other=\u{e9}; {}\r\n\
         X-Coflow-Key: {}\r\n{with_origin}",
        s.cookie, s.key
    );
    assert_eq!(request(&origin, &odd, status).0, 200);
    assert!(stop(child).success());
    let mode = std::fs::metadata(home.join("web.sessions"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "web.sessions is this user's only");
}
