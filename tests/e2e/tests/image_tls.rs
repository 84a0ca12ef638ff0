//! Pulls from a registry that serves HTTPS only, with a certificate from a CA made up for the
//! test: trusted through `ca_file` (per host or in `[registry.default]`), not trusted at all,
//! or not checked (`skip_verify`); and a loopback registry left at its plain-HTTP default,
//! which must fail rather than be upgraded to HTTPS behind the user's back. And a registry that
//! also wants a client certificate (mutual TLS), which berthd presents from
//! `client_cert_file` and `client_key_file`.

use berth_e2e::berthd::Options;
use berth_e2e::images::{self, Pusher, TestImage, TestImages};
use berth_e2e::registry::{TestCa, TLS_REGISTRY_ADDR};
use berth_e2e::{Berthd, Node, Registry};
use tonic::Code;

/// A node with a TLS registry on [`TLS_REGISTRY_ADDR`] that holds `busybox:oci`.
struct Setup {
    // Dropped in order: the registry before the node that runs it.
    registry: Registry,
    ca: TestCa,
    node: Node,
}

fn setup() -> Setup {
    let node = Node::start();
    let (registry, ca) = Registry::start_with_tls(&node, TLS_REGISTRY_ADDR);
    let pusher = Pusher::with_tls(&registry.addr, ca.ca_pem.clone());
    let oci = oci();
    node.block_on(|| pusher.push(oci)).expect("pushing over HTTPS with the test CA");
    Setup { registry, ca, node }
}

fn oci() -> &'static TestImage {
    &TestImages::get().oci
}

impl Setup {
    async fn berthd(&self, extra_config: String) -> Berthd {
        Berthd::start_with(&self.node, Options { extra_config, ..Default::default() }).await
    }

    fn reference(&self) -> String {
        oci().reference_at(&self.registry.addr)
    }

    /// `[registry.hosts."<addr>"]` with `lines`.
    fn host_table(&self, lines: &str) -> String {
        format!("[registry.hosts.\"{}\"]\n{lines}", self.registry.addr)
    }
}

#[tokio::test]
async fn the_hosts_ca_file_verifies_the_registry() {
    let setup = setup();
    let config =
        setup.host_table(&format!("plain_http = false\nca_file = {:?}\n", setup.ca.ca_file));
    let daemon = setup.berthd(config).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    assert_eq!(cri.pull(&reference).await.unwrap(), oci().config.digest);
    let image = cri.image(&reference).await.expect("the pulled image");
    assert_eq!(image.repo_tags, vec![reference]);
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused() {
    let setup = setup();
    let daemon = setup.berthd(setup.host_table("plain_http = false\n")).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    let err = cri.pull(&reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // "RegistryUnavailable: 127.0.0.1:5443: error sending request for url (https://…):
    // client error (Connect): invalid peer certificate: UnknownIssuer"
    let message = err.message();
    assert!(message.contains(&format!("https://{}/", setup.registry.addr)), "over TLS: {err}");
    assert!(message.contains("certificate"), "says why: {err}");
    assert!(cri.image(&reference).await.is_none(), "nothing pulled");
}

#[tokio::test]
async fn skip_verify_accepts_the_unknown_certificate() {
    let setup = setup();
    let daemon = setup.berthd(setup.host_table("plain_http = false\nskip_verify = true\n")).await;
    let mut cri = daemon.client().await;
    assert_eq!(cri.pull(&setup.reference()).await.unwrap(), oci().config.digest);
}

#[tokio::test]
async fn loopback_plain_http_is_not_upgraded_to_tls() {
    let setup = setup();
    let daemon = setup.berthd(String::new()).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    let err = cri.pull(&reference).await.unwrap_err();
    // The registry is up and answers, over HTTP, with Go's 400 for a plain request on a TLS
    // port: a misconfiguration on this node (berthd says FailedPrecondition), not a registry
    // that cannot be reached.
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    let message = err.message();
    assert!(message.contains(&format!("http://{}/", setup.registry.addr)), "over HTTP: {err}");
    assert!(message.contains("HTTP request to an HTTPS server"), "says why: {err}");
    assert!(cri.image(&reference).await.is_none(), "nothing pulled");
}

#[tokio::test]
async fn the_default_ca_file_applies_to_the_host() {
    let setup = setup();
    let config = format!(
        "[registry.default]\nca_file = {:?}\n\n{}",
        setup.ca.ca_file,
        setup.host_table("plain_http = false\n")
    );
    let daemon = setup.berthd(config).await;
    let mut cri = daemon.client().await;
    assert_eq!(cri.pull(&setup.reference()).await.unwrap(), oci().config.digest);
}

/// A node with a registry on [`TLS_REGISTRY_ADDR`] that holds `busybox:oci` and wants a
/// client certificate from its CA. The image is pushed to a TLS-only registry on the same
/// storage first: the pusher has no client certificate.
fn mtls_setup() -> Setup {
    let node = Node::start();
    {
        let (registry, ca) = Registry::start_with_tls(&node, TLS_REGISTRY_ADDR);
        let pusher = Pusher::with_tls(&registry.addr, ca.ca_pem.clone());
        node.block_on(|| pusher.push(oci())).expect("pushing over HTTPS with the test CA");
    }
    let (registry, ca) = Registry::start_with_mtls(&node, TLS_REGISTRY_ADDR);
    Setup { registry, ca, node }
}

impl Setup {
    /// The host table for the mTLS registry: its CA, and a client certificate from it.
    fn mtls_host_table(&self) -> String {
        let (cert, key) = self.ca.issue_client_cert("berthd");
        self.host_table(&format!(
            "plain_http = false\nca_file = {:?}\nclient_cert_file = {cert:?}\nclient_key_file = {key:?}\n",
            self.ca.ca_file
        ))
    }
}

#[tokio::test]
async fn the_client_certificate_is_presented() {
    let setup = mtls_setup();
    let daemon = setup.berthd(setup.mtls_host_table()).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    assert_eq!(cri.pull(&reference).await.unwrap(), oci().config.digest);
    let image = cri.image(&reference).await.expect("the pulled image");
    assert_eq!(image.repo_tags, vec![reference]);
}

#[tokio::test]
async fn without_a_client_certificate_the_handshake_is_refused() {
    let setup = mtls_setup();
    let config =
        setup.host_table(&format!("plain_http = false\nca_file = {:?}\n", setup.ca.ca_file));
    let daemon = setup.berthd(config).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    let err = cri.pull(&reference).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains(&format!("https://{}/", setup.registry.addr)), "{err}");
    assert!(cri.image(&reference).await.is_none(), "nothing pulled");
}

#[tokio::test]
async fn blob_digests_are_verified_over_mutual_tls() {
    let setup = mtls_setup();
    let layer = &oci().layers[2];
    setup.registry.replace_blob(&layer.digest, &images::impostor_layer(layer));
    let daemon = setup.berthd(setup.mtls_host_table()).await;
    let mut cri = daemon.client().await;
    let reference = setup.reference();
    let err = cri.pull(&reference).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(
        err.message().contains("digest mismatch") && err.message().contains(&layer.digest),
        "{err}"
    );
    assert!(cri.image(&reference).await.is_none(), "nothing pulled");
}
