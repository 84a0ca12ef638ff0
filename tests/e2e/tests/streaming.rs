//! Exec, Attach and PortForward through berthd's streaming server, with a client of our own
//! for each protocol as kubectl (through the kubelet) and crictl speak them: SPDY/3.1 with the
//! remote command versions 2 to 4 and port forward, WebSocket with the v4 (binary and base64)
//! and v5 channel protocols, and SPDY tunnelled in a WebSocket for port forward. Also what the
//! server must refuse (used, unknown and expired URLs, bad requests) and what it must survive
//! (garbage, huge headers, thousands of streams, clients that vanish or never read) without
//! harm to the daemon or the container.

use std::time::Duration;

use berth_cri_server::proto::{AttachRequest, ExecRequest, PortForwardRequest, VersionRequest};
use berth_e2e::berthd::Options;
use berth_e2e::cni::BridgeNetwork;
use berth_e2e::cri::{container, pod, wait_log, ContainerSpec, Pod};
use berth_e2e::images::{self, LATEST_REF};
use berth_e2e::registry::TestCa;
use berth_e2e::streaming::{self as client, Input, PORT_FORWARD, SPDY_OFFER, V4};
use berth_e2e::{Berthd, Cri, Node, Registry};
use futures::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(20);

/// Drop order: client, daemon, registry, network, node.
struct Env {
    cri: Cri,
    daemon: Berthd,
    _registry: Registry,
    _net: BridgeNetwork,
    node: Node,
    image: String,
    /// The runtime handler of every pod the test makes.
    handler: &'static str,
}

impl Env {
    async fn start() -> Env {
        Self::with_handler("").await
    }

    async fn with_handler(handler: &'static str) -> Env {
        Self::with_options(Node::start(), handler, Options::default()).await
    }

    async fn with_options(node: Node, handler: &'static str, options: Options) -> Env {
        let registry = Registry::start(&node);
        let addr = registry.addr.clone();
        node.block_on(|| images::push_all(&addr)).expect("pushing the test images");
        let daemon = Berthd::start_with(&node, options).await;
        let net = BridgeNetwork::for_daemon(&daemon);
        net.install(&daemon);
        let mut cri = daemon.client().await;
        let image = format!("{addr}/{LATEST_REF}");
        cri.pull(&image).await.expect("pulling the test image");
        Env { cri, daemon, _registry: registry, _net: net, node, image, handler }
    }

    fn pod(&self, name: &str) -> Pod {
        let logs = self.node.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).unwrap();
        pod(name).log_directory(logs).runtime_handler(self.handler)
    }

    fn container(&self, name: &str, script: &str) -> ContainerSpec {
        container(name, &self.image).shell(script).log_path(&format!("{name}.log"))
    }

    /// A pod with one running container of `script`; returns (pod id, container id).
    async fn run(
        &mut self,
        name: &str,
        spec: impl FnOnce(ContainerSpec) -> ContainerSpec,
        script: &str,
    ) -> (String, String) {
        let p = self.pod(name);
        let pod_id = self.cri.run_pod(&p).await.unwrap();
        let spec = spec(self.container("c", script));
        let id = self.cri.run_container(&pod_id, &p, &spec).await.unwrap();
        (pod_id, id)
    }

    async fn exec_url(&mut self, id: &str, cmd: &[&str], input: &Input) -> String {
        let request = ExecRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: input.tty,
            stdin: input.stdin.is_some(),
            stdout: input.stdout,
            stderr: input.stderr && !input.tty,
        };
        self.cri.runtime.exec(request).await.expect("Exec").into_inner().url
    }

    async fn attach_url(&mut self, id: &str, input: &Input) -> String {
        let request = AttachRequest {
            container_id: id.to_string(),
            stdin: input.stdin.is_some(),
            tty: input.tty,
            stdout: input.stdout,
            stderr: input.stderr && !input.tty,
        };
        self.cri.runtime.attach(request).await.expect("Attach").into_inner().url
    }

    async fn forward_url(&mut self, pod_id: &str, ports: &[i32]) -> String {
        let request =
            PortForwardRequest { pod_sandbox_id: pod_id.to_string(), port: ports.to_vec() };
        self.cri.runtime.port_forward(request).await.expect("PortForward").into_inner().url
    }

    /// The daemon still answers and the container still runs.
    async fn still_fine(&mut self, id: &str) {
        self.cri.runtime.version(VersionRequest::default()).await.expect("berthd answers");
        let out = self.cri.exec_sync(id, &["echo", "alive"], 10).await.expect("ExecSync");
        assert_eq!(out.stdout, b"alive\n");
    }
}

fn out_err() -> Input {
    Input { stdout: true, stderr: true, ..Input::default() }
}

const SLEEPER: &str = "exec sleep 1000";

async fn exec_over_spdy_separates_streams_and_reports_exit_codes(handler: &'static str) {
    let mut env = Env::with_handler(handler).await;
    let (_, id) = env.run("spdy-exec", |c| c, SLEEPER).await;

    let script = ["sh", "-c", "echo out; echo err >&2; exit 3"];
    let url = env.exec_url(&id, &script, &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, out_err()).await;
    assert_eq!(output.stdout, b"out\n");
    assert_eq!(output.stderr, b"err\n");
    assert_eq!(output.exit_code(), Some(3), "{}", String::from_utf8_lossy(&output.error));

    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, out_err()).await;
    assert_eq!(String::from_utf8_lossy(&output.error), r#"{"metadata":{},"status":"Success"}"#);

    // v2: text on failure, nothing on success.
    let url = env.exec_url(&id, &script, &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &["v2.channel.k8s.io"], out_err()).await;
    assert_eq!(output.stdout, b"out\n");
    assert!(String::from_utf8_lossy(&output.error).contains("exit code 3"), "{output:?}");
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &["v2.channel.k8s.io"], out_err()).await;
    assert!(output.error.is_empty());

    // A command that cannot run is an internal error the client sees, not a hang.
    let url = env.exec_url(&id, &["/no/such/binary"], &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, out_err()).await;
    let status: serde_json::Value = serde_json::from_slice(&output.error).unwrap();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_ne!(output.exit_code(), Some(0));
}

async fn exec_pipes_stdin_through_cat_intact(handler: &'static str) {
    let mut env = Env::with_handler(handler).await;
    let (_, id) = env.run("stdin", |c| c, SLEEPER).await;
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let input = Input { stdin: Some(data.clone()), ..out_err() };
    let url = env.exec_url(&id, &["cat"], &input).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, input.clone()).await;
    assert_eq!(output.stdout.len(), data.len());
    assert!(output.stdout == data, "cat returned other bytes");
    assert_eq!(output.exit_code(), Some(0));

    for protocol in ["v5.channel.k8s.io"] {
        let url = env.exec_url(&id, &["cat"], &input).await;
        let output = client::ws_run(&env.node, &url, protocol, input.clone()).await;
        assert!(
            output.stdout == data,
            "{protocol}: cat returned other bytes ({} bytes)",
            output.stdout.len()
        );
        assert_eq!(output.exit_code(), Some(0));
    }
}

async fn exec_with_a_tty_sees_a_terminal_and_its_size(handler: &'static str) {
    let mut env = Env::with_handler(handler).await;
    let (_, id) = env.run("tty", |c| c, SLEEPER).await;
    let input = Input { stdout: true, tty: true, size: Some((123, 45)), ..Input::default() };
    let url = env.exec_url(&id, &["busybox", "tty"], &input).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, input.clone()).await;
    assert!(output.stdout_text().starts_with("/dev/pts/"), "{:?}", output.stdout_text());
    assert_eq!(output.exit_code(), Some(0));

    // The size may reach the terminal a moment after the command starts.
    let script = "for i in $(seq 50); do [ \"$(busybox stty size 2>/dev/null)\" = '45 123' ] && break; sleep 0.1; done; busybox stty size";
    let url = env.exec_url(&id, &["sh", "-c", script], &input).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, input.clone()).await;
    assert_eq!(output.stdout_text().trim(), "45 123");

    let url = env.exec_url(&id, &["sh", "-c", script], &input).await;
    let output = client::ws_run(&env.node, &url, "v5.channel.k8s.io", input.clone()).await;
    assert_eq!(output.stdout_text().trim(), "45 123");

    // Interactive: a shell on the terminal, fed through stdin.
    let input = Input { stdin: Some(b"echo in-$((6*7))\nexit 4\n".to_vec()), ..input };
    let url = env.exec_url(&id, &["sh"], &input).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, input).await;
    assert!(output.stdout_text().contains("in-42"), "{:?}", output.stdout_text());
    assert_eq!(output.exit_code(), Some(4));
}

#[tokio::test]
async fn exec_over_websocket_v4_binary_and_base64() {
    let mut env = Env::start().await;
    let (_, id) = env.run("ws", |c| c, SLEEPER).await;
    let script = ["sh", "-c", "echo out; echo err >&2; exit 5"];
    for protocol in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io", "v5.channel.k8s.io"] {
        let url = env.exec_url(&id, &script, &out_err()).await;
        let output = client::ws_run(&env.node, &url, protocol, out_err()).await;
        assert_eq!(output.stdout, b"out\n", "{protocol}");
        assert_eq!(output.stderr, b"err\n", "{protocol}");
        assert_eq!(output.exit_code(), Some(5), "{protocol}: {output:?}");
    }
    // channel.k8s.io: text on failure only.
    let url = env.exec_url(&id, &script, &out_err()).await;
    let output = client::ws_run(&env.node, &url, "channel.k8s.io", out_err()).await;
    assert!(String::from_utf8_lossy(&output.error).contains("exit code 5"), "{output:?}");
}

async fn attach_reaches_the_output_of_several_attachers_and_the_stdin(handler: &'static str) {
    let mut env = Env::with_handler(handler).await;
    let (_, id) = env
        .run("attach-out", |c| c, "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done")
        .await;
    let input = Input { stdout: true, stderr: true, ..Input::default() };
    let mut readers = Vec::new();
    for _ in 0..2 {
        let url = env.attach_url(&id, &input).await;
        let (mut command, _) = client::spdy_command(&env.node, &url, &SPDY_OFFER, &input).await;
        readers.push(tokio::spawn(async move {
            let mut stdout = command.stdout.take().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while String::from_utf8_lossy(&seen).matches("tick").count() < 3 {
                let n =
                    tokio::time::timeout(TIMEOUT, stdout.read(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "attach output ended");
                seen.extend_from_slice(&buf[..n]);
            }
            command.session.abort();
            String::from_utf8_lossy(&seen).into_owned()
        }));
    }
    for reader in readers {
        let seen = reader.await.unwrap();
        assert!(seen.contains("tick"), "{seen:?}");
    }
    env.still_fine(&id).await;

    // stdin: a `cat` with stdin_once ends when the attacher's input does.
    let p = env.pod("attach-in");
    let pod_id = env.cri.run_pod(&p).await.unwrap();
    let spec = env.container("cat", "exec cat").stdin(true, true);
    let cat = env.cri.run_container(&pod_id, &p, &spec).await.unwrap();
    let input = Input {
        stdin: Some(b"hello attach\n".to_vec()),
        stdout: true,
        stderr: true,
        ..Input::default()
    };
    let url = env.attach_url(&cat, &input).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, input).await;
    assert_eq!(output.stdout, b"hello attach\n");
    let status = env.cri.wait_exited(&cat, TIMEOUT).await;
    assert_eq!(status.exit_code, 0);
    let log = std::path::PathBuf::from(&p.config.log_directory).join("cat.log");
    wait_log(&log, TIMEOUT, |line| line == "hello attach").await;
}

#[tokio::test]
async fn port_forward_to_httpd_in_a_pod() {
    let mut env = Env::start().await;
    // 3 MiB of random bytes behind busybox httpd on the pod's loopback only.
    let script = "mkdir -p /www && head -c 3145728 /dev/urandom > /www/big && \
                  busybox sha256sum /www/big > /www/sum && echo ready && \
                  exec busybox httpd -f -p 127.0.0.1:8080 -h /www";
    let (pod_id, id) = env.run("forward", |c| c, script).await;
    let p = env.pod("forward");
    let log = std::path::PathBuf::from(&p.config.log_directory).join("c.log");
    wait_log(&log, TIMEOUT, |line| line == "ready").await;
    let sum = env.cri.exec_sync(&id, &["cat", "/www/sum"], 10).await.unwrap().stdout;
    let expected = String::from_utf8_lossy(&sum).split_whitespace().next().unwrap().to_string();

    // SPDY: four connections at once in one session.
    let url = env.forward_url(&pod_id, &[]).await;
    let (session, chosen) = client::spdy_session(&env.node, &url, &[PORT_FORWARD]).await;
    assert_eq!(chosen, PORT_FORWARD);
    let mut gets = Vec::new();
    for request_id in 0..4 {
        let forward = client::spdy_forward(&session, 8080, request_id).await;
        gets.push(tokio::spawn(client::http_get(forward, "/big")));
    }
    for get in gets {
        let (response, error) = get.await.unwrap();
        assert!(error.is_empty(), "{error}");
        let body = client::body(&response);
        assert_eq!(body.len(), 3 << 20);
        assert_eq!(hex::encode(Sha256::digest(body)), expected);
    }
    // Nothing listens on 9: the error stream says so, and the session goes on.
    let forward = client::spdy_forward(&session, 9, 10).await;
    let (_, error) = client::http_get(forward, "/").await;
    assert!(error.contains("error forwarding port 9 to pod"), "{error}");
    let forward = client::spdy_forward(&session, 8080, 11).await;
    let (response, _) = client::http_get(forward, "/sum").await;
    assert_eq!(client::body(&response), sum.as_slice());
    session.close().await;

    // crictl --transport websocket: SPDY inside a WebSocket.
    let url = env.forward_url(&pod_id, &[]).await;
    let (ws, chosen) = client::websocket(&env.node, &url, &["SPDY/3.1+portforward.k8s.io"]).await;
    assert_eq!(chosen.as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
    let tunnel = ws_tunnel(ws);
    let (session, _) = berth_cri_server::streaming::spdy::Session::new(
        tunnel,
        berth_cri_server::streaming::spdy::Role::Client,
        Default::default(),
    );
    let forward = client::spdy_forward(&session, 8080, 0).await;
    let (response, error) = client::http_get(forward, "/big").await;
    assert!(error.is_empty(), "{error}");
    assert_eq!(hex::encode(Sha256::digest(client::body(&response))), expected);
    session.abort();

    // The channel form: data on channel 0, each channel first says its port.
    let url = env.forward_url(&pod_id, &[8080]).await;
    let (mut ws, chosen) = client::websocket(&env.node, &url, &[V4]).await;
    assert_eq!(chosen.as_deref(), Some(V4));
    ws.send(client::encode(false, 0, b"GET /sum HTTP/1.0\r\n\r\n")).await.unwrap();
    let mut data = Vec::new();
    let mut firsts = 0;
    while let Some(Ok(message)) = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
        match message {
            Message::Binary(bytes) if bytes.len() == 3 && firsts < 2 => {
                assert_eq!(&bytes[1..], &8080u16.to_le_bytes());
                firsts += 1;
            }
            Message::Binary(bytes) if bytes[0] == 0 => data.extend_from_slice(&bytes[1..]),
            Message::Binary(bytes) => assert!(bytes.len() == 1, "error channel: {bytes:?}"),
            Message::Close(_) => break,
            _ => {}
        }
        if client::body(&data) == sum.as_slice() {
            break;
        }
    }
    assert_eq!(client::body(&data), sum.as_slice());
}

/// A WebSocket as a byte stream, as the tunnel of crictl's port forward is.
fn ws_tunnel(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut sink, mut stream) = ws.split();
    let (mut read, mut write) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(Message::Binary(data))) = stream.next().await {
            if write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 || sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    ours
}

#[tokio::test]
async fn tls_when_configured() {
    let node = Node::start();
    let ca = TestCa::generate(&node.dir().join("streaming-tls"));
    let extra_config = format!(
        "[streaming]\naddress = \"127.0.0.1:0\"\ntls_cert_file = {:?}\ntls_key_file = {:?}\n",
        ca.cert_file.display().to_string(),
        ca.key_file.display().to_string()
    );
    let options = Options { extra_config, ..Options::default() };
    let mut env = Env::with_options(node, "", options).await;
    let (_, id) = env.run("tls", |c| c, SLEEPER).await;
    let url = env.exec_url(&id, &["echo", "over tls"], &out_err()).await;
    let plain = url.strip_prefix("https://").expect("an https URL").to_string();

    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let http_url = format!("http://{plain}");
    let tcp = client::connect(&env.node, &http_url).await;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.expect("a TLS handshake with the CA's trust");
    let (session, chosen) = client::spdy_session_on(tls, &http_url, &SPDY_OFFER).await;
    let command = client::spdy_command_with(session, &chosen, &out_err()).await;
    let output = client::spdy_finish(command, out_err()).await;
    assert_eq!(output.stdout, b"over tls\n");
    assert_eq!(output.exit_code(), Some(0));

    // Plain HTTP on the TLS port gets no upgrade.
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let http_url = url.replacen("https://", "http://", 1);
    let mut io = client::connect(&env.node, &http_url).await;
    io.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, io.read_to_end(&mut reply)).await;
    assert!(!String::from_utf8_lossy(&reply).contains("101"), "{reply:?}");
}

#[tokio::test]
async fn urls_work_once_and_only_on_their_route() {
    let mut env = Env::start().await;
    let (pod_id, id) = env.run("tokens", |c| c, SLEEPER).await;
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let output = client::spdy_run(&env.node, &url, &SPDY_OFFER, out_err()).await;
    assert_eq!(output.exit_code(), Some(0));
    // Used once: gone.
    let answer = client::request(&env.node, &url, "POST", &[]).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body().await, "404 page not found\n");
    // Unknown token, unknown route.
    let (host, _) = client::split_url(&url);
    for path in ["/exec/AAAAAAAA", "/metrics", "/", "/exec/x/y"] {
        let answer = client::request(&env.node, &format!("http://{host}{path}"), "GET", &[]).await;
        assert_eq!(answer.status, 404, "{path}");
    }
    // An exec token on the attach route is spent for nothing.
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let answer = client::request(&env.node, &url.replace("/exec/", "/attach/"), "POST", &[]).await;
    assert_eq!(answer.status, 404);
    assert_eq!(client::request(&env.node, &url, "POST", &[]).await.status, 404);
    // Negotiation failures.
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let answer = client::request(
        &env.node,
        &url,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(answer.status, 400);
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
    ];
    let answer = client::request(&env.node, &url, "POST", &headers).await;
    assert_eq!(answer.status, 403);
    assert!(answer
        .headers
        .iter()
        .any(|(n, v)| n == "x-accepted-stream-protocol-versions" && v == V4));
    let url = env.forward_url(&pod_id, &[]).await;
    let headers =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", V4)];
    assert_eq!(client::request(&env.node, &url, "POST", &headers).await.status, 403);

    // Bad requests never get a URL.
    let bad = ExecRequest {
        container_id: id.clone(),
        cmd: vec!["sh".into()],
        tty: true,
        stderr: true,
        ..Default::default()
    };
    assert_eq!(env.cri.runtime.exec(bad).await.unwrap_err().code(), Code::InvalidArgument);
    let none =
        ExecRequest { container_id: id.clone(), cmd: vec!["sh".into()], ..Default::default() };
    assert_eq!(env.cri.runtime.exec(none).await.unwrap_err().code(), Code::InvalidArgument);
    let unknown = AttachRequest { container_id: "nope".into(), stdout: true, ..Default::default() };
    assert_eq!(env.cri.runtime.attach(unknown).await.unwrap_err().code(), Code::NotFound);
    let port = PortForwardRequest { pod_sandbox_id: pod_id.clone(), port: vec![70000] };
    assert_eq!(env.cri.runtime.port_forward(port).await.unwrap_err().code(), Code::InvalidArgument);
    env.cri.stop_container(&id, 0).await.unwrap();
    let stopped = ExecRequest {
        container_id: id.clone(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    assert_eq!(env.cri.runtime.exec(stopped).await.unwrap_err().code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn urls_expire_after_a_minute() {
    let mut env = Env::start().await;
    let (_, id) = env.run("expiry", |c| c, SLEEPER).await;
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    let headers =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", V4)];
    assert_eq!(client::request(&env.node, &url, "POST", &headers).await.status, 404);
}

#[tokio::test]
async fn abusive_clients_end_their_own_session_only() {
    let mut env = Env::start().await;
    let (_, id) = env.run("abuse", |c| c, SLEEPER).await;
    let upgrade =
        [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1"), ("X-Stream-Protocol-Version", V4)];

    // Garbage after the upgrade.
    let url = env.exec_url(&id, &["cat"], &out_err()).await;
    let mut answer = client::request(&env.node, &url, "POST", &upgrade).await;
    assert_eq!(answer.status, 101);
    answer.io.write_all(&[0xff; 4096]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(TIMEOUT, answer.io.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the session did not end");
    env.still_fine(&id).await;

    // A huge header block: a SYN_STREAM claiming 16 MiB.
    let url = env.exec_url(&id, &["cat"], &out_err()).await;
    let mut answer = client::request(&env.node, &url, "POST", &upgrade).await;
    let mut frame = vec![0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff];
    frame.extend_from_slice(&[0u8; 10]);
    answer.io.write_all(&frame).await.unwrap();
    let _ = answer.io.write_all(&vec![0x55; 1 << 20]).await;
    let read = tokio::time::timeout(TIMEOUT, answer.io.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the session did not end");
    env.still_fine(&id).await;

    // A huge HTTP head.
    let url = env.exec_url(&id, &["true"], &out_err()).await;
    let big = "x".repeat(200 * 1024);
    let mut io = client::connect(&env.node, &url).await;
    let (_, path) = client::split_url(&url);
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    let _ = io.write_all(head.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, io.read_to_end(&mut reply)).await.expect("answered");
    assert!(!String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 101"));

    // Thousands of streams: the ones over the limit are refused, the daemon is fine.
    let forward_pod = env_pod(&mut env, "abuse-pf").await;
    let url = env.forward_url(&forward_pod, &[]).await;
    let (session, _) = client::spdy_session(&env.node, &url, &[PORT_FORWARD]).await;
    let mut refused = 0;
    for i in 0..2000u32 {
        let headers = berth_cri_server::streaming::spdy::Headers::new()
            .with("streamtype", "error")
            .with("port", "80")
            .with("requestid", i.to_string());
        match tokio::time::timeout(TIMEOUT, session.open(headers)).await {
            Ok(Ok(stream)) => std::mem::forget(stream),
            Ok(Err(_)) => refused += 1,
            Err(_) => break,
        }
    }
    assert!(refused > 0, "every one of 2000 half-open pairs was held");
    session.abort();
    env.still_fine(&id).await;

    // A client that never reads an endless output, then one that vanishes mid-stream.
    let rss_before = rss_kib(env.daemon.pid());
    let url = env.exec_url(&id, &["yes"], &out_err()).await;
    let (command, _) = client::spdy_command(&env.node, &url, &SPDY_OFFER, &out_err()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_kib(env.daemon.pid());
    assert!(rss_after < rss_before + 64 * 1024, "berthd grew from {rss_before} to {rss_after} KiB");
    drop(command);
    let input = Input { stdin: Some(Vec::new()), ..out_err() };
    let url = env.exec_url(&id, &["cat"], &input).await;
    let (command, _) = client::spdy_command(&env.node, &url, &SPDY_OFFER, &input).await;
    command.session.abort();
    drop(command);
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.still_fine(&id).await;
}

// The process side differs between handlers (the embedded executor's exec and pty, runc's
// `exec --tty --console-socket`); the transports do not, and run on the default handler.
berth_e2e::handler_cases!(
    exec_over_spdy_separates_streams_and_reports_exit_codes,
    exec_pipes_stdin_through_cat_intact,
    exec_with_a_tty_sees_a_terminal_and_its_size,
    attach_reaches_the_output_of_several_attachers_and_the_stdin,
);

async fn env_pod(env: &mut Env, name: &str) -> String {
    let p = env.pod(name);
    env.cri.run_pod(&p).await.unwrap()
}

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
