//! Makes sure no child outlives the launcher, even a launcher killed with SIGKILL.
//!
//! `prctl(PR_SET_PDEATHSIG)` would do it, but it must run in each child between `fork` and
//! `exec`, which only the `unsafe` `pre_exec` hook allows, and the workspace forbids unsafe
//! code. So the launcher first starts this small process (`mesh-demo watchdog`, hidden) as
//! the leader of a new process group, starts every child in that group, and keeps a pipe to
//! the watchdog's stdin. However the launcher ends, the kernel closes that pipe; the
//! watchdog reads end-of-file and stops the whole group: SIGTERM, then SIGKILL after a
//! grace period (itself included). After a normal stop the launcher writes `exit` instead,
//! and the watchdog leaves quietly.
//!
//! A group of their own also keeps a Ctrl-C at the terminal from reaching the children all
//! at once: only the launcher gets it, and it stops them in order.
//!
//! Limitation: a child that leaves the group itself (none of ours does) or a watchdog
//! killed by hand would escape this.

use std::{process::Stdio, time::Duration};

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin},
};

use crate::Error;

/// The hidden subcommand that runs [`run`].
pub const SUBCOMMAND: &str = "watchdog";

/// What the launcher writes to dismiss the watchdog.
const DISMISS: &str = "exit";

/// Between SIGTERM and SIGKILL to the orphaned group: enough for sidecars to deregister.
const GRACE: Duration = Duration::from_secs(3);

/// The launcher's side: the watchdog process and the pipe whose closing wakes it.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

// === impl Watchdog ===

impl Watchdog {
    /// Starts `mesh-demo watchdog` as the leader of a new process group.
    pub fn spawn() -> Result<Self, Error> {
        let exe = std::env::current_exe().map_err(Error::Watchdog)?;
        let mut child = tokio::process::Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(Error::Watchdog)?;
        let pid = child.id().expect("a child not yet waited for has a pid");
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process group the children join: the watchdog leads it, so its pid.
    pub fn group(&self) -> i32 {
        i32::try_from(self.pid).expect("pids fit in an i32")
    }

    /// Tells the watchdog to leave without touching the group, and waits for it.
    pub async fn dismiss(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(format!("{DISMISS}\n").as_bytes()).await;
        }
        if tokio::time::timeout(GRACE, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// The watchdog process: waits for the launcher's pipe to close, then stops the group.
pub async fn run() -> std::io::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.trim() == DISMISS => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // The launcher is gone without dismissing us. Catch our own SIGTERM first, so we live
    // on to follow up with SIGKILL.
    let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let own = i32::try_from(std::process::id())
        .ok()
        .and_then(Pid::from_raw);
    let group = own.expect("our own pid is valid");
    let _ = kill_process_group(group, Signal::TERM);
    tokio::time::sleep(GRACE).await;
    // Kills the watchdog too: it is a member of the group.
    kill_process_group(group, Signal::KILL)?;
    Ok(())
}
