//! The dashboard (`/ui/`): how the server serves it (headers, redirect, no token for the files),
//! the cross-site guard, `GET /api/flows`, `server.basePath`, and the page itself in a real
//! browser: headless Chromium driven through chromedriver (WebDriver, the `fantoccini` crate)
//! against the real server, finding elements only by their `data-testid` (the contract between
//! the page and these tests).
//!
//! The browser tests need Debian's `chromium` and `chromium-driver`. Where they are not
//! installed each prints `SKIPPED: ...` and passes, except under `CI=true`, where that is a
//! failure (`.ci/run` installs them). A failing browser test saves a screenshot to
//! `target/ui-shots/<test>.png`; `every_page_renders` saves one of every page there.
#![allow(clippy::unwrap_used, reason = "tests")]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::{assert_error, unused_port, wait_until, Builder, TestServer};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOKEN: &str = "ui-test-token";
/// Upper bound for anything the page shows to appear.
const SHOW: Duration = Duration::from_secs(15);

// ------------------------------------------------------------------ serving, without a browser

/// A server with a token and a script that echoes its arguments.
fn with_token() -> TestServer {
    let mut server = Builder::new().server("authToken", json!(TOKEN)).script("hello", "echo hello \"$@\"").start();
    server.token = Some(TOKEN.into());
    server
}

/// An agent that does not follow redirects (to see the `302` itself).
fn raw_agent() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(10)).build()
}

#[test]
fn the_root_redirects_to_the_dashboard_without_a_token() {
    let server = with_token();
    let answer = raw_agent().get(&format!("{}/", server.base)).call().unwrap();
    assert_eq!(answer.status(), 302);
    assert_eq!(answer.header("location"), Some("/ui/"));
    let answer = raw_agent().get(&format!("{}/ui", server.base)).call().unwrap();
    assert_eq!(answer.status(), 302);
    assert_eq!(answer.header("location"), Some("/ui/"));
}

#[test]
fn the_page_is_served_with_a_strict_policy_and_an_etag() {
    let server = with_token();
    let r = server.request("GET", "/ui/", None, &[("Authorization", "")]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("app.js"), "{}", r.text);
    let answer = raw_agent().get(&format!("{}/ui/app.js", server.base)).call().unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.header("content-type"), Some("text/javascript; charset=utf-8"));
    let csp = answer.header("content-security-policy").unwrap_or("").to_string();
    for directive in ["default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "base-uri 'none'"] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    let etag = answer.header("etag").unwrap().to_string();
    let again = raw_agent().get(&format!("{}/ui/app.js", server.base)).set("If-None-Match", &etag).call().unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let index = raw_agent().get(&format!("{}/ui/index.html", server.base)).call().unwrap();
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    let missing = server.request("GET", "/ui/no-such-file.js", None, &[]);
    assert_error(&missing, 404, "NOT_FOUND");
}

#[test]
fn the_api_still_needs_the_token() {
    let server = with_token();
    let r = server.request("POST", "/run", Some(br#"{"scriptId": "hello"}"#), &[("Authorization", "")]);
    assert_error(&r, 401, "UNAUTHORIZED");
    let r = server.request("GET", "/jobs", None, &[("Authorization", "")]);
    assert_error(&r, 401, "UNAUTHORIZED");
}

#[test]
fn a_cross_site_post_is_refused_and_starts_no_job() {
    let server = with_token();
    let body = br#"{"scriptId": "hello", "args": ["x"]}"#;
    let json_type = ("Content-Type", "application/json");
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Origin", "http://evil.example")]);
    assert_error(&r, 403, "FORBIDDEN");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("cross-site"), "{}", r.text);
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Sec-Fetch-Site", "cross-site")]);
    assert_error(&r, 403, "FORBIDDEN");
    // The same host on another port is another origin.
    let other_port = server.base.replace("127.0.0.1:", "127.0.0.1:1");
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Origin", &other_port)]);
    assert_error(&r, 403, "FORBIDDEN");
    // A sandboxed or file:// page sends `Origin: null`.
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Origin", "null")]);
    assert_error(&r, 403, "FORBIDDEN");
    let r =
        server.request("DELETE", "/api/script-runs/none", Some(b"{}"), &[json_type, ("Origin", "http://evil.example")]);
    assert_error(&r, 403, "FORBIDDEN");
    let jobs = server.get("/jobs");
    assert_eq!(jobs.body["total"], json!(0), "{}", jobs.text);

    // The page's own origin, or no browser at all, may.
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Origin", &server.base)]);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["stdout"], json!("hello x\n"), "{}", r.text);
    let r = server.request("POST", "/run", Some(body), &[json_type, ("Sec-Fetch-Site", "same-origin")]);
    assert_eq!(r.status, 200, "{}", r.text);
    let r = server.request("POST", "/run", Some(body), &[json_type]);
    assert_eq!(r.status, 200, "{}", r.text);
    // Reading is not guarded (a foreign page cannot read the answer, and needs the token).
    let r = server.request("GET", "/jobs", None, &[("Origin", "http://evil.example")]);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The repository's `flows/` folder (a package: `self::` blocks resolve against its parent).
fn repo_flows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows").canonicalize().unwrap()
}

#[test]
fn flows_lists_the_nodes_and_connections_and_names_a_broken_flow() {
    let builder = Builder::new();
    let flows = builder.dir().join("package/flows");
    for entry in std::fs::read_dir(repo_flows()).unwrap().flatten() {
        let file = entry.path().join("flow.oo.yaml");
        if file.is_file() {
            std::fs::create_dir_all(flows.join(entry.file_name())).unwrap();
            std::fs::copy(&file, flows.join(entry.file_name()).join("flow.oo.yaml")).unwrap();
        }
    }
    // The package's blocks, as the repository's flows name them (`self::...`).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::copy(root.join("package.oo.yaml"), builder.dir().join("package/package.oo.yaml")).unwrap();
    copy_tree(&root.join("blocks"), &builder.dir().join("package/blocks"));
    std::fs::create_dir_all(flows.join("broken")).unwrap();
    std::fs::write(flows.join("broken/flow.oo.yaml"), "nodes:\n  - node_id: a\n    task: self::no-such-block\n")
        .unwrap();
    let server = builder.workflows(json!({ "flowsDir": flows.to_str().unwrap() })).start();

    let r = server.get("/api/flows");
    assert_eq!(r.status, 200, "{}", r.text);
    let list = r.body["flows"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"cancel-a-job") && names.contains(&"broken"), "{names:?}");
    let cancel = list.iter().find(|f| f["name"] == json!("cancel-a-job")).unwrap();
    assert!(cancel.get("error").is_none(), "{cancel}");
    assert_eq!(cancel["description"], json!("Start a long job and cancel it"));
    let start = cancel["nodes"].as_array().unwrap().iter().find(|n| n["id"] == json!("start")).unwrap();
    assert_eq!(start["block"], json!("run-script-async"), "{start}");
    assert_eq!(start["inputs"]["script_id"], json!("long-task"), "{start}");
    let connections = cancel["connections"].as_array().unwrap();
    assert!(
        connections.contains(&json!({ "from": { "node": "start", "output": "job_id" },
                                      "to": { "node": "cancel", "input": "job_id" } })),
        "{connections:?}"
    );
    assert!(
        connections.contains(&json!({ "from": { "node": "<flow>", "output": "script_runner_url" },
                                      "to": { "node": "start", "input": "script_runner_url" } })),
        "{connections:?}"
    );
    let broken = list.iter().find(|f| f["name"] == json!("broken")).unwrap();
    assert!(broken["error"].as_str().unwrap().contains("no-such-block"), "{broken}");
    assert_eq!(broken["nodes"], json!([]));
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn every_route_is_under_the_base_path_and_workflows_call_back_through_it() {
    let mut server = Builder::new()
        .server("basePath", json!("/sr"))
        .server("authToken", json!(TOKEN))
        .script("hello", "echo hello")
        .workflows(json!({}))
        .start();
    server.token = Some(TOKEN.into());
    assert!(server.base.ends_with("/sr"), "{}", server.base);
    let origin = server.base.trim_end_matches("/sr").to_string();
    let answer = raw_agent().get(&format!("{origin}/sr/")).call().unwrap();
    assert_eq!(answer.status(), 302);
    assert_eq!(answer.header("location"), Some("/sr/ui/"));
    let answer = raw_agent().get(&format!("{origin}/sr")).call().unwrap();
    assert_eq!(answer.header("location"), Some("/sr/ui/"));
    assert_eq!(raw_agent().get(&format!("{origin}/sr/ui/")).call().unwrap().status(), 200);
    for outside in ["/healthz", "/", "/ui/", "/srx/healthz"] {
        match raw_agent().get(&format!("{origin}{outside}")).call() {
            Err(ureq::Error::Status(404, _)) => {}
            other => panic!("{outside} outside the base path: {other:?}"),
        }
    }
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(server.run("hello", &[], None).body["stdout"], json!("hello\n"));
    // The workflow's steps call the server at SCRIPT_RUNNER_URL, which has the prefix.
    let source =
        "echo \"$SCRIPT_RUNNER_URL\" >&2\nscript-runner step greet -- echo hi >/dev/null\necho '{\"done\": true}'";
    let id = server.launch_bash(source, json!({}));
    let run = server.wait_run_terminal(&id, Duration::from_secs(30));
    assert_eq!(run["run"]["status"], json!("completed"), "{run}");
    assert_eq!(run["run"]["output"], json!({ "done": true }), "{run}");
}

#[test]
fn a_base_path_must_be_a_clean_prefix() {
    for bad in ["sr", "/sr/", "/", "/s r", "/a//b", "/..", "/sr?x"] {
        let out = Builder::new().server("basePath", json!(bad)).write().check_config();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("server.basePath"), "{bad:?}: {stderr}");
    }
    for good in ["/sr", "/tools/script-runner", "/v1.2~x"] {
        let out = Builder::new().server("basePath", json!(good)).write().check_config();
        assert!(out.status.success(), "{good:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

// ------------------------------------------------------------------ the browser

/// A browser session for one test: chromedriver on a port of its own, a headless Chromium
/// behind it, and the runtime the WebDriver client runs on. Dropped while the test panics, it
/// saves a screenshot of the page to `target/ui-shots/<test>.png` first.
struct Browser {
    name: String,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
}

/// Whether Chromium and chromedriver are installed; without them a browser test is skipped
/// (saying so), except under `CI=true`, where it fails.
fn chromium_installed() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("no Chromium at {CHROMIUM} / {CHROMEDRIVER}: CI must install chromium and chromium-driver");
    }
    println!("SKIPPED: no Chromium (apt-get install chromium chromium-driver)");
    false
}

/// Where screenshots go: `target/ui-shots/` (`CARGO_TARGET_DIR`'s when set).
fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("ui-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a browser session; `None` (the test is skipped) without Chromium.
    fn start(name: &str) -> Option<Browser> {
        if !chromium_installed() {
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let port = unused_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut browser = Browser { name: name.to_string(), rt, client: None, driver };
        wait_until(
            || format!("chromedriver did not listen on {port}"),
            Duration::from_secs(20),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": CHROMIUM,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                             "--disable-dev-shm-usage"] }),
        );
        // An alert the page opens stays open (and is seen), instead of being dismissed.
        capabilities.insert("unhandledPromptBehavior".into(), json!("ignore"));
        let client = browser.rt.block_on(async {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
        });
        browser.client = Some(client.unwrap_or_else(|e| panic!("no browser session: {e}")));
        Some(browser)
    }

    /// Runs the test's steps on the session.
    fn run<F: Future>(&self, steps: impl FnOnce(Client) -> F) -> F::Output {
        let client = self.client.clone().unwrap();
        self.rt.block_on(steps(client))
    }

    /// Saves a screenshot of the page as `target/ui-shots/<name>.png`.
    fn shot(&self, name: &str) {
        if let Some(client) = &self.client {
            if let Ok(png) = self.rt.block_on(client.screenshot()) {
                let path = shots_dir().join(format!("{name}.png"));
                let _ = std::fs::write(&path, png);
                println!("screenshot: {}", path.display());
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let name = self.name.clone();
            self.shot(&name);
        }
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The CSS selector of a `data-testid`.
fn tid(id: &str) -> String {
    format!("[data-testid=\"{id}\"]")
}

/// The element with this `data-testid`, waited for (at most [`SHOW`]).
async fn find(c: &Client, id: &str) -> fantoccini::elements::Element {
    let selector = tid(id);
    c.wait()
        .at_most(SHOW)
        .for_element(Locator::Css(&selector))
        .await
        .unwrap_or_else(|e| panic!("no {selector} within {SHOW:?}: {e}"))
}

/// Clicks the element `selector` matches, found again while the page redraws it under the click
/// (a live page replaces elements: a stale one is looked up again), at most [`SHOW`].
async fn click(c: &Client, selector: &str) {
    let deadline = Instant::now() + SHOW;
    loop {
        let clicked = match c.find(Locator::Css(selector)).await {
            Ok(element) => element.click().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("cannot click {selector} within {SHOW:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The `textContent` of the first element matching `selector` (`None`: there is none).
async fn text_of(c: &Client, selector: &str) -> Option<String> {
    let value = c
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(selector)],
        )
        .await
        .unwrap();
    value.as_str().map(str::to_string)
}

/// Waits (at most `timeout`) until the text of the element with this `data-testid` satisfies
/// `pred`; returns it.
async fn wait_text(c: &Client, id: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    let selector = tid(id);
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let text = text_of(c, &selector).await;
        if let Some(text) = &text {
            if pred(text) {
                return text.clone();
            }
        }
        last = text.or(last);
        if Instant::now() >= deadline {
            let last = last.map(|t| match t.char_indices().nth_back(600) {
                Some((at, _)) => format!("...{}", &t[at..]),
                None => t,
            });
            panic!("{selector}: not as expected within {timeout:?}; last text: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens the dashboard at `base` (the server's URL, with its base path) and logs in.
async fn log_in(c: &Client, base: &str) {
    c.goto(&format!("{base}/ui/")).await.unwrap();
    find(c, "token-input").await.send_keys(TOKEN).await.unwrap();
    find(c, "token-submit").await.click().await.unwrap();
    // The overview's counts show once the API answers with the token.
    wait_text(c, "overview-running", SHOW, |t| t.chars().any(|ch| ch.is_ascii_digit())).await;
}

/// Goes to a page of the dashboard (`#/...`) once logged in.
async fn open(c: &Client, base: &str, hash: &str) {
    c.goto(&format!("{base}/ui/{hash}")).await.unwrap();
}

/// No alert (or other dialog) is open on the page.
async fn assert_no_dialog(c: &Client) {
    if let Ok(text) = c.get_alert_text().await {
        panic!("a dialog opened: {text:?}");
    }
}

#[test]
fn log_in_and_run_a_script_from_the_form() {
    let Some(browser) = Browser::start("log_in_and_run_a_script_from_the_form") else { return };
    let server = with_token();
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, "#/scripts").await;
        find(&c, "script-hello").await;
        find(&c, "run-args-hello").await.send_keys("big\nworld").await.unwrap();
        find(&c, "run-mode-hello").await.select_by_value("sync").await.unwrap();
        click(&c, &tid("run-submit-hello")).await;
        wait_text(&c, "run-stdout", SHOW, |t| t.contains("hello big world")).await;
        wait_text(&c, "run-exit-code", SHOW, |t| t.contains('0')).await;
        wait_text(&c, "run-status", SHOW, |t| t.contains("succeeded")).await;
        // The token is not in the URL, and is kept in this tab's sessionStorage.
        let url = c.current_url().await.unwrap();
        assert!(!url.as_str().contains(TOKEN), "{url}");
        let kept = c.execute("return sessionStorage.getItem('script-runner-token')", vec![]).await.unwrap();
        assert_eq!(kept, json!(TOKEN));
    });
}

#[test]
fn a_wrong_token_is_refused_at_the_login() {
    let Some(browser) = Browser::start("a_wrong_token_is_refused_at_the_login") else { return };
    let server = with_token();
    browser.run(|c| async move {
        c.goto(&format!("{}/ui/", server.base)).await.unwrap();
        find(&c, "token-input").await.send_keys("not-the-token").await.unwrap();
        find(&c, "token-submit").await.click().await.unwrap();
        wait_text(&c, "login-error", SHOW, |t| !t.trim().is_empty()).await;
    });
}

/// The number of non-empty lines in the element with this `data-testid`.
async fn line_count(c: &Client, id: &str) -> usize {
    text_of(c, &tid(id)).await.unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn a_job_log_follows_live_and_the_job_can_be_canceled() {
    let Some(browser) = Browser::start("a_job_log_follows_live_and_the_job_can_be_canceled") else { return };
    let mut server = Builder::new()
        .server("authToken", json!(TOKEN))
        .script_entry(
            "ticks",
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo \"tick $i\"; sleep 0.5; done",
            json!({ "mode": "async" }),
        )
        .start();
    server.token = Some(TOKEN.into());
    let id = server.run_async("ticks", &[]);
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, &format!("#/jobs/{id}")).await;
        wait_text(&c, "job-status", SHOW, |t| t.contains("running")).await;
        wait_text(&c, "job-stdout", SHOW, |t| t.contains("tick 1")).await;
        let first = line_count(&c, "job-stdout").await;
        // Lines keep arriving while the job runs (one every 0.5 s).
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut later = first;
        while later <= first && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            later = line_count(&c, "job-stdout").await;
        }
        assert!(later > first && later < 10, "lines did not grow live: {first} then {later}");
        click(&c, &tid("job-cancel")).await;
        wait_text(&c, "job-status", SHOW, |t| t.contains("canceled")).await;
        let job = server.job(&id);
        assert_eq!(job["status"], json!("canceled"), "{job}");
    });
}

/// A server with a token whose bash runs may be launched inline.
fn with_workflows() -> TestServer {
    let mut server = Builder::new()
        .server("authToken", json!(TOKEN))
        .script("hello", "echo hello \"$@\"")
        .workflows(json!({ "flowsDir": repo_flows().to_str().unwrap() }))
        .start();
    server.token = Some(TOKEN.into());
    server
}

#[test]
fn a_waiting_run_is_approved_from_its_page() {
    let Some(browser) = Browser::start("a_waiting_run_is_approved_from_its_page") else { return };
    let server = with_workflows();
    let id = server
        .launch_bash("script-runner step ship --approval \"Ship?\" >/dev/null\necho '{\"shipped\": true}'", json!({}));
    server.wait_run(&id, Duration::from_secs(20), |s| s == "awaiting");
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, &format!("#/runs/{id}")).await;
        wait_text(&c, "run-status", SHOW, |t| t.contains("awaiting")).await;
        wait_text(&c, "run-waiting", SHOW, |t| t.contains("Ship?") || t.contains("ship")).await;
        find(&c, "run-note").await.send_keys("looks good").await.unwrap();
        click(&c, &tid("run-approve")).await;
        wait_text(&c, "run-status", Duration::from_secs(30), |t| t.contains("completed")).await;
        let run = server.script_run(&id);
        assert_eq!(run["run"]["output"], json!({ "shipped": true }), "{run}");
        let ship = run["journal"].as_array().unwrap().iter().find(|e| e["stepKey"] == json!("ship")).unwrap().clone();
        assert!(ship.to_string().contains("looks good"), "the note is the decision's comment: {ship}");
    });
}

#[test]
fn a_run_is_forked_from_a_step() {
    let Some(browser) = Browser::start("a_run_is_forked_from_a_step") else { return };
    let server = with_workflows();
    let source = "script-runner step first -- echo one >/dev/null\nscript-runner step second -- echo two >/dev/null\necho '{\"ok\": 1}'";
    let id = server.launch_bash(source, json!({}));
    let run = server.wait_run_terminal(&id, Duration::from_secs(30));
    assert_eq!(run["run"]["status"], json!("completed"), "{run}");
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, &format!("#/runs/{id}")).await;
        find(&c, "journal").await;
        let selector = format!("{}[data-label=\"second\"] {}", tid("journal-step"), tid("step-fork"));
        click(&c, &selector).await;
        // The page moves to the new run.
        let deadline = Instant::now() + SHOW;
        let new_id = loop {
            let url = c.current_url().await.unwrap();
            let fragment = url.fragment().unwrap_or("").to_string();
            if let Some(other) = fragment.strip_prefix("/runs/") {
                if other != id {
                    break other.to_string();
                }
            }
            assert!(Instant::now() < deadline, "still on {url} after the fork");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        wait_text(&c, "run-status", Duration::from_secs(30), |t| t.contains("completed")).await;
        let forked = server.script_run(&new_id);
        assert_eq!(forked["run"]["forkedFrom"], json!(id), "{forked}");
    });
}

#[test]
fn what_a_script_prints_is_shown_as_text() {
    let Some(browser) = Browser::start("what_a_script_prints_is_shown_as_text") else { return };
    let mut server = Builder::new()
        .server("authToken", json!(TOKEN))
        .script("evil", "printf '%s\\n' '<script>alert(1)</script>' '<img src=x onerror=alert(2)>' '<b>bold</b>'")
        .start();
    server.token = Some(TOKEN.into());
    let r = server.run("evil", &[], Some("async"));
    let id = r.body["jobId"].as_str().unwrap().to_string();
    server.wait_terminal(&id, Duration::from_secs(10));
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, "#/scripts").await;
        find(&c, "run-mode-evil").await.select_by_value("sync").await.unwrap();
        click(&c, &tid("run-submit-evil")).await;
        let shown = wait_text(&c, "run-stdout", SHOW, |t| t.contains("<script>")).await;
        assert!(shown.contains("<img src=x onerror=alert(2)>") && shown.contains("<b>bold</b>"), "{shown}");
        for tag in ["img", "script", "b"] {
            let inside = c.find_all(Locator::Css(&format!("{} {tag}", tid("run-stdout")))).await.unwrap();
            assert!(inside.is_empty(), "a <{tag}> element in the sync result");
        }
        assert_no_dialog(&c).await;

        open(&c, &server.base, &format!("#/jobs/{id}")).await;
        let shown = wait_text(&c, "job-stdout", SHOW, |t| t.contains("<script>alert(1)</script>")).await;
        assert!(shown.contains("<img src=x onerror=alert(2)>"), "{shown}");
        for tag in ["img", "script", "b"] {
            let inside = c.find_all(Locator::Css(&format!("{} {tag}", tid("job-stdout")))).await.unwrap();
            assert!(inside.is_empty(), "a <{tag}> element in the log box");
        }
        assert_no_dialog(&c).await;
    });
}

/// The first `line NNNNNN` number shown in the stdout box.
async fn first_line_number(c: &Client) -> Option<u64> {
    let text = text_of(c, &tid("job-stdout")).await?;
    text.lines().find_map(|l| l.trim().strip_prefix("line ")?.get(..6)?.parse().ok())
}

#[test]
fn a_one_megabyte_log_shows_its_end_and_pages_back() {
    let Some(browser) = Browser::start("a_one_megabyte_log_shows_its_end_and_pages_back") else { return };
    let mut server = Builder::new()
        .server("authToken", json!(TOKEN))
        // 17500 lines of 58 bytes: about 1 MB (under the default 1 MiB a stream stores).
        .script(
            "big",
            "seq 1 17500 | awk '{ printf \"line %06d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\\n\", $1 }'",
        )
        .start();
    server.token = Some(TOKEN.into());
    let id = server.run_async("big", &[]);
    let job = server.wait_terminal(&id, Duration::from_secs(20));
    assert!(job["stdoutSize"].as_u64().unwrap() > 1_000_000, "{job}");
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, &format!("#/jobs/{id}")).await;
        wait_text(&c, "job-stdout", SHOW, |t| t.contains("line 017500")).await;
        let first = first_line_number(&c).await.unwrap();
        assert!(first > 1, "the whole log was loaded at once (first line {first})");
        click(&c, &tid("job-stdout-load-earlier")).await;
        let deadline = Instant::now() + SHOW;
        loop {
            let now_first = first_line_number(&c).await.unwrap_or(first);
            if now_first < first {
                break;
            }
            assert!(Instant::now() < deadline, "load earlier did not load earlier lines (first still {now_first})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let still_last = text_of(&c, &tid("job-stdout")).await.unwrap();
        assert!(still_last.contains("line 017500"), "the last lines are kept");
        // The box scrolls (its content is taller than it), and the page stays responsive.
        let scrolls = c
            .execute(
                "const e = document.querySelector(arguments[0]); const before = e.scrollTop; \
                 e.scrollTop = 0; const top = e.scrollTop; e.scrollTop = e.scrollHeight; \
                 return [e.scrollHeight > e.clientHeight, top, e.scrollTop > top, before];",
                vec![json!(tid("job-stdout"))],
            )
            .await
            .unwrap();
        assert_eq!(scrolls[0], json!(true), "the log box does not scroll: {scrolls}");
        assert_eq!(scrolls[2], json!(true), "the log box does not scroll: {scrolls}");
        let started = Instant::now();
        c.execute("return 1", vec![]).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "the page is busy: {:?}", started.elapsed());
    });
}

#[test]
fn every_page_renders() {
    let Some(browser) = Browser::start("every_page_renders") else { return };
    let server = with_workflows();
    let job = server.run("hello", &["world"], Some("async"));
    let job = job.body["jobId"].as_str().unwrap().to_string();
    server.wait_terminal(&job, Duration::from_secs(10));
    let run = server.launch_bash(
        "script-runner step build -- echo built >/dev/null\nscript-runner step ship --approval \"Ship it?\" >/dev/null\necho '{\"shipped\": true}'",
        json!({}),
    );
    server.wait_run(&run, Duration::from_secs(20), |s| s == "awaiting");
    let pages = [
        ("overview", "#/".to_string(), "overview-waiting"),
        ("scripts", "#/scripts".to_string(), "script-hello"),
        ("jobs", "#/jobs".to_string(), "job-row"),
        ("job", format!("#/jobs/{job}"), "job-stdout"),
        ("runs", "#/runs".to_string(), "run-row"),
        ("run", format!("#/runs/{run}"), "journal-step"),
        ("flows", "#/flows".to_string(), "flow-cancel-a-job"),
    ];
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        for (name, hash, shows) in &pages {
            open(&c, &server.base, hash).await;
            find(&c, shows).await;
            // Let the page settle (live streams connected, the log loaded).
            tokio::time::sleep(Duration::from_millis(700)).await;
            let png = c.screenshot().await.unwrap();
            std::fs::write(shots_dir().join(format!("{name}.png")), png).unwrap();
            let banner = c.find(Locator::Css(&tid("error-banner"))).await.unwrap();
            assert!(!banner.is_displayed().await.unwrap(), "{name}: error banner: {:?}", banner.text().await);
        }
        wait_text(&c, "flow-nodes", SHOW, |t| t.contains("start")).await;
        wait_text(&c, "flow-connections", SHOW, |t| t.contains("->")).await;
    });
}

#[test]
fn the_dashboard_works_under_a_base_path() {
    let Some(browser) = Browser::start("the_dashboard_works_under_a_base_path") else { return };
    let mut server = Builder::new()
        .server("basePath", json!("/sr"))
        .server("authToken", json!(TOKEN))
        .script("hello", "echo hello \"$@\"")
        .start();
    server.token = Some(TOKEN.into());
    browser.run(|c| async move {
        assert!(server.base.ends_with("/sr"));
        log_in(&c, &server.base).await;
        open(&c, &server.base, "#/scripts").await;
        find(&c, "script-hello").await;
        find(&c, "run-mode-hello").await.select_by_value("sync").await.unwrap();
        click(&c, &tid("run-submit-hello")).await;
        wait_text(&c, "run-stdout", SHOW, |t| t.contains("hello")).await;
    });
}

/// Measures (prints, does not assert) what the job page costs: the bytes it transfers (the
/// page's files and the API's answers), and how long a line a script prints takes to show.
#[test]
fn measure_the_job_page() {
    let Some(browser) = Browser::start("measure_the_job_page") else { return };
    let mut server = Builder::new()
        .server("authToken", json!(TOKEN))
        // Waits for the page to be open, then prints its clock (ns) every 0.2 s.
        .script_entry(
            "clock",
            "sleep 3; for i in $(seq 1 20); do echo \"t $(date +%s%N)\"; sleep 0.2; done",
            json!({ "mode": "async" }),
        )
        .start();
    server.token = Some(TOKEN.into());
    let id = server.run_async("clock", &[]);
    browser.run(|c| async move {
        log_in(&c, &server.base).await;
        open(&c, &server.base, &format!("#/jobs/{id}")).await;
        find(&c, "job-stdout").await;
        // Each new `t <ns>` line, when the DOM shows it, against the browser's clock (the same
        // machine's clock as the script's `date`).
        let delays = c
            .execute_async(
                r#"const [selector, done] = arguments;
                const box = document.querySelector(selector);
                const seen = new Set(); const delays = [];
                const look = () => {
                    const now = performance.timeOrigin + performance.now();
                    for (const line of box.textContent.split("\n")) {
                        const m = /^t (\d+)$/.exec(line.trim());
                        if (!m || seen.has(m[1])) continue;
                        seen.add(m[1]);
                        const ms = Number(m[1].slice(0, -6)) + Number(m[1].slice(-6)) / 1e6;
                        delays.push(now - ms);
                    }
                    if (delays.length >= 15) { observer.disconnect(); done(delays); }
                };
                const observer = new MutationObserver(look);
                observer.observe(box, { childList: true, subtree: true, characterData: true });
                look();
                setTimeout(() => { observer.disconnect(); done(delays); }, 20000);"#,
                vec![json!(tid("job-stdout"))],
            )
            .await
            .unwrap();
        let mut delays: Vec<f64> = delays.as_array().unwrap().iter().filter_map(Value::as_f64).collect();
        // The lines already there when the page opened are not live ones.
        delays.retain(|d| *d < 2500.0);
        delays.sort_by(f64::total_cmp);
        if delays.is_empty() {
            println!("UI metric: no live line seen");
        } else {
            let median = delays[delays.len() / 2];
            let max = delays[delays.len() - 1];
            println!(
                "UI metric: a printed line shows in the job page after {median:.1} ms (median of {}, max {max:.1} ms)",
                delays.len()
            );
        }
        server.wait_terminal(&id, Duration::from_secs(20));
        wait_text(&c, "job-status", SHOW, |t| t.contains("succeeded")).await;
        // First visit: the page's files came with the log-in (an empty cache; the hash routes
        // keep the document), the job page's API answers are the ones naming the job.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let job_path = format!("/jobs/{id}");
        let first = transferred(&c, &job_path).await;
        println!("UI metric: the job page, first visit (empty cache): {first}");
        // A later visit of the job page of the finished job: the files revalidate (`304`).
        c.goto("about:blank").await.unwrap();
        open(&c, &server.base, &format!("#/jobs/{id}")).await;
        wait_text(&c, "job-stdout", SHOW, |t| t.contains("t ")).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let again = transferred(&c, &job_path).await;
        println!("UI metric: the job page, visited again (files revalidated): {again}");
    });
}

/// What the document loaded, from the browser's resource timing: the bytes on the wire
/// (`transferSize`: headers and body) of the page's files (`/ui/`), and of the API answers whose
/// URL has `api_part`, as one line.
async fn transferred(c: &Client, api_part: &str) -> String {
    let entries = c
        .execute(
            "return performance.getEntries().filter(e => e.entryType === 'navigation' || e.entryType === 'resource')\
             .map(e => [e.name, e.transferSize || 0, e.decodedBodySize || 0]);",
            vec![],
        )
        .await
        .unwrap();
    let (mut ui, mut ui_body, mut ui_files, mut api, mut api_calls) = (0u64, 0u64, 0, 0u64, 0);
    for entry in entries.as_array().unwrap() {
        let name = entry[0].as_str().unwrap_or("");
        let wire = entry[1].as_u64().unwrap_or(0);
        if name.contains("/ui/") {
            ui += wire;
            ui_body += entry[2].as_u64().unwrap_or(0);
            ui_files += 1;
        } else if name.contains(api_part) {
            api += wire;
            api_calls += 1;
        }
    }
    format!(
        "{:.1} KB transferred: {ui_files} UI files {:.1} KB ({:.1} KB of content), {api_calls} API answers {:.1} KB",
        (ui + api) as f64 / 1024.0,
        ui as f64 / 1024.0,
        ui_body as f64 / 1024.0,
        api as f64 / 1024.0
    )
}
