//! Test support shared by `cargo xtask` and the integration tests: the pinned tansu broker, installed once into
//! a cache and started on a free loopback port.
//!
//! The cache is `$TRIBUTARY_CACHE`, else `$XDG_CACHE_HOME/tributary`, else `~/.cache/tributary`; the binary is
//! `tansu-<version>/bin/tansu` inside it. `TRIBUTARY_TANSU` points at a tansu binary directly.
//! Nothing here is for users of Tributary.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use process::output_within;

pub mod process;
pub mod proxy;
pub mod tls;
pub use proxy::Proxy;

/// The tansu version every test and the demo run against.
pub const TANSU_VERSION: &str = "0.6.0";
/// The cargo features tansu needs for the memory and sqlite storage engines.
const TANSU_FEATURES: &str = "dynostore,libsql";

/// Where installed tools are cached.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TRIBUTARY_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("tributary");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("tributary")
}

/// Where the pinned tansu binary is (or will be, once installed).
pub fn tansu_path() -> PathBuf {
    match std::env::var_os("TRIBUTARY_TANSU") {
        Some(path) => PathBuf::from(path),
        None => cache_dir().join(format!("tansu-{TANSU_VERSION}")).join("bin").join("tansu"),
    }
}

/// Installs the pinned tansu into the cache unless a working one is there; returns its path.
pub fn install() -> anyhow::Result<PathBuf> {
    let path = tansu_path();
    if path.exists() && output_within(Command::new(&path).arg("--version"), CLI_LIMIT).is_ok_and(|o| o.status.success()) {
        return Ok(path);
    }
    if std::env::var_os("TRIBUTARY_TANSU").is_some() {
        bail!("TRIBUTARY_TANSU points at {}, which does not run; unset it to install tansu into the cache", path.display());
    }
    let root = path.parent().and_then(Path::parent).context("tansu path has a root")?.to_path_buf();
    let build_dir = cache_dir().join(format!("tansu-{TANSU_VERSION}-build"));
    eprintln!("xtask: installing tansu {TANSU_VERSION} into {} (once; 15-30 minutes on 2 cores)", root.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["install", "tansu", "--version", TANSU_VERSION, "--locked", "--features", TANSU_FEATURES, "--root"])
        .arg(&root)
        .env("CARGO_TARGET_DIR", &build_dir)
        .status()
        .context("cannot run cargo install")?;
    // The build directory holds ~1.4 GB of intermediate files that are never needed again.
    let _ = std::fs::remove_dir_all(&build_dir);
    if !status.success() {
        bail!("`cargo install tansu --version {TANSU_VERSION}` failed ({status}); see its output above");
    }
    Ok(path)
}

/// The storage engine of a broker.
#[derive(Clone, Debug)]
pub enum Storage {
    /// In memory: fast, lost on exit; offsets inside batches are not exact (see shared docs).
    Memory,
    /// sqlite in the given file: exact offsets and end offsets, survives restarts.
    Sqlite(PathBuf),
}

/// A tansu broker (on a free port of 127.0.0.1 unless started in a network namespace), stopped when dropped.
pub struct Broker {
    child: Option<Child>,
    address: SocketAddr,
    log: PathBuf,
}

impl Broker {
    /// Starts a broker whose log goes to `dir/tansu.log`, and waits until it accepts connections.
    ///
    /// Fails with a clear message if tansu is not installed (`cargo xtask setup`) or does not come up.
    pub fn start(storage: Storage, dir: &Path) -> anyhow::Result<Broker> {
        Broker::start_advertising(storage, dir, None)
    }

    /// Starts a broker behind a fault-injecting [`Proxy`]: the broker advertises the proxy's address, so clients
    /// that bootstrap from [`Proxy::address`] (or from [`Broker::bootstrap`]: the metadata points them at the
    /// proxy) reach the broker only through it.
    pub fn start_behind_proxy(storage: Storage, dir: &Path) -> anyhow::Result<(Broker, Proxy)> {
        let listener = Proxy::bind()?;
        let advertised = listener.local_addr().context("proxy address")?;
        let broker = Broker::start_advertising(storage, dir, Some(advertised))?;
        let proxy = Proxy::start(listener, broker.address)?;
        Ok((broker, proxy))
    }

    fn start_advertising(storage: Storage, dir: &Path, advertised: Option<SocketAddr>) -> anyhow::Result<Broker> {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        Broker::start_on(storage, dir, address, advertised, None, &[])
    }

    /// Starts a broker that requires SASL (SCRAM) authentication (`--authentication`; create the users first,
    /// with [`Broker::create_scram_user`] on a broker without it over the same sqlite storage: tansu refuses
    /// everything but the login to an unauthenticated client), behind a [`tls::TlsProxy`] serving `pki`'s
    /// certificate. Clients connect to the proxy's address (the broker advertises it) with `SASL_SSL`.
    /// With `require_client_cert` the proxy admits only clients with a certificate `pki`'s CA signed.
    pub fn start_secured(
        storage: Storage,
        dir: &Path,
        pki: &tls::Pki,
        require_client_cert: bool,
    ) -> anyhow::Result<(Broker, tls::TlsProxy)> {
        let listener = tls::TlsProxy::bind()?;
        let advertised = listener.local_addr().context("proxy address")?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let broker = Broker::start_on(storage, dir, address, Some(advertised), None, &["--authentication"])?;
        let proxy = tls::TlsProxy::start(listener, broker.address, pki, require_client_cert)?;
        Ok((broker, proxy))
    }

    /// Creates a user with `password` for SCRAM-SHA-256 and SCRAM-SHA-512 (`tansu user create`, which speaks
    /// plaintext without SASL: call it on a broker started without authentication).
    pub fn create_scram_user(&self, name: &str, password: &str) -> anyhow::Result<()> {
        for mechanism in ["scram256", "scram512"] {
            let output = output_within(
                Command::new(tansu_path()).args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://{}", self.address),
                    "--mechanism",
                    mechanism,
                    name,
                    password,
                ]),
                CLI_LIMIT,
            )
            .context("cannot run `tansu user create`")?;
            if !output.status.success() {
                bail!("creating user {name} ({mechanism}) failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        Ok(())
    }

    /// Starts a broker in the network namespace `netns` (`ip netns exec`), listening on `address` there, for
    /// tests that build their own network of hosts. [`Broker::bootstrap`] is `address`; the caller makes it
    /// reachable.
    pub fn start_in_netns(storage: Storage, dir: &Path, netns: &str, address: SocketAddr) -> anyhow::Result<Broker> {
        Broker::start_on(storage, dir, address, None, Some(netns), &[])
    }

    fn start_on(
        storage: Storage,
        dir: &Path,
        address: SocketAddr,
        advertised: Option<SocketAddr>,
        netns: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Broker> {
        let tansu = tansu_path();
        if !tansu.exists() {
            bail!("the test broker is not installed at {}; run `cargo xtask setup` (or `cargo xtask test`) first", tansu.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let log = dir.join("tansu.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).context("cannot open the broker log")?;
        let url = format!("tcp://{address}");
        let advertised = advertised.map_or_else(|| url.clone(), |a| format!("tcp://{a}"));
        let engine = match &storage {
            Storage::Memory => "memory://tansu/".to_owned(),
            Storage::Sqlite(file) => format!("sqlite://{}?maintenance_interval=5s", file.display()),
        };
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&tansu);
                command
            }
            None => Command::new(&tansu),
        };
        let child = command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised, "--storage-engine", &engine])
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("log handle")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", tansu.display()))?;
        let mut broker = Broker { child: Some(child), address, log };
        broker.wait_ready(Duration::from_secs(30))?;
        Ok(broker)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect_timeout(&self.address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                bail!("the broker exited at startup ({status}); its log:\n{log}");
            }
            if Instant::now() >= deadline {
                bail!("the broker did not accept connections on {} within {timeout:?}; see {}", self.address, self.log.display());
            }
            // Polling the port is how readiness is observed; tansu has no readiness signal.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `HOST:PORT` (`127.0.0.1:PORT` unless started in a network namespace), for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.address.to_string()
    }

    /// Creates `name` with `partitions` partitions and topic `config` entries (e.g. `cleanup.policy=compact`).
    pub fn create_topic(&self, name: &str, partitions: u32, config: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut command = Command::new(tansu_path());
        command.args(["topic", "create", "--broker", &format!("tcp://{}", self.address), "--partitions", &partitions.to_string()]);
        for (key, value) in config {
            command.args(["--config", &format!("{key}={value}")]);
        }
        let output = output_within(command.arg(name), CLI_LIMIT).context("cannot run `tansu topic create`")?;
        if !output.status.success() {
            bail!("creating topic {name} failed: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// Leaves the broker running after this handle is dropped (for `cargo xtask broker start`).
    pub fn detach(mut self) -> u32 {
        self.child.take().map(|c| c.id()).unwrap_or_default()
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited within five seconds.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_pid(child.id(), Duration::from_secs(5), || matches!(child.try_wait(), Ok(Some(_))));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    /// Kills the broker at once: a test's broker and its data are thrown away, and tansu takes ~2 s to stop on
    /// SIGTERM. Call [`Broker::stop`] for a graceful stop.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM to `pid` and waits up to `grace` for `exited()` to say so, then SIGKILLs it.
pub fn stop_pid(pid: u32, grace: Duration, mut exited: impl FnMut() -> bool) {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if exited() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// A free TCP port on 127.0.0.1 (released before use).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a loopback port")?;
    Ok(listener.local_addr().context("local address")?.port())
}

/// This process's peak resident memory (VmHWM) in MiB, for benchmarks; 0 where `/proc` is not there.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The value after `--name` on the command line, for benchmark harnesses (`harness = false`) that take a few
/// flags next to cargo's own.
pub fn flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

/// How long one tansu command-line call (`topic create`, `user create`, `--version`) may take.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// A deadline for a wait a test cannot bound by itself, such as joining timely's workers in `timely::execute`:
/// unless the guard is dropped within `limit`, the whole test binary exits with a message naming `what`, so a
/// hung dataflow fails the suite instead of hanging it; every process the binary started (brokers) is killed
/// first. A panicking test drops the guard too.
///
/// ```
/// let _deadline = tributary_testkit::Deadline::new("a quick step", std::time::Duration::from_secs(60));
/// ```
pub struct Deadline {
    _done: std::sync::mpsc::Sender<()>,
}

impl Deadline {
    /// Starts the clock.
    pub fn new(what: impl Into<String>, limit: Duration) -> Deadline {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let what = what.into();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
                // Straight to the process's stderr: the test harness captures `eprintln!`, and would drop it.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "FAILED: {what} did not finish within {limit:?}; killing the processes it started (brokers) and exiting the test binary"
                );
                // An exit runs no destructors: the brokers' `Drop` would not stop them.
                process::kill_descendants();
                std::process::exit(101);
            }
        });
        Deadline { _done: done }
    }
}
