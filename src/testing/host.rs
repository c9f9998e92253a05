//! What a local cluster needs of the machine: free ports, a private directory, a cached
//! `initdb` template it can trust, the `openssl` tool, a password nobody can guess, and no
//! servers left behind by a test run that was killed.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::cluster::{TARGET, TOOL_TIMEOUT, lock};
use super::error::TestingError;
use super::process::{PgEnv, kill_pid, postmaster_pid, process_alive, run};

/// A password no other user of the machine can guess: 24 letters and digits (URL-safe),
/// from the kernel's random source (the process's hash keys when it cannot be read).
pub(super) fn random_password() -> String {
    use std::io::Read;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    let read = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(chunk.as_ptr() as usize);
            chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes
        .iter()
        // 256 = 4 * 62 + 8: the slight bias toward the first 8 symbols costs < 0.1 bit each.
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// Picks `n` distinct free TCP ports on 127.0.0.1, each still held by its listener: a port
/// is taken only when the listener is dropped, right before a server binds it.
pub(super) fn free_ports(n: usize) -> Result<Vec<(u16, TcpListener)>, TestingError> {
    (0..n)
        .map(|_| {
            let listener = TcpListener::bind("127.0.0.1:0")
                .map_err(|e| TestingError::new(format!("picking a free port on 127.0.0.1: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| TestingError::new(format!("picking a free port: {e}")))?
                .port();
            Ok((port, listener))
        })
        .collect()
}

/// Removes clusters left behind by processes that died without dropping them (a test run
/// killed by a signal): their postmasters are killed and their directories removed. A
/// cluster directory is named after its owner's pid; only clusters whose owner is gone are
/// touched, and only processes that run `postgres` on their data directory are killed.
pub(super) fn sweep_orphans() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix("aurora-pool-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner == std::process::id() || process_alive(owner) {
            continue;
        }
        let root = entry.path();
        for data_dir in fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path())
        {
            let Some(pid) = postmaster_pid(&data_dir) else {
                continue;
            };
            let runs_this_dir = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline).contains(&*data_dir.to_string_lossy())
            });
            if runs_this_dir && process_alive(pid) {
                kill_pid(pid);
            }
        }
        if fs::remove_dir_all(&root).is_ok() {
            tracing::info!(target: TARGET, dir = %root.display(), owner, "removed a local cluster left behind by a dead process");
        }
    }
}

pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether a cached template's `path` may be copied into a cluster: owned by `uid`, not a
/// symbolic link, and writable by nobody else.
fn template_trusted(path: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// Returns the cached `initdb` output (a data dir) for this bindir and OS
/// user, creating it on first use; `None` when caching is disabled.
pub(super) fn initdb_template(env: &PgEnv) -> Result<Option<PathBuf>, TestingError> {
    static LOCK: Mutex<()> = Mutex::new(());
    if std::env::var_os("AURORA_POOL_NO_INITDB_CACHE").is_some_and(|v| !v.is_empty() && v != "0") {
        return Ok(None);
    }
    let _guard = lock(&LOCK);
    let tag: String = env
        .bindir
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let uid = env.run_as.map_or(env.euid, |(u, _)| u);
    // The binary's modification time: a PostgreSQL upgrade in place gets a new template.
    let built = fs::metadata(env.bindir.join("postgres"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let dir = std::env::temp_dir().join(format!("aurora-pool-initdb-v2-{uid}-{tag}-{built}"));
    let marker = dir.join("complete");
    if marker.is_file() {
        // The path is predictable: a template someone else made (or could change) is not
        // copied into a cluster.
        if template_trusted(&dir, uid) && template_trusted(&dir.join("data"), uid) {
            return Ok(Some(dir.join("data")));
        }
        tracing::warn!(
            target: TARGET,
            dir = %dir.display(),
            "initdb template not owned by the server user, or writable by others: not used (initdb runs per cluster)"
        );
        return Ok(None);
    }
    let staging =
        std::env::temp_dir().join(format!("aurora-pool-initdb-staging-{}", unique_suffix()));
    let result = (|| {
        fs::create_dir(&staging)
            .map_err(|e| TestingError::new(format!("creating {}: {e}", staging.display())))?;
        env.chown(&staging)?;
        let data = staging.join("data");
        initdb(env, &data, &staging)?;
        fs::write(staging.join("complete"), "ok\n")
            .map_err(|e| TestingError::new(format!("writing template marker: {e}")))?;
        // Atomic publish; another process may have won the race.
        if fs::rename(&staging, &dir).is_err() && !marker.is_file() {
            return Err(TestingError::new(format!(
                "could not publish the initdb template at {}",
                dir.display()
            )));
        }
        Ok(())
    })();
    let _ = fs::remove_dir_all(&staging);
    result?;
    tracing::info!(target: TARGET, dir = %dir.display(), "initdb template cached");
    Ok(Some(dir.join("data")))
}

pub(super) fn initdb(env: &PgEnv, data: &Path, cwd: &Path) -> Result<(), TestingError> {
    let mut cmd = env.pg("initdb", cwd);
    cmd.args([
        "-U",
        "postgres",
        "--auth=trust",
        "--locale=C",
        "--encoding=UTF8",
        "--no-sync",
        "--no-instructions",
        "-D",
    ])
    .arg(data);
    run(cmd, None, TOOL_TIMEOUT).map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::{random_password, template_trusted};

    #[test]
    fn a_template_someone_else_could_change_is_not_trusted() {
        let dir =
            std::env::temp_dir().join(format!("aurora-pool-template-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("dir");
        let uid = std::fs::metadata(&dir).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid()
        });
        let uid = uid.expect("uid");
        let mode = |m: u32| {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        mode(0o700);
        assert!(template_trusted(&dir, uid));
        assert!(!template_trusted(&dir, uid + 1), "another user's");
        mode(0o777);
        assert!(!template_trusted(&dir, uid), "writable by everyone");
        mode(0o770);
        assert!(!template_trusted(&dir, uid), "writable by the group");
        mode(0o755);
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        symlink(&dir, &link).expect("symlink");
        assert!(!template_trusted(&link, uid), "a link to it");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn passwords_are_random_and_url_safe() {
        let (a, b) = (random_password(), random_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }
}
