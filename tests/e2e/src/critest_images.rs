//! Stand-ins for the images the upstream critest (cri-tools v1.37.0) pulls, built offline and
//! pushed to a node's loopback registry under `<upstream host>/<path>:<tag>`, so that a berthd
//! that mirrors each upstream host there ([`UPSTREAM_HOSTS`]) resolves critest's references
//! unchanged.
//!
//! What each stand-in holds is what critest's specs check of the real image (read from
//! cri-tools v1.37.0's pkg/validate, pkg/framework, pkg/benchmark and images/): commands in
//! PATH, users and groups, tags that share or differ in image id, a web server's port and
//! command line. v1.37's Image Volume specs
//! (pkg/validate/image_volume.go) mount `test-image-tag:test` and look for `/bin/sh`,
//! `/bin/ls` and `/etc/passwd` in it, which the busybox base has.
//!
//! The base is a busybox built from Debian's source with upstream's defconfig
//! (`tests/build-busybox.sh`): Debian's busybox-static lacks `ipcs` and `pgrep` and runs applets
//! inside `sh`, where a spec masks `/bin/ls` and wants `sh -c ls` to fail. Every applet is a
//! hard link in `/bin`. The programs that busybox has no applet for (nginx's master process,
//! a setuid entrypoint, pause) are small Rust programs in `tests/e2e/standins/`, compiled
//! statically with rustc alone and cached by content.
//!
//! Not made: `test-image-digest@sha256:9700f9…`, which names one exact upstream manifest no
//! stand-in can have; its spec is skipped by name (see tests/critest.rs).

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::images::{
    self, assemble_with, dir, file, gzip, index, sha256_digest, write_tar, Blob, Entry, Format,
    Kind, LayerBlob, PushError, Pusher, RunConfig, TestImage, LINUX_AMD64, MEDIA_OCI_LAYER,
    PATH_ENV,
};

/// The registries critest's references name; berthd mirrors each to the loopback registry,
/// where the stand-ins are stored under `<host>/<path>` (and never falls back to the host).
pub const UPSTREAM_HOSTS: &[&str] =
    &["registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws", "docker.io", "quay.io"];

/// framework.DefaultLinuxContainerImage: the image of nearly every container spec.
pub const BUSYBOX_REF: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// The web server of the networking, streaming and PID namespace specs.
pub const NGINX_REF: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
/// critest names it without a tag, so it is pulled as `:latest`.
pub const HOSTNET_NGINX_REF: &str = "gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:latest";
pub const HTTPD_REF: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
pub const NONEWPRIVS_REF: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
sync:x:4:100:sync:/bin:/bin/sync\n\
mail:x:8:8:mail:/var/spool/mail:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
operator:x:37:37:Operator:/var:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
adm:x:4:\n\
tty:x:5:\n\
disk:x:6:\n\
lp:x:7:\n\
mail:x:8:\n\
kmem:x:9:\n\
wheel:x:10:root\n\
cdrom:x:11:\n\
dialout:x:18:\n\
floppy:x:19:\n\
video:x:28:\n\
audio:x:29:\n\
tape:x:32:\n\
www-data:x:33:\n\
operator:x:37:\n\
utmp:x:43:\n\
plugdev:x:46:\n\
staff:x:50:\n\
lock:x:54:\n\
netdev:x:82:\n\
users:x:100:\n\
nogroup:x:65534:\n";

/// The user that upstream's test-image-predefined-group adds (`adduser -u 1000 -D
/// default-user`), and the group the image defines with it as a member.
const PREDEFINED_PASSWD: &str =
    "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n";
const PREDEFINED_GROUP: &str =
    "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n";

/// httpd's foreground script, as the httpd image's entrypoint: a line naming httpd in the
/// log (a spec looks for it), then busybox's httpd until a stop signal.
const HTTPD_FOREGROUND: &str = "#!/bin/sh\n\
echo \"httpd: serving /usr/local/apache2/htdocs on port 80\" >&2\n\
httpd -f -v -p 80 -h /usr/local/apache2/htdocs &\n\
server=$!\n\
trap 'kill $server; wait $server; exit 0' TERM INT WINCH\n\
wait $server\n";

const INDEX_HTML: &str = "<html><body><h1>It works!</h1></body></html>\n";

/// The stand-in programs, with their sources: the cache key of each build.
const NGINX_SRC: &str = include_str!("../standins/nginx.rs");
const NNP_SRC: &str = include_str!("../standins/nnp.rs");
const PAUSE_SRC: &str = include_str!("../standins/pause.rs");

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("{0}")]
    Busybox(String),
    #[error("compiling the stand-in {name}: {message}")]
    Compile { name: &'static str, message: String },
    #[error("writing a layer: {0}")]
    Io(#[from] io::Error),
    #[error("assembling an image: {0}")]
    Build(#[from] images::BuildError),
}

/// Every stand-in, each with its tags; pushed by [`push`].
#[derive(Debug)]
pub struct CritestImages {
    pub images: Vec<TestImage>,
}

impl CritestImages {
    /// Builds the stand-ins on first use; panics if that is impossible, because critest cannot
    /// run without them.
    pub fn get() -> &'static CritestImages {
        static IMAGES: OnceLock<CritestImages> = OnceLock::new();
        IMAGES.get_or_init(|| match build() {
            Ok(images) => images,
            Err(err) => panic!("cannot build critest's stand-in images: {err}"),
        })
    }

    /// The stand-in pushed as `reference` (a tag or alias), if any.
    pub fn find(&self, reference: &str) -> Option<&TestImage> {
        self.images.iter().find(|i| i.reference == reference || i.aliases.contains(&reference))
    }
}

/// Pushes every stand-in to the plain-HTTP registry at `registry` (`127.0.0.1:5000`).
pub async fn push(registry: &str) -> Result<(), PushError> {
    Pusher::new(registry).push_each(&CritestImages::get().images).await
}

/// The directory that caches what the tests build, by version or content.
fn cache_dir() -> PathBuf {
    std::env::var_os("BERTH_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-tests"))
}

/// The busybox of `tests/build-busybox.sh` (built once, cached by Debian's source version).
pub fn busybox_binary() -> Result<PathBuf, StandinError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build-busybox.sh");
    let output = Command::new(&script)
        .output()
        .map_err(|err| StandinError::Busybox(format!("running {}: {err}", script.display())))?;
    if !output.status.success() {
        return Err(StandinError::Busybox(format!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// Compiles `source` into a static executable with rustc alone, cached under
/// `<cache>/standins/<hash of source, flags and rustc>/<name>`; returns its bytes.
fn program(name: &'static str, source: &str) -> Result<Vec<u8>, StandinError> {
    const FLAGS: &[&str] = &[
        "--edition=2021",
        "-C",
        "opt-level=s",
        "-C",
        "strip=symbols",
        "-C",
        "target-feature=+crt-static",
    ];
    let compile_err = |message: String| StandinError::Compile { name, message };
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|err| compile_err(format!("running rustc -vV: {err}")))?;
    let key =
        sha256_digest(&[source.as_bytes(), FLAGS.join(" ").as_bytes(), &version.stdout].concat());
    let dir = cache_dir().join("standins").join(&key["sha256:".len()..][..16]);
    let binary = dir.join(name);
    if let Ok(bytes) = std::fs::read(&binary) {
        return Ok(bytes);
    }
    std::fs::create_dir_all(&dir)?;
    // Each test binary may get here at once: compile aside, rename into place.
    let tmp = tempfile::Builder::new().prefix(&format!(".{name}-")).tempdir_in(&dir)?;
    let src = tmp.path().join(format!("{name}.rs"));
    std::fs::write(&src, source)?;
    let out = tmp.path().join(name);
    let output = Command::new(&rustc)
        .args(FLAGS)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|err| compile_err(format!("running rustc: {err}")))?;
    if !output.status.success() {
        return Err(compile_err(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    std::fs::rename(&out, &binary)?;
    Ok(std::fs::read(&binary)?)
}

fn applets(busybox: &Path) -> Result<Vec<String>, StandinError> {
    let output = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|err| StandinError::Busybox(format!("{} --list: {err}", busybox.display())))?;
    let listed = String::from_utf8_lossy(&output.stdout);
    let applets: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(str::to_owned)
        .collect();
    // What critest's specs run, beside the usual: without these the stand-ins are wrong.
    for needed in ["sh", "ls", "ipcs", "pgrep", "pidof", "httpd", "top", "id", "brctl", "netstat"] {
        if !applets.iter().any(|a| a == needed) {
            return Err(StandinError::Busybox(format!(
                "{} has no {needed} applet",
                busybox.display()
            )));
        }
    }
    Ok(applets)
}

fn owned(entry: Entry, uid: u64, gid: u64) -> Entry {
    Entry { uid, gid, ..entry }
}

fn base_entries(busybox: Vec<u8>, applets: &[String]) -> Vec<Entry> {
    let mut entries = vec![
        dir("bin", 0o755),
        dir("dev", 0o755),
        dir("etc", 0o755),
        dir("home", 0o755),
        dir("proc", 0o755),
        dir("root", 0o700),
        dir("sys", 0o755),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        dir("usr/sbin", 0o755),
        dir("usr/local", 0o755),
        dir("usr/local/bin", 0o755),
        dir("var", 0o755),
        dir("var/run", 0o755),
        dir("var/spool", 0o755),
        owned(dir("var/spool/mail", 0o775), 8, 8),
        owned(dir("var/www", 0o755), 33, 33),
        file("bin/busybox", 0o755, busybox),
        file("etc/passwd", 0o644, PASSWD),
        file("etc/group", 0o644, GROUP),
        file("etc/shadow", 0o600, shadow(PASSWD)),
    ];
    // Hard links, as in the busybox images: sh runs /bin/<applet> as a file of its own, so
    // masking one (a spec masks /bin/ls) makes just that command fail.
    entries.extend(applets.iter().map(|applet| Entry {
        path: format!("bin/{applet}"),
        mode: 0o755,
        uid: 0,
        gid: 0,
        kind: Kind::Hardlink("bin/busybox".to_owned()),
    }));
    entries
}

/// A shadow file with every account locked, for the users of `passwd`.
fn shadow(passwd: &str) -> String {
    passwd
        .lines()
        .filter_map(|line| line.split(':').next())
        .map(|user| format!("{user}:*:10933:0:99999:7:::\n"))
        .collect()
}

fn layer(created_by: &str, entries: Vec<Entry>) -> Result<LayerBlob, StandinError> {
    let tar = write_tar(entries)?;
    Ok(LayerBlob {
        created_by: created_by.to_owned(),
        diff_id: sha256_digest(&tar),
        blob: Blob::new(MEDIA_OCI_LAYER, gzip(&tar)?),
    })
}

fn clone_layer(layer: &LayerBlob) -> LayerBlob {
    LayerBlob {
        created_by: layer.created_by.clone(),
        diff_id: layer.diff_id.clone(),
        blob: layer.blob.clone(),
    }
}

/// How one stand-in differs from the busybox base.
struct Standin {
    reference: &'static str,
    aliases: &'static [&'static str],
    /// The layer on top of the base, if any.
    top: Option<(&'static str, Vec<Entry>)>,
    run: RunConfig,
    /// Upstream publishes it as an index (a multi-arch image); the stand-in is an index of
    /// one linux/amd64 image.
    index: bool,
    /// Without the busybox base (pause).
    bare: bool,
}

fn shell(cmd: Vec<&'static str>) -> RunConfig {
    RunConfig {
        entrypoint: None,
        cmd,
        env: vec![PATH_ENV.to_owned()],
        working_dir: "",
        user: "",
        stop_signal: "",
    }
}

fn marker(name: &'static str) -> Option<(&'static str, Vec<Entry>)> {
    let path = name.trim_start_matches('/');
    Some((name, vec![file(path, 0o644, "")]))
}

fn busybox_like(reference: &'static str, top: Option<(&'static str, Vec<Entry>)>) -> Standin {
    Standin { reference, aliases: &[], top, run: shell(vec!["sh"]), index: true, bare: false }
}

fn user_image(reference: &'static str, user: &'static str) -> Standin {
    Standin { run: RunConfig { user, ..shell(vec!["sh"]) }, ..busybox_like(reference, None) }
}

fn nginx_entries(program: &[u8], port: u16) -> Vec<Entry> {
    vec![
        dir("etc", 0o755),
        dir("etc/nginx", 0o755),
        file("etc/nginx/listen", 0o644, format!("{port}\n")),
        dir("usr", 0o755),
        dir("usr/sbin", 0o755),
        file("usr/sbin/nginx", 0o755, program.to_vec()),
        dir("usr/share", 0o755),
        dir("usr/share/nginx", 0o755),
        dir("usr/share/nginx/html", 0o755),
        file("usr/share/nginx/html/index.html", 0o644, INDEX_HTML),
    ]
}

fn nginx_run() -> RunConfig {
    RunConfig { stop_signal: "SIGQUIT", ..shell(vec!["nginx", "-g", "daemon off;"]) }
}

fn standins(nginx: &[u8], nnp: &[u8], pause: &[u8]) -> Vec<Standin> {
    let pause_image = |reference| Standin {
        reference,
        aliases: &[],
        top: Some(("pause", vec![file("pause", 0o755, pause.to_vec())])),
        run: RunConfig {
            entrypoint: Some(vec!["/pause"]),
            cmd: vec![],
            user: "65535:65535",
            ..shell(vec![])
        },
        index: true,
        bare: true,
    };
    let ecr = |tag: &'static str, marker_file: &'static str| busybox_like(tag, marker(marker_file));
    vec![
        busybox_like(BUSYBOX_REF, None),
        Standin {
            top: Some(("nginx", nginx_entries(nginx, 80))),
            run: nginx_run(),
            ..busybox_like(NGINX_REF, None)
        },
        Standin {
            top: Some(("hostnet-nginx", nginx_entries(nginx, 12003))),
            run: nginx_run(),
            // Upstream pushes hostnet-nginx-<arch> as a plain manifest.
            index: false,
            ..busybox_like(HOSTNET_NGINX_REF, None)
        },
        Standin {
            top: Some((
                "httpd",
                vec![
                    dir("usr", 0o755),
                    dir("usr/local", 0o755),
                    dir("usr/local/bin", 0o755),
                    file("usr/local/bin/httpd-foreground", 0o755, HTTPD_FOREGROUND),
                    dir("usr/local/apache2", 0o755),
                    dir("usr/local/apache2/htdocs", 0o755),
                    file("usr/local/apache2/htdocs/index.html", 0o644, INDEX_HTML),
                ],
            )),
            run: RunConfig { working_dir: "/usr/local/apache2", ..shell(vec!["httpd-foreground"]) },
            ..busybox_like(HTTPD_REF, None)
        },
        Standin {
            top: Some((
                "nonewprivs",
                vec![
                    dir("usr", 0o755),
                    dir("usr/local", 0o755),
                    dir("usr/local/bin", 0o755),
                    file("usr/local/bin/nnp", 0o4755, nnp.to_vec()),
                ],
            )),
            run: RunConfig { entrypoint: Some(vec!["/usr/local/bin/nnp"]), ..shell(vec![]) },
            ..busybox_like(NONEWPRIVS_REF, None)
        },
        user_image("gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest", "1002"),
        user_image("gcr.io/k8s-staging-cri-tools/test-image-user-username:latest", "www-data"),
        user_image("gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest", "1003:1004"),
        user_image(
            "gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest",
            "www-data:1004",
        ),
        Standin {
            top: Some((
                "predefined-group",
                vec![
                    dir("etc", 0o755),
                    file("etc/passwd", 0o644, format!("{PASSWD}{PREDEFINED_PASSWD}")),
                    file("etc/group", 0o644, format!("{GROUP}{PREDEFINED_GROUP}")),
                    file("etc/shadow", 0o600, shadow(&format!("{PASSWD}{PREDEFINED_PASSWD}"))),
                    dir("home", 0o755),
                    owned(dir("home/default-user", 0o755), 1000, 1000),
                ],
            )),
            run: RunConfig { user: "1000", ..shell(vec!["sh"]) },
            ..busybox_like("gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest", None)
        },
        busybox_like(
            "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
            marker("/test-image-latest"),
        ),
        busybox_like("gcr.io/k8s-staging-cri-tools/test-image-tag:test", marker("/test")),
        busybox_like("gcr.io/k8s-staging-cri-tools/test-image-tag:all", marker("/all")),
        busybox_like("gcr.io/k8s-staging-cri-tools/test-image-1:latest", marker("/test-image-1")),
        busybox_like("gcr.io/k8s-staging-cri-tools/test-image-2:latest", marker("/test-image-2")),
        busybox_like("gcr.io/k8s-staging-cri-tools/test-image-3:latest", marker("/test-image-3")),
        Standin {
            aliases: &[
                "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
            ],
            ..busybox_like("gcr.io/k8s-staging-cri-tools/test-image-tags:1", marker("/same-image"))
        },
        // Two repositories, one image: identical bytes, so the same digest and image id.
        pause_image("registry.k8s.io/pause:3.9"),
        pause_image("k8s.gcr.io/pause:3.9"),
        // The benchmark specs' images (skipped, but named by critest).
        ecr("public.ecr.aws/docker/library/busybox:1.35.0-glibc", "/busybox-1.35.0-glibc"),
        ecr("public.ecr.aws/docker/library/busybox:1-uclibc", "/busybox-1-uclibc"),
        ecr("public.ecr.aws/docker/library/busybox:1", "/busybox-1"),
        ecr("public.ecr.aws/docker/library/busybox:1-glibc", "/busybox-1-glibc"),
        ecr("public.ecr.aws/docker/library/busybox:1-musl", "/busybox-1-musl"),
    ]
}

fn build() -> Result<CritestImages, StandinError> {
    let busybox_path = busybox_binary()?;
    let applets = applets(&busybox_path)?;
    let busybox = std::fs::read(&busybox_path)?;
    let base = layer(
        "berth-e2e critest: busybox (Debian source, defconfig, static), /bin hard links, users",
        base_entries(busybox, &applets),
    )?;
    let nginx = program("nginx", NGINX_SRC)?;
    let nnp = program("nnp", NNP_SRC)?;
    let pause = program("pause", PAUSE_SRC)?;

    let mut images = Vec::new();
    for standin in standins(&nginx, &nnp, &pause) {
        let mut layers = Vec::new();
        if !standin.bare {
            layers.push(clone_layer(&base));
        }
        if let Some((name, entries)) = standin.top {
            layers.push(layer(&format!("berth-e2e critest: {name}"), entries)?);
        }
        let (repository, _) = standin.reference.rsplit_once(':').unwrap_or((standin.reference, ""));
        let repository: &'static str = repository;
        let image = if standin.index {
            let child = assemble_with(
                Format::Oci,
                repository,
                &[],
                "critest",
                LINUX_AMD64,
                layers,
                standin.run,
            )?;
            let mut image = index(standin.reference, vec![child])?;
            image.aliases = standin.aliases;
            image
        } else {
            assemble_with(
                Format::Oci,
                standin.reference,
                standin.aliases,
                "critest",
                LINUX_AMD64,
                layers,
                standin.run,
            )?
        };
        images.push(image);
    }
    Ok(CritestImages { images })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::tests::gunzip;

    fn image(reference: &str) -> &'static TestImage {
        let image = CritestImages::get().find(reference);
        image.unwrap_or_else(|| panic!("no stand-in for {reference}"))
    }

    /// The single-platform manifest of a stand-in, whether or not it is an index.
    fn manifest(reference: &str) -> &'static TestImage {
        let image = image(reference);
        image.child("amd64").unwrap_or(image)
    }

    /// (path, entry type, mode, link name) of every entry of a layer, in order.
    fn entries(layer: &Blob) -> Vec<(String, tar::EntryType, u32, Option<String>)> {
        let tar = gunzip(layer);
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries = archive.entries().expect("a tar");
        entries
            .map(|e| {
                let e = e.expect("an entry");
                let h = e.header();
                let link = h.link_name().ok().flatten().map(|l| l.display().to_string());
                let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                (path, h.entry_type(), h.mode().expect("a mode"), link)
            })
            .collect()
    }

    #[test]
    fn every_reference_is_tagged_under_a_mirrored_host() {
        for image in &CritestImages::get().images {
            for reference in std::iter::once(&image.reference).chain(image.aliases) {
                let host = reference.split('/').next().unwrap_or_default();
                assert!(UPSTREAM_HOSTS.contains(&host), "{reference}");
                assert!(image.tag().is_some(), "{reference} has no tag");
            }
        }
    }

    #[test]
    fn applets_are_hard_links_after_busybox() {
        let base = entries(&manifest(BUSYBOX_REF).layers[0]);
        let at = |path: &str| base.iter().position(|e| e.0 == path);
        let busybox = at("bin/busybox").expect("bin/busybox");
        for applet in ["bin/[", "bin/ls", "bin/ipcs", "bin/pgrep", "bin/sh", "bin/top"] {
            let i = at(applet).unwrap_or_else(|| panic!("no {applet}"));
            assert!(i > busybox, "{applet} before its target");
            assert_eq!(base[i].1, tar::EntryType::Link, "{applet}");
            assert_eq!(base[i].3.as_deref(), Some("bin/busybox"), "{applet}");
        }
        assert_eq!(base[at("tmp/").expect("tmp")].2, 0o1777);
    }

    #[test]
    fn nnp_is_setuid_root() {
        let top = entries(manifest(NONEWPRIVS_REF).layers.last().expect("a layer"));
        let nnp = top.iter().find(|e| e.0 == "usr/local/bin/nnp").expect("nnp");
        assert_eq!(nnp.2, 0o4755);
    }

    #[test]
    fn same_and_different_images_as_critest_expects() {
        let digest = |r: &str| image(r).digest().to_owned();
        assert_eq!(digest("registry.k8s.io/pause:3.9"), digest("k8s.gcr.io/pause:3.9"));
        let tags = image("gcr.io/k8s-staging-cri-tools/test-image-tags:1");
        assert_eq!(tags.aliases.len(), 2);
        let mut different: Vec<String> = ["test-image-1:latest", "test-image-2:latest"]
            .iter()
            .chain(&["test-image-3:latest", "test-image-tag:test", "test-image-tag:all"])
            .map(|r| digest(&format!("gcr.io/k8s-staging-cri-tools/{r}")))
            .collect();
        different.sort();
        different.dedup();
        assert_eq!(different.len(), 5);
    }
}
