//! The PostgreSQL backend against a real server (Debian's `postgresql`): the backend
//! contract (atomic batches, load all / one, expiry), which rows a node loads (its own, or
//! its whole cluster's when it has none), clusters kept apart, a database that goes away
//! and comes back, and unreadable rows reported as corrupt instead of panicking.

mod support;

use support::postgres::Postgres as Server;
use tribe_node::persist::postgres::Postgres;
use tribe_node::persist::{Backend, BackendError, Batch, Record};

fn rec(sid: i128, expiry: u64, tag: u8) -> Record {
    Record {
        sid,
        expiry,
        bytes: vec![tag; 48],
    }
}

fn all(b: &dyn Backend) -> Vec<Record> {
    let mut v = Vec::new();
    b.load_all(&mut |r| {
        v.push(r);
        Ok(())
    })
    .unwrap();
    v.sort_by_key(|r| (r.sid, r.bytes[0]));
    v
}

fn put(b: &dyn Backend, puts: Vec<Record>, deletes: Vec<i128>) {
    b.write_batch(&Batch { puts, deletes }).unwrap();
}

#[test]
fn batches_loads_expiry_and_which_rows_a_node_loads() {
    let pg = Server::start();
    let n1 = Postgres::connect(&pg.url, "shop", "shop-0").unwrap();
    let n2 = Postgres::connect(&pg.url, "shop", "shop-1").unwrap();
    let other = Postgres::connect(&pg.url, "blog", "shop-0").unwrap();

    put(
        &n1,
        vec![rec(1, 100, 1), rec(-7, 200, 1), rec(3, 300, 1)],
        vec![],
    );
    // The last put of a session in one batch wins; deletes of absent sessions are fine.
    put(&n1, vec![rec(1, 150, 2), rec(1, 160, 3)], vec![3, 99]);
    put(&n2, vec![rec(1, 170, 4), rec(5, 500, 4)], vec![]);
    put(&other, vec![rec(8, 800, 9)], vec![]);

    assert_eq!(
        all(&n1),
        vec![rec(-7, 200, 1), rec(1, 160, 3)],
        "only its own rows"
    );
    assert_eq!(n1.load_one(1).unwrap(), Some(rec(1, 160, 3)));
    assert_eq!(n1.load_one(3).unwrap(), None);
    // Its own row first; a session it never wrote: the cluster's newest row.
    assert_eq!(n2.load_one(1).unwrap(), Some(rec(1, 170, 4)));
    assert_eq!(n1.load_one(5).unwrap(), Some(rec(5, 500, 4)));
    assert_eq!(other.load_one(5).unwrap(), None, "never another cluster's");

    // A node with no rows of its own (a new pod name after a full restart) loads every
    // node's rows of its cluster, never another cluster's.
    let fresh = Postgres::connect(&pg.url, "shop", "shop-7f9c").unwrap();
    assert_eq!(
        all(&fresh),
        vec![
            rec(-7, 200, 1),
            rec(1, 160, 3),
            rec(1, 170, 4),
            rec(5, 500, 4)
        ]
    );
    assert_eq!(all(&other), vec![rec(8, 800, 9)]);

    // Expiry covers every node of the cluster, and only that cluster.
    assert_eq!(n2.delete_expired(200).unwrap(), 3);
    assert_eq!(all(&fresh), vec![rec(5, 500, 4)]);
    assert_eq!(all(&other), vec![rec(8, 800, 9)]);
    assert!(n1.disk_bytes().is_some_and(|b| b > 0));
}

#[test]
fn a_database_that_goes_away_is_an_error_then_the_node_reconnects() {
    let mut pg = Server::start();
    let b = Postgres::connect(&pg.url, "c", "n").unwrap();
    put(&b, vec![rec(1, u64::MAX / 4, 1)], vec![]);
    pg.stop();
    let e = b
        .write_batch(&Batch {
            puts: vec![rec(2, 10_000_000_000, 2)],
            deletes: vec![],
        })
        .unwrap_err();
    assert!(matches!(e, BackendError::Io(_)), "{e}");
    assert!(b.load_one(1).is_err());
    pg.restart();
    put(&b, vec![rec(2, 10_000_000_000, 2)], vec![]);
    assert_eq!(
        all(&b).len(),
        2,
        "the write before the outage is still there"
    );
}

#[test]
fn an_unreachable_database_fails_at_start_without_the_password() {
    let pg = Server::start();
    let port = pg
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    drop(pg);
    let url =
        format!("postgres://app:s3cret@127.0.0.1:{port}/shop?sslmode=disable&connect_timeout=2");
    let e = Postgres::connect(&url, "c", "n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("connect"), "{msg}");
    assert!(msg.contains("127.0.0.1"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
}

#[test]
fn unreadable_rows_are_reported_as_corrupt() {
    let pg = Server::start();
    let b = Postgres::connect(&pg.url, "c", "n").unwrap();
    put(&b, vec![rec(1, 100, 1)], vec![]);
    pg.psql("INSERT INTO tribe_sessions (cluster, node, sid, expiry, state) VALUES ('c', 'n', '\\x0102', 5, '\\x00')");
    let e = b.load_all(&mut |_| Ok(())).unwrap_err();
    assert!(matches!(e, BackendError::Corrupt(_)), "{e}");
    assert!(e.to_string().contains("2 bytes"), "{e}");
}

/// A server that declines TLS (a plaintext server, or anyone in the path) is refused
/// when the URL does not say `sslmode=disable`: the client sends nothing after its
/// SSLRequest (no startup message, no password), and the error says why without the
/// password.
#[test]
fn a_server_that_declines_tls_is_refused_before_the_password() {
    let fake = support::postgres::DecliningTls::start();
    let url = format!("postgres://app:s3cret@{}/shop?connect_timeout=2", fake.addr);
    let e = Postgres::connect(&url, "c", "n").unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("does not support TLS"), "{msg}");
    assert!(
        msg.contains("sslmode=require") && msg.contains("sslmode=disable"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(fake.ssl_requests() >= 1, "the client asked for TLS");
    let sent = fake.received_after_ssl_request();
    assert!(
        sent.is_empty(),
        "nothing may follow a declined SSLRequest, got {:?}",
        String::from_utf8_lossy(&sent)
    );

    // `sslmode=prefer` would fall back to the clear: refused before dialling.
    let e = Postgres::connect(&format!("{url}&sslmode=prefer"), "c", "n").unwrap_err();
    assert!(e.to_string().contains("sslmode=prefer"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    assert!(fake.received_after_ssl_request().is_empty());
}

/// TLS as it runs in production: with no `sslmode` the node connects over TLS (the server
/// counts an encrypted connection); `sslrootcert` (verify-full) accepts the server's CA
/// and refuses another; `verify-ca` accepts a host name the certificate does not name,
/// `verify-full` does not.
#[test]
fn tls_by_default_and_the_ca_and_host_name_are_checked_when_asked() {
    let pg = Server::start_tls();
    let base = pg.url_without_sslmode();
    let ca = pg.ca_file().display().to_string();
    let encrypted = || {
        pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'tribe-node'")
            .trim()
            .parse::<u32>()
            .unwrap()
    };

    let b = Postgres::connect(&base, "c", "n").unwrap_or_else(|e| panic!("{e}"));
    put(&b, vec![rec(1, 10_000_000_000, 1)], vec![]);
    assert_eq!(all(&b).len(), 1);
    assert!(encrypted() >= 1, "the default connection uses TLS");
    drop(b);

    let full = Postgres::connect(&format!("{base}?sslrootcert={ca}"), "c", "n")
        .unwrap_or_else(|e| panic!("verify-full with the server's CA: {e}"));
    assert_eq!(all(&full).len(), 1);
    drop(full);

    // Another CA: the server is not trusted.
    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.crt");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=another-ca",
        ])
        .arg("-keyout")
        .arg(other.path().join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = Postgres::connect(
        &format!("{base}?sslrootcert={}", other_ca.display()),
        "c",
        "n",
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("certificate") || e.to_string().contains("Certificate"),
        "{e}"
    );

    // `localhost` is not in the certificate (only IP 127.0.0.1): verify-ca connects,
    // verify-full refuses.
    let by_name = format!(
        "postgres://postgres@localhost:{}/postgres?hostaddr=127.0.0.1",
        pg.port()
    );
    Postgres::connect(
        &format!("{by_name}&sslmode=verify-ca&sslrootcert={ca}"),
        "c",
        "n",
    )
    .unwrap_or_else(|e| panic!("verify-ca: {e}"));
    let e = Postgres::connect(
        &format!("{by_name}&sslmode=verify-full&sslrootcert={ca}"),
        "c",
        "n",
    )
    .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}
