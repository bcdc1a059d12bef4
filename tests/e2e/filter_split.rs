//! The coalmine filter splits live traffic inside a real Envoy.
//!
//! Each test starts the Envoy from `.venv` with the shipped `envoy/envoy.yaml`
//! (re-pointed at upstreams on loopback) and the release build of the filter.

use anyhow::{Result, ensure};
use coalmine_e2e::{Envoy, EnvoyConfig, Upstream, poll, prometheus_value};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

struct Stack {
    envoy: Envoy,
    v1: Upstream,
    v2: Upstream,
}

/// Envoy with the shipped config in standalone mode (or another plugin
/// configuration), `heart-v1`/`heart-v2` on fresh upstreams, with or
/// without the strip of the clients' role and cluster headers.
async fn stack(plugin: Option<Value>, strip: bool) -> Result<Stack> {
    let (v1, v2) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
    );
    let mut config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?;
    let plugin = match plugin {
        Some(p) => p,
        None => config.standalone_plugin_config()?,
    };
    config = config.plugin_config(&plugin)?;
    if !strip {
        config = config.without_header_strip()?;
    }
    Ok(Stack {
        envoy: Envoy::start(config).await?,
        v1,
        v2,
    })
}

/// What a client saw of one response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    served_by: String,
    role: Option<String>,
    version: Option<String>,
}

/// Sends `n` GETs with `headers(i)` over `concurrency` connections.
async fn send(
    url: String,
    n: usize,
    concurrency: usize,
    headers: impl Fn(usize) -> Vec<(&'static str, String)> + Send + Sync + 'static,
) -> Result<Vec<Seen>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let headers = std::sync::Arc::new(headers);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, url, headers) = (client.clone(), url.clone(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in (worker..n).step_by(concurrency) {
                let mut req = client.get(&url);
                for (k, v) in headers(i) {
                    req = req.header(k, v);
                }
                let resp = req.send().await?;
                let h = |name: &str| {
                    resp.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                out.push((
                    i,
                    Seen {
                        status: resp.status().as_u16(),
                        served_by: h("x-served-by").unwrap_or_default(),
                        role: h("x-coalmine-role"),
                        version: h("x-coalmine-version"),
                    },
                ));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, s)| s).collect())
}

fn served_by(role: &str) -> &'static str {
    if role == "canary" {
        "heart-v2"
    } else {
        "heart-v1"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_percent_of_ten_thousand_requests_reach_the_canary() -> Result<()> {
    let s = stack(None, true).await?;
    let n = 10_000;
    let seen = send(s.envoy.url("/predict/heart"), n, 16, |_| vec![]).await?;

    let mut by_role: HashMap<String, u64> = HashMap::new();
    for r in &seen {
        ensure!(r.status == 200, "unexpected response {r:?}");
        let role = r.role.clone().unwrap_or_default();
        // The response names the upstream that really served it.
        ensure!(
            r.served_by == served_by(&role),
            "role header disagrees with the upstream: {r:?}"
        );
        let want_version = if role == "canary" { "v2" } else { "v1" };
        ensure!(r.version.as_deref() == Some(want_version), "{r:?}");
        *by_role.entry(role).or_default() += 1;
    }
    let canary = by_role.get("canary").copied().unwrap_or(0);
    let baseline = by_role.get("baseline").copied().unwrap_or(0);
    ensure!(canary + baseline == n as u64, "{by_role:?}");
    let share = canary as f64 / n as f64 * 100.0;
    println!("observed canary share: {share:.2} % of {n} requests (configured 20 %)");
    ensure!(
        (share - 20.0).abs() <= 1.5,
        "canary share {share:.2} % is outside 20 ± 1.5 %"
    );

    // The canary's requests were tagged with their role and cluster; the
    // baseline's went out untagged (heart-v1 is the deployment's
    // `default_cluster`, where the route sends a request without the
    // header), with no coalmine header at all.
    ensure!(
        s.v1.seen().iter().all(|h| h.coalmine_headers.is_empty()),
        "{:?}",
        s.v1.seen().iter().find(|h| !h.coalmine_headers.is_empty())
    );
    ensure!(
        s.v2.seen().iter().all(
            |h| h.role.as_deref() == Some("canary") && h.cluster.as_deref() == Some("heart-v2")
        )
    );
    ensure!(s.v2.seen().len() as u64 == canary);

    // Envoy's admin endpoint counts exactly what was sent, with labels.
    let counts = poll(
        "Envoy's coalmine counters to match",
        Duration::from_secs(10),
        || async {
            let text = s.envoy.prometheus().await?;
            let get = |role, class| {
                prometheus_value(
                    &text,
                    "coalmine_requests",
                    &[
                        ("deployment", "heart-prod"),
                        ("role", role),
                        ("class", class),
                    ],
                )
            };
            let got = (get("baseline", "2xx"), get("canary", "2xx"));
            Ok((got == (baseline as f64, canary as f64)).then_some((text, got)))
        },
    )
    .await?;
    let text = counts.0;
    for role in ["baseline", "canary"] {
        for class in ["4xx", "5xx", "reset"] {
            let v = prometheus_value(
                &text,
                "coalmine_requests",
                &[
                    ("deployment", "heart-prod"),
                    ("role", role),
                    ("class", class),
                ],
            );
            ensure!(v == 0.0, "{role} {class} = {v}");
        }
    }
    ensure!(
        prometheus_value(
            &text,
            "coalmine_canary_share_bps",
            &[("deployment", "heart-prod")]
        ) == 2000.0
    );
    // Latency in microseconds: requests on loopback take about a
    // millisecond or less, and land in the buckets below it (in whole
    // milliseconds, every one of them would record 0). Envoy merges
    // histograms on its stats flush, so they may show a few seconds late.
    for role in ["baseline", "canary"] {
        let (under_50us, under_5ms, all) =
            poll("the latency histogram", Duration::from_secs(15), || async {
                let text = s.envoy.prometheus().await?;
                let labels = |le| [("deployment", "heart-prod"), ("role", role), ("le", le)];
                let bucket =
                    |le| prometheus_value(&text, "coalmine_latency_us_bucket", &labels(le));
                let all = prometheus_value(
                    &text,
                    "coalmine_latency_us_count",
                    &[("deployment", "heart-prod"), ("role", role)],
                );
                Ok((all > 0.0).then_some((bucket("50"), bucket("5000"), all)))
            })
            .await?;
        ensure!(
            under_5ms > 0.0 && under_50us < all,
            "{role} latency: {under_50us} under 50 µs, {under_5ms} under 5 ms, of {all}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sticky_user_never_changes_role() -> Result<()> {
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
    plugin["deployments"][0]["sticky_header"] = json!("x-user-id");
    let s = stack(Some(plugin), true).await?;
    let users = 300;
    let seen = send(s.envoy.url("/predict/heart"), users * 5, 8, move |i| {
        vec![("x-user-id", format!("user-{}", i % users))]
    })
    .await?;
    let mut role_of: HashMap<usize, String> = HashMap::new();
    for (i, r) in seen.iter().enumerate() {
        ensure!(r.status == 200, "{r:?}");
        let role = r.role.clone().unwrap_or_default();
        ensure!(r.served_by == served_by(&role), "{r:?}");
        let first = role_of.entry(i % users).or_insert_with(|| role.clone());
        ensure!(
            *first == role,
            "user-{} moved from {first} to {role}",
            i % users
        );
    }
    let canary_users = role_of.values().filter(|r| *r == "canary").count();
    println!("sticky: {canary_users} of {users} users on the canary");
    // 20 % of 300 users: 60 expected; far outside [30, 95] would be a broken hash.
    ensure!(
        (30..=95).contains(&canary_users),
        "{canary_users} canary users"
    );

    // Requests without the header are split at random.
    let anonymous = send(s.envoy.url("/predict/heart"), 400, 4, |_| vec![]).await?;
    let canary = anonymous
        .iter()
        .filter(|r| r.role.as_deref() == Some("canary"))
        .count();
    ensure!(
        (30..=140).contains(&canary),
        "{canary} of 400 anonymous requests on the canary"
    );
    Ok(())
}

/// Clients cannot choose an upstream: with the coalmine filter alone (the
/// header strip removed) and with the shipped chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spoofed_coalmine_headers_never_choose_the_upstream() -> Result<()> {
    for strip in [false, true] {
        let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
        plugin["deployments"][0]["static"]["canary_percent"] = json!(0);
        let s = stack(Some(plugin), strip).await?;
        let spoof = |_| {
            vec![
                ("x-coalmine-cluster", "heart-v2".to_string()),
                ("x-coalmine-role", "canary".to_string()),
            ]
        };
        // Inside the deployment: the filter's choice (baseline at 0 %) wins.
        let inside = send(s.envoy.url("/predict/heart"), 200, 4, spoof).await?;
        ensure!(
            inside
                .iter()
                .all(|r| r.served_by == "heart-v1" && r.role.as_deref() == Some("baseline")),
            "a spoofed header chose the upstream (strip {strip}): {:?}",
            inside.iter().find(|r| r.served_by != "heart-v1")
        );
        // Outside every deployment: the headers are removed, the fallback
        // route serves, and no coalmine headers are added to the response.
        let outside = send(s.envoy.url("/other/path"), 200, 4, spoof).await?;
        ensure!(
            outside
                .iter()
                .all(|r| r.served_by == "heart-v1" && r.role.is_none() && r.version.is_none()),
            "{:?}",
            outside.first()
        );
        let leaked: Vec<_> =
            s.v1.seen()
                .into_iter()
                .filter(|h| h.path == "/other/path" && (h.role.is_some() || h.cluster.is_some()))
                .collect();
        ensure!(
            leaked.is_empty(),
            "spoofed headers reached the upstream (strip {strip}): {:?}",
            leaked.first()
        );
        ensure!(
            s.v2.seen().is_empty(),
            "the canary was reached at 0 % (strip {strip})"
        );
        let inside_seen: Vec<_> =
            s.v1.seen()
                .into_iter()
                .filter(|h| h.path == "/predict")
                .collect();
        ensure!(
            inside_seen.len() == 200,
            "{} requests arrived rewritten to /predict",
            inside_seen.len()
        );
        // Behind the strip the baseline's requests go out untagged (the
        // route's default); the filter alone tags them itself.
        let tagged = !strip;
        for h in inside_seen {
            let ok = if tagged {
                h.cluster.as_deref() == Some("heart-v1") && h.role.as_deref() == Some("baseline")
            } else {
                h.coalmine_headers.is_empty()
            };
            ensure!(ok, "{h:?} (strip {strip})");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_plugin_config_keeps_envoy_from_serving() -> Result<()> {
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
    plugin["deployments"][0]["static"]["canary_percent"] = json!(150);
    let config = EnvoyConfig::shipped("envoy.yaml")?.plugin_config(&plugin)?;
    let (status, log) = Envoy::start_expecting_refusal(config).await?;
    ensure!(!status.success(), "envoy exited with {status}");
    let line = log
        .lines()
        .find(|l| l.contains("invalid plugin configuration"))
        .unwrap_or_default();
    ensure!(
        line.contains("deployments[0].static.canary_percent: must be between 0 and 100, got 150"),
        "the log does not name the field:\n{log}"
    );

    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
    plugin["deployments"][0]["match"]["colour"] = json!("red");
    let config = EnvoyConfig::shipped("envoy.yaml")?.plugin_config(&plugin)?;
    let (status, log) = Envoy::start_expecting_refusal(config).await?;
    ensure!(!status.success());
    ensure!(
        log.contains("deployments[0].match.colour: unknown field `colour`"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tester_override_chooses_the_role_only_with_the_secret() -> Result<()> {
    const SECRET: &str = "e2e-tester-secret-0123";
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
    plugin["deployments"][0]["static"]["canary_percent"] = json!(0);
    plugin["headers"]["tester_override"] = json!({"header": "x-coalmine-tester", "secret": SECRET});
    let s = stack(Some(plugin), true).await?;
    let url = s.envoy.url("/predict/heart");
    let with = |value: String| move |_| vec![("x-coalmine-tester", value.clone())];

    // With the secret, a tester reaches the canary at 0 % (and can ask for
    // the baseline too).
    let forced = send(url.clone(), 50, 2, with(format!("canary:{SECRET}"))).await?;
    ensure!(
        forced
            .iter()
            .all(|r| r.served_by == "heart-v2" && r.role.as_deref() == Some("canary")),
        "{:?}",
        forced.first()
    );
    let base = send(url.clone(), 20, 2, with(format!("baseline:{SECRET}"))).await?;
    ensure!(base.iter().all(|r| r.served_by == "heart-v1"));
    // Without it, the header changes nothing.
    for wrong in [
        "canary:e2e-tester-secret-012".to_string(),
        format!("canary:{SECRET}x"),
        "canary".to_string(),
        SECRET.to_string(),
        format!("Canary:{SECRET}"),
    ] {
        let seen = send(url.clone(), 20, 2, with(wrong.clone())).await?;
        ensure!(
            seen.iter().all(|r| r.served_by == "heart-v1"),
            "{wrong:?} reached the canary"
        );
    }
    // The header never reaches an upstream, right or wrong.
    let leaked: Vec<_> =
        s.v1.seen()
            .into_iter()
            .chain(s.v2.seen())
            .filter(|h| h.coalmine_headers.iter().any(|n| n == "x-coalmine-tester"))
            .collect();
    ensure!(leaked.is_empty(), "{:?}", leaked.first());
    // Forced requests are counted apart: they are not part of the
    // comparison of the roles. (The filter hands its counts to Envoy on
    // its tick, so they show within a second.)
    let labels = [("deployment", "heart-prod")];
    let text = poll("the tester counter", Duration::from_secs(5), || async {
        let text = s.envoy.prometheus().await?;
        let n = prometheus_value(&text, "coalmine_tester_overrides", &labels);
        Ok((n >= 70.0).then_some(text))
    })
    .await?;
    ensure!(prometheus_value(&text, "coalmine_tester_overrides", &labels) == 70.0);
    let canary_counted = prometheus_value(
        &text,
        "coalmine_requests",
        &[
            ("deployment", "heart-prod"),
            ("role", "canary"),
            ("class", "2xx"),
        ],
    );
    ensure!(
        canary_counted == 0.0,
        "{canary_counted} forced requests counted as canary traffic"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_never_break_the_filter() -> Result<()> {
    let mut plugin = EnvoyConfig::shipped("envoy.yaml")?.standalone_plugin_config()?;
    plugin["deployments"][0]["sticky_header"] = json!("x-user-id");
    plugin["headers"]["tester_override"] =
        json!({"header": "x-coalmine-tester", "secret": "e2e-tester-secret-0123"});
    let s = stack(Some(plugin), true).await?;
    let addr = s.envoy.url("");
    let authority = addr.trim_start_matches("http://").trim_end_matches('/');
    let raw = |request: Vec<u8>| {
        let authority = authority.to_string();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut conn = tokio::net::TcpStream::connect(&authority).await?;
            conn.write_all(&request).await?;
            let mut answer = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer).to_string();
            anyhow::Ok(text.lines().next().unwrap_or_default().to_string())
        }
    };
    let request = |path: &str, extra: &[u8]| {
        let mut r = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n").into_bytes();
        r.extend_from_slice(extra);
        r.extend_from_slice(b"Connection: close\r\n\r\n");
        r
    };
    let big = "u".repeat(48 * 1024);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-UTF-8 sticky key",
            request("/predict/heart", b"x-user-id: \xff\xfe\x80caf\xe9\r\n"),
        ),
        (
            "non-UTF-8 override",
            request("/predict/heart", b"x-coalmine-tester: canary:\xff\xfe\r\n"),
        ),
        (
            "48 KiB sticky key",
            request("/predict/heart", format!("x-user-id: {big}\r\n").as_bytes()),
        ),
        (
            "48 KiB override",
            request(
                "/predict/heart",
                format!("x-coalmine-tester: {big}\r\n").as_bytes(),
            ),
        ),
        (
            "asterisk path",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "CONNECT (no :path)",
            format!(
                "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        ),
        (
            "absolute URI",
            request(&format!("http://{authority}/predict/heart"), b""),
        ),
    ];
    for (what, bytes) in cases {
        let status = raw(bytes).await?;
        println!("{what}: {status}");
        ensure!(
            status.starts_with("HTTP/1.1 "),
            "{what}: no answer ({status:?})"
        );
        // A refusal (4xx) is fine; a server error means something broke.
        ensure!(
            !status.starts_with("HTTP/1.1 5"),
            "{what}: a server error ({status:?})"
        );
    }
    // The filter is still there and still splits: normal traffic after all
    // of it.
    let after = send(s.envoy.url("/predict/heart"), 200, 4, |i| {
        vec![("x-user-id", format!("user-{i}"))]
    })
    .await?;
    ensure!(after.iter().all(|r| r.status == 200 && r.role.is_some()));
    ensure!(after.iter().any(|r| r.served_by == "heart-v2"));
    let log = s.envoy.log();
    ensure!(
        !log.contains("panicked")
            && !log.contains("wasm trap")
            && !log.contains("Function: proxy_on"),
        "the filter failed:\n{log}"
    );
    Ok(())
}

/// A deployment matching every path takes every request the filter sees,
/// without reading its path; Envoy's routes decide which requests those
/// are (the filter disabled by route elsewhere). Requests on the other
/// routes pass through untouched and uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_choose_the_requests_of_a_deployment_of_every_path() -> Result<()> {
    let (v1, v2) = (
        Upstream::start("heart-v1").await?,
        Upstream::start("heart-v2").await?,
    );
    let mut config = EnvoyConfig::shipped("envoy.yaml")?
        .upstream("heart-v1", v1.addr)?
        .upstream("heart-v2", v2.addr)?;
    let mut plugin = config.standalone_plugin_config()?;
    plugin["deployments"][0]["match"] = json!({"path_prefix": "/"});
    plugin["deployments"][0]["static"]["canary_percent"] = json!(50);
    let config = config.plugin_config(&plugin)?.routes(json!([
        {"match": {"prefix": "/predict/heart", "headers": [{"name": "x-coalmine-cluster", "present_match": true}]},
         "route": {"cluster_header": "x-coalmine-cluster", "prefix_rewrite": "/predict"}},
        {"match": {"prefix": "/predict/heart"},
         "route": {"cluster": "heart-v1", "prefix_rewrite": "/predict"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "heart-v1"},
         "typed_per_filter_config": {"coalmine": {
             "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true}}}
    ]))?;
    let envoy = Envoy::start(config).await?;
    let inside = send(envoy.url("/predict/heart"), 200, 4, |_| vec![]).await?;
    let roles: HashMap<String, usize> = inside.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.role.clone().unwrap_or_default()).or_default() += 1;
        m
    });
    ensure!(
        inside
            .iter()
            .all(|r| r.status == 200 && r.served_by == served_by(r.role.as_deref().unwrap_or("")))
            && roles.len() == 2
            && !roles.contains_key(""),
        "{roles:?}"
    );
    let outside = send(envoy.url("/other/path"), 50, 2, |_| vec![]).await?;
    ensure!(
        outside
            .iter()
            .all(|r| r.served_by == "heart-v1" && r.role.is_none() && r.version.is_none()),
        "{:?}",
        outside.first()
    );
    // Counted: the deployment's requests, not the others.
    poll(
        "Envoy's coalmine counters to count 200",
        Duration::from_secs(10),
        || async {
            let text = envoy.prometheus().await?;
            let count: f64 = ["baseline", "canary"]
                .iter()
                .map(|role| {
                    prometheus_value(
                        &text,
                        "coalmine_requests",
                        &[
                            ("deployment", "heart-prod"),
                            ("role", role),
                            ("class", "2xx"),
                        ],
                    )
                })
                .sum();
            Ok((count == 200.0).then_some(()))
        },
    )
    .await?;
    Ok(())
}
