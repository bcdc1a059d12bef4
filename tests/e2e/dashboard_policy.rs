//! The dashboard under its Content-Security-Policy, in a real headless
//! Chromium: never framed, no violation while it runs, the token kept for
//! the tab only, a pause that asks first.

use anyhow::{Context, Result, ensure};
use coalmine_e2e::{
    Browser, ControllerProc, OPERATOR_TOKEN, click, element_text as text, poll, workspace_root,
};
use fantoccini::Locator;
use serde_json::{Value, json};
use std::time::Duration;

/// Every violation of the page's policy, from now on and (buffered) since
/// the page loaded, gathered in `window.violations`.
const WATCH_VIOLATIONS: &str = r#"
window.violations = [];
const note = (directive, blocked, sample) => window.violations.push({ directive, blocked, sample });
document.addEventListener("securitypolicyviolation",
  (e) => note(e.effectiveDirective, e.blockedURI, e.sample));
new ReportingObserver((reports) => reports.forEach((r) =>
  note(r.body.effectiveDirective, r.body.blockedURL, r.body.sample)),
  { types: ["csp-violation"], buffered: true }).observe();
"#;

/// The policy's violations seen so far, each once (an event and a report
/// may name the same).
async fn violations(b: &fantoccini::Client) -> Result<Vec<Value>> {
    let seen = b.execute("return window.violations", vec![]).await?;
    let mut seen = seen.as_array().cloned().unwrap_or_default();
    seen.dedup();
    Ok(seen)
}

/// What the page keeps under the token's key: (sessionStorage, localStorage).
async fn stored_token(b: &fantoccini::Client) -> Result<(Value, Value)> {
    let v = b
        .execute(
            "return [sessionStorage.getItem('coalmine.token'), localStorage.getItem('coalmine.token')]",
            vec![],
        )
        .await?;
    Ok((v[0].clone(), v[1].clone()))
}

/// Whether heart-prod's canary is paused, as the controller has it.
async fn paused(c: &ControllerProc) -> Result<bool> {
    let d = c.client().deployment("heart-prod").await?;
    Ok(d.canary.context("no canary")?.paused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_keeps_to_its_policy_and_asks_before_a_pause() -> Result<()> {
    let c = ControllerProc::start(30_000).await?;
    c.heart_prod(json!({"check_interval_seconds": 1})).await?;
    c.start_canary(Some(20.0)).await?;

    // The page, its script and its styles: each with its type, a policy
    // that allows only the controller's own and no frame around it.
    let http = c.http()?;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let r = http.get(c.url(path)).send().await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let csp = header("content-security-policy");
        println!("{path}: Content-Security-Policy: {csp}");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ] {
            ensure!(csp.contains(directive), "{path}: {csp:?} lacks {directive}");
        }
        ensure!(!csp.contains("unsafe-"), "{path}: {csp:?}");
        ensure!(header("x-frame-options") == "DENY", "{path}");
        ensure!(header("x-content-type-options") == "nosniff", "{path}");
        ensure!(header("referrer-policy") == "no-referrer", "{path}");
        ensure!(
            header("content-type").starts_with(content_type),
            "{path}: {}",
            header("content-type")
        );
    }
    // Nor is any other answer to be framed or sniffed.
    let r = http.get(c.url("/healthz")).send().await?;
    ensure!(
        r.headers()
            .get("x-frame-options")
            .is_some_and(|v| v == "DENY")
    );
    ensure!(
        r.headers()
            .get("x-content-type-options")
            .is_some_and(|v| v == "nosniff")
    );

    let browser = Browser::start().await?;
    let b = &browser.client;
    // A token an older page left in localStorage is removed on load.
    b.goto(&c.url("/")).await?;
    b.execute(
        "localStorage.setItem('coalmine.token', arguments[0])",
        vec![json!(OPERATOR_TOKEN)],
    )
    .await?;
    b.refresh().await?;
    b.execute(WATCH_VIOLATIONS, vec![]).await?;
    // The scripts ran: the deployments are drawn.
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#deployments tr[data-name='heart-prod']"))
        .await?;
    ensure!(
        stored_token(b).await? == (Value::Null, Value::Null),
        "after loading: {:?}",
        stored_token(b).await?
    );
    let field = b.find(Locator::Id("token")).await?;
    ensure!(field.prop("value").await?.as_deref() == Some(""));
    // Typed in, the token is kept for this tab only, and in no URL.
    field.send_keys(OPERATOR_TOKEN).await?;
    ensure!(
        stored_token(b).await? == (json!(OPERATOR_TOKEN), Value::Null),
        "after typing: {:?}",
        stored_token(b).await?
    );
    // Into the deployment's page (the same document: the listener stays).
    b.execute("location.hash = '#/deployments/heart-prod'", vec![])
        .await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#pause:not([disabled])"))
        .await?;
    ensure!(!b.current_url().await?.as_str().contains(OPERATOR_TOKEN));

    // Pause asks, naming the deployment and the change; cancelled, the
    // canary goes on.
    click(b, "pause").await?;
    let question = b.get_alert_text().await?;
    println!("pause asked: {question}");
    ensure!(
        question.contains("Pause heart-prod: canary v2 at 20 % stays there"),
        "{question:?}"
    );
    b.dismiss_alert().await?;
    let message = poll("the cancellation said", Duration::from_secs(5), || async {
        Ok(text(b, "message").await.filter(|m| m.contains("Cancelled")))
    })
    .await?;
    println!("after cancelling: {message}");
    ensure!(!paused(&c).await?, "paused though cancelled");
    let events = c.client().events("heart-prod", None, None).await?;
    ensure!(
        events.iter().all(|e| e.event.kind.as_str() != "paused"),
        "a paused event though cancelled"
    );
    // Accepted, it pauses, by the operator.
    click(b, "pause").await?;
    let question = b.get_alert_text().await?;
    ensure!(question.contains("Pause heart-prod"), "{question:?}");
    b.accept_alert().await?;
    poll("the canary paused", Duration::from_secs(10), || async {
        Ok(paused(&c).await?.then_some(()))
    })
    .await?;
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#resume:not([disabled])"))
        .await?;
    // Resume asks too; cancelled, the canary stays paused.
    click(b, "resume").await?;
    let question = b.get_alert_text().await?;
    ensure!(
        question.contains("Resume heart-prod: canary v2 at 20 %"),
        "{question:?}"
    );
    b.dismiss_alert().await?;
    ensure!(paused(&c).await?, "resumed though cancelled");
    // A few redraws later, still no violation of the policy.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = violations(b).await?;
    ensure!(seen.is_empty(), "the policy was violated: {seen:?}");
    let shot = workspace_root().join("target/e2e-artifacts/dashboard-paused.png");
    browser.screenshot(&shot).await?;

    // The watch itself works: an inline script is refused, and seen.
    b.execute(
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true'; document.body.appendChild(s)",
        vec![],
    )
    .await?;
    let seen = poll(
        "the inline script's violation",
        Duration::from_secs(5),
        || async {
            let seen = violations(b).await?;
            Ok((!seen.is_empty()).then_some(seen))
        },
    )
    .await?;
    println!("an inline script, refused: {seen:?}");
    ensure!(
        seen.iter().all(|v| v["directive"]
            .as_str()
            .is_some_and(|d| d.starts_with("script-src"))),
        "{seen:?}"
    );
    let ran = b
        .execute("return window.inlineRan === true", vec![])
        .await?;
    ensure!(ran == json!(false), "the inline script ran");

    // The token survives a reload of the tab, but a new tab starts without it.
    b.refresh().await?;
    b.wait().for_element(Locator::Id("pause")).await?;
    let kept = b.find(Locator::Id("token")).await?.prop("value").await?;
    ensure!(kept.as_deref() == Some(OPERATOR_TOKEN), "{kept:?}");
    let tab = b.new_window(true).await?;
    b.switch_to_window(tab.handle).await?;
    b.goto(&c.url("/")).await?;
    b.wait()
        .for_element(Locator::Css("#deployments tr[data-name='heart-prod']"))
        .await?;
    let fresh = b.find(Locator::Id("token")).await?.prop("value").await?;
    ensure!(fresh.as_deref() == Some(""), "a new tab has {fresh:?}");
    ensure!(stored_token(b).await? == (Value::Null, Value::Null));
    Ok(())
}
