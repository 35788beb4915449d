//! CURVE against the real Python server configured with `auth.curve_secret_key` and the
//! robots' public keys. The crate's default build (the zmq crate's bundled libzmq, built
//! without libsodium) has no CURVE: there the keys must be refused with `unsupported`;
//! `make test-rust` also runs this file linked to the system libzmq, which has CURVE.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use inferential::{curve_supported, Connection, ConnectionBuilder, ErrorKind, Observation};

use common::{free_port, Server};

const WAIT: Duration = Duration::from_secs(5);

/// `make test-rust` sets INFERENTIAL_EXPECT_CURVE to 1 in the run linked to the system
/// libzmq and 0 in the default build, so neither run can skip its half unnoticed.
fn expect_curve() {
    if let Ok(expected) = std::env::var("INFERENTIAL_EXPECT_CURVE") {
        assert_eq!(curve_supported(), expected == "1", "zmq::has(\"curve\")");
    }
}

struct Pair {
    public: String,
    secret: String,
}

fn pair() -> Pair {
    let keys = zmq::CurveKeyPair::new().expect("a CURVE key pair");
    Pair {
        public: zmq::z85_encode(&keys.public_key).unwrap(),
        secret: zmq::z85_encode(&keys.secret_key).unwrap(),
    }
}

fn with_keys(b: ConnectionBuilder, server: &str, robot: &Pair) -> ConnectionBuilder {
    b.curve_server_key(server)
        .curve_public_key(&robot.public)
        .curve_secret_key(&robot.secret)
}

#[test]
fn without_curve_in_libzmq_the_keys_are_refused_as_unsupported() {
    expect_curve();
    if curve_supported() {
        return; // the other tests of this file run instead
    }
    // Well-formed Z85 keys (any 32 bytes encode to one): only the missing CURVE is wrong.
    let key = zmq::z85_encode(&[7u8; 32]).unwrap();
    let err = Connection::builder("tcp://127.0.0.1:1")
        .curve_server_key(&key)
        .curve_public_key(&key)
        .curve_secret_key(&key)
        .connect()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("CURVE"), "{err}");
}

#[test]
fn the_right_keys_connect_encrypted_and_a_wrong_server_key_or_id_does_not() {
    expect_curve();
    if !curve_supported() {
        return; // covered by the test above in this build
    }
    let server_keys = pair();
    let (robot, probe) = (pair(), pair());
    let dir = std::env::temp_dir().join(format!("inferential-curve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("server.yaml");
    // Z85 uses YAML's signs: every key quoted (no Z85 character is a single quote).
    std::fs::write(
        &config,
        format!(
            "clients:\n  accept_unknown: false\n  known:\n    - {{id: arm-01, curve_public_key: '{}'}}\n    - {{id: readiness, curve_public_key: '{}'}}\nauth:\n  curve_secret_key: '{}'\n",
            robot.public, probe.public, server_keys.secret
        ),
    )
    .unwrap();
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let server = Server::start_with(
        port,
        &["--config", config.to_str().unwrap()],
        with_keys(Connection::builder(&endpoint), &server_keys.public, &probe),
    );

    let conn = with_keys(Connection::builder(&endpoint), &server_keys.public, &robot)
        .client_id("arm-01")
        .connect()
        .unwrap();
    let x = [1.0f32, 2.0];
    let obs = Observation::new().tensor("x", &x, &[2]);
    let reply = conn.model("echo").unwrap().request(&obs, WAIT).unwrap();
    assert_eq!(reply.client_id(), "arm-01");
    assert_eq!(reply.tensor("x").unwrap().try_as::<f32>().unwrap()[..], x);

    // The server binds each key to its id: the same key under another id is refused.
    let impostor = with_keys(Connection::builder(&endpoint), &server_keys.public, &robot)
        .client_id("arm-02")
        .connect()
        .unwrap();
    let err = impostor
        .model("echo")
        .unwrap()
        .request(&obs, WAIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");

    // Expecting another server's key, the handshake never completes: nothing is sent.
    let stranger = pair();
    let wrong = with_keys(Connection::builder(&endpoint), &stranger.public, &robot)
        .client_id("arm-01")
        .send_timeout_ms(200)
        .connect()
        .unwrap();
    let err = wrong.model("echo").unwrap().observe(&obs).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable, "{err}");

    // A key the server does not list is turned away by its ZAP handler the same way.
    let unknown = with_keys(
        Connection::builder(&endpoint),
        &server_keys.public,
        &stranger,
    )
    .client_id("arm-01")
    .send_timeout_ms(200)
    .connect()
    .unwrap();
    let err = unknown.model("echo").unwrap().observe(&obs).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerUnavailable, "{err}");
    assert_eq!(conn.stats().received, 1);

    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
