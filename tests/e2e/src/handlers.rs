//! The runtime handlers the per-handler suites run on, and whether each can run containers on
//! this host at all (crun 1.8 refuses a hybrid cgroup layout, which the nodes therefore go
//! without). A handler that cannot has its cases skipped with the reason printed; the embedded
//! executor never is.

use std::sync::OnceLock;
use std::time::Duration;

use crate::cri::{container, pod, Cri, Pod};
use crate::{images, Berthd, Node, Registry};

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why `handler` cannot run containers on this host, found once per test binary by running
/// one trivial container with it on a node of its own; None when it can.
pub fn unsupported(handler: &'static str) -> Option<String> {
    static RUNC: OnceLock<Option<String>> = OnceLock::new();
    static CRUN: OnceLock<Option<String>> = OnceLock::new();
    let cell = match handler {
        "runc" => &RUNC,
        "crun" => &CRUN,
        _ => return None,
    };
    // On a thread and a runtime of its own: every test has its own runtime, and the first to
    // ask holds the others until the answer is there.
    cell.get_or_init(|| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.expect("a runtime for the probe").block_on(probe(handler))
        })
        .join()
        .unwrap_or_else(|_| Some(format!("probing {handler} panicked")))
    })
    .clone()
}

async fn probe(handler: &'static str) -> Option<String> {
    let node = Node::start();
    let registry = Registry::start(&node);
    let addr = registry.addr.clone();
    node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
    let daemon = Berthd::start(&node).await;
    let mut cri = daemon.client().await;
    let image = format!("{addr}/{}", images::OCI_REF);
    cri.pull(&image).await.expect("pulling the probe's image");
    let logs = node.dir().join("logs/probe");
    std::fs::create_dir_all(&logs).expect("the probe's log directory");
    let probe = pod("probe").host_network().log_directory(logs).runtime_handler(handler);
    let pod_id = match cri.run_pod(&probe).await {
        Ok(id) => id,
        Err(err) => return Some(err.message().to_string()),
    };
    let spec = container("probe", &image).command(&["true"]);
    let reason = match cri.run_container(&pod_id, &probe, &spec).await {
        Err(err) => Some(err.message().to_string()),
        Ok(id) => {
            let status = cri.wait_exited(&id, PROBE_TIMEOUT).await;
            (status.exit_code != 0).then(|| format!("`true` exited with {status:?}"))
        }
    };
    cri.stop_pod(&pod_id).await.expect("StopPodSandbox");
    cri.remove_pod(&pod_id).await.expect("RemovePodSandbox");
    reason
}

/// Whether `handler` refuses pods in a user namespace of their own on this node, as its Status
/// says: then `userns_pod` must be refused with the reason and leave no pod, and the caller's
/// case ends there. crun 1.8 has no `features` command, so berth cannot know that it joins a
/// user namespace, and neither claims it in Status (on which the kubelet admits such pods) nor
/// runs such a pod on it.
pub async fn refuses_user_namespaces(cri: &mut Cri, handler: &str, userns_pod: &Pod) -> bool {
    let request = berth_cri_server::proto::StatusRequest { verbose: false };
    let status = cri.runtime.status(request).await.expect("Status").into_inner();
    let claimed = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == handler)
        .and_then(|h| h.features.as_ref())
        .is_some_and(|f| f.user_namespaces);
    if claimed {
        return false;
    }
    let err = cri.run_pod(userns_pod).await.expect_err("a user namespace on a handler without");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    for word in [format!("{handler:?}").as_str(), "user namespace", "features"] {
        assert!(err.message().contains(word), "{word}: {}", err.message());
    }
    assert!(cri.list_pods(None).await.is_empty());
    eprintln!("{handler} refuses user namespaces, as expected: {}", err.message());
    true
}

/// One `#[tokio::test]` per case in a module per handler: `embedded::<case>`, `runc::<case>`,
/// `crun::<case>`; each case is an `async fn(&'static str)` taking the handler's name, in the
/// module that invokes the macro.
#[macro_export]
macro_rules! handler_cases {
    ($($case:ident),* $(,)?) => {
        $crate::handler_cases!(@handler embedded, "", $($case),*);
        $crate::handler_cases!(@handler runc, "runc", $($case),*);
        $crate::handler_cases!(@handler crun, "crun", $($case),*);
    };
    (@handler $module:ident, $handler:literal, $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(reason) = $crate::handlers::unsupported($handler) {
                        eprintln!("skipping {} cases: {reason}", $handler);
                        return;
                    }
                    super::$case($handler).await
                }
            )*
        }
    };
}
