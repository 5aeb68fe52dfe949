//! One supervised child process: its output forwarded line by line behind its name, its
//! exit published as soon as it happens, and a polite stop (SIGTERM, then SIGKILL).

use std::{
    io::Write,
    os::unix::process::ExitStatusExt,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use rustix::process::{Pid, Signal, kill_process};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    sync::{mpsc, watch},
    task::JoinSet,
};

use crate::{
    Error,
    plan::{ProcessSpec, Role},
};

/// How long a process may take to vanish after SIGKILL; only a process stuck in the
/// kernel takes longer, and then waiting more would not help.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// A child that exited, sent to the launcher the moment it is reaped.
#[derive(Clone, Debug)]
pub struct Exit {
    pub name: String,
    pub pid: u32,
    pub role: Role,
    /// `exit code 1`, `killed by SIGKILL`, …
    pub status: String,
}

/// Handle to a running (or exited) child; clones watch the same process.
#[derive(Clone, Debug)]
pub struct Supervised {
    pub name: String,
    pub pid: u32,
    pub role: Role,
    /// The exit status, once the child has been reaped.
    exited: watch::Receiver<Option<String>>,
}

/// How a stop went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It had exited already, before it was asked to.
    Before(String),
    /// It exited after SIGTERM, within the grace period.
    Exited(String),
    /// It ignored SIGTERM and was killed.
    Killed(String),
    /// Not even SIGKILL made it go away within 5 s.
    Stuck,
}

/// Starts `spec` in process group `group`, forwarding its stdout and stderr to ours with
/// `[name] ` before each line (the forwarding tasks go into `forwarders`, so the caller can
/// wait until the last line is out). `exits` hears about its exit.
pub fn spawn(
    spec: &ProcessSpec,
    group: i32,
    exits: mpsc::UnboundedSender<Exit>,
    forwarders: &mut JoinSet<()>,
) -> Result<Supervised, Error> {
    let mut child = tokio::process::Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(group)
        .spawn()
        .map_err(|source| Error::Spawn {
            name: spec.name.clone(),
            program: spec.program.clone(),
            source,
        })?;
    let pid = child.id().expect("a child not yet waited for has a pid");
    if let Some(stdout) = child.stdout.take() {
        forwarders.spawn(forward(stdout, spec.name.clone(), Stream::Stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        forwarders.spawn(forward(stderr, spec.name.clone(), Stream::Stderr));
    }

    let (status_tx, status_rx) = watch::channel(None);
    let (name, role) = (spec.name.clone(), spec.role);
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => describe(status),
            Err(error) => format!("lost track of it: {error}"),
        };
        status_tx.send_replace(Some(status.clone()));
        let _ = exits.send(Exit {
            name,
            pid,
            role,
            status,
        });
    });
    Ok(Supervised {
        name: spec.name.clone(),
        pid,
        role,
        exited: status_rx,
    })
}

// === impl Supervised ===

impl Supervised {
    /// How it exited, if it has.
    pub fn status(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    /// Sends `signal` unless the process has already been reaped (its pid may then belong
    /// to another process).
    pub fn signal(&self, signal: Signal) {
        if self.status().is_some() {
            return;
        }
        let pid = i32::try_from(self.pid).ok().and_then(Pid::from_raw);
        if let Some(pid) = pid {
            // It may exit between the check and the kill: nothing to do then.
            let _ = kill_process(pid, signal);
        }
    }

    /// SIGTERM, then SIGKILL if it is still there after `grace`.
    pub async fn stop(&self, grace: Duration) -> Stopped {
        if let Some(status) = self.status() {
            return Stopped::Before(status);
        }
        self.signal(Signal::TERM);
        if let Some(status) = self.wait(grace).await {
            return Stopped::Exited(status);
        }
        self.signal(Signal::KILL);
        match self.wait(KILL_WAIT).await {
            Some(status) => Stopped::Killed(status),
            None => Stopped::Stuck,
        }
    }

    /// Its exit status once it has exited, or `None` after `limit`.
    pub async fn wait(&self, limit: Duration) -> Option<String> {
        let mut exited = self.exited.clone();
        let result = tokio::time::timeout(limit, exited.wait_for(Option::is_some)).await;
        match result {
            Ok(Ok(status)) => status.clone(),
            // The reaper task is gone without a status: it cannot come any more.
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

/// `exit code 0`, `killed by SIGKILL`.
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit code {code}");
    }
    match status.signal() {
        Some(signal) => format!("killed by {}", signal_name(signal)),
        None => status.to_string(),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        15 => "SIGTERM",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

#[derive(Clone, Copy, Debug)]
enum Stream {
    Stdout,
    Stderr,
}

/// Copies `reader` to our stream of the same kind, line by line, each behind `[name] `.
/// Bytes that are not UTF-8 are shown replaced rather than dropping the line.
async fn forward(reader: impl AsyncRead + Unpin, name: String, stream: Stream) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                // One write per line, so lines of different children never interleave. A
                // closed terminal is no reason to stop reading: the child would block.
                let _ = match stream {
                    Stream::Stdout => writeln!(std::io::stdout().lock(), "[{name}] {text}"),
                    Stream::Stderr => writeln!(std::io::stderr().lock(), "[{name}] {text}"),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(script: &str) -> ProcessSpec {
        ProcessSpec {
            name: "sh".to_owned(),
            role: Role::Recommendations,
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            ready_url: None,
        }
    }

    #[test]
    fn exit_statuses_read_as_words() {
        assert_eq!(describe(ExitStatus::from_raw(0)), "exit code 0");
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exit code 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by SIGKILL");
        assert_eq!(describe(ExitStatus::from_raw(15)), "killed by SIGTERM");
        assert_eq!(describe(ExitStatus::from_raw(10)), "killed by signal 10");
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_and_exits_are_reported() {
        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut forwarders = JoinSet::new();
        // Ignores SIGTERM; `exec` so the pid is the sleeper's own.
        let stubborn = spawn(
            &spec("trap '' TERM; exec sleep 30"),
            0,
            exits_tx.clone(),
            &mut forwarders,
        )
        .unwrap();
        // SIGTERM before the trap is set would kill the shell: wait for the `exec`.
        let comm = format!("/proc/{}/comm", stubborn.pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
            assert!(
                std::time::Instant::now() < deadline,
                "the shell never ran sleep"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stubborn.stop(Duration::from_millis(200)).await,
            Stopped::Killed("killed by SIGKILL".to_owned())
        );
        let exit = exits.recv().await.unwrap();
        assert_eq!(
            (exit.pid, exit.status.as_str()),
            (stubborn.pid, "killed by SIGKILL")
        );

        let polite = spawn(&spec("exec sleep 30"), 0, exits_tx, &mut forwarders).unwrap();
        assert_eq!(
            polite.stop(Duration::from_secs(10)).await,
            Stopped::Exited("killed by SIGTERM".to_owned())
        );
        assert_eq!(
            polite.stop(Duration::from_secs(10)).await,
            Stopped::Before("killed by SIGTERM".to_owned())
        );
    }
}
