//! The customer's seat in a real browser: headless Chromium driven through chromedriver
//! (WebDriver) against real `coflow` node processes, each serving its page on loopback.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without `/usr/bin/chromedriver` each test
//! prints that it was skipped and passes, unless `CI` is set: then it fails. Screenshots of the
//! pages go to `target/web-screenshots/`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::procs::{eventually, Participant, PATIENCE};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Joining can take up to ~90 s (the page tells the user so); the test waits this long.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// Each node's page on a free loopback port.
const WEB: [&str; 2] = ["--web", "127.0.0.1:0"];

/// Whether the browser tests can run here; without chromium-driver they are skipped, unless
/// `CI` is set.
fn have_browser() -> bool {
    if Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "chromium-driver is not installed ({CHROMEDRIVER} is missing) and CI is set"
    );
    println!(
        "skipped: chromium-driver is not installed (apt-get install chromium chromium-driver)"
    );
    false
}

// ------------------------------------------------------------------------- the browser

/// A chromedriver process in its own process group (with the browsers it starts), killed
/// when dropped, also when a test fails half way.
struct Driver {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
    sessions: AtomicU32,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            sessions: AtomicU32::new(0),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http(&format!("127.0.0.1:{port}"), "GET", "/status", &[], "") {
                let ready = serde_json::from_str::<Value>(&r.body)
                    .map(|v| v["value"]["ready"] == true)
                    .unwrap_or(false);
                if r.status == 200 && ready {
                    return driver;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new browser session with a profile of its own (no cookies), 390×844 like a phone.
    async fn browser(&self) -> Client {
        let n = self.sessions.fetch_add(1, Ordering::SeqCst);
        let profile = self.dir.path().join(format!("profile-{n}"));
        std::fs::create_dir_all(&profile).unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=390,844",
                ],
                // Headless Chromium keeps a window at least 500 px wide; the phone's viewport
                // is emulated.
                "mobileEmulation": {
                    "deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 1.0}
                },
            }),
        );
        // The browser's console, read with `console_errors`.
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session through chromedriver")
    }
}

impl Driver {
    /// What the browser logged as errors since the last look: script errors, Content-Security-
    /// Policy refusals, failed loads.
    async fn console_errors(&self, c: &Client) -> Vec<String> {
        let sid = c.session_id().await.unwrap().expect("a session");
        let addr = self.url.trim_start_matches("http://");
        let r = http(
            addr,
            "POST",
            &format!("/session/{sid}/se/log"),
            &[("Content-Type", "application/json")],
            r#"{"type":"browser"}"#,
        )
        .unwrap();
        assert_eq!(r.status, 200, "chromedriver's log: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["value"]
            .as_array()
            .unwrap_or_else(|| panic!("chromedriver's log: {v}"))
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Nothing went wrong in the page since the last look (and every control has a name).
    async fn quiet(&self, c: &Client, page: &str) {
        let errors = self.console_errors(c).await;
        assert!(errors.is_empty(), "{page}: the browser logged {errors:#?}");
        every_control_named(c, page).await;
    }
}

/// Every visible field has a label, every button and link a name.
async fn every_control_named(c: &Client, page: &str) {
    let unnamed = js(
        c,
        "const bad = []; \
         for (const el of document.querySelectorAll('input, select, textarea')) { \
           if (el.closest('[hidden]')) continue; \
           if (!(el.labels && el.labels.length) && !el.getAttribute('aria-label')) bad.push(el.outerHTML.slice(0, 80)); \
         } \
         for (const el of document.querySelectorAll('button, a')) { \
           if (el.closest('[hidden]')) continue; \
           if (!(el.getAttribute('aria-label') || el.textContent).trim()) bad.push(el.outerHTML.slice(0, 80)); \
         } \
         return bad;",
        vec![],
    )
    .await;
    assert_eq!(unnamed, json!([]), "{page}: controls without a name");
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every chromium it started.
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where screenshots go: `target/web-screenshots` (the target dir holds this test binary).
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let dir = target.join("web-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
}

/// Runs a script in the page (its body: `return …`, arguments as `arguments[i]`).
async fn js(c: &Client, script: &str, args: Vec<Value>) -> Value {
    c.execute(script, args)
        .await
        .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
}

/// What the page shows, for failure messages.
async fn page_text(c: &Client) -> String {
    let v = c
        .execute(
            "return location.href + '\\n' + (document.body ? document.body.innerText : '')",
            vec![],
        )
        .await
        .unwrap_or(Value::Null);
    v.as_str().unwrap_or_default().to_string()
}

/// Polls `script` (truthy when done) until it holds, or fails the test with what the page shows.
async fn until(c: &Client, what: &str, patience: Duration, script: &str, args: Vec<Value>) {
    let deadline = Instant::now() + patience;
    loop {
        let v = c.execute(script, args.clone()).await;
        match v {
            Ok(v) if v != Value::Null && v != json!(false) && v != json!(0) && v != json!("") => {
                return
            }
            _ => {}
        }
        if Instant::now() > deadline {
            let _ = shot(
                c,
                &format!("failed-{}", what.replace([' ', '/', '\''], "-")),
            )
            .await;
            panic!(
                "timed out waiting until {what}; the page shows:\n{}",
                page_text(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the control its visible label names (this also checks that the label exists and
/// points at a control).
async fn labelled(c: &Client, label: &str) -> String {
    let script = "const l = [...document.querySelectorAll('label')].find((l) => \
                  l.textContent.trim() === arguments[0] && l.offsetParent !== null); \
                  return l && l.htmlFor && document.getElementById(l.htmlFor) ? l.htmlFor : null;";
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(id) = js(c, script, vec![json!(label)]).await.as_str() {
            return id.to_string();
        }
        if Instant::now() > deadline {
            panic!(
                "no visible field labelled '{label}'; the page shows:\n{}",
                page_text(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `text` into the field labelled `label`, as a person would.
async fn fill(c: &Client, label: &str, text: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let id = labelled(c, label).await;
        // A live update may draw the field again between finding it and typing: look again.
        if let Ok(field) = c.find(Locator::Id(&id)).await {
            if field.clear().await.is_ok() && field.send_keys(text).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "could not type into '{label}'");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn value_of(c: &Client, label: &str) -> String {
    let id = labelled(c, label).await;
    js(
        c,
        "return document.getElementById(arguments[0]).value",
        vec![json!(id)],
    )
    .await
    .as_str()
    .unwrap()
    .to_string()
}

/// Clicks the visible button whose text is `text`, with a real (WebDriver) click.
async fn click_button(c: &Client, text: &str) {
    let xpath = format!("//button[normalize-space()='{text}']");
    let deadline = Instant::now() + PATIENCE;
    loop {
        for b in c.find_all(Locator::XPath(&xpath)).await.unwrap() {
            if b.is_displayed().await.unwrap_or(false) && b.is_enabled().await.unwrap_or(false) {
                // The page may have drawn this part again since it was found (a live update):
                // then look again.
                if b.click().await.is_ok() {
                    return;
                }
            }
        }
        if Instant::now() > deadline {
            panic!(
                "no visible button '{text}'; the page shows:\n{}",
                page_text(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(el) = c.find(Locator::Css(css)).await {
            if el.is_displayed().await.unwrap_or(false)
                && el.is_enabled().await.unwrap_or(false)
                && el.click().await.is_ok()
            {
                return;
            }
        }
        if Instant::now() > deadline {
            panic!(
                "nothing to click at {css}; the page shows:\n{}",
                page_text(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn heading(c: &Client, text: &str) {
    until(
        c,
        &format!("the page's heading is '{text}'"),
        PATIENCE,
        "const h = document.querySelector('main h1'); return h && h.textContent.trim() === arguments[0];",
        vec![json!(text)],
    )
    .await;
}

/// Waits for the flows page and its first answer from the node.
async fn flows_page(c: &Client) {
    heading(c, "Your flows").await;
    until(
        c,
        "the flows are listed",
        PATIENCE,
        "const l = document.getElementById('flow-lists'); return l && l.dataset.loaded === 'true';",
        vec![],
    )
    .await;
}

/// At this width (390 px) the page scrolls only down, never sideways.
async fn no_sideways_scroll(c: &Client, page: &str) {
    let v = js(
        c,
        "return [document.documentElement.scrollWidth, window.innerWidth]",
        vec![],
    )
    .await;
    let (scroll, inner) = (v[0].as_u64().unwrap(), v[1].as_u64().unwrap());
    assert!(
        inner <= 400,
        "the window is {inner} px wide, not a phone's 390"
    );
    assert!(
        scroll <= inner,
        "{page} scrolls sideways at {inner} px: {scroll} px wide"
    );
}

// ------------------------------------------------------------------------- plain HTTP

struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection. `Host` is `addr` unless `headers` has one. An
/// event stream's answer ends after its headers.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Http> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the headers",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = Http {
        status,
        headers,
        body: String::new(),
    };
    if r.header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream"))
    {
        return Ok(r);
    }
    let mut rest = buf[head_end + 4..].to_vec();
    // Until the body's length when the answer gives it (a server may keep the connection
    // open despite `Connection: close`), else until the server closes it.
    let length: Option<usize> = r.header("content-length").and_then(|l| l.parse().ok());
    while length.is_none_or(|l| rest.len() < l) {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => rest.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    if r.header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        rest = dechunk(&rest);
    }
    r.body = String::from_utf8_lossy(&rest).to_string();
    Ok(r)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = i + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}

/// The page's address split from a login URL `http://HOST:PORT/login?code=C`.
struct Page {
    /// `127.0.0.1:PORT`
    addr: String,
    /// `http://127.0.0.1:PORT`
    origin: String,
}

/// A login session made with plain HTTP: its cookie (`name=value`) and its key.
struct Session {
    cookie: String,
    key: String,
}

impl Page {
    fn of(url: &str) -> Page {
        let rest = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http URL: {url}"));
        let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
        assert!(
            path.contains("code="),
            "the page's URL carries no login code: {url}"
        );
        Page {
            addr: addr.to_string(),
            origin: format!("http://{addr}"),
        }
    }

    /// Logs in with plain HTTP, with a login URL fresh from `p`'s node (a code is good for one
    /// login), and fetches the session's key as the page does.
    fn session(&self, p: &Participant) -> Session {
        let url = login_url(p);
        let login = format!(
            "/{}",
            url.split_once("//").unwrap().1.split_once('/').unwrap().1
        );
        let r = http(&self.addr, "GET", &login, &[], "").unwrap();
        assert_eq!(r.status, 200, "login: {}", r.body);
        let set = r
            .header("set-cookie")
            .expect("login sets a cookie")
            .to_string();
        let lower = set.to_lowercase();
        assert!(lower.contains("httponly"), "{set}");
        assert!(lower.contains("samesite=strict"), "{set}");
        assert!(set.starts_with("coflow_"), "{set}");
        let cookie = set.split(';').next().unwrap().trim().to_string();
        // The key comes in the login's answer, the page itself, for its script to keep.
        let key = r
            .body
            .split_once("<meta name=\"coflow-key\" content=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(key, _)| key.to_string())
            .unwrap_or_else(|| panic!("no key in the login's answer: {}", r.body));
        assert_eq!(key.len(), 64, "{key}");
        Session { cookie, key }
    }

    /// POST /v1/call with `session` and `origin` (each left out when `None`).
    fn call(&self, session: Option<&Session>, origin: Option<&str>, body: &Value) -> Http {
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(s) = session {
            headers.push(("Cookie", &s.cookie));
            headers.push(("X-Coflow-Key", &s.key));
        }
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        http(&self.addr, "POST", "/v1/call", &headers, &body.to_string()).unwrap()
    }
}

fn id_of(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// A node with a key and its page on a free port; returns it and its login URL.
fn web_node(root: &Path, name: &str) -> (Participant, String) {
    let mut p = Participant::new(root, name);
    p.node_args = WEB.iter().map(|s| s.to_string()).collect();
    p.start(&[]);
    let url = login_url(&p);
    (p, url)
}

/// The running node's login URL: `coflow status`'s `web`, or `web.url` in its data dir.
fn login_url(p: &Participant) -> String {
    let web = p.web_url();
    if web.contains("code=") {
        return web;
    }
    std::fs::read_to_string(p.home.join("web.url"))
        .unwrap_or_else(|e| panic!("{}'s web.url: {e} (status says {web})", p.name))
        .trim()
        .to_string()
}

// ------------------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_customers_whole_story_in_a_browser() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (tom, _) = web_node(tmp.path(), "Tom");
    let tom_id = tom.id();
    let need = "A navy suit for the wedding";
    let flow = id_of(&tom.json(&["flow", "new", "Navy suit", "--need", need, "--as", "owner"]));
    let cut = id_of(&tom.json(&["step", "add", &flow, "Cut the cloth", "--assignee", &tom_id]));
    let fitting = id_of(&tom.json(&["step", "add", &flow, "First fitting", "--customer"]));
    tom.json(&[
        "decision", "new", &flow, "Cloth", "--option", "Wool", "--option", "Linen",
    ]);
    let ticket = tom.json(&["flow", "invite", &flow, "--role", "customer"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();

    // Alice has no key yet: her node starts in setup mode and the page asks her name.
    let mut alice = Participant::without_key(tmp.path(), "Alice");
    let url = alice.start_up(&["--no-open", WEB[0], WEB[1]]);
    Page::of(&url);
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&url).await.unwrap();
    labelled(&c, "Your name").await;
    shot(&c, "01-first-run").await;
    driver.quiet(&c, "01-first-run").await;
    eprintln!("{:>6.1?} 01-first-run", started.elapsed());
    fill(&c, "Your name", "Alice").await;
    click_button(&c, "Start").await;
    flows_page(&c).await;
    no_sideways_scroll(&c, "the empty flows list").await;
    shot(&c, "02-flows-empty").await;
    driver.quiet(&c, "02-flows-empty").await;
    eprintln!("{:>6.1?} 02-flows-empty", started.elapsed());

    c.find(Locator::LinkText("Join a flow"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    heading(&c, "Join a flow").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/join");
    fill(&c, "Ticket", &ticket).await;
    shot(&c, "03-join").await;
    driver.quiet(&c, "03-join").await;
    eprintln!("{:>6.1?} 03-join", started.elapsed());
    click_button(&c, "Join").await;
    // While the node joins (it may take a while) the page says so and takes no second click.
    let joining = js(
        &c,
        "const b = document.getElementById('join-button'); \
         return b ? [b.disabled, b.textContent] : 'already on the flow';",
        vec![],
    )
    .await;
    assert!(
        joining == json!([true, "Joining…"]) || joining == json!("already on the flow"),
        "while joining the button shows {joining}"
    );
    until(
        &c,
        "the joined flow shows her need",
        JOIN_PATIENCE,
        "const n = document.getElementById('flow-need'); return n && n.textContent === arguments[0];",
        vec![json!(need)],
    )
    .await;
    assert_eq!(
        c.current_url().await.unwrap().path(),
        format!("/flow/{flow}")
    );
    until(
        &c,
        "her decision waits on her",
        PATIENCE,
        "const w = document.getElementById('waiting-on-me'); return w && !w.hidden && w.textContent.includes('Cloth');",
        vec![],
    )
    .await;
    no_sideways_scroll(&c, "the flow page").await;
    shot(&c, "04-flow").await;
    driver.quiet(&c, "04-flow").await;
    eprintln!("{:>6.1?} 04-flow", started.elapsed());

    // Her choice and her comment.
    click(&c, "button.option[data-option='Wool']").await;
    until(
        &c,
        "Wool is her choice and the decision's outcome",
        PATIENCE,
        "const d = document.querySelector('.decision'); \
         const o = d && d.querySelector(\"[data-option='Wool']\"); \
         return o && o.textContent.includes('your choice') && \
         d.querySelector('.outcome').textContent === 'Decided: Wool';",
        vec![],
    )
    .await;
    fill(&c, "Comment", "Fitting on Tuesday works").await;
    // About the fitting step, as `comment --step` is.
    let about = labelled(&c, "About").await;
    c.find(Locator::Id(&about))
        .await
        .unwrap()
        .select_by_value(&fitting)
        .await
        .unwrap();
    click_button(&c, "Comment").await;
    until(
        &c,
        "her comment is listed with her name, on the fitting",
        PATIENCE,
        "return [...document.querySelectorAll('#comments .comment')].some((li) => \
         li.querySelector('.comment-text').textContent === arguments[0] && \
         li.querySelector('.author').textContent.startsWith('Alice') && \
         li.querySelector('.comment-meta').textContent.endsWith(' · on First fitting'));",
        vec![json!("Fitting on Tuesday works")],
    )
    .await;
    assert_eq!(
        value_of(&c, "Comment").await,
        "",
        "a sent comment leaves the field"
    );
    shot(&c, "05-chosen-and-commented").await;
    driver.quiet(&c, "05-chosen-and-commented").await;
    eprintln!("{:>6.1?} 05-chosen-and-commented", started.elapsed());

    // Tom sees both; then his CLI moves the steps while she has half a comment typed.
    eventually(
        "Tom holds her choice and her comment",
        &[&tom, &alice],
        || {
            let v = tom.json(&["flow", "show", &flow]);
            v["decisions"][0]["outcome"] == "Wool"
                && v["comments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["text"] == "Fitting on Tuesday works")
        },
    );
    js(&c, "window.coflowNoReload = true; return true", vec![]).await;
    let comment_field = labelled(&c, "Comment").await;
    c.find(Locator::Id(&comment_field))
        .await
        .unwrap()
        .send_keys("Half a thought")
        .await
        .unwrap();
    tom.json(&["step", "start", &flow, &cut]);
    tom.json(&["step", "done", &flow, &cut]);
    tom.json(&["step", "done", &flow, &fitting]);
    until(
        &c,
        "both steps show done without a reload",
        PATIENCE,
        "return document.querySelectorAll('#steps li.step[data-status=\"done\"]').length === 2",
        vec![],
    )
    .await;
    assert_eq!(
        js(&c, "return window.coflowNoReload === true", vec![]).await,
        json!(true),
        "the page reloaded instead of updating"
    );
    assert_eq!(
        value_of(&c, "Comment").await,
        "Half a thought",
        "a live update took what she was typing"
    );
    shot(&c, "06-steps-done-live").await;
    driver.quiet(&c, "06-steps-done-live").await;
    eprintln!("{:>6.1?} 06-steps-done-live", started.elapsed());

    click_button(&c, "Confirm fulfilled").await;
    until(
        &c,
        "the page says she confirmed it",
        PATIENCE,
        "const n = document.getElementById('fulfilled-note'); return n && !n.hidden;",
        vec![],
    )
    .await;
    shot(&c, "07-fulfilled").await;
    driver.quiet(&c, "07-fulfilled").await;
    eprintln!("{:>6.1?} 07-fulfilled", started.elapsed());

    // What Tom's node holds, and who signed it.
    let alice_id = alice.id();
    eventually("Tom holds the flow fulfilled", &[&tom, &alice], || {
        tom.json(&["flow", "show", &flow])["status"] == "fulfilled"
    });
    let shown = tom.json(&["flow", "show", &flow]);
    assert_eq!(shown["decisions"][0]["outcome"], "Wool");
    assert_eq!(shown["decisions"][0]["choices"][&alice_id], "Wool");
    let comment = shown["comments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["text"] == "Fitting on Tuesday works")
        .expect("her comment");
    assert_eq!(comment["author"], alice_id.as_str());
    assert_eq!(
        comment["step"],
        fitting.as_str(),
        "her comment is on the fitting"
    );
    let log = tom.json(&["flow", "log", &flow]);
    let by_alice: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["author"] == alice_id.as_str())
        .map(|e| e["summary"].as_str().unwrap())
        .collect();
    for what in [
        "chose",
        "commented on step 'First fitting': Fitting on Tuesday works",
        "fulfilled",
    ] {
        assert!(
            by_alice.iter().any(|s| s.contains(what)),
            "no change of Alice's node '{what}' in Tom's log: {by_alice:?}"
        );
    }
    c.close().await.unwrap();
    println!("the customer's story took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tom_sees_what_waits_on_him_first() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (tom, url) = web_node(tmp.path(), "Tom");
    let tom_id = tom.id();
    let suit = id_of(&tom.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A suit",
        "--as",
        "owner",
    ]));
    tom.json(&["step", "add", &suit, "Cut the cloth", "--assignee", &tom_id]);
    // Newer, so by date alone it would come first.
    let hem = id_of(&tom.json(&[
        "flow",
        "new",
        "Hem trousers",
        "--need",
        "Shorter",
        "--as",
        "owner",
    ]));

    // As `coflow open` does it: the browser is sent a file only Tom may read, which sends it on
    // to the login URL (`BROWSER=true` here: the test's own browser opens that file).
    let out = tom
        .command()
        .arg("open")
        .env("BROWSER", "true %s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let opener = format!("file://{}", tom.home.join("web.open.html").display());
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&opener).await.unwrap();
    flows_page(&c).await;
    until(
        &c,
        "both flows are listed",
        PATIENCE,
        "return document.querySelectorAll('li.flow-item').length === 2",
        vec![],
    )
    .await;
    let order = js(
        &c,
        "return [...document.querySelectorAll('li.flow-item')].map((li) => [li.dataset.flow, \
         li.closest('section') ? li.closest('section').id : null, li.textContent])",
        vec![],
    )
    .await;
    assert_eq!(order[0][0], suit.as_str(), "{order}");
    assert_eq!(order[0][1], "waiting-flows", "{order}");
    assert!(
        order[0][2].as_str().unwrap().contains("Cut the cloth"),
        "the waiting item is not shown: {order}"
    );
    assert_eq!(order[1][0], hem.as_str(), "{order}");
    assert_ne!(order[1][1], "waiting-flows", "{order}");
    no_sideways_scroll(&c, "Tom's flows list").await;
    shot(&c, "10-tom-waiting-first").await;
    driver.quiet(&c, "10-tom-waiting-first").await;

    // On the flow, what waits on him; he does it from the page.
    c.find(Locator::LinkText("Navy suit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &c,
        "the step waits on Tom",
        PATIENCE,
        "const w = document.getElementById('waiting-on-me'); return w && !w.hidden && w.textContent.includes('Cut the cloth');",
        vec![],
    )
    .await;
    shot(&c, "11-tom-flow").await;
    driver.quiet(&c, "11-tom-flow").await;
    click(&c, "button[aria-label='Done: Cut the cloth']").await;
    until(
        &c,
        "the step is done and waits on nobody",
        PATIENCE,
        "const w = document.getElementById('waiting-on-me'); \
         return document.querySelector('#steps li.step[data-status=\"done\"]') && w.hidden;",
        vec![],
    )
    .await;
    c.find(Locator::LinkText("All flows"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flows_page(&c).await;
    until(
        &c,
        "nothing waits on him",
        PATIENCE,
        "return document.querySelectorAll('li.flow-item').length === 2 && !document.getElementById('waiting-flows')",
        vec![],
    )
    .await;
    // An address of no flow here says so.
    c.goto(&format!(
        "{}/flow/{}",
        Page::of(&url).origin,
        "0".repeat(32)
    ))
    .await
    .unwrap();
    heading(&c, "No such flow here").await;
    until(
        &c,
        "the node's answer shows",
        PATIENCE,
        "const a = document.querySelector('[role=alert]'); return !a.hidden && a.textContent.length > 0;",
        vec![],
    )
    .await;
    c.close().await.unwrap();
    println!("Tom's list took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_keeps_strangers_out() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (tom, url) = web_node(tmp.path(), "Tom");
    let flow = id_of(&tom.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A suit",
        "--as",
        "owner",
    ]));
    let page = Page::of(&url);
    let port = page.addr.rsplit(':').next().unwrap().to_string();
    let comment = json!({"call": "edit", "flow": flow, "edit": {"op": "comment", "text": "forged", "step": null}});

    // (a) The page itself needs no cookie; everything under /v1 does.
    let index = http(&page.addr, "GET", "/", &[], "").unwrap();
    assert_eq!(index.status, 200);
    let csp = index
        .header("content-security-policy")
        .expect("the page has a CSP")
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let status = json!({"call": "status"});
    let r = page.call(None, Some(&page.origin), &status);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(serde_json::from_str::<Value>(&r.body).unwrap()["error"].is_string());
    assert_eq!(
        http(&page.addr, "GET", "/v1/call", &[], "").unwrap().status,
        401
    );
    assert_eq!(
        http(&page.addr, "GET", "/v1/events", &[], "")
            .unwrap()
            .status,
        401
    );
    let wrong = [("Cookie", format!("coflow_{port}=not-the-session"))];
    let wrong: Vec<(&str, &str)> = wrong.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        http(&page.addr, "GET", "/v1/events", &wrong, "")
            .unwrap()
            .status,
        401
    );

    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&format!("{}/", page.origin)).await.unwrap();
    until(
        &c,
        "the page asks for its login link",
        PATIENCE,
        "const p = document.getElementById('login-needed'); return p && p.textContent === \
         'This page needs its login link: run coflow open on this computer.';",
        vec![],
    )
    .await;
    let rest = js(
        &c,
        "return [document.querySelectorAll('main > *').length, document.getElementById('top').hidden, \
         document.querySelectorAll('input, textarea, button').length]",
        vec![],
    )
    .await;
    assert_eq!(rest, json!([1, true, 0]), "the login message is not alone");
    shot(&c, "20-login-needed").await;
    // The browser logs the refused status call; nothing else.
    let errors = driver.console_errors(&c).await;
    assert!(
        errors.iter().all(|e| e.contains("401")),
        "the login page logged {errors:#?}"
    );
    every_control_named(&c, "the login message").await;
    c.close().await.unwrap();

    let session = page.session(&tom);
    let cookie = session.cookie.clone();
    // The cookie alone, or with another key, gets nothing.
    let r = page.call(
        Some(&Session {
            cookie: cookie.clone(),
            key: "0".repeat(64),
        }),
        Some(&page.origin),
        &status,
    );
    assert_eq!(r.status, 401, "a cookie with a wrong key: {}", r.body);
    let r = http(
        &page.addr,
        "POST",
        "/v1/call",
        &[
            ("Cookie", &cookie),
            ("Origin", &page.origin),
            ("Content-Type", "application/json"),
        ],
        &status.to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 401, "a cookie without its key: {}", r.body);
    // (b) Another host name (DNS rebinding) gets nothing, not even the page.
    let evil_host = format!("evil.example:{port}");
    for path in ["/", "/app.js", "/v1/events"] {
        let r = http(
            &page.addr,
            "GET",
            path,
            &[
                ("Host", &evil_host),
                ("Cookie", &cookie),
                ("X-Coflow-Key", &session.key),
            ],
            "",
        )
        .unwrap();
        assert_eq!(r.status, 403, "Host {evil_host} {path}");
    }
    let r = http(
        &page.addr,
        "POST",
        "/v1/call",
        &[
            ("Host", &evil_host),
            ("Cookie", &cookie),
            ("X-Coflow-Key", &session.key),
            ("Origin", &format!("http://{evil_host}")),
            ("Content-Type", "application/json"),
        ],
        &comment.to_string(),
    )
    .unwrap();
    assert_eq!(r.status, 403, "a call under another host name");

    // (c) Another origin, no origin, or a form's content type: refused, nothing changed.
    let r = page.call(Some(&session), Some("http://evil.example"), &comment);
    assert_eq!(r.status, 403, "{}", r.body);
    let r = page.call(Some(&session), None, &comment);
    assert_eq!(r.status, 403, "a POST without Origin: {}", r.body);
    let r = http(
        &page.addr,
        "POST",
        "/v1/call",
        &[
            ("Cookie", &cookie),
            ("X-Coflow-Key", &session.key),
            ("Origin", &page.origin),
            ("Content-Type", "text/plain"),
        ],
        &comment.to_string(),
    )
    .unwrap();
    assert!(
        r.status >= 400,
        "a text/plain call: {} {}",
        r.status,
        r.body
    );
    assert!(
        tom.comments(&flow).is_empty(),
        "a refused call changed the flow"
    );
    // The same call from the page's own origin goes through: the refusals were about origin.
    let r = page.call(Some(&session), Some(&page.origin), &comment);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(tom.comments(&flow), vec!["forged".to_string()]);

    // A login code is good for one login: the one used above logs nobody in again.
    let used = http(
        &page.addr,
        "GET",
        &format!(
            "/{}",
            url.split_once("//").unwrap().1.split_once('/').unwrap().1
        ),
        &[],
        "",
    )
    .unwrap();
    assert_eq!(used.status, 403, "a used login code: {}", used.body);
    // A logged-in page shows an error as one line and keeps what was typed.
    let c = driver.browser().await;
    c.goto(&login_url(&tom)).await.unwrap();
    flows_page(&c).await;
    c.goto(&format!("{}/join", page.origin)).await.unwrap();
    fill(&c, "Ticket", "coflow1nonsense").await;
    click_button(&c, "Join").await;
    until(
        &c,
        "the error shows",
        PATIENCE,
        "const a = document.querySelector('[role=alert]'); return a && !a.hidden && a.textContent.length > 0;",
        vec![],
    )
    .await;
    let alert = js(
        &c,
        "return document.querySelector('[role=alert]').textContent",
        vec![],
    )
    .await;
    assert!(!alert.as_str().unwrap().contains('\n'), "{alert}");
    assert_eq!(value_of(&c, "Ticket").await, "coflow1nonsense");
    shot(&c, "21-join-error").await;
    c.close().await.unwrap();
    println!("the strangers' test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_text_is_only_ever_text() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (tom, _) = web_node(tmp.path(), "Tom");
    let (alice, url) = web_node(tmp.path(), "Alice");
    let page = Page::of(&url);
    let step_title = "<script>alert(1)</script>";
    let comment = "<img src=x onerror=\"document.title='pwned'\">";
    let option = "<b onmouseover=alert(2)>Wool</b>";
    let flow = id_of(&tom.json(&[
        "flow",
        "new",
        "Navy suit",
        "--need",
        "A navy suit <i>for the wedding</i> with a very-long-word-that-does-not-break-anywhere-at-all-in-the-whole-line",
        "--as",
        "owner",
    ]));
    tom.json(&["step", "add", &flow, step_title, "--customer"]);
    tom.json(&[
        "decision",
        "new",
        &flow,
        "\"><svg onload=alert(3)>",
        "--option",
        option,
        "--option",
        "Linen",
    ]);
    let ticket = tom.json(&["flow", "invite", &flow, "--role", "customer"])["ticket"]
        .as_str()
        .unwrap()
        .to_string();

    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&url).await.unwrap();
    flows_page(&c).await;
    // The link Tom would send: the ticket comes in the address's fragment.
    c.goto(&format!("{}/join#{ticket}", page.origin))
        .await
        .unwrap();
    heading(&c, "Join a flow").await;
    assert_eq!(
        value_of(&c, "Ticket").await,
        ticket,
        "the link did not fill the ticket"
    );
    // By keyboard: from the field, Tab to the button (its focus visible), Enter.
    let field = labelled(&c, "Ticket").await;
    c.find(Locator::Id(&field))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.active_element()
        .await
        .unwrap()
        .send_keys("\u{E004}")
        .await
        .unwrap();
    let focused = js(
        &c,
        "const a = document.activeElement; \
         return [a.tagName, a.textContent, a.matches(':focus-visible'), getComputedStyle(a).outlineStyle];",
        vec![],
    )
    .await;
    assert_eq!(
        focused[0], "BUTTON",
        "Tab from the ticket went to {focused}"
    );
    assert_eq!(focused[1], "Join", "{focused}");
    assert_eq!(focused[2], true, "the focus is not shown: {focused}");
    assert_ne!(focused[3], "none", "the focus has no outline: {focused}");
    c.active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    until(
        &c,
        "the flow shows the step's title as text",
        JOIN_PATIENCE,
        "return [...document.querySelectorAll('#steps .step-title')].some((t) => t.textContent === arguments[0]);",
        vec![json!(step_title)],
    )
    .await;
    tom.json(&["comment", &flow, comment]);
    until(
        &c,
        "Tom's comment shows as text",
        PATIENCE,
        "return [...document.querySelectorAll('#comments .comment-text')].some((t) => t.textContent === arguments[0]);",
        vec![json!(comment)],
    )
    .await;
    let found = js(
        &c,
        "return {imgs: document.querySelectorAll('img').length, \
                 commentImgs: document.querySelectorAll('#comments img').length, \
                 scripts: document.querySelectorAll('script').length, \
                 injected: document.querySelectorAll('main svg, main b, main i, main script').length, \
                 title: document.title, \
                 option: [...document.querySelectorAll('button.option')].map((b) => b.querySelector('.option-label').textContent)}",
        vec![],
    )
    .await;
    assert_eq!(found["imgs"], 0, "{found}");
    assert_eq!(found["commentImgs"], 0, "{found}");
    assert_eq!(found["scripts"], 1, "only app.js: {found}");
    assert_eq!(found["injected"], 0, "{found}");
    assert_eq!(found["title"], "Navy suit · coflow", "{found}");
    assert_eq!(found["option"][0], option, "{found}");
    no_sideways_scroll(&c, "a flow page full of hostile text").await;
    shot(&c, "30-hostile-text").await;
    driver.quiet(&c, "30-hostile-text").await;
    c.find(Locator::LinkText("All flows"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    flows_page(&c).await;
    until(
        &c,
        "the flow is listed",
        PATIENCE,
        "return document.querySelectorAll('li.flow-item').length === 1",
        vec![],
    )
    .await;
    no_sideways_scroll(&c, "the flows list").await;
    assert!(!js(&c, "return document.title", vec![])
        .await
        .as_str()
        .unwrap()
        .contains("pwned"));
    shot(&c, "31-flows").await;
    driver.quiet(&c, "31-flows").await;

    // A flow Tom adds her to waits for her answer.
    let trousers = id_of(&tom.json(&[
        "flow",
        "new",
        "Trousers",
        "--need",
        "Grey trousers",
        "--as",
        "owner",
    ]));
    tom.json(&[
        "member",
        "add",
        &trousers,
        &alice.id(),
        "--role",
        "contributor",
        "--name",
        "Alice",
    ]);
    until(
        &c,
        "the flow is offered to her",
        PATIENCE,
        "const s = document.getElementById('offered-flows'); \
         return s && s.querySelector('li[data-flow=\"' + arguments[0] + '\"]') && s.textContent.includes('Trousers');",
        vec![json!(trousers)],
    )
    .await;
    shot(&c, "32-offered").await;
    driver.quiet(&c, "32-offered").await;
    click_button(&c, "Accept").await;
    until(
        &c,
        "the accepted flow is listed as hers",
        PATIENCE,
        "return !document.getElementById('offered-flows') && \
         [...document.querySelectorAll('li.flow-item')].some((li) => li.dataset.flow === arguments[0]);",
        vec![json!(trousers)],
    )
    .await;
    // And one she declines: gone from her list and from her node.
    let waistcoat = id_of(&tom.json(&[
        "flow",
        "new",
        "Waistcoat",
        "--need",
        "A waistcoat",
        "--as",
        "owner",
    ]));
    tom.json(&[
        "member",
        "add",
        &waistcoat,
        &alice.id(),
        "--role",
        "observer",
    ]);
    until(
        &c,
        "the second flow is offered to her",
        PATIENCE,
        "const s = document.getElementById('offered-flows'); \
         return s && s.textContent.includes('Waistcoat');",
        vec![],
    )
    .await;
    click_button(&c, "Decline").await;
    until(
        &c,
        "the declined flow is gone",
        PATIENCE,
        "return !document.getElementById('offered-flows') && \
         ![...document.querySelectorAll('li.flow-item')].some((li) => li.dataset.flow === arguments[0]);",
        vec![json!(waistcoat)],
    )
    .await;
    assert!(
        !alice
            .json(&["flow", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == waistcoat.as_str()),
        "her node still lists the declined flow"
    );
    driver.quiet(&c, "after declining").await;
    c.close().await.unwrap();
    drop(alice);
    println!("the hostile text test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_its_node_through_restarts() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    // One page address across restarts, as a person's bookmark would have it.
    let web = format!("127.0.0.1:{}", free_port());
    let mut tom = Participant::new(tmp.path(), "Tom");
    tom.node_args = vec!["--web".into(), web];
    tom.start(&[]);
    let url = login_url(&tom);
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&url).await.unwrap();
    flows_page(&c).await;

    tom.stop();
    until(
        &c,
        "the page says the node does not answer",
        PATIENCE,
        "const a = document.querySelector('[role=alert]'); \
         return !a.hidden && a.textContent.includes('does not answer');",
        vec![],
    )
    .await;
    shot(&c, "40-node-stopped").await;
    // Made straight on the store while the node is down: listed once it is back, no reload.
    tom.json(&[
        "flow",
        "new",
        "Made offline",
        "--need",
        "A coat",
        "--as",
        "owner",
    ]);
    js(&c, "window.coflowNoReload = true; return true", vec![]).await;
    tom.start(&[]);
    until(
        &c,
        "the page is back, with the new flow",
        PATIENCE,
        "const a = document.querySelector('[role=alert]'); \
         return a.hidden && document.getElementById('flow-lists').textContent.includes('Made offline');",
        vec![],
    )
    .await;
    assert_eq!(
        js(&c, "return window.coflowNoReload === true", vec![]).await,
        json!(true),
        "the page reloaded"
    );

    // Every browser logged out (the sessions deleted): the open page asks for its login link.
    tom.stop();
    std::fs::remove_file(tom.home.join("web.sessions")).unwrap();
    tom.start(&[]);
    until(
        &c,
        "the page asks for its new login link",
        PATIENCE,
        "const p = document.getElementById('login-needed'); \
         return p && p.textContent.startsWith('This page needs its login link');",
        vec![],
    )
    .await;
    shot(&c, "41-new-login-token").await;
    c.close().await.unwrap();
    println!("the restarts test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tom_runs_a_flow_from_the_page() {
    if !have_browser() {
        return;
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (tom, url) = web_node(tmp.path(), "Tom");
    let tom_id = tom.id();
    let page = Page::of(&url);
    let driver = Driver::start();
    let c = driver.browser().await;
    c.goto(&url).await.unwrap();
    flows_page(&c).await;

    // A new flow from the folded form.
    click(&c, "details.new-flow summary").await;
    fill(&c, "Title", "Wedding suit").await;
    fill(&c, "Need", "A suit for Sam's wedding").await;
    click_button(&c, "Start flow").await;
    heading(&c, "Wedding suit").await;
    let flow = c
        .current_url()
        .await
        .unwrap()
        .path()
        .strip_prefix("/flow/")
        .expect("the new flow's page")
        .to_string();

    // A step for himself that the customer takes part in, due on a date.
    fill(&c, "Step", "Cut the cloth").await;
    let assignee = labelled(&c, "Assignee").await;
    c.find(Locator::Id(&assignee))
        .await
        .unwrap()
        .select_by_value(&tom_id)
        .await
        .unwrap();
    let due = labelled(&c, "Due (optional)").await;
    js(
        &c,
        "document.getElementById(arguments[0]).value = '2026-12-10'; return true",
        vec![json!(due)],
    )
    .await;
    let customer = labelled(&c, "The customer takes part").await;
    c.find(Locator::Id(&customer))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click_button(&c, "Add step").await;
    until(
        &c,
        "the step is listed with its assignee, date and who it waits on",
        PATIENCE,
        "const s = document.querySelector('#steps li.step'); \
         return s && s.textContent.includes('Cut the cloth') && s.textContent.includes('Assigned to Tom (you)') \
           && s.textContent.includes('due 2026-12-10') && s.textContent.includes('Waits on you and the customer');",
        vec![],
    )
    .await;
    assert_eq!(
        value_of(&c, "Step").await,
        "",
        "an added step leaves the form"
    );
    click(&c, "button[aria-label='Start: Cut the cloth']").await;
    until(
        &c,
        "the step is in progress",
        PATIENCE,
        "return document.querySelector('#steps li.step[data-status=\"active\"]')",
        vec![],
    )
    .await;
    shot(&c, "50-tom-step").await;
    driver.quiet(&c, "50-tom-step").await;

    // A members' vote, his vote, and closing it.
    fill(&c, "Question", "Lining").await;
    fill(&c, "Options, one per line", "Silk\nCotton").await;
    let who = labelled(&c, "Who decides").await;
    c.find(Locator::Id(&who))
        .await
        .unwrap()
        .select_by_value("members")
        .await
        .unwrap();
    let vote = labelled(&c, "Vote (closed by the customer or an owner)").await;
    c.find(Locator::Id(&vote))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click_button(&c, "Open decision").await;
    click(&c, "button.option[data-option='Silk']").await;
    until(
        &c,
        "his vote is counted",
        PATIENCE,
        "const b = document.querySelector(\"button.option[data-option='Silk']\"); \
         return b && b.getAttribute('aria-pressed') === 'true' && b.textContent.includes('1 vote');",
        vec![],
    )
    .await;
    click_button(&c, "Close vote").await;
    until(
        &c,
        "the vote is closed with its outcome",
        PATIENCE,
        "const d = document.querySelector('.decision'); \
         return d && d.dataset.closed === 'true' && d.querySelector('.outcome').textContent === 'Decided: Silk';",
        vec![],
    )
    .await;
    shot(&c, "51-tom-vote").await;
    driver.quiet(&c, "51-tom-vote").await;

    // A ticket for the customer, as a link to send.
    click_button(&c, "Create ticket").await;
    until(
        &c,
        "the ticket to send is shown",
        PATIENCE,
        "const o = document.getElementById('invite-out'); return o && !o.hidden;",
        vec![],
    )
    .await;
    let link = value_of(&c, "Ticket to send").await;
    let ticket = value_of(&c, "The ticket alone (for coflow flow join)").await;
    assert!(ticket.starts_with("coflow1"), "{ticket}");
    assert_eq!(link, format!("{}/join#{ticket}", page.origin));
    shot(&c, "52-tom-invite").await;
    driver.quiet(&c, "52-tom-invite").await;

    // What his node holds.
    let v = tom.json(&["flow", "show", &flow]);
    assert_eq!(v["need"], "A suit for Sam's wedding");
    let step = &v["steps"][0];
    assert_eq!(step["title"], "Cut the cloth");
    assert_eq!(step["assignee"], tom_id.as_str());
    assert_eq!(step["customer_involved"], true);
    assert_eq!(step["due"], "2026-12-10");
    assert_eq!(step["status"], "active");
    let d = &v["decisions"][0];
    assert_eq!(d["question"], "Lining");
    assert_eq!(d["options"], json!(["Silk", "Cotton"]));
    assert_eq!(d["who"], "members");
    assert_eq!(d["mode"], "vote");
    assert_eq!(d["closed"], true);
    assert_eq!(d["outcome"], "Silk");
    let invites = v["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 1, "{v}");
    assert_eq!(invites[0]["role"], "customer");
    c.close().await.unwrap();
    println!("Tom's tools took {:?}", started.elapsed());
}

/// Without a browser too: the page's files keep the rules the CSP cannot check by itself.
#[test]
fn the_page_has_no_inline_code_and_no_html_sinks() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let html = std::fs::read_to_string(web.join("index.html")).unwrap();
    let lower = html.to_lowercase();
    for tag in lower.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap_or_default();
        let name = tag.split_whitespace().next().unwrap_or_default();
        assert!(!tag.contains(" style="), "an inline style: <{tag}>");
        assert!(
            !tag.split_whitespace()
                .skip(1)
                .any(|a| a.starts_with("on") && a.contains('=')),
            "an event handler attribute: <{tag}>"
        );
        if name == "script" {
            assert!(tag.contains("src=\"/app.js\""), "an inline script: <{tag}>");
        }
    }
    assert!(!lower.contains("<style"), "an inline style sheet");
    assert!(
        !lower.contains("http://") && !lower.contains("https://"),
        "a remote asset"
    );
    let js = std::fs::read_to_string(web.join("app.js")).unwrap();
    for (n, line) in js.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setTimeout('",
            ".href =",
            ".src =",
            "srcdoc",
            "javascript:",
            ".style.",
            "'style'",
        ] {
            assert!(
                !code.contains(sink),
                "web/app.js:{}: {sink} in {code}",
                n + 1
            );
        }
    }
    let css = std::fs::read_to_string(web.join("app.css")).unwrap();
    assert!(
        !css.contains("@import") && !css.contains("url("),
        "a remote style or font"
    );
}
