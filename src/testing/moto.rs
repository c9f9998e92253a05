//! `MotoServer`: a local AWS emulator (moto's server mode) for the Secrets Manager tests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::TestingError;

const TARGET: &str = "aurora_pool::testing";

/// How long moto gets to answer `GET /moto-api/`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports tried before giving up when another process takes the free port first.
const PORT_ATTEMPTS: usize = 5;

/// Lines of moto's stderr kept for error messages.
const STDERR_LINES: usize = 40;

const INSTALL_HINT: &str = "run scripts/install-deps.sh moto (moto's server in a virtualenv at $AURORA_POOL_MOTO_VENV, by default ~/.cache/aurora-pool/moto-venv), or install `moto[server]` for python3";

/// The Python that runs moto: the virtualenv's at `$AURORA_POOL_MOTO_VENV` (by default
/// `~/.cache/aurora-pool/moto-venv`, where `scripts/install-deps.sh` installs moto) when it
/// exists, else `python3` from `PATH`.
fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("AURORA_POOL_MOTO_VENV")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::Path::new(&home).join(".cache/aurora-pool/moto-venv"))
        });
    venv.map(|venv| venv.join("bin").join("python3"))
        .filter(|python| python.exists())
        .unwrap_or_else(|| "python3".into())
}

/// Runs `python -m moto.server` with `sys.argv` as given, and exits when its stdin closes:
/// the server dies with the process that started it, even one killed by a signal.
const BOOTSTRAP: &str = r#"
import os, runpy, sys, threading

def exit_when_parent_dies():
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)

threading.Thread(target=exit_when_parent_dies, daemon=True).start()
sys.argv = ["moto.server"] + sys.argv[1:]
runpy.run_module("moto.server", run_name="__main__", alter_sys=True)
"#;

/// A [moto](https://github.com/getmoto/moto) server on 127.0.0.1: a local emulation of
/// the AWS APIs (Secrets Manager among them), started from `python3` with the
/// `moto[server]` package installed.
///
/// The server and its children are killed when the `MotoServer` is dropped. Point an SDK
/// client at [`MotoServer::endpoint`] with any region and static credentials:
///
/// ```no_run
/// # async fn demo() -> Result<(), aurora_pool::testing::TestingError> {
/// let moto = aurora_pool::testing::MotoServer::start().await?;
/// let endpoint = moto.endpoint(); // http://127.0.0.1:<port>
/// # drop(endpoint); Ok(()) }
/// ```
pub struct MotoServer {
    child: Child,
    port: u16,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl MotoServer {
    /// Starts a server on a free port and waits (at most 30 s) until it answers.
    ///
    /// Fails with moto's last stderr lines when `python3` or moto is missing or the server
    /// dies while starting.
    pub async fn start() -> Result<MotoServer, TestingError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            let mut server = MotoServer::spawn(port)?;
            match server.wait_ready().await {
                Ok(()) => {
                    tracing::debug!(target: TARGET, port, pid = server.child.id(), "moto server started");
                    return Ok(server);
                }
                Err(err) if server.stderr_tail().contains("Address already in use") => {
                    // Someone took the port between picking and binding it: try another.
                    tracing::debug!(target: TARGET, port, "moto's port was taken; retrying");
                    last_error = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last_error
            .unwrap_or_else(|| TestingError::new("no attempt made"))
            .context(format!(
                "starting a moto server ({PORT_ATTEMPTS} ports tried)"
            )))
    }

    /// The server's URL: `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A Secrets Manager client of the real AWS SDK aimed at this server, in `us-east-1`
    /// with static test credentials (moto accepts any), to create and rotate secrets.
    #[cfg(feature = "secrets-manager")]
    pub async fn secrets_manager_client(&self) -> aws_sdk_secretsmanager::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "test", "test", None, None, "moto",
            ))
            .load()
            .await;
        aws_sdk_secretsmanager::Client::new(&config)
    }

    fn spawn(port: u16) -> Result<MotoServer, TestingError> {
        let python = python();
        let mut command = Command::new(&python);
        command
            .args(["-c", BOOTSTRAP, "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("PYTHONUNBUFFERED", "1")
            // Its own process group, so that Drop can kill children too.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            TestingError::new(format!(
                "could not run `{} -m moto.server`: {e} ({INSTALL_HINT})",
                python.display()
            ))
        })?;
        let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        if let Some(pipe) = child.stderr.take() {
            let lines = Arc::clone(&stderr);
            std::thread::Builder::new()
                .name(format!("moto-{port}-stderr"))
                .spawn(move || {
                    for line in BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
                        if lines.len() == STDERR_LINES {
                            lines.pop_front();
                        }
                        lines.push_back(line);
                    }
                })
                .map_err(|e| TestingError::new(format!("starting a thread: {e}")))?;
        }
        Ok(MotoServer {
            child,
            port,
            stderr,
        })
    }

    async fn wait_ready(&mut self) -> Result<(), TestingError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(TestingError::new(format!(
                    "the moto server on port {} exited while starting ({status}); {INSTALL_HINT}{}",
                    self.port,
                    self.describe_stderr()
                )));
            }
            if answers(self.port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestingError::new(format!(
                    "the moto server on port {} did not answer GET /moto-api/ within {START_TIMEOUT:?}{}",
                    self.port,
                    self.describe_stderr()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn describe_stderr(&self) -> String {
        let tail = self.stderr_tail();
        if tail.is_empty() {
            "; it printed nothing on stderr".to_owned()
        } else {
            format!("\n--- last lines of its stderr ---\n{tail}")
        }
    }
}

impl std::fmt::Debug for MotoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MotoServer")
            .field("endpoint", &self.endpoint())
            .field("pid", &self.child.id())
            .finish()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // The whole process group (the server is its leader), via the `kill` utility: no
        // unsafe code.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (it may be taken again before moto binds it).
fn free_port() -> Result<u16, TestingError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| TestingError::new(format!("picking a free port on 127.0.0.1: {e}")))
}

/// Whether `GET /moto-api/` on the port answers 200.
async fn answers(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < head.len() {
            match stream.read(&mut head[read..]).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(
            head[..read].starts_with(b"HTTP/1.")
                && head[..read].get(9..12) == Some(b"200".as_slice()),
        )
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}
