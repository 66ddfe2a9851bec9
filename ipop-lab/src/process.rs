//! A process the lab started, stopped on drop: SIGTERM first (agents then remove what they
//! made), SIGKILL if it is still there after 5 s.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

pub struct Proc {
    child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `args` in network namespace `ns` (network only, so bpffs stays the machine's),
    /// stdout discarded, stderr into `log`, with `env` added (an `IPOP_LOG` of the caller's
    /// is not passed on: agents log as users see them). nsenter execs the command, so the
    /// child's pid is the command's.
    pub fn spawn(ns: &str, args: &[&str], env: &[(&str, &str)], log: &Path) -> Proc {
        let file = fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("IPOP_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?} in {ns}: {e}"));
        Proc { child, log: log.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` if it still runs.
    pub fn signal(&mut self, signal: i32) {
        if self.try_wait().is_none() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.child.id() as i32, signal) };
        }
    }

    /// Waits up to `secs` for it to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; reaped either way.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        if self.wait_exit(5).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
