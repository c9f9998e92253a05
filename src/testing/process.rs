//! Finding the PostgreSQL binaries and running them (as the `postgres` OS user
//! when this process is root), with timeouts and descriptive errors.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::error::TestingError;

const INSTALL_HINT: &str = "install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`) \
     or point AURORA_POOL_PG_BINDIR at the directory holding initdb, pg_ctl, postgres, pg_basebackup and psql";

/// Environment variables that could redirect our own libpq clients elsewhere.
const PG_ENV_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
];

/// Where the binaries are and which OS user runs them.
#[derive(Debug, Clone)]
pub(crate) struct PgEnv {
    /// Directory of initdb, pg_ctl, postgres, pg_basebackup, psql.
    pub(crate) bindir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` OS user when we are root.
    pub(crate) run_as: Option<(u32, u32)>,
    /// Effective uid of this process.
    pub(crate) euid: u32,
}

impl PgEnv {
    /// Finds the binaries and the OS user to run them as.
    pub(crate) fn discover() -> Result<Self, TestingError> {
        let bindir = find_bindir()?;
        for bin in ["initdb", "pg_ctl", "postgres", "pg_basebackup", "psql"] {
            if !bindir.join(bin).is_file() {
                return Err(TestingError::new(format!(
                    "PostgreSQL binary `{bin}` not found in {}: {INSTALL_HINT}",
                    bindir.display()
                )));
            }
        }
        check_version(&bindir)?;
        let euid = effective_uid()?;
        let run_as = if euid == 0 {
            Some(lookup_user("postgres")?)
        } else {
            None
        };
        tracing::debug!(target: "aurora_pool::testing", bindir = %bindir.display(), ?run_as, "PostgreSQL binaries found");
        Ok(Self {
            bindir,
            run_as,
            euid,
        })
    }

    /// A command for one of the PostgreSQL binaries, run as the server user (but psql),
    /// with a clean libpq environment and `cwd` as working directory.
    pub(crate) fn pg(&self, bin: &str, cwd: &Path) -> Command {
        let mut cmd = Command::new(self.bindir.join(bin));
        // psql may run as root (it logs in as `-U postgres` over the trusted unix socket):
        // without a uid to switch to, std spawns it with posix_spawn instead of forking
        // the whole test process, which took a third of each call's time and CPU (50
        // calls: 30 ms and 14 ms of CPU a call, 19 ms and 10 ms without); the failover
        // tests run several calls while they measure.
        let server_user = self.run_as.filter(|_| bin != "psql");
        if let Some((uid, gid)) = server_user {
            cmd.uid(uid).gid(gid);
            cmd.env("HOME", cwd)
                .env("USER", "postgres")
                .env("LOGNAME", "postgres");
        }
        for var in PG_ENV_VARS {
            cmd.env_remove(var);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .env("LC_ALL", "C")
            .current_dir(cwd);
        cmd
    }

    /// Gives `path` (not recursive) to the server user when running as root.
    pub(crate) fn chown(&self, path: &Path) -> Result<(), TestingError> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                TestingError::new(format!("chown {} to uid {uid}: {e}", path.display()))
            })?;
        }
        Ok(())
    }

    /// Writes a file and gives it to the server user.
    pub(crate) fn write_file(&self, path: &Path, contents: &str) -> Result<(), TestingError> {
        fs::write(path, contents)
            .map_err(|e| TestingError::new(format!("writing {}: {e}", path.display())))?;
        self.chown(path)
    }

    /// Writes a secret (a private key) readable only by its owner: the file is
    /// created with mode 0600 (so it is never readable by others, not even
    /// briefly), forced to 0600 if it existed, and given to the server user.
    /// PostgreSQL refuses a key file the group or others can read.
    pub(crate) fn write_private_file(
        &self,
        path: &Path,
        contents: &str,
    ) -> Result<(), TestingError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| TestingError::new(format!("creating {}: {e}", path.display())))?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| TestingError::new(format!("chmod 600 {}: {e}", path.display())))?;
        f.write_all(contents.as_bytes())
            .map_err(|e| TestingError::new(format!("writing {}: {e}", path.display())))?;
        drop(f);
        self.chown(path)
    }

    /// Appends to a file (which must exist and be owned by the server user).
    pub(crate) fn append_file(&self, path: &Path, contents: &str) -> Result<(), TestingError> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| TestingError::new(format!("opening {}: {e}", path.display())))?;
        f.write_all(contents.as_bytes())
            .map_err(|e| TestingError::new(format!("appending to {}: {e}", path.display())))
    }
}

fn find_bindir() -> Result<PathBuf, TestingError> {
    if let Some(dir) = std::env::var_os("AURORA_POOL_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("initdb").is_file() {
            return Err(TestingError::new(format!(
                "AURORA_POOL_PG_BINDIR={} has no `initdb`: {INSTALL_HINT}",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    // Debian layout: /usr/lib/postgresql/<major>/bin, newest major first.
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut best: Option<(u32, PathBuf)> = None;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(major) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if bin.join("initdb").is_file() && best.as_ref().is_none_or(|(m, _)| major > *m) {
                best = Some((major, bin));
            }
        }
        if let Some((_, dir)) = best {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
    }
    Err(TestingError::new(format!(
        "could not find the PostgreSQL server binaries (`initdb` not in AURORA_POOL_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH): {INSTALL_HINT}"
    )))
}

/// The effective uid of this process, from /proc/self/status.
fn effective_uid() -> Result<u32, TestingError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| TestingError::new(format!("reading /proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| TestingError::new("no effective uid in /proc/self/status"))
}

/// uid and gid of an OS user, from /etc/passwd.
fn lookup_user(name: &str) -> Result<(u32, u32), TestingError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|e| TestingError::new(format!("reading /etc/passwd: {e}")))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4
            && fields[0] == name
            && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
        {
            return Ok((uid, gid));
        }
    }
    Err(TestingError::new(format!(
        "running as root, but there is no `{name}` OS user to run PostgreSQL as (PostgreSQL refuses to run as root); \
         create it (`useradd --system postgres`, or `apt-get install postgresql` does) or run the tests as a normal user"
    )))
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) stdout: String,
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs a command to completion with a timeout, feeding `stdin` to it.
/// Non-zero exit, spawn failure and timeout are errors naming the command,
/// its exit status and its stderr.
pub(crate) fn run(
    mut cmd: Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, TestingError> {
    let line = describe(&cmd);
    tracing::debug!(target: "aurora_pool::testing", command = %line, "running");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            format!(" ({INSTALL_HINT})")
        } else {
            String::new()
        };
        TestingError::new(format!("could not run `{line}`: {e}{hint}"))
    })?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_owned();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(input.as_bytes());
            }))
        }
        _ => None,
    };
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                return Err(TestingError::new(format!(
                    "`{line}` did not finish within {timeout:?} and was killed; stderr: {}",
                    stderr.trim()
                )));
            }
            Ok(None) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(TestingError::new(format!("waiting for `{line}`: {e}"))),
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let code = status.code().map_or_else(
            || "killed by a signal".to_owned(),
            |c| format!("exit code {c}"),
        );
        return Err(TestingError::new(format!(
            "`{line}` failed ({code}): {}",
            stderr.trim()
        )));
    }
    Ok(Output { stdout })
}

/// The last `lines` lines of a (log) file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "\n--- last {} lines of {} ---\n{}",
                all.len() - start,
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("\n(no log at {}: {e})", path.display()),
    }
}

/// The postmaster pid recorded in a data directory, if the file exists.
pub(crate) fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Whether a process exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: "pid (comm) S ..."; comm may contain spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends SIGKILL to a process (via the `kill` utility; no unsafe code).
pub(crate) fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args([OsStr::new("-KILL"), OsStr::new(&pid.to_string())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The oldest PostgreSQL major version the emulation runs on (its catalog functions and
/// `pg_basebackup -R` need 13); tested on 15.
const OLDEST_SUPPORTED_MAJOR: u32 = 13;

/// Refuses PostgreSQL binaries older than [`OLDEST_SUPPORTED_MAJOR`] with an error that
/// names the version and the directory, instead of failing later in the emulation.
fn check_version(bindir: &Path) -> Result<(), TestingError> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| {
            TestingError::new(format!(
                "running {} --version: {e}",
                bindir.join("postgres").display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.8 (Debian 15.8-1)"
    let major = text
        .split_whitespace()
        .find_map(|word| word.split('.').next()?.parse::<u32>().ok());
    match major {
        Some(major) if major >= OLDEST_SUPPORTED_MAJOR => Ok(()),
        Some(major) => Err(TestingError::new(format!(
            "LocalCluster needs PostgreSQL {OLDEST_SUPPORTED_MAJOR} or newer; {} is {major} ({})",
            bindir.display(),
            text.trim()
        ))),
        None => Err(TestingError::new(format!(
            "cannot read the PostgreSQL version of {} from `{}`",
            bindir.display(),
            text.trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::check_version;

    /// A directory whose `postgres --version` prints `version`.
    fn fake_bindir(name: &str, version: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("aurora-pool-fake-pg-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let postgres = dir.join("postgres");
        std::fs::write(&postgres, format!("#!/bin/sh\necho '{version}'\n")).expect("script");
        std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn old_or_unknown_postgresql_is_refused_with_its_version() {
        let old = fake_bindir("12", "postgres (PostgreSQL) 12.9 (Debian 12.9-1)");
        let err = check_version(&old).expect_err("12 is too old").to_string();
        assert!(err.contains("needs PostgreSQL 13 or newer"), "{err}");
        assert!(err.contains("is 12"), "{err}");
        let odd = fake_bindir("odd", "something else");
        let err = check_version(&odd).expect_err("no version").to_string();
        assert!(err.contains("cannot read the PostgreSQL version"), "{err}");
        let new = fake_bindir("15", "postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)");
        check_version(&new).expect("15");
        for dir in [old, odd, new] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
