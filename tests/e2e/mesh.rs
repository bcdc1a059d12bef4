//! coalmine deployed: the compose stack's binaries, commands and Envoy
//! config run as plain processes; the route shape of the Istio manifests
//! (one header-matched route per version) on a real Envoy; and several
//! proxies behind one controller.

use anyhow::{Context as _, Result, anyhow, ensure};
use coalmine_client::Action;
use coalmine_client::types::StartCanary;
use coalmine_e2e::compose::Compose;
use coalmine_e2e::{
    ControllerProc, Envoy, EnvoyConfig, INTERVAL_MS, Load, ModelServer, Stack, envoy_bin,
    package_bin, patients, poll, prometheus_value, settled_role_counts, workspace_root,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The Envoy release the tests run (`.venv/bin/envoy --version`).
fn tested_envoy_version() -> Result<String> {
    let out = std::process::Command::new(envoy_bin()?)
        .arg("--version")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    text.split('/')
        .find(|part| {
            part.split('.').count() == 3 && part.split('.').all(|n| n.parse::<u32>().is_ok())
        })
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no version in {text:?}"))
}

#[test]
fn the_compose_file_and_images_agree_with_what_is_tested() -> Result<()> {
    let root = workspace_root();
    let compose = Compose::load()?;
    let services = compose.services();
    for s in [
        "envoy",
        "controller",
        "heart-v1",
        "heart-v2",
        "prometheus",
        "grafana",
    ] {
        ensure!(
            services.iter().any(|x| x == s),
            "no service {s}: {services:?}"
        );
    }

    // Envoy: the official image at the tested release, the config and the
    // filter it loads mounted from the repository.
    let envoy = compose.service("envoy")?;
    let version = tested_envoy_version()?;
    ensure!(
        envoy["image"] == json!(format!("envoyproxy/envoy:v{version}")),
        "compose runs {} but the tests run Envoy {version}",
        envoy["image"]
    );
    let command = compose.command("envoy")?;
    let config = &arg_after(&command, "-c")?;
    let binds = compose.binds("envoy")?;
    let host_path = |container: &str| {
        binds.iter().find_map(|(host, target)| {
            Path::new(container)
                .strip_prefix(target)
                .ok()
                .map(|rest| host.join(rest))
        })
    };
    let config_host = host_path(config).ok_or_else(|| anyhow!("{config} is not mounted"))?;
    ensure!(
        config_host == root.join("envoy/compose.yaml"),
        "envoy runs {}",
        config_host.display()
    );
    let mut shipped = EnvoyConfig::shipped("compose.yaml")?;
    let wasm = shipped.wasm_filename()?;
    let working_dir = envoy["working_dir"].as_str().unwrap_or("/");
    let wasm_host = host_path(&Path::new(working_dir).join(&wasm).display().to_string())
        .ok_or_else(|| anyhow!("the filter {wasm} is not mounted"))?;
    ensure!(
        wasm_host == root.join("target/wasm32-wasip1/release/coalmine_filter.wasm"),
        "envoy loads {}",
        wasm_host.display()
    );

    // The images: multi-stage, the toolchain of rust-toolchain.toml, a
    // non-root final stage running a binary of the workspace, listening where
    // compose says.
    let toolchain = std::fs::read_to_string(root.join("rust-toolchain.toml"))?;
    let controller_listen = compose
        .environment("controller")?
        .into_iter()
        .find(|(k, _)| k == "COALMINE_LISTEN")
        .map(|(_, v)| v)
        .ok_or_else(|| anyhow!("controller has no COALMINE_LISTEN"))?;
    let models_listen = arg_after(&compose.command("heart-v1")?, "--listen")?;
    for (service, listen) in [
        ("controller", &controller_listen),
        ("heart-v1", &models_listen),
    ] {
        let image = compose.dockerfile(service)?;
        let name = image.path.display().to_string();
        let stages = image.stages();
        ensure!(stages.len() >= 2, "{name}: not multi-stage");
        let rust = image
            .global_arg("RUST_VERSION")
            .ok_or_else(|| anyhow!("{name}: no RUST_VERSION"))?;
        ensure!(
            toolchain.contains(&format!("channel = \"{rust}\"")),
            "{name}: builds with Rust {rust}, rust-toolchain.toml says otherwise"
        );
        let user = image.final_misc("USER");
        let uid: u32 = user
            .last()
            .and_then(|u| u.split(':').next())
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| anyhow!("{name}: the final stage sets no numeric USER: {user:?}"))?;
        ensure!(uid != 0, "{name}: runs as root");
        let entrypoint = image
            .entrypoint()
            .ok_or_else(|| anyhow!("{name}: no exec-form ENTRYPOINT"))?;
        let bin = Path::new(&entrypoint[0])
            .file_name()
            .and_then(|b| b.to_str())
            .unwrap_or_default();
        package_bin(bin).with_context(|| format!("{name}: runs {bin}"))?;
        let port = listen.rsplit(':').next().unwrap_or_default();
        ensure!(
            image.final_misc("EXPOSE") == [port.to_string()],
            "{name}: exposes {:?}, compose listens on {listen}",
            image.final_misc("EXPOSE")
        );
        println!(
            "{name}: {} stages, Rust {rust}, user {uid}, runs {bin}, port {port}",
            stages.len()
        );
    }
    // heart-v2 runs the image heart-v1 builds.
    ensure!(
        compose.service("heart-v2")?["image"] == compose.service("heart-v1")?["image"],
        "the two model services run different images"
    );

    // The builds need the workspace and the data set; .dockerignore must
    // leave them in the context.
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "data",
        "protocol",
        "controller",
        "models-server",
    ]
    .into_iter()
    .chain(manifest.lines().filter_map(|l| {
        l.trim()
            .trim_end_matches(',')
            .strip_prefix('"')?
            .strip_suffix('"')
    })) {
        for rule in ignore
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            ensure!(
                !(needed == rule || needed.starts_with(&format!("{rule}/"))),
                ".dockerignore drops {needed} ({rule})"
            );
        }
    }

    // Prometheus and Grafana get the shipped scrape config and dashboard.
    for (service, wanted) in [
        ("prometheus", "deploy/prometheus/compose.yml"),
        ("grafana", "deploy/grafana/coalmine.json"),
        ("grafana", "deploy/grafana/provisioning"),
    ] {
        let binds = compose.binds(service)?;
        ensure!(
            binds.iter().any(|(host, _)| *host == root.join(wanted)),
            "{service} does not mount {wanted}: {binds:?}"
        );
        ensure!(root.join(wanted).exists(), "{wanted} is missing");
    }
    Ok(())
}

fn arg_after(args: &[String], flag: &str) -> Result<String> {
    args.iter()
        .skip_while(|a| *a != flag)
        .nth(1)
        .cloned()
        .ok_or_else(|| anyhow!("no {flag} in {args:?}"))
}

/// A response header's value, or "" without one.
fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// POSTs one patient through Envoy; returns the role header, the version
/// header and the model version the body names.
async fn predict(client: &reqwest::Client, envoy: &Envoy, patient: &Value) -> Result<[String; 3]> {
    let r = client
        .post(envoy.url("/predict/heart"))
        .json(patient)
        .send()
        .await?
        .error_for_status()?;
    let (role, version) = (
        header(&r, "x-coalmine-role"),
        header(&r, "x-coalmine-version"),
    );
    let body: Value = r.json().await?;
    let model = body["model_version"].as_str().unwrap_or("").to_string();
    Ok([role, version, model])
}

/// `n` predictions; how many came from each (role, version header, model).
async fn tally(
    client: &reqwest::Client,
    envoy: &Envoy,
    patients: &[Value],
    n: usize,
) -> Result<BTreeMap<[String; 3], usize>> {
    let mut seen = BTreeMap::new();
    for p in patients.iter().cycle().take(n) {
        *seen.entry(predict(client, envoy, p).await?).or_default() += 1;
    }
    Ok(seen)
}

fn key(role: &str, version: &str, model: &str) -> [String; 3] {
    [role.to_string(), version.to_string(), model.to_string()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_runs_as_plain_processes() -> Result<()> {
    let compose = Compose::load()?;
    let dir = tempfile::tempdir()?;

    // The models, made by the image's own build steps.
    let models_bin = package_bin("coalmine-models-server")?;
    let out = dir.path().join("out");
    std::fs::create_dir_all(out.join("bin"))?;
    std::os::unix::fs::symlink(&models_bin, out.join("bin/coalmine-models-server"))?;
    std::fs::create_dir_all(out.join("models"))?;
    let image = compose.dockerfile("heart-v1")?;
    for run in image.build_runs() {
        if run.contains("cargo build") {
            continue;
        }
        let command = run.replace("/out/", &format!("{}/", out.display()));
        let status = std::process::Command::new("sh")
            .args(["-c", &command])
            .current_dir(workspace_root())
            .status()?;
        ensure!(status.success(), "{}: `{run}` failed", image.path.display());
    }

    // The services, with compose's commands and environments; only their
    // addresses become loopback ones.
    let mut servers = BTreeMap::new();
    for service in ["heart-v1", "heart-v2"] {
        let args: Vec<String> = compose
            .command(service)?
            .iter()
            .map(|a| {
                if a.starts_with("0.0.0.0:") {
                    "127.0.0.1:0".to_string()
                } else {
                    a.replace("/models/", &format!("{}/models/", out.display()))
                }
            })
            .collect();
        let env = compose.environment(service)?;
        let server =
            ModelServer::serve(&models_bin, None, &args, &env, dir.path(), service).await?;
        servers.insert(service, server);
    }
    let controller = ControllerProc::start_env(&compose.environment("controller")?).await?;
    ensure!(
        controller.db_path().exists(),
        "the controller did not take its database from COALMINE_DB"
    );
    let envoy = Envoy::start_as(
        EnvoyConfig::shipped("compose.yaml")?
            .upstream("heart-v1", servers["heart-v1"].addr)?
            .upstream("heart-v2", servers["heart-v2"].addr)?
            .upstream("coalmine_controller", controller.addr)?,
        "coalmine-compose",
    )
    .await?;
    let client = reqwest::Client::new();
    let patients = patients()?;

    // As the README's walk-through does it: heart-prod on v1, v2 registered
    // under the cluster its route matches, a canary at 30 %.
    controller
        .heart_prod(json!({"check_interval_seconds": 1}))
        .await?;
    let api = controller.client();
    let start = StartCanary {
        version: "v2".into(),
        percent: Some(30.0),
        ..StartCanary::default()
    };
    api.start_canary("heart-prod", &start).await?;
    api.act("heart-prod", Action::Pause, None).await?;
    // (The static 20 % split of envoy/compose.yaml serves until then.)
    poll(
        "the compose Envoy to route by the controller's table",
        Duration::from_secs(10),
        || async { Ok((share_bps(&envoy).await? == 3000.0).then_some(())) },
    )
    .await?;

    // Each version's route reaches its own model: the model that answered is
    // the version the filter chose, for both roles.
    let seen = tally(&client, &envoy, &patients, 200).await?;
    println!("canary at 30 %: {seen:?}");
    let baseline = seen.get(&key("baseline", "v1", "v1")).copied().unwrap_or(0);
    let canary = seen.get(&key("canary", "v2", "v2")).copied().unwrap_or(0);
    ensure!(
        baseline + canary == 200 && canary >= 30 && baseline >= 100,
        "a version answered for another: {seen:?}"
    );

    // Promotion: v2 becomes the baseline and still reaches its own model (a
    // route on the role alone would now send "baseline" to v1). Then a
    // rollback after the promotion: back to the pinned v1, through its route.
    for (action, version) in [(Action::Promote, "v2"), (Action::Rollback, "v1")] {
        api.act("heart-prod", action, None).await?;
        let action = action.as_str();
        let only = key("baseline", version, version);
        poll(
            "every request on one version",
            Duration::from_secs(5),
            || async {
                let seen = tally(&client, &envoy, &patients, 20).await?;
                Ok((seen.get(&only) == Some(&20)).then_some(()))
            },
        )
        .await?;
        let seen = tally(&client, &envoy, &patients, 100).await?;
        println!("after {action}: {seen:?}");
        ensure!(
            seen.len() == 1 && seen.contains_key(&only),
            "after {action}: {seen:?}"
        );
    }
    Ok(())
}

/// The canary share (basis points) a proxy routes by.
async fn share_bps(envoy: &Envoy) -> Result<f64> {
    Ok(prometheus_value(
        &envoy.prometheus().await?,
        "coalmine_canary_share_bps",
        &[("deployment", "heart-prod")],
    ))
}

/// Polls until the controller's per-role counts equal the sum of `counts`.
async fn controller_counts_equal(s: &Stack, counts: &[(f64, f64)]) -> Result<(f64, f64)> {
    let sum = counts
        .iter()
        .fold((0.0, 0.0), |(b, c), (x, y)| (b + x, c + y));
    poll(
        "the controller's counts to equal the proxies' sum",
        Duration::from_secs(10),
        || async {
            let seen = s.controller.role_counts().await?;
            ensure!(
                seen.0 <= sum.0 && seen.1 <= sum.1,
                "the controller counts more than the proxies: {seen:?} vs {sum:?}"
            );
            Ok((seen == sum).then_some(seen))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_behind_one_controller_act_as_one() -> Result<()> {
    let s = Stack::start(30_000).await?;
    let names = ["proxy-a", "proxy-b", "proxy-c"];
    let mut proxies = Vec::new();
    for name in names {
        proxies.push(s.envoy(name, 30_000).await?);
    }
    // No automatic step during the test: long bake; rollbacks stay automatic.
    s.deployment(json!({"check_interval_seconds": 1, "bake_seconds": 3600}))
        .await?;
    s.start_canary(30.0).await?;
    for p in &proxies {
        poll(
            "the proxy to route at 30 %",
            Duration::from_secs(10),
            || async { Ok((share_bps(p).await? == 3000.0).then_some(())) },
        )
        .await?;
    }

    // 1. What each proxy saw adds up to what the controller judges.
    let loads: Vec<Load> = proxies
        .iter()
        .zip([20, 30, 40])
        .map(|(p, rps)| Load::start(p.url("/predict/heart"), rps))
        .collect();
    let t = Instant::now();
    for l in &loads {
        l.at_least(60, t, Duration::from_secs(20)).await?;
    }
    drop(loads);
    let counts = settled_role_counts(&proxies).await?;
    let total = controller_counts_equal(&s, &counts).await?;
    println!("controller {total:?} = sum of {names:?}: {counts:?}");
    ensure!(
        counts.iter().all(|(b, c)| *b > 0.0 && *c > 0.0),
        "every proxy split its traffic: {counts:?}"
    );

    // 2. A split change reaches all three within one sync interval.
    s.controller
        .client()
        .set_traffic("heart-prod", 50.0)
        .await?;
    let changed = Instant::now();
    let mut reached = Vec::new();
    for p in &proxies {
        poll(
            "the new split on every proxy within one sync interval",
            Duration::from_millis(INTERVAL_MS),
            || async { Ok((share_bps(p).await? == 5000.0).then_some(())) },
        )
        .await?;
        reached.push(changed.elapsed());
    }
    println!("30 % → 50 % on {names:?} after {reached:?} (sync interval {INTERVAL_MS} ms)");
    ensure!(
        reached
            .iter()
            .all(|d| *d <= Duration::from_millis(INTERVAL_MS))
    );

    // 3. One proxy restarts; the other two carry on undisturbed.
    let load_a = Load::start(proxies[0].url("/predict/heart"), 40);
    let load_c = Load::start(proxies[2].url("/predict/heart"), 40);
    let before_b = settled_role_counts(std::slice::from_ref(&proxies[1])).await?[0];
    let restart = Instant::now();
    let old_b = std::mem::replace(&mut proxies[1], s.envoy("proxy-b", 30_000).await?);
    drop(old_b);
    poll(
        "the restarted proxy at 50 %",
        Duration::from_secs(10),
        || async { Ok((share_bps(&proxies[1]).await? == 5000.0).then_some(())) },
    )
    .await?;
    let back = restart.elapsed();
    load_a
        .at_least(40, Instant::now(), Duration::from_secs(10))
        .await?;
    for (name, load, p) in [
        ("proxy-a", &load_a, &proxies[0]),
        ("proxy-c", &load_c, &proxies[2]),
    ] {
        let during = load.since(restart);
        let failed = during.iter().filter(|x| x.status != 200).count();
        let canary = during
            .iter()
            .filter(|x| x.role.as_deref() == Some("canary"))
            .count();
        ensure!(
            failed == 0 && during.len() >= 40,
            "{name} during the restart: {failed} of {} failed",
            during.len()
        );
        ensure!(share_bps(p).await? == 5000.0, "{name} lost its split");
        println!(
            "{name} while proxy-b restarted: {} requests, 0 failed, {canary} on the canary",
            during.len()
        );
    }
    println!("proxy-b back at 50 % {back:?} after its restart began");
    drop((load_a, load_c));
    let counts_after = settled_role_counts(&proxies).await?;
    // The restarted proxy starts counting from zero; the controller still
    // has what it reported before.
    let mut all = counts_after.clone();
    all.push(before_b);
    let total = controller_counts_equal(&s, &all).await?;
    println!(
        "after the restart: controller {total:?} = {counts_after:?} + proxy-b before {before_b:?}"
    );

    // 4. The canary fails. Its healthy past leaves the window first (the
    // shortest window, 10 s), so that only the failures count. Each proxy
    // then sends at most four canary requests, fewer than the ten that roll
    // back at once on their own; together they are twelve, and the
    // controller rolls back on the aggregate. Every proxy stops sending to
    // the canary.
    let policy = serde_json::from_value(
        json!({"check_interval_seconds": 1, "bake_seconds": 3600, "window_seconds": 10}),
    )?;
    s.controller
        .client()
        .set_policy("heart-prod", &policy)
        .await?;
    poll(
        "the window to forget the healthy canary",
        Duration::from_secs(20),
        || async { Ok((s.controller.role_counts().await?.1 == 0.0).then_some(())) },
    )
    .await?;
    s.v2.fail_every(1);
    let client = reqwest::Client::new();
    let mut canary_sent = Vec::new();
    for p in &proxies {
        let mut canary = 0;
        for _ in 0..200 {
            let r = client.get(p.url("/predict/heart")).send().await?;
            if r.headers()
                .get("x-coalmine-role")
                .and_then(|v| v.to_str().ok())
                == Some("canary")
            {
                ensure!(r.status() == 500, "the canary was told to fail");
                canary += 1;
                if canary == 4 {
                    break;
                }
            }
        }
        canary_sent.push(canary);
    }
    ensure!(
        canary_sent.iter().sum::<usize>() >= 10,
        "too few canary requests to roll back: {canary_sent:?}"
    );
    let rolled_back = Instant::now();
    let events = poll("the rollback", Duration::from_secs(15), || async {
        let kinds = s.controller.event_kinds("heart-prod").await?;
        Ok(kinds.iter().any(|k| k == "rolled_back").then_some(kinds))
    })
    .await?;
    ensure!(
        events.iter().any(|k| k == "auto_rollback_triggered"),
        "{events:?}"
    );
    for (name, p) in names.iter().zip(&proxies) {
        poll(
            "canary traffic to stop on every proxy",
            Duration::from_secs(5),
            || async { Ok((share_bps(p).await? == 0.0).then_some(())) },
        )
        .await?;
        let (_, canary_before) = settled_role_counts(std::slice::from_ref(p)).await?[0];
        for _ in 0..50 {
            let r = client.get(p.url("/predict/heart")).send().await?;
            ensure!(
                r.status() == 200,
                "{name} after the rollback: {}",
                r.status()
            );
        }
        let (_, canary_after) = settled_role_counts(std::slice::from_ref(p)).await?[0];
        ensure!(
            canary_after == canary_before,
            "{name} still sends to the canary"
        );
    }
    println!(
        "failing canary requests per proxy {canary_sent:?} (fewer than 10 each): rolled back \
         on their aggregate; no canary traffic on any proxy {:?} later",
        rolled_back.elapsed()
    );
    Ok(())
}

/// A manifest under `deploy/istio/`, as JSON.
fn istio_manifest(name: &str) -> Result<Value> {
    let path = workspace_root().join("deploy/istio").join(name);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    Ok(serde_json::to_value(doc)?)
}

/// The WasmPlugin's pluginConfig with the sync token templated in, as
/// `envsubst` does when it is applied.
fn istio_plugin_config(token: &str) -> Result<Value> {
    let plugin = istio_manifest("wasmplugin.yaml")?;
    let text = plugin["spec"]["pluginConfig"]
        .to_string()
        .replace("${COALMINE_SYNC_TOKEN}", token);
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn the_wasmplugin_config_is_one_the_filter_accepts() -> Result<()> {
    let config = istio_plugin_config("a-sync-token-from-the-secret")?;
    let parsed = coalmine_protocol::PluginConfig::parse(config.to_string().as_bytes())
        .map_err(|e| anyhow!("the filter refuses deploy/istio/wasmplugin.yaml: {e}"))?;
    let controller = parsed
        .controller
        .ok_or_else(|| anyhow!("the WasmPlugin has no controller block"))?;
    ensure!(
        controller.cluster.starts_with("outbound|") && controller.cluster.split('|').count() == 4,
        "controller.cluster {:?} is not an Istio cluster name",
        controller.cluster
    );
    println!(
        "wasmplugin.yaml: {} deployment(s), controller cluster {}",
        parsed.deployments.len(),
        controller.cluster
    );
    Ok(())
}

/// An Istio sidecar's Envoy cluster name for a service port and subset.
fn istio_cluster(host: &str, port: u64, subset: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// The routes a caller's sidecar gets from the VirtualService (the parts
/// coalmine relies on: URI prefix, exact header matches, URI rewrite,
/// destination subset, timeout).
fn routes_from_virtual_service(vs: &Value) -> Result<Value> {
    let mut routes = Vec::new();
    for http in vs["spec"]["http"].as_array().into_iter().flatten() {
        let name = http["name"].as_str().unwrap_or("unnamed");
        let destinations = http["route"].as_array().cloned().unwrap_or_default();
        ensure!(destinations.len() == 1, "{name}: one destination per route");
        let d = &destinations[0]["destination"];
        let cluster = istio_cluster(
            d["host"].as_str().unwrap_or_default(),
            d["port"]["number"].as_u64().unwrap_or_default(),
            d["subset"].as_str().unwrap_or_default(),
        );
        let mut route = json!({"cluster": cluster});
        if let Some(uri) = http["rewrite"]["uri"].as_str() {
            route["prefix_rewrite"] = json!(uri);
        }
        if let Some(t) = http["timeout"].as_str() {
            route["timeout"] = json!(t);
        }
        let matches = http["match"].as_array().cloned().unwrap_or_default();
        for m in if matches.is_empty() {
            vec![json!({})]
        } else {
            matches
        } {
            let mut envoy_match = json!({"prefix": m["uri"]["prefix"].as_str().unwrap_or("/")});
            let headers: Vec<Value> = m["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(header, v)| {
                    let exact = v["exact"]
                        .as_str()
                        .ok_or_else(|| anyhow!("{name}: {header} is matched exactly"))?;
                    Ok(json!({"name": header, "string_match": {"exact": exact}}))
                })
                .collect::<Result<_>>()?;
            if !headers.is_empty() {
                envoy_match["headers"] = json!(headers);
            }
            routes.push(json!({"match": envoy_match, "route": route.clone()}));
        }
    }
    Ok(json!(routes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_istio_manifests_route_each_version_on_a_real_envoy() -> Result<()> {
    let s = Stack::start(30_000).await?;
    let vs = istio_manifest("virtualservice.yaml")?;
    let host = vs["spec"]["hosts"][0]
        .as_str()
        .ok_or_else(|| anyhow!("the VirtualService names no host"))?;
    let port = vs["spec"]["http"][0]["route"][0]["destination"]["port"]["number"]
        .as_u64()
        .unwrap_or_default();
    let plugin = istio_plugin_config(coalmine_e2e::SYNC_TOKEN)?;
    let controller_cluster = plugin["controller"]["cluster"]
        .as_str()
        .ok_or_else(|| anyhow!("no controller.cluster"))?
        .to_string();
    let (v1, v2) = (
        istio_cluster(host, port, "heart-v1"),
        istio_cluster(host, port, "heart-v2"),
    );
    // A caller's sidecar: the WasmPlugin's filter and configuration, the
    // VirtualService's routes, Istio's cluster names; no header strip in
    // front of the filter (a sidecar has none).
    let config = EnvoyConfig::shipped("compose.yaml")?
        .without_header_strip()?
        .rename_cluster("heart-v1", &v1)?
        .rename_cluster("heart-v2", &v2)?
        .controller_tls(s.controller.ca_file())?
        .rename_cluster("coalmine_controller", &controller_cluster)?
        .upstream(&v1, s.v1.addr)?
        .upstream(&v2, s.v2.addr)?
        .upstream(&controller_cluster, s.controller.addr)?
        .routes(routes_from_virtual_service(&vs)?)?
        .plugin_config(&plugin)?;
    let envoy = Envoy::start_as(
        config,
        "sidecar~10.0.0.7~caller-7d9f.apps~apps.svc.cluster.local",
    )
    .await?;
    let client = reqwest::Client::new();

    // docs/istio.md's registration: each version under its subset's name.
    s.deployment(json!({"check_interval_seconds": 1, "bake_seconds": 3600}))
        .await?;
    s.start_canary(50.0).await?;
    poll("the sidecar to sync", Duration::from_secs(10), || async {
        Ok((share_bps(&envoy).await? == 5000.0).then_some(()))
    })
    .await?;
    // A client's own header does not choose the subset: the filter
    // overwrites it, so both versions are still reached by the split.
    let mut seen = BTreeMap::new();
    for _ in 0..200 {
        let r = client
            .post(envoy.url("/predict/heart"))
            .header("x-coalmine-cluster", "heart-v2")
            .body("{}")
            .send()
            .await?;
        *seen
            .entry((header(&r, "x-coalmine-version"), header(&r, "x-served-by")))
            .or_insert(0) += 1;
    }
    println!("canary at 50 %, every client asking for heart-v2: {seen:?}");
    // A worker that has not synced yet tags nothing: its requests take the
    // VirtualService's default route, the baseline's subset.
    let count = |version: &str, subset: &str| {
        seen.get(&(version.to_string(), subset.to_string()))
            .copied()
            .unwrap_or(0)
    };
    let (v1_by_v1, v2_by_v2, untagged) = (
        count("v1", "heart-v1"),
        count("v2", "heart-v2"),
        count("", "heart-v1"),
    );
    ensure!(
        v1_by_v1 + v2_by_v2 + untagged == 200 && v1_by_v1 >= 50 && v2_by_v2 >= 60,
        "each version must reach its own subset: {seen:?}"
    );
    // The rewritten path reaches the model server's /predict.
    ensure!(
        s.v1.seen()
            .iter()
            .chain(s.v2.seen().iter())
            .all(|h| h.path == "/predict"),
        "the VirtualService's rewrite did not apply"
    );

    // Promotion needs no mesh change: v2, now the baseline, is still reached
    // through its own subset.
    s.controller
        .client()
        .act("heart-prod", Action::Promote, None)
        .await?;
    poll(
        "every request on heart-v2",
        Duration::from_secs(5),
        || async {
            let mut all = true;
            for _ in 0..20 {
                let r = client.post(envoy.url("/predict/heart")).send().await?;
                let served = r.headers().get("x-served-by").cloned();
                all &= served.as_ref().and_then(|v| v.to_str().ok()) == Some("heart-v2");
            }
            Ok(all.then_some(()))
        },
    )
    .await?;
    println!("promoted: every request reaches heart-v2, with no change to the VirtualService");
    Ok(())
}
