//! Running the real `mesh-demo` binary from tests: where the other programs are, which
//! ports to give it, and reading what it prints.
//!
//! The programs it starts (mesh-registry, mesh-proxy, recommendations, marketplace) are
//! looked for next to `mesh-demo` itself, in `target/<profile>/`, where `cargo test
//! --workspace` puts them; `MESH_DEMO_TEST_BIN_DIR` overrides that. A test cannot build
//! them itself: cargo holds the build directory's lock while tests run.

#![allow(dead_code)]

use std::{
    collections::{BTreeMap, hash_map::RandomState},
    hash::BuildHasher,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use mesh_test_support::{ChildGuard, blocking};
use rustix::process::{Pid, Signal, kill_process};

pub const LAUNCHER: &str = env!("CARGO_BIN_EXE_mesh-demo");

/// Start-up of nine processes; generous for debug builds on a loaded machine.
pub const READY: Duration = Duration::from_secs(90);

/// Starts the whole demo (three recommendations instances) on `ports` and waits until it
/// is ready; returns the launcher and the `name=pid` table it printed.
pub fn start_mesh(ports: &Ports) -> (Launcher, BTreeMap<String, u32>) {
    let mut args = vec![
        "--bin-dir".to_owned(),
        bin_dir().display().to_string(),
        "--ready-timeout".to_owned(),
        "60s".to_owned(),
    ];
    args.extend(ports.flags());
    let mut launcher = Launcher::start(&args);
    let pids = launcher.wait_ready(READY);
    // Nine children and the watchdog.
    assert_eq!(pids.len(), 10, "{pids:?}");
    (launcher, pids)
}

/// The directory holding the programs the launcher starts; panics with the command that
/// builds them when one is missing.
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("MESH_DEMO_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(LAUNCHER).parent().unwrap().to_owned(),
    };
    let missing: Vec<&str> = mesh_demo::binaries::PACKAGES
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "missing in {}: {}. Build them in the tests' profile first, e.g. `cargo build -p \
         mesh-registry -p mesh-proxy -p recommendations -p marketplace` before `cargo test \
         -p mesh-demo` (`cargo test --workspace` builds them), or set MESH_DEMO_TEST_BIN_DIR",
        dir.display(),
        missing.join(", "),
    );
    dir
}

/// Ports for one launcher, as flags, all in one block of free ports:
/// registry `B`, marketplace `B+1`, upstream `B+2`, apps `B+3..`, sidecars `B+10..B+42`.
pub struct Ports {
    pub base: u16,
}

/// How many ports [`Ports`] spans, for three instances.
const SPAN: u16 = 43;

// === impl Ports ===

impl Ports {
    /// A block of ports all free right now. Taken below the kernel's ephemeral range, so
    /// the children's own outgoing connections cannot grab one before it is listened on.
    /// Blocks already handed to a test of this process are skipped: their launcher may not
    /// have bound them yet.
    pub fn free() -> Self {
        static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let below = ephemeral_low().saturating_sub(SPAN);
        assert!(
            below > 11_000,
            "the ephemeral port range starts too low to stay under"
        );
        let seed = RandomState::new().hash_one(std::process::id());
        let mut handed_out = HANDED_OUT.lock().unwrap();
        for attempt in 0..200u64 {
            let offset = seed.wrapping_add(attempt * 7919) % u64::from(below - 10_000);
            let base = 10_000 + u16::try_from(offset).unwrap();
            if handed_out.iter().any(|&other| base.abs_diff(other) < SPAN) {
                continue;
            }
            let held: Result<Vec<TcpListener>, _> = (base..base + SPAN)
                .map(|port| TcpListener::bind(("127.0.0.1", port)))
                .collect();
            if held.is_ok() {
                handed_out.push(base);
                return Self { base };
            }
        }
        panic!("no block of {SPAN} free ports below {below}");
    }

    pub fn registry(&self) -> u16 {
        self.base
    }

    pub fn marketplace(&self) -> u16 {
        self.base + 1
    }

    /// The admin port of sidecar `k` (0: the marketplace's).
    pub fn admin(&self, k: u16) -> u16 {
        self.base + 10 + 10 * k + 2
    }

    pub fn flags(&self) -> Vec<String> {
        let b = self.base;
        [
            ("--registry-port", b),
            ("--marketplace-port", b + 1),
            ("--recommendations-port", b + 2),
            ("--app-port", b + 3),
            ("--registry-tls-port", b + 6),
            ("--base-port", b + 10),
        ]
        .into_iter()
        .flat_map(|(flag, port)| [flag.to_owned(), port.to_string()])
        .chain(["--instances".to_owned(), "3".to_owned()])
        .collect()
    }
}

/// The low end of `ip_local_port_range`, 32768 where it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// A running `mesh-demo`, its output collected line by line. A failed test must not
/// leave a mesh behind: dropped, it is killed (SIGKILL), which makes its watchdog stop
/// the mesh.
pub struct Launcher {
    pub child: ChildGuard,
    lines: mpsc::Receiver<String>,
    /// Every line read so far, `out: ` or `err: ` first, for failure messages.
    pub transcript: Vec<String>,
    /// Its `TMPDIR`, so a test sees what it leaves in temporary files.
    pub tmp: tempfile::TempDir,
}

// === impl Launcher ===

impl Launcher {
    pub fn start(args: &[String]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new(LAUNCHER)
            .args(args)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh-demo starts");
        let (tx, lines) = mpsc::channel();
        read_lines(child.stdout.take().unwrap(), "out", tx.clone());
        read_lines(child.stderr.take().unwrap(), "err", tx);
        Self {
            child: child.into(),
            lines,
            transcript: Vec::new(),
            tmp,
        }
    }

    /// Every file under the launcher's `TMPDIR`, at any depth.
    pub fn temporary_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.tmp.path(), &mut out);
        out
    }

    /// Temporary files holding a private key.
    pub fn key_files(&self) -> Vec<PathBuf> {
        self.temporary_files()
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains("key"))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line (new or already read) for which `matches` holds, or `None` after
    /// `timeout` or once the launcher's output has ended.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        if let Some(line) = self.transcript.iter().find(|l| matches(l)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.transcript.push(line.clone());
            if matches(&line) {
                return Some(line);
            }
        }
    }

    /// Reads what has arrived so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.transcript.push(line);
        }
    }

    /// Waits for the ready line, then returns the printed `name=pid` table.
    pub fn wait_ready(&mut self, timeout: Duration) -> BTreeMap<String, u32> {
        let ready = self.wait_for_line(timeout, |l| l == "out: mesh-demo: ready");
        assert!(ready.is_some(), "no ready line:\n{}", self.transcript());
        let pids = self
            .wait_for_line(Duration::ZERO, |l| l.starts_with("out:   pids "))
            .expect("the banner lists the pids");
        pids.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, pid)| (name.to_owned(), pid.parse().unwrap()))
            .collect()
    }

    pub fn signal(&self, signal: Signal) {
        kill_process(pid(self.child.id()), signal).unwrap();
    }

    /// The exit status, or `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        blocking::within(timeout, || self.child.try_wait().unwrap())
    }

    /// Everything the launcher printed, once its output has ended (it has exited and so
    /// has the watchdog, which shares its stderr), or after 10 s.
    pub fn finish(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.transcript.push(line),
                Err(_) => break,
            }
        }
        self.transcript.join("\n")
    }

    /// Ctrl-C, as a user stops the demo: it must exit 0 within 60 s. Returns everything
    /// it printed.
    pub fn interrupt(&mut self) -> String {
        self.signal(Signal::INT);
        let status = self.wait_exit(Duration::from_secs(60));
        let transcript = self.finish();
        assert!(
            status.is_some_and(|s| s.success()),
            "{status:?}\n{transcript}"
        );
        transcript
    }

    /// What the launcher printed so far.
    pub fn transcript(&mut self) -> String {
        self.drain();
        self.transcript.join("\n")
    }
}

fn read_lines(stream: impl Read + Send + 'static, label: &'static str, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if tx.send(format!("{label}: {line}")).is_err() {
                return;
            }
        }
    });
}

pub fn pid(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap()).unwrap()
}

/// Whether `pid` is a live process: a zombie (exited, not yet reaped by whoever adopted
/// it) counts as gone.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls until none of `pids` is alive; the ones still alive after `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let alive = || {
        pids.iter()
            .copied()
            .filter(|&p| alive(p))
            .collect::<Vec<u32>>()
    };
    match blocking::within(timeout, || Some(()).filter(|()| alive().is_empty())) {
        Some(()) => Vec::new(),
        None => alive(),
    }
}
