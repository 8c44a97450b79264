//! A real PostgreSQL server (Debian's `postgresql` package) for the database backend's
//! tests: a fresh cluster in a temp directory, listening on a free 127.0.0.1 port and a
//! private socket directory, stopped and removed on drop.
//!
//! As root (CI), the server runs as the `postgres` user the package creates, since
//! `initdb` refuses root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// A running PostgreSQL server.
pub struct Postgres {
    /// `postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable`
    pub url: String,
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The directory of Debian's PostgreSQL binaries (the newest installed major version).
fn bin_dir() -> PathBuf {
    let mut majors: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-test-deps")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    majors.sort();
    majors
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/postgres: run scripts/install-test-deps")
}

fn as_root() -> bool {
    super::run("id", &["-u"]).trim() == "0"
}

/// `program args`, as the `postgres` user when we are root.
fn command(program: PathBuf, root: bool) -> Command {
    if root {
        // setpriv execs (runuser would fork and keep the server from our signals).
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program)
            .env("HOME", "/tmp");
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// initdb, start, and wait (bounded) until the server accepts connections.
    pub fn start() -> Postgres {
        Self::start_with(false)
    }

    /// [`Postgres::start`] with TLS on (`ssl = on`), its certificate for IP 127.0.0.1
    /// issued by a test CA at [`Postgres::ca_file`] (made with `openssl`, which Debian's
    /// `postgresql` brings through `ssl-cert`).
    pub fn start_tls() -> Postgres {
        Self::start_with(true)
    }

    /// The test CA's certificate (PEM) of a [`Postgres::start_tls`] server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`, without `sslmode`.
    pub fn url_without_sslmode(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn start_with(tls: bool) -> Postgres {
        let bin = bin_dir();
        let root = as_root();
        let dir = tempfile::Builder::new()
            .prefix("tribe-pg-")
            .tempdir()
            .unwrap();
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).unwrap();
        if root {
            super::run(
                "chown",
                &["-R", "postgres:postgres", dir.path().to_str().unwrap()],
            );
        }
        let out = command(bin.join("initdb"), root)
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if tls {
            make_certs(dir.path(), &data);
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("\nssl = on\n");
            std::fs::write(&conf, text).unwrap();
            if root {
                super::run(
                    "chown",
                    &["-R", "postgres:postgres", dir.path().to_str().unwrap()],
                );
            }
        }
        let port = free_port();
        let mut pg = Postgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"),
            port,
            child: None,
            dir,
        };
        pg.restart();
        pg
    }

    /// Starts the server (again, on the same data and port) and waits (bounded) until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let bin = bin_dir();
        let (data, sock) = (self.dir.path().join("data"), self.dir.path().join("sock"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let port = self.port.to_string();
        self.child = Some(
            command(bin.join("postgres"), as_root())
                .args(["-D", data.to_str().unwrap(), "-p", &port])
                .args([
                    "-k",
                    sock.to_str().unwrap(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start postgres"),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start in 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with psql; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        super::run("psql", &["-X", "-q", "-A", "-t", &self.url, "-c", sql])
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- postgres log ----\n{}", self.log());
        }
        self.stop();
    }
}

/// A test CA (`ca.crt` in `dir`) and a server certificate for IP 127.0.0.1 it issued
/// (`server.crt`, `server.key` in the data directory, where `ssl = on` finds them).
fn make_certs(dir: &std::path::Path, data: &std::path::Path) {
    let p = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("openssl (Debian: openssl, which postgresql's ssl-cert brings)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=tribe-test-ca"];
    ca.extend(ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    ca.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    openssl(&ca);
    let (key, csr) = (
        data.join("server.key").display().to_string(),
        p("server.csr"),
    );
    let mut req = vec!["req", "-subj", "/CN=127.0.0.1"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr]);
    openssl(&req);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let (crt, ext) = (data.join("server.crt").display().to_string(), p("ext"));
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &crt,
        "-extfile",
        &ext,
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A server that declines TLS, as a plaintext PostgreSQL (or anyone in the path) does: it
/// answers `N` to the client's SSLRequest and, if the client goes on in the clear, asks
/// for a cleartext password (AuthenticationCleartextPassword). It records every byte a
/// client sends after its SSLRequest, so a test can assert that nothing (no startup
/// message, no password) followed.
pub struct DecliningTls {
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// Bytes received after the SSLRequest, all connections together.
    after_ssl_request: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    /// Connections that sent an SSLRequest.
    ssl_requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DecliningTls {
    /// Listens on a free loopback port until dropped.
    pub fn start() -> DecliningTls {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let after = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, r, s) = (after.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut head = [0u8; 8];
                if conn.read_exact(&mut head).is_err() {
                    continue;
                }
                // SSLRequest: length 8, code 80877103.
                if head != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    a.lock().unwrap().extend_from_slice(&head);
                    continue;
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(b"N");
                // A client that goes on in the clear sends its startup message: ask it
                // for a cleartext password and keep whatever comes.
                let mut buf = [0u8; 4096];
                let mut asked = false;
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    a.lock().unwrap().extend_from_slice(&buf[..n]);
                    if !asked {
                        asked = true;
                        let _ = conn.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                    }
                }
            }
        });
        DecliningTls {
            addr,
            after_ssl_request: after,
            ssl_requests: requests,
            stop,
            thread: Some(thread),
        }
    }

    /// Everything clients sent after their SSLRequest.
    pub fn received_after_ssl_request(&self) -> Vec<u8> {
        self.after_ssl_request.lock().unwrap().clone()
    }

    /// How many connections asked for TLS.
    pub fn ssl_requests(&self) -> usize {
        self.ssl_requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for DecliningTls {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
