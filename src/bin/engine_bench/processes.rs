//! The `engine` processes the harness starts, and stopping them however the run ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Result;

/// A child process that is sent SIGTERM and waited for when dropped, so no run leaves
/// processes behind.
pub struct Stopping {
    name: &'static str,
    child: Option<Child>,
}

impl Stopping {
    pub(super) fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("no VmHWM in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// Whether it already exited (a failure while the harness expects it to run).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Freezes the process (SIGSTOP), so it does no work, not even prefetching.
    pub fn pause(&self) -> Result<()> {
        self.child
            .as_ref()
            .map_or(Ok(()), |c| signal_checked(c, "STOP"))
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.child
            .as_ref()
            .map_or(Ok(()), |c| signal_checked(c, "CONT"))
    }

    /// SIGKILL: a crash, nothing flushed or committed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then up to 30 s for a clean exit (the engine flushes and commits), then
    /// SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        signal(&child, "TERM");
        // A process stopped by `pause` handles SIGTERM only once continued.
        signal(&child, "CONT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "engine-bench: {} did not stop within 30 s of SIGTERM; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

// std has no kill(2) and the root package does not depend on libc.
fn signal(child: &Child, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn signal_checked(child: &Child, name: &str) -> Result<()> {
    if signal(child, name) {
        Ok(())
    } else {
        Err(format!("cannot send SIG{name} to process {}", child.id()).into())
    }
}

impl Drop for Stopping {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How to start `engine`, and where its logs go.
#[derive(Debug, Clone)]
pub struct EngineCommand {
    pub binary: PathBuf,
    pub log_dir: PathBuf,
}

impl EngineCommand {
    /// `engine ARGS` with no configuration from the caller's environment, so nothing
    /// tunes the engine behind the benchmark's back.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(args)
            .env_remove("ENGINE_CONFIG")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("KAFKA_SCHEMA_REGISTRY_URL")
            .stdin(Stdio::null());
        c
    }

    fn log(&self, name: &str) -> Result<std::fs::File> {
        Ok(std::fs::File::create(self.log_dir.join(name))?)
    }

    /// Output of a short-lived command (`--version`, `describe`).
    pub fn output(&self, args: &[&str]) -> Result<String> {
        let out = self.command(args).output()?;
        if !out.status.success() {
            return Err(format!(
                "`engine {}` failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `engine dev` with `args`, logging to `log`, and waits for the addresses it
    /// prints.
    pub fn dev(&self, log: &str, args: &[&str]) -> Result<DevBroker> {
        let mut all = vec!["dev"];
        all.extend_from_slice(args);
        let mut child = self
            .command(&all)
            .stdout(Stdio::piped())
            .stderr(self.log(log)?)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("engine dev has no stdout")?;
        let process = Stopping::new("engine dev", child);
        let (tx, rx) = mpsc::channel();
        // Reads to the end so `engine dev` never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut bootstrap = None;
        let mut registry = None;
        let start = Instant::now();
        // The bootstrap line comes first; a registry line, if this engine prints one,
        // follows straight after.
        loop {
            let wait = match &bootstrap {
                None => Duration::from_secs(60).saturating_sub(start.elapsed()),
                Some(_) if registry.is_some() => break,
                Some(_) => Duration::from_millis(1500),
            };
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    if let Some(v) = line.strip_prefix("KAFKA_BOOTSTRAP_SERVERS=") {
                        bootstrap = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("KAFKA_SCHEMA_REGISTRY_URL=") {
                        registry = Some(v.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if bootstrap.is_some() => break,
                Err(_) => {
                    return Err(format!(
                        "`engine dev` printed no KAFKA_BOOTSTRAP_SERVERS line; see {}",
                        self.log_dir.join(log).display()
                    )
                    .into());
                }
            }
        }
        Ok(DevBroker {
            process,
            bootstrap_servers: bootstrap.ok_or("no bootstrap servers")?,
            registry_url: registry,
        })
    }

    /// Starts `engine run ARGS` against `broker`, logging to `log`.
    pub fn run(&self, args: &[&str], broker: &DevBroker, log: &str) -> Result<Stopping> {
        self.run_on(
            args,
            &broker.bootstrap_servers,
            broker.registry_url.as_deref(),
            log,
        )
    }

    /// Starts `engine run ARGS` against the broker at `bootstrap`, logging to `log`.
    pub fn run_on(
        &self,
        args: &[&str],
        bootstrap: &str,
        registry: Option<&str>,
        log: &str,
    ) -> Result<Stopping> {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let mut c = self.command(&all);
        c.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .stdout(Stdio::null())
            .stderr(self.log(log)?);
        if let Some(url) = registry {
            c.env("KAFKA_SCHEMA_REGISTRY_URL", url);
        }
        Ok(Stopping::new("engine run", c.spawn()?))
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(name)
    }
}

/// A running `engine dev`.
pub struct DevBroker {
    pub process: Stopping,
    pub bootstrap_servers: String,
    pub registry_url: Option<String>,
}

/// A fresh directory for the children's logs.
/// Starts an Apache Kafka broker of its own (`scripts/kafka`, run from the repository
/// root), logging to `log`; returns it and its bootstrap address.
pub fn real_broker(engine: &EngineCommand, log: &str) -> Result<(Stopping, String)> {
    let broker_log = engine.log_path(log);
    let mut child = Command::new("scripts/kafka")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&broker_log)?)
        .spawn()
        .map_err(|e| format!("scripts/kafka (run engine-bench from the repository root): {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("scripts/kafka has no stdout")?)
        .read_line(&mut line)?;
    let kafka = Stopping::new("scripts/kafka", child);
    let bootstrap = line
        .trim()
        .strip_prefix("KAFKA_BOOTSTRAP_SERVERS=")
        .ok_or_else(|| format!("scripts/kafka did not start; see {}", broker_log.display()))?
        .to_string();
    Ok((kafka, bootstrap))
}

pub fn log_dir(base: &Path) -> Result<PathBuf> {
    let dir = base.join(format!("engine-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
