//! A test "node": a private network and mount namespace, like a kind node's, with its own
//! cgroup and scratch directory. Every process a test starts on the node runs inside all of
//! them, so nothing it does (mounts, veths, cgroups, listening ports) reaches the host, and
//! dropping the node kills all of it and removes what is left.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_runtime::cgroups::CgroupLayout;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

static NODES: AtomicUsize = AtomicUsize::new(0);

/// Where a hybrid cgroup host mounts its cgroup2 hierarchy beside the v1 ones.
const HYBRID_CGROUP2: &str = "/sys/fs/cgroup/unified";

// Fields drop in order: the namespace handles go before the scratch directory, so that nothing
// of the node pins a mount over it when it is deleted.
pub struct Node {
    pub name: String,
    holder: Child,
    netns: File,
    mntns: File,
    cgroups: NodeCgroups,
    dir: tempfile::TempDir,
}

/// The node's cgroup in each hierarchy berth manages. Dropping it kills every process left in
/// it and removes the whole tree, also when the node fails half way through its creation.
struct NodeCgroups {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each, open so that a forked child can join with a single write.
    procs: Vec<File>,
}

impl Node {
    /// Creates the namespaces, the cgroup and the scratch directory. Needs root.
    pub fn start() -> Node {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the e2e tests need root (namespaces, mounts, cgroups)"
        );
        let n = NODES.fetch_add(1, Ordering::SeqCst);
        let name = format!("berth-e2e-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .expect("creating the node's scratch directory");

        let layout = CgroupLayout::detect().expect("reading this host's cgroup layout");
        let mut cgroups = NodeCgroups { dirs: Vec::new(), procs: Vec::new() };
        for hierarchy in layout.managed() {
            let path =
                layout.dir_in(hierarchy, Path::new(&name), true).expect("the node cgroup path");
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|err| panic!("creating node cgroup {}: {err}", path.display()));
            cgroups.dirs.push(path.clone());
            if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                inherit_cpuset(&path);
            }
            let procs = OpenOptions::new()
                .write(true)
                .open(path.join("cgroup.procs"))
                .unwrap_or_else(|err| panic!("opening {}/cgroup.procs: {err}", path.display()));
            cgroups.procs.push(procs);
        }

        let mut holder = Command::new("sleep");
        holder.arg("infinity").stdin(Stdio::null()).stdout(Stdio::null());
        let procs = cgroups.raw_fds();
        // SAFETY: between fork and exec only async-signal-safe system calls run: no allocation.
        unsafe {
            holder.pre_exec(move || {
                join_cgroups(&procs)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS)?;
                // Mounts made on the node must not propagate back to the host.
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                // A hybrid host's cgroup2 mount holds no controller berth manages (at most
                // hugetlb), and crun refuses to run beside it: the node, like a v1 node with
                // no cgroup2 mount, goes without it. (EINVAL: no such mount here.) crun still
                // makes each container's directory under it for the `0::` line of
                // /proc/self/cgroup: a tmpfs of the node's own takes those, which would
                // otherwise stay in the host's /sys/fs/cgroup under its cgroup2 mount.
                match nix::mount::umount2(HYBRID_CGROUP2, nix::mount::MntFlags::MNT_DETACH) {
                    Ok(()) => mount(
                        Some("tmpfs"),
                        HYBRID_CGROUP2,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                        Some("size=1m,mode=755"),
                    )?,
                    Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                    Err(err) => return Err(err.into()),
                }
                Ok(())
            });
        }
        let holder = holder.spawn().expect("starting the node's namespace holder (sleep)");
        let ns = |kind: &str| {
            File::open(format!("/proc/{}/ns/{kind}", holder.id()))
                .unwrap_or_else(|err| panic!("opening the node's {kind} namespace: {err}"))
        };
        let (netns, mntns) = (ns("net"), ns("mnt"));
        let node = Node { name, holder, netns, mntns, cgroups, dir };
        node.run(&["ip", "link", "set", "lo", "up"]);
        node
    }

    /// The node's scratch directory; deleted with the node.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command that will run on the node: in its namespaces and its cgroup, and killed if the
    /// test thread that spawns it dies.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        let procs = self.cgroups.raw_fds();
        let (netns, mntns) = (self.netns.as_raw_fd(), self.mntns.as_raw_fd());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                join_cgroups(&procs)?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                setns(BorrowedFd::borrow_raw(netns), CloneFlags::CLONE_NEWNET)?;
                setns(BorrowedFd::borrow_raw(mntns), CloneFlags::CLONE_NEWNS)?;
                Ok(())
            });
        }
        command
    }

    /// Runs a command on the node to completion; panics with its output if it fails.
    pub fn run(&self, argv: &[&str]) -> String {
        let output = self
            .command(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("running {argv:?} on the node: {err}"));
        assert!(
            output.status.success(),
            "{argv:?} on the node failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `f` on a thread of its own inside the node's network namespace, so that test code
    /// can talk to servers on the node's loopback (the registry).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = self.netns.as_fd();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(netns, CloneFlags::CLONE_NEWNET)
                        .expect("entering the node's network namespace");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs the future `make` returns to completion on a thread of its own inside the node's
    /// network namespace (a current-thread runtime there): pushes to the node's registries.
    pub fn block_on<T: Send, F: std::future::Future<Output = T>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> T {
        self.in_netns(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the node's network namespace")
                .block_on(make())
        })
    }

    /// Runs `f` on a detached thread inside the node's network namespace: a server the test
    /// keeps running on the node's loopback (it ends with the test process).
    pub fn spawn_in_netns(&self, f: impl FnOnce() + Send + 'static) {
        let netns = self.netns.try_clone().expect("duplicating the node's netns handle");
        std::thread::spawn(move || {
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .expect("entering the node's network namespace");
            drop(netns);
            f()
        });
    }

    /// Every process on the node, at any depth of its cgroup.
    pub fn processes(&self) -> Vec<Pid> {
        self.cgroups.processes()
    }

    /// The node's cgroup directory in each hierarchy berth manages (berthd nests under it).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.cgroups.dirs.clone()
    }

    /// Every cgroup below the node's, in any hierarchy: what berthd made and left.
    pub fn cgroup_children(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(entry.path());
                    walk(&entry.path(), found);
                }
            }
        }
        let mut found = Vec::new();
        for dir in &self.cgroups.dirs {
            walk(dir, &mut found);
        }
        found
    }

    /// Log files the node's processes wrote, shown when a test fails.
    fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir()) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!(
                    "---- {} (last {} lines) ----\n{}",
                    path.display(),
                    tail.len(),
                    tail.join("\n")
                );
            }
        }
    }
}

fn join_cgroups(procs: &[RawFd]) -> std::io::Result<()> {
    for &fd in procs {
        // Writing 0 moves the writer itself.
        // SAFETY: the fd stays open in the parent for the life of the node.
        nix::unistd::write(unsafe { BorrowedFd::borrow_raw(fd) }, b"0")?;
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and joining it fails with
/// ENOSPC until they are set: give it its parent's.
fn inherit_cpuset(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let parent = dir.parent().expect("a cgroup has a parent").join(file);
        let value = std::fs::read_to_string(&parent)
            .unwrap_or_else(|err| panic!("reading {}: {err}", parent.display()));
        std::fs::write(dir.join(file), value.trim())
            .unwrap_or_else(|err| panic!("writing {}/{file}: {err}", dir.display()));
    }
}

fn collect_pids(dir: &Path, pids: &mut Vec<Pid>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|line| line.trim().parse().ok()).map(Pid::from_raw));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

/// Removes a cgroup tree, children first; a cgroup can only go once it has no processes.
fn remove_cgroup_tree(dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

impl NodeCgroups {
    fn raw_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    fn processes(&self) -> Vec<Pid> {
        let mut pids = Vec::new();
        for root in &self.dirs {
            collect_pids(root, &mut pids);
        }
        pids.sort();
        pids.dedup();
        pids
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // The cgroups' own drop kills the rest and removes them, before the directory goes.
    }
}

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        // Kill until nothing is left: a dying process may still fork once.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.processes();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for dir in self.dirs.iter().rev() {
            let mut attempts = 0;
            while let Err(err) = remove_cgroup_tree(dir) {
                attempts += 1;
                if attempts > 100 {
                    eprintln!("e2e: cannot remove node cgroup {}: {err}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
