//! The throwaway PKI of a TLS cluster: a CA and a server certificate made with the
//! `openssl` command-line tool.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cluster::TARGET;
use super::error::TestingError;
use super::process::{PgEnv, run};

/// Bound for one `openssl` invocation.
const OPENSSL_TIMEOUT: Duration = Duration::from_secs(30);
/// Common name of the throwaway CA of a TLS cluster.
const CA_COMMON_NAME: &str = "aurora-pool LocalCluster CA";

/// The `openssl` command-line tool: `AURORA_POOL_OPENSSL`, else the first
/// `openssl` in `PATH`, else `/usr/bin/openssl`.
pub(super) fn find_openssl() -> Result<PathBuf, TestingError> {
    const HINT: &str = "a TLS LocalCluster (LocalClusterBuilder::tls) generates its certificates with the `openssl` \
         command-line tool: install it (Debian/Ubuntu: `apt-get install openssl`) or point AURORA_POOL_OPENSSL at it";
    if let Some(path) = std::env::var_os("AURORA_POOL_OPENSSL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(TestingError::new(format!(
            "AURORA_POOL_OPENSSL={} is not a file: {HINT}",
            path.display()
        )));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("openssl"))
        .chain(std::iter::once(PathBuf::from("/usr/bin/openssl")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            TestingError::new(format!(
                "`openssl` not found in PATH nor at /usr/bin/openssl: {HINT}"
            ))
        })
}

/// The TLS material of a cluster started with [`LocalClusterBuilder::tls`],
/// all under `<root>/tls`.
#[derive(Debug)]
pub(super) struct Tls {
    /// The `openssl` binary that generates it.
    pub(super) openssl: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) ca_cert: PathBuf,
    pub(super) ca_key: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
}

impl Tls {
    pub(super) fn new(openssl: PathBuf, root: &Path) -> Self {
        let dir = root.join("tls");
        Self {
            openssl,
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            dir,
        }
    }

    /// Generates the CA and the server key and certificate of a TLS cluster
    /// Keys are P-256 (fast to generate); every file is
    /// written through [`PgEnv`] so the server user owns it, the keys with mode
    /// 0600.
    pub(super) fn generate(&self, env: &PgEnv) -> Result<(), TestingError> {
        let t = self;
        let started = Instant::now();
        fs::create_dir(&t.dir)
            .map_err(|e| TestingError::new(format!("creating {}: {e}", t.dir.display())))?;
        env.chown(&t.dir)?;
        // Our own config, so the result does not depend on the system's
        // openssl.cnf (also used as OPENSSL_CONF for every invocation).
        let cnf = t.dir.join("openssl.cnf");
        env.write_file(
            &cnf,
            "# aurora-pool LocalCluster throwaway PKI\n\
             [req]\n\
             distinguished_name = dn\n\
             prompt = no\n\
             [dn]\n\
             CN = localhost\n\
             [v3_ca]\n\
             basicConstraints = critical, CA:TRUE\n\
             keyUsage = critical, keyCertSign, cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [v3_server]\n\
             basicConstraints = critical, CA:FALSE\n\
             keyUsage = critical, digitalSignature, keyEncipherment\n\
             extendedKeyUsage = serverAuth\n\
             subjectAltName = IP:127.0.0.1, DNS:localhost\n\
             subjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid, issuer\n",
        )?;
        let openssl = |args: &[&OsStr], stdin: Option<&str>, what: &str| {
            let mut cmd = Command::new(&t.openssl);
            cmd.args(args)
                .env("OPENSSL_CONF", &cnf)
                .env_remove("RANDFILE")
                .current_dir(&t.dir);
            run(cmd, stdin, OPENSSL_TIMEOUT)
                .map(|o| o.stdout)
                .map_err(|e| e.context(format!("generating the TLS {what} with openssl")))
        };
        let os = |s: &'static str| OsStr::new(s);
        let genkey = [
            os("genpkey"),
            os("-algorithm"),
            os("EC"),
            os("-pkeyopt"),
            os("ec_paramgen_curve:P-256"),
        ];

        let ca_key = openssl(&genkey, None, "CA key")?;
        env.write_private_file(&t.ca_key, &ca_key)?;
        let ca_subject = format!("/CN={CA_COMMON_NAME}");
        let ca_cert = openssl(
            &[
                os("req"),
                os("-new"),
                os("-x509"),
                os("-config"),
                cnf.as_os_str(),
                os("-extensions"),
                os("v3_ca"),
                os("-key"),
                t.ca_key.as_os_str(),
                os("-subj"),
                OsStr::new(&ca_subject),
                os("-sha256"),
                os("-days"),
                os("2"),
            ],
            None,
            "CA certificate",
        )?;
        env.write_file(&t.ca_cert, &ca_cert)?;

        let server_key = openssl(&genkey, None, "server key")?;
        env.write_private_file(&t.server_key, &server_key)?;
        let csr = openssl(
            &[
                os("req"),
                os("-new"),
                os("-config"),
                cnf.as_os_str(),
                os("-key"),
                t.server_key.as_os_str(),
                os("-subj"),
                os("/CN=localhost"),
            ],
            None,
            "server certificate request",
        )?;
        let serial = format!("0x{:016x}", fastrand::u64(1..));
        let server_cert = openssl(
            &[
                os("x509"),
                os("-req"),
                os("-CA"),
                t.ca_cert.as_os_str(),
                os("-CAkey"),
                t.ca_key.as_os_str(),
                os("-set_serial"),
                OsStr::new(&serial),
                os("-sha256"),
                os("-days"),
                os("2"),
                os("-extfile"),
                cnf.as_os_str(),
                os("-extensions"),
                os("v3_server"),
            ],
            Some(&csr),
            "server certificate",
        )?;
        env.write_file(&t.server_cert, &server_cert)?;
        tracing::info!(
            target: TARGET,
            dir = %t.dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "TLS certificates generated"
        );
        Ok(())
    }
}
