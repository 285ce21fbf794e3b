//! The operator console (`/ui`) in a real browser: headless Chromium driven through WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs), against the real
//! `wasmtx serve`. Sign-in, the needs-attention list, a saga's compensation timeline and its
//! resume, the hot swap of a plugin version with a pinned transaction, tenant isolation, CSRF
//! and the security headers. Screenshots land in `target/console-screenshots/`.
//!
//! Without a browser these tests skip, saying why — except under CI (`CI=true`), where a
//! missing browser fails them.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use wasmtx_testkit::plugins;

use common::{Answer, Caller, HttpParticipant, Script, Server, client};

const ADMIN: &str = "console-admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(60);

/// A headless Chromium behind its own chromedriver; both killed (their whole process group)
/// when dropped.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
    base: String,
}

impl Browser {
    /// A browser on `server`, or `None` (with the reason printed) when this machine has no
    /// Chromium and this is not CI.
    async fn open(server: &Server) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER].into_iter().filter(|p| !Path::new(p).exists()).collect();
        if !missing.is_empty() {
            let reason = format!("{} missing: apt-get install chromium chromium-driver", missing.join(" and "));
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("the console's browser tests need Chromium under CI: {reason}");
            }
            eprintln!("skipping the console's browser test: {reason}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("starting chromedriver");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it was ready");
        };
        tokio::time::timeout(PATIENCE, ready).await.expect("chromedriver did not start within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": CHROMIUM, "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"]}),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        Some(Browser { client, driver, base: server.url.clone() })
    }

    async fn goto(&self, path: &str) {
        self.client.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    /// Waits for `css` to match, and answers its text. An element found on a page that was
    /// then replaced (the answer to a form just sent, an auto-refresh) is stale: it is found
    /// again on the page that replaced it.
    async fn text(&self, css: &str) -> String {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
            match element.text().await {
                Ok(text) => return text,
                Err(e) if is_stale(&e) && std::time::Instant::now() < deadline => continue,
                Err(e) => panic!("reading {css}: {e}"),
            }
        }
    }

    /// Waits until an element matching XPath `xpath` exists (pages that refresh themselves
    /// get there on their own).
    async fn until(&self, xpath: &str) {
        self.client.wait().at_most(PATIENCE).for_element(Locator::XPath(xpath)).await.unwrap_or_else(|e| panic!("{xpath} never appeared: {e}"));
    }

    async fn fill(&self, css: &str, text: &str) {
        let field = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Clicks what `css` matches; an element gone stale before the click was not clicked, so
    /// it is found again and clicked on the page that replaced it.
    async fn click(&self, css: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
            match element.click().await {
                Ok(_) => return,
                Err(e) if is_stale(&e) && std::time::Instant::now() < deadline => continue,
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
    }

    /// Clicks what `css` matches (a form's button, a link) and waits until the page it was
    /// on has been replaced by the answer, so what is read next is the new page's.
    async fn follow(&self, css: &str) {
        let old = self.client.find(Locator::Css("html")).await.unwrap();
        self.click(css).await;
        let deadline = std::time::Instant::now() + PATIENCE;
        while old.tag_name().await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the page after clicking {css} never came");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn sign_in(&self, key: &str) {
        self.goto("/ui/sign-in").await;
        self.fill("#key", key).await;
        self.follow("form[action='/ui/sign-in'] button[type=submit]").await;
    }

    /// The session cookie, as a `Cookie` header for requests outside the browser.
    async fn cookie(&self) -> String {
        let cookie = self.client.get_named_cookie("wasmtx_console").await.expect("a console session cookie");
        format!("wasmtx_console={}", cookie.value())
    }

    /// Saves what the browser shows as `target/console-screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, self.client.screenshot().await.unwrap()).unwrap();
        path
    }

    /// Ends the WebDriver session (Chromium exits); dropping kills what is left.
    async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

/// Whether a WebDriver command failed because its element belongs to a page that is gone.
fn is_stale(e: &fantoccini::error::CmdError) -> bool {
    matches!(e, fantoccini::error::CmdError::Standard(w) if w.error == fantoccini::error::ErrorStatus::StaleElementReference)
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and the Chromium it started share its process group.
        if let Some(pid) = self.driver.id() {
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A server with an admin token that reaches loopback participants, and tenants `acme` (which
/// may call `participant`) and `globex`: their keys.
async fn two_tenants(dir: &Path, participant: &HttpParticipant) -> (Server, String, String) {
    let server = Server::start(dir, None, &["--admin-token", ADMIN, "--allow-private-endpoints"]).await;
    let admin = Caller::new(&server, Some(ADMIN.into()));
    let host = participant.url.trim_start_matches("http://");
    let (status, acme) = admin.post("/v1/admin/tenants", json!({"tenant_id": "acme", "allowed_hosts": [host]})).await;
    assert_eq!(status, StatusCode::CREATED, "{acme}");
    let (_, globex) = admin.post("/v1/admin/tenants", json!({"tenant_id": "globex"})).await;
    (server, acme["api_key"].as_str().unwrap().into(), globex["api_key"].as_str().unwrap().into())
}

/// A saga whose first step is undone by `participant`'s `refund` (which fails three times,
/// then succeeds) and whose second step fails: it ends `failed`, its compensation stuck.
fn stuck_refund(participant: &HttpParticipant) -> Value {
    json!({"saga_name": "order-1042", "execute": true, "wait": true, "context": {"order": 1042}, "steps": [
        {"name": "charge", "plugin": "scripted", "compensation_endpoint": participant.url, "compensation": "refund"},
        {"name": "ship", "plugin": "scripted", "retry_count": 0, "parameters": {"script": {"execute": {"do": "fail", "reason": "no truck"}}}},
    ]})
}

fn refund_fails_three_times() -> Script {
    let mut script = Script::default();
    let refused = Answer::Status(500, json!({"error": "ledger closed"}));
    script.0.insert("refund".into(), vec![refused.clone(), refused.clone(), refused, Answer::Status(200, json!({"refunded": true}))]);
    script.0.insert("hold".into(), vec![Answer::Hang]);
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_saga_needs_attention_shows_its_compensations_and_resumes_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let participant = HttpParticipant::start(refund_fails_three_times()).await;
    let (server, acme, _) = two_tenants(dir.path(), &participant).await;
    let Some(browser) = Browser::open(&server).await else { return };
    let api = Caller::new(&server, Some(acme.clone()));
    assert_eq!(api.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let (_, failed) = api.post("/v1/sagas", stuck_refund(&participant)).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let id = failed["saga_id"].as_str().unwrap().to_string();

    // A wrong key is refused; the tenant's key signs in.
    browser.sign_in("wtx_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000").await;
    assert!(browser.text("p.error").await.contains("not valid"), "a wrong key is refused");
    browser.sign_in(&acme).await;
    assert_eq!(browser.text("header .who strong").await, "acme");

    // The overview lists it under "needs attention".
    browser.goto("/ui").await;
    let attention = browser.text("#attention").await;
    assert!(attention.contains(&id) && attention.contains("needs attention"), "{attention}");
    browser.screenshot("overview").await;

    // Its page: the steps as a timeline, the compensation right under the step it undoes.
    browser.click(&format!("#attention a[href$='{id}']")).await;
    assert_eq!(browser.text("#tx-state").await, "failed needs attention");
    let charge = browser.text("li.step[data-step='charge']").await;
    assert!(charge.starts_with("Step charge\ncompensation_failed\nattempts 1") && charge.contains("scripted@1"), "{charge}");
    let undo = browser.text("li.step[data-step='charge'] .compensation[data-undoes='charge']").await;
    assert!(undo.contains("Compensation 1 undoes charge") && undo.contains("compensation_failed") && undo.contains("attempts 3"), "{undo}");
    assert!(undo.contains("500"), "the participant's refusal is shown: {undo}");
    let ship = browser.text("li.step[data-step='ship']").await;
    assert!(ship.contains("failed") && ship.contains("no truck") && !ship.contains("Compensation"), "{ship}");
    assert!(browser.text("#history").await.contains("compensation_failed"));
    browser.screenshot("transaction-failed").await;

    // Resume, confirmed on its own page: the refund goes through and the saga ends.
    browser.click("#action-resume").await;
    assert!(browser.text("h1").await.starts_with("Resume saga"));
    browser.click("#confirm").await;
    browser.until("//dd[@id='tx-state']/span[text()='compensated']").await;
    let undo = browser.text(".compensation[data-undoes='charge']").await;
    assert!(undo.contains("compensated") && undo.contains("attempts 1"), "a fresh budget, one try: {undo}");
    assert_eq!(participant.calls_to("refund").len(), 4);
    browser.client.set_window_size(1000, 1200).await.unwrap();
    let shot = browser.screenshot("transaction").await;
    let (_, audit) = api.get("/v1/audit").await;
    let resumed = audit["entries"].as_array().unwrap().iter().find(|e| e["action"] == "saga_resume").expect("the resume is audited");
    assert_eq!(resumed["detail"]["id"], id.as_str());
    assert!(resumed["actor"].as_str().unwrap().starts_with("console:key:"), "{resumed}");

    // At a phone's width nothing is wider than the screen.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("/ui/transactions/saga/{id}")).await;
    browser.text("#timeline").await;
    let fits = browser.client.execute("return document.documentElement.scrollWidth <= window.innerWidth + 1", vec![]).await.unwrap();
    assert_eq!(fits, json!(true), "the transaction page fits a phone");
    browser.screenshot("transaction-phone").await;
    eprintln!("screenshot of the transaction page: {}", shot.display());
    browser.quit().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_uploaded_in_the_console_serves_new_transactions_while_a_pinned_one_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let participant = HttpParticipant::start(refund_fails_three_times()).await;
    let (server, acme, _) = two_tenants(dir.path(), &participant).await;
    let Some(browser) = Browser::open(&server).await else { return };
    let api = Caller::new(&server, Some(acme.clone()));
    assert_eq!(api.push("worker", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    // Started (and so pinned to worker@1), then held by its first step.
    let body = json!({"saga_name": "pinned", "execute": true, "steps": [
        {"name": "wait", "endpoint": participant.url, "action": "hold", "timeout_ms": 600000},
        {"name": "work", "plugin": "worker"}]});
    let (status, pinned) = api.post("/v1/sagas", body).await;
    assert_eq!(status, StatusCode::CREATED, "{pinned}");
    let pinned = pinned["saga_id"].as_str().unwrap().to_string();
    participant.until_hung().await;

    browser.sign_in(&acme).await;
    browser.goto("/ui/plugins").await;
    assert!(browser.text("#versions-worker tr[data-version='1'] td.pins").await.contains(&pinned), "the running saga is pinned to version 1");
    browser.fill("#plugin-name", "worker").await;
    browser.client.find(Locator::Css("#plugin-file")).await.unwrap().send_keys(plugins::NOTIFICATION).await.unwrap();
    browser.click("#upload").await;
    assert!(browser.text("#uploaded").await.contains("worker version 2 uploaded"));
    let versions = browser.text("#versions-worker").await;
    assert!(versions.contains("step") && versions.contains("sha256:"), "exports and digests are listed: {versions}");
    assert_eq!(browser.text("#versions-worker tr[data-version='2'] td.pins").await, "none");
    assert!(browser.text("#versions-worker tr[data-version='1'] td.pins").await.contains(&pinned), "still pinned to version 1");
    browser.screenshot("plugins").await;
    // Garbage is refused with the reason, and nothing changes.
    browser.fill("#plugin-name", "worker").await;
    browser.client.find(Locator::Css("#plugin-file")).await.unwrap().send_keys(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).await.unwrap();
    browser.click("#upload").await;
    assert_eq!(browser.text("h1").await, "That did not work");
    browser.goto("/ui/plugins").await;
    assert!(browser.client.find(Locator::Css("#versions-worker tr[data-version='3']")).await.is_err(), "no version 3");

    // A new saga takes version 2; the pinned one still shows version 1.
    let (_, fresh) = api.post("/v1/sagas", json!({"saga_name": "fresh", "execute": true, "wait": true, "context": {"to": "ops@example.com"}, "steps": [{"name": "work", "plugin": "worker"}]})).await;
    let fresh = fresh["saga_id"].as_str().unwrap().to_string();
    browser.goto(&format!("/ui/transactions/saga/{fresh}")).await;
    assert!(browser.text("li.step[data-step='work']").await.contains("worker@2"));
    browser.goto(&format!("/ui/transactions/saga/{pinned}")).await;
    assert!(browser.text("li.step[data-step='work']").await.contains("worker@1"));
    let (_, audit) = api.get("/v1/audit").await;
    assert!(audit["entries"].as_array().unwrap().iter().any(|e| e["action"] == "plugin_uploaded" && e["detail"]["version"] == 2), "the upload is audited");
    browser.quit().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_and_every_post_needs_the_sessions_token() {
    let dir = tempfile::tempdir().unwrap();
    let participant = HttpParticipant::start(refund_fails_three_times()).await;
    let (server, acme, globex) = two_tenants(dir.path(), &participant).await;
    let Some(browser) = Browser::open(&server).await else { return };
    let theirs = Caller::new(&server, Some(globex));
    assert_eq!(theirs.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let (_, other) = theirs.post("/v1/sagas", json!({"saga_name": "globex-only", "execute": true, "wait": true, "steps": [{"name": "a", "plugin": "scripted"}]})).await;
    let other = other["saga_id"].as_str().unwrap().to_string();

    // Not signed in: sent to sign in.
    browser.goto("/ui/transactions").await;
    browser.text("#key").await;
    browser.sign_in(&acme).await;
    browser.goto(&format!("/ui/transactions/saga/{other}")).await;
    assert_eq!(browser.text("h1").await, "Not found");
    browser.goto("/ui/transactions?name=globex-only").await;
    browser.text("#no-results").await;
    browser.screenshot("not-found").await;

    // Outside the browser, with the browser's session: the same answers, and the headers.
    let cookie = browser.cookie().await;
    let page = |path: &str| client().get(format!("{}{path}", server.url)).header("cookie", cookie.clone()).send();
    let answer = page(&format!("/ui/transactions/saga/{other}")).await.unwrap();
    assert_eq!(answer.status(), StatusCode::NOT_FOUND);
    let answer = page("/ui").await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let csp = answer.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'self'") && csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"), "{csp}");
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    assert_eq!(answer.headers()["referrer-policy"], "no-referrer");
    let html = answer.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("http://") && !html.contains("https://"), "no inline script or style, nothing from another host");

    // A POST without the session's token, or with another, is refused; with it, it works.
    let mine = Caller::new(&server, Some(acme.clone()));
    assert_eq!(mine.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let (_, failed) = mine.post("/v1/sagas", stuck_refund(&participant)).await;
    let id = failed["saga_id"].as_str().unwrap().to_string();
    let post = |form: &'static str, cookie: Option<String>| {
        let r = client().post(format!("{}/ui/transactions/saga/{id}/resume", server.url)).header("content-type", "application/x-www-form-urlencoded").body(form);
        match cookie {
            Some(c) => r.header("cookie", c),
            None => r,
        }
        .send()
    };
    for (form, cookie) in [("", Some(cookie.clone())), ("csrf=0000", Some(cookie.clone())), ("csrf=", None)] {
        let answer = post(form, cookie).await.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{form:?}");
    }
    let (_, still) = mine.get(&format!("/v1/sagas/{id}")).await;
    assert_eq!(still["state"], "failed", "nothing was done");
    let bad_filter = page("/ui/transactions?kind=banana").await.unwrap();
    assert_eq!(bad_filter.status(), StatusCode::BAD_REQUEST, "a bad filter is the caller's mistake");
    assert!(bad_filter.text().await.unwrap().contains("unknown kind"));

    // Signing out ends the session on the server.
    browser.goto("/ui").await;
    browser.click("form[action='/ui/sign-out'] button").await;
    browser.text("#key").await;
    assert_eq!(page("/ui").await.unwrap().url().path(), "/ui/sign-in", "the old cookie no longer signs in");
    browser.quit().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_creates_a_tenant_and_rotates_its_key_and_single_tenant_mode_needs_no_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None, &["--admin-token", ADMIN]).await;
    let Some(browser) = Browser::open(&server).await else { return };
    // No tenant yet: the console is open, as the API is.
    browser.goto("/ui").await;
    assert_eq!(browser.text("header .who strong").await, "default");
    browser.text("#attention-empty").await;

    browser.sign_in(ADMIN).await;
    // A caller's mistake is a 4xx page that says what is wrong.
    browser.goto("/ui/settings").await;
    browser.fill("#policy", "no-such-policy").await;
    browser.follow("form[action='/ui/settings/default-policy'] button").await;
    assert_ne!(browser.text("h1").await, "The server failed");
    assert!(browser.text("p.error").await.contains("no-such-policy"), "the message names the policy");
    browser.goto("/ui/settings").await;
    browser.fill("#tenant-id", "initech").await;
    browser.fill("#tenant-limits", r#"{"max_concurrent": 5}"#).await;
    browser.follow("#create-tenant").await;
    let first = browser.text("#new-key").await;
    assert!(first.starts_with("wtx_"), "{first}");
    assert_eq!(Caller::new(&server, Some(first.clone())).get("/v1/sagas").await.0, StatusCode::OK, "the key shown works");
    browser.goto("/ui/admin/tenants/initech").await;
    assert!(!browser.client.source().await.unwrap().contains(&first), "a key is shown once only");
    assert!(browser.text("#keys").await.contains("live"));

    // Rotate: a new key, the old one revoked.
    browser.click("#keys form[action$='/rotate'] button").await;
    browser.client.accept_alert().await.unwrap();
    let second = browser.text("#new-key").await;
    assert_ne!(first, second);
    assert_eq!(Caller::new(&server, Some(first)).get("/v1/sagas").await.0, StatusCode::UNAUTHORIZED, "the rotated key is revoked");
    assert_eq!(Caller::new(&server, Some(second.clone())).get("/v1/sagas").await.0, StatusCode::OK);
    browser.screenshot("tenant").await;

    // Now tenants exist: the admin sees tenants, not a tenant's transactions.
    browser.goto("/ui/transactions").await;
    browser.text("#tenants").await;
    browser.quit().await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_a_managed_selection_and_the_searchs_filters_and_pages_read_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let participant = HttpParticipant::start(Script::default()).await;
    let (server, acme, _) = two_tenants(dir.path(), &participant).await;
    let Some(browser) = Browser::open(&server).await else { return };
    let api = Caller::new(&server, Some(acme.clone()));
    assert_eq!(api.push("scripted", plugins::SCRIPTED).await.0, StatusCode::CREATED);
    let refuse = json!({"script": {"prepare": {"do": "vote_abort", "reason": "insufficient funds"}}});
    let (_, tpc) = api.post("/v1/2pc", json!({"transaction_name": "transfer", "participants": [
        {"participant_id": "debit", "plugin": "scripted"}, {"participant_id": "credit", "plugin": "scripted", "parameters": refuse}]})).await;
    let tpc = tpc["transaction_id"].as_str().unwrap().to_string();
    let (_, aborted) = api.post(&format!("/v1/2pc/{tpc}/execute"), json!({})).await;
    assert_eq!(aborted["state"], "aborted", "{aborted}");
    let (_, managed) = api.post("/v1/transactions", json!({"transaction_name": "managed-order"})).await;
    let managed = managed["transaction_id"].as_str().unwrap().to_string();
    api.post(&format!("/v1/transactions/{managed}/participants"), json!({"participant_id": "reserve", "plugin": "scripted"})).await;
    let (_, done) = api.post(&format!("/v1/transactions/{managed}/execute"), json!({})).await;
    let delegate = done["coordinator_status"]["id"].as_str().expect("a delegate").to_string();

    browser.sign_in(&acme).await;
    // 2PC: each participant's vote, and the decision.
    browser.goto(&format!("/ui/transactions/2pc/{tpc}")).await;
    assert!(browser.text("#decision").await.contains("abort"));
    let votes = browser.text("#participants").await;
    assert!(votes.contains("debit") && votes.contains("prepared") && votes.contains("abort: insufficient funds") && votes.contains("scripted@1"), "{votes}");
    browser.screenshot("two-phase").await;

    // Managed: the pattern selected, why, and the delegate one click away.
    browser.goto(&format!("/ui/transactions/transaction/{managed}")).await;
    let pattern = browser.text("#pattern").await;
    assert!(pattern == "saga" || pattern == "2pc", "{pattern}");
    assert!(browser.text("#selection-heading + dl").await.contains("Policy"));
    browser.screenshot("managed").await;
    browser.click("#delegate").await;
    assert_eq!(browser.text("h1").await, delegate);

    // The search: a filter from the form, then pages of two through everything.
    browser.goto("/ui/transactions").await;
    browser.click("#f-kind option[value='2pc']").await;
    browser.follow(".filters button[type=submit]").await;
    browser.until("//table[@id='results']").await;
    let found = browser.text("#results tbody").await;
    assert!(found.contains(&tpc) && !found.contains(&managed), "{found}");
    browser.goto("/ui/transactions?limit=2").await;
    let mut seen = Vec::new();
    loop {
        let rows = browser.client.find_all(Locator::Css("#results tbody tr td:first-child a")).await.unwrap();
        assert!(!rows.is_empty() && rows.len() <= 2);
        for row in rows {
            seen.push(row.text().await.unwrap());
        }
        match browser.client.find(Locator::Css("#next-page")).await {
            Ok(_) => browser.follow("#next-page").await,
            Err(_) => break,
        }
        browser.text("#results").await;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "nothing seen twice: {seen:?}");
    for id in [&tpc, &managed, &delegate] {
        assert!(seen.contains(id), "{id} in {seen:?}");
    }
    browser.quit().await;
    server.kill().await;
}
