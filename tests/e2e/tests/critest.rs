//! The upstream CRI validation suite, critest (cri-tools v1.37.0), against berthd on each
//! runtime handler, as containerd and CRI-O run it in their CI.
//!
//! critest pulls public images; here they are stand-ins ([`berth_e2e::critest_images`]) on the
//! node's loopback registry, which berthd mirrors every upstream host to. Only specs this
//! host cannot run are skipped, each by name with its reason ([`skips`]); of the specs that
//! skip themselves, only the NRI ones are accepted ([`SELF_SKIP_ACCEPTED`]), and those for a
//! feature the handler does not claim in Status ([`feature_self_skips`]); any failed spec fails
//! the test, with every failure listed by name and message from critest's JSON report.
//!
//! Run one handler alone: `cargo test -p berth-e2e --test critest -- embedded --nocapture`.
//! `BERTH_CRITEST_FOCUS=<regex>` runs only the matching specs (for chasing one failure).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_cri_server::proto::{RuntimeHandlerFeatures, StatusRequest};
use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::critest_images::{self, CritestImages, UPSTREAM_HOSTS};
use berth_e2e::{upstream, Berthd, Node, Registry};

/// critest's parallel nodes (ginkgo `--nodes`). Measured on the 2-core CI machine: the whole
/// suite takes 35-70 s per handler in one process, most of it specs that sleep; more nodes
/// would need the ginkgo CLI (critest execs it) for at most a minute saved per handler.
const PARALLEL: usize = 1;

/// What one handler's run may take at most, beyond which it is killed and failed: a hung
/// spec must not hold CI up to its own limit.
const TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A spec critest would run that this host cannot, and why.
struct Skip {
    /// A ginkgo `--skip` regular expression matching the spec's full text.
    pattern: &'static str,
    reason: String,
}

/// A skip critest decides itself that is accepted: the NRI specs skip themselves unless
/// critest is given the runtime's NRI socket, and berth serves no NRI yet (its own issue: NRI
/// plugins). Any other spec that skips itself at run time fails the test, but for those of
/// [`feature_self_skips`].
const SELF_SKIP_ACCEPTED: (&str, &str) = (
    "NRI socket not configured",
    "berth has no NRI socket to give critest (-nri-socket): NRI is not built yet",
);

/// The specs critest skips itself for a feature the handler does not claim in Status, each
/// accepted only when Status says so: crun 1.8 has no `features` command, so berth claims
/// neither recursive read-only mounts nor user namespaces for it (and refuses pods that need
/// them), as the kubelet's admission relies on those flags.
fn feature_self_skips(features: &RuntimeHandlerFeatures) -> Vec<(&'static str, &'static str)> {
    let mut accepted = vec![SELF_SKIP_ACCEPTED];
    if !features.recursive_read_only_mounts {
        accepted.push((
            "runtime does not implement recursive readonly mounts",
            "the handler does not claim recursive read-only mounts in Status",
        ));
    }
    if !features.user_namespaces {
        accepted.push((
            "no runtime handler found which supports user namespaces",
            "the handler does not claim user namespaces in Status",
        ));
    }
    accepted
}

/// The specs skipped on this host, each with its reason; nothing else is skipped.
fn skips() -> Vec<Skip> {
    let mut skips = vec![
        Skip {
            pattern: "benchmark",
            reason: "the benchmark specs measure, they do not validate (critest skips them \
                     itself unless -benchmark)"
                .into(),
        },
        Skip {
            pattern: "public image with digest should be pulled and removed",
            reason: "it pulls one exact upstream manifest \
                     (test-image-digest@sha256:9700f9a2…), which no offline stand-in can be"
                .into(),
        },
    ];
    // As critest's own check (apparmor_linux.go).
    let apparmor = std::fs::read("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|b| b.first() == Some(&b'Y'));
    if !apparmor {
        skips.push(Skip {
            pattern: r"\[k8s\.io\] AppArmor",
            reason: "this host has no AppArmor (/sys/module/apparmor/parameters/enabled)".into(),
        });
    }
    skips
}

/// berthd's config: every upstream host critest names is mirrored to the loopback registry,
/// under its own name as prefix, and never tried itself (there is no way out of the node).
fn mirrors(registry: &str) -> String {
    UPSTREAM_HOSTS
        .iter()
        .map(|host| {
            format!(
                "[registry.hosts.{host:?}]\nfallback_to_origin = false\n\
                 mirrors = [{{ host = {registry:?}, prefix = {host:?} }}]\n\n"
            )
        })
        .collect()
}

/// One spec's outcome, from the JSON report.
struct Spec {
    name: String,
    state: String,
    message: String,
    location: String,
    seconds: f64,
}

fn specs(report: &Path) -> Vec<Spec> {
    let text = std::fs::read_to_string(report)
        .unwrap_or_else(|err| panic!("reading critest's report {}: {err}", report.display()));
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("parsing critest's report {}: {err}", report.display()));
    let mut specs = Vec::new();
    for suite in json.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            let mut parts: Vec<&str> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str())
                .collect();
            let leaf = spec["LeafNodeText"].as_str().unwrap_or_default();
            let kind = spec["LeafNodeType"].as_str().unwrap_or_default();
            if leaf.is_empty() {
                parts.push(kind);
            } else {
                parts.push(leaf);
            }
            let failure = &spec["Failure"];
            let location = format!(
                "{}:{}",
                failure["Location"]["FileName"].as_str().unwrap_or_default(),
                failure["Location"]["LineNumber"].as_u64().unwrap_or_default()
            );
            specs.push(Spec {
                name: parts.join(" "),
                state: spec["State"].as_str().unwrap_or_default().to_owned(),
                message: failure["Message"].as_str().unwrap_or_default().trim().to_owned(),
                location,
                seconds: spec["RunTime"].as_f64().unwrap_or_default() / 1e9,
            });
        }
    }
    specs
}

/// One handler at a time: each run takes both cores of a CI machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn critest(handler: &'static str) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let name = handler_name(handler);
    let started = Instant::now();
    let node = Node::start();
    let registry = Registry::start(&node);
    let addr = registry.addr.clone();
    let images = CritestImages::get();
    node.block_on(|| critest_images::push(&addr)).expect("pushing critest's stand-in images");
    eprintln!(
        "critest[{name}]: {} stand-in images pushed after {:.1?}",
        images.images.len(),
        started.elapsed()
    );

    let options = Options { extra_config: mirrors(&addr), ..Options::default() };
    let daemon = Berthd::start_with(&node, options).await;
    BridgeNetwork::for_daemon(&daemon).install(&daemon);
    let status = daemon.client().await.runtime.status(StatusRequest { verbose: false }).await;
    let features = status
        .expect("Status")
        .into_inner()
        .runtime_handlers
        .into_iter()
        .find(|h| h.name == handler)
        .and_then(|h| h.features)
        .unwrap_or_else(|| panic!("Status lists no handler {handler:?} with its features"));
    let accepted_self_skips = feature_self_skips(&features);

    let skips = skips();
    for skip in &skips {
        eprintln!("critest[{name}]: skipping /{}/: {}", skip.pattern, skip.reason);
    }
    let skip_regex: Vec<&str> = skips.iter().map(|s| s.pattern).collect();
    let report = node.dir().join(format!("critest-{name}.json"));
    let endpoint = format!("unix://{}", daemon.socket.display());
    let mut command = node.command(upstream::critest());
    command
        .arg(format!("--runtime-endpoint={endpoint}"))
        .arg(format!("--image-endpoint={endpoint}"))
        .arg(format!("--runtime-handler={handler}"))
        .arg(format!("-ginkgo.skip={}", skip_regex.join("|")))
        .arg(format!("-ginkgo.json-report={}", report.display()))
        .arg("-ginkgo.no-color")
        .arg("-ginkgo.timeout=9m");
    // Given as 1, ginkgo takes it for go test's own -parallel and refuses to run.
    if PARALLEL > 1 {
        command.arg(format!("-parallel={PARALLEL}"));
    }
    if let Ok(focus) = std::env::var("BERTH_CRITEST_FOCUS") {
        command.arg(format!("-ginkgo.focus={focus}"));
    }
    // critest writes temporary files (log dirs of its pods) under TMPDIR: the node's.
    let tmp = node.dir().join("critest-tmp");
    std::fs::create_dir_all(&tmp).expect("critest's temporary directory");
    command.env("TMPDIR", &tmp).current_dir(&tmp);
    let log_path = node.dir().join(format!("critest-{name}.log"));
    let log = std::fs::File::create(&log_path).expect("critest's log");
    command.stdin(Stdio::null()).stdout(log.try_clone().expect("critest's log")).stderr(log);

    let run_started = Instant::now();
    let mut child = command.spawn().expect("starting critest");
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for critest") {
            break status;
        }
        if run_started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let kept = keep(&log_path, &format!("berth-critest-{name}.log"));
            panic!("critest[{name}] did not finish within {TIMEOUT:?}; its log: {kept}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run_time = run_started.elapsed();

    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !report.exists() {
        panic!("critest[{name}] exited with {status} and wrote no report:\n{output}");
    }
    let specs = specs(&report);
    let kept_report = keep(&report, &format!("berth-critest-{name}.json"));
    let kept_log = keep(&log_path, &format!("berth-critest-{name}.log"));
    let daemon_log = keep(&daemon.log, &format!("berth-critest-{name}-berthd.log"));

    let count = |state: &str| specs.iter().filter(|s| s.state == state).count();
    // A spec that skipped itself at run time (critest's own Skip(), with a message) is a skip
    // nobody decided on here: it fails the run like a failed spec. Those the skip regex left
    // out have no message.
    let self_skipped_accepted = |s: &Spec| {
        s.state == "skipped" && accepted_self_skips.iter().any(|(m, _)| s.message.contains(m))
    };
    for (message, reason) in &accepted_self_skips {
        let accepted: Vec<&Spec> =
            specs.iter().filter(|s| s.state == "skipped" && s.message.contains(message)).collect();
        if !accepted.is_empty() {
            eprintln!(
                "critest[{name}]: {} spec(s) skipped themselves, accepted: {reason}",
                accepted.len()
            );
            for spec in &accepted {
                eprintln!("critest[{name}]:   {}", spec.name);
            }
        }
    }
    let mut failed: Vec<&Spec> = specs
        .iter()
        .filter(|s| match s.state.as_str() {
            "passed" | "pending" => false,
            "skipped" => !s.message.is_empty() && !self_skipped_accepted(s),
            _ => true,
        })
        .collect();
    // ginkgo randomises the order; a sorted list compares across runs.
    failed.sort_by(|a, b| (&a.state, &a.name).cmp(&(&b.state, &b.name)));
    let mut slowest: Vec<&Spec> = specs.iter().filter(|s| s.state == "passed").collect();
    slowest.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    eprintln!(
        "critest[{name}]: {} specs: {} passed, {} failed, {} skipped ({} of them skipped \
         themselves and were not accepted) in {:.1?} (whole test {:.1?}; report {}, log {})",
        specs.len(),
        count("passed"),
        failed.iter().filter(|s| s.state != "skipped").count(),
        count("skipped"),
        failed.iter().filter(|s| s.state == "skipped").count(),
        run_time,
        started.elapsed(),
        kept_report,
        kept_log,
    );
    for spec in slowest.iter().take(5) {
        eprintln!("critest[{name}]: slow: {:.1}s {}", spec.seconds, spec.name);
    }
    let listing: Vec<String> = failed
        .iter()
        .map(|s| {
            let state = if s.state == "skipped" { "skipped at run time" } else { s.state.as_str() };
            format!("- [{state}] {}\n    {} ({})", s.name, short(&s.message), s.location)
        })
        .collect();
    assert!(
        failed.is_empty() && status.success(),
        "critest[{name}] exited with {status}; {} spec(s) failed or skipped themselves:\n{}\n\
         daemon log: {}",
        failed.len(),
        listing.join("\n"),
        daemon_log
    );
}

/// The gist of a failure message: gomega follows its first lines with a dump of the error
/// value, of which the `rpc error: …` line is all that says anything.
fn short(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut gist: Vec<&str> =
        lines.iter().copied().take_while(|l| !l.starts_with('<')).take(2).collect();
    if let Some(rpc) = lines.iter().find(|l| l.starts_with("rpc error:")) {
        gist.push(rpc);
    }
    let gist = gist.join(" ");
    match gist.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &gist[..at]),
        None => gist,
    }
}

/// Copies `path` (in the node's directory, which goes with the node) to the system's
/// temporary directory as `name`, where a developer finds it after the test; returns where.
fn keep(path: &Path, name: &str) -> String {
    let kept = std::env::temp_dir().join(name);
    match std::fs::copy(path, &kept) {
        Ok(_) => kept.display().to_string(),
        Err(err) => format!("{} (not kept: {err})", path.display()),
    }
}

fn handler_name(handler: &str) -> &str {
    if handler.is_empty() {
        "embedded"
    } else {
        handler
    }
}

berth_e2e::handler_cases!(critest);
