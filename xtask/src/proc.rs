//! Processes the tools start and measure: spawned with their output in a log file,
//! stopped with SIGTERM (SIGKILL after a grace period) and killed if dropped, with
//! their CPU time and peak memory read from /proc.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};

/// A started process, killed if still running when dropped.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Process> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        println!("+ {}", shown(cmd));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({})", shown(cmd)))?;
        Ok(Process {
            name: name.into(),
            child: Some(child),
            log: log.into(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Still running? (Reaps it if not.)
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// utime + stime of all its threads, in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // "pid (comm) state ..." — comm may hold spaces or ')'.
        let rest = &stat[stat.rfind(") ")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // f[0] is field 3 (state); utime and stime are fields 14 and 15.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }

    /// Its peak resident set size so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM, then SIGKILL after `grace`; its exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "{} (pid {}) still running {grace:?} after SIGTERM; killing it",
                    self.name,
                    child.id()
                );
                let _ = child.kill();
                return Ok(child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "---- last lines of {} ----\n{tail}\n----",
            self.log.display()
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A command line as a shell would show it.
pub fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let s = a.to_string_lossy();
            if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                format!("'{}'", s.replace('\'', "'\\''"))
            } else {
                s.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion, printing it first; its stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    println!("+ {}", shown(cmd));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", shown(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}{}",
            shown(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Clock ticks per second of /proc's CPU times.
pub fn clk_tck() -> Result<u64> {
    let out = run(Command::new("getconf").arg("CLK_TCK"))?;
    out.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {out:?}"))
}

/// A fresh work directory (removed and recreated).
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Copies the fieldcrypt binary into `dir` once, so a rebuild during a long run
/// cannot mix binaries; the copy's path.
pub fn fieldcrypt_copy(src: &Path, dir: &Path) -> Result<PathBuf> {
    if !src.is_file() {
        bail!(
            "no fieldcrypt binary at {} (cargo build --release, or pass --fieldcrypt); xtask does not build it",
            src.display()
        );
    }
    let dst = dir.join("fieldcrypt");
    std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    let version = run(Command::new(&dst).arg("--version"))?;
    println!(
        "fieldcrypt: {} -> {} ({})",
        src.display(),
        dst.display(),
        version.trim()
    );
    Ok(dst)
}

/// Polls `f` every 100 ms until it holds, `what` names it in the error; fails early
/// if `p` exits.
pub fn wait_for(
    p: &mut Process,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if !p.alive() {
            bail!(
                "{} exited while waiting for {what}\n{}",
                p.name,
                p.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {timeout:?}\n{}", p.log_tail());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Creates the deterministic key of domain `default` and the blind-index key of
/// domain `email` in the keyset `config` names (`fieldcrypt keys create`).
pub fn create_keys(fieldcrypt: &Path, config: &Path) -> Result<()> {
    for (purpose, domain) in [("deterministic", "default"), ("blind-index", "email")] {
        run(Command::new(fieldcrypt)
            .args([
                "keys",
                "create",
                "--purpose",
                purpose,
                "--domain",
                domain,
                "--config",
            ])
            .arg(config))?;
    }
    Ok(())
}
