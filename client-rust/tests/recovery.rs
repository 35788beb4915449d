//! A connection libzmq ends for good (here: a reply over the client's `max_message_bytes`)
//! costs the request it carried, and the next send opens a new socket to the same server.
//! Against the real Python server, with one extra model whose reply is over the limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::sync::Once;
use std::time::Duration;

use inferential::{Connection, ConnectionBuilder, ErrorKind, Limits, Observation};

use common::{free_port, Server};

const WAIT: Duration = Duration::from_secs(5);
// The client's limit; the big model's reply (1.2 MB of float32 zeros) is over it, and within
// the server's own default limit.
const CLIENT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

static MODULE_PATH: Once = Once::new();

/// Makes `rust_recovery_models` importable by the servers this binary starts: a module with
/// `Big`, a model whose one output is over the client's limit. Every test calls it before
/// starting a process, so the environment is never changed while another thread spawns.
fn model_module_on_path() {
    MODULE_PATH.call_once(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("recovery-models");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rust_recovery_models.py"),
            "import numpy as np\n\
             from inferential.dispatch.base import Model\n\n\
             class Big(Model):\n\
             \x20   def execute(self, batch):\n\
             \x20       return [{'y': np.zeros(300_000, np.float32)} for _ in batch]\n",
        )
        .unwrap();
        std::env::set_var("PYTHONPATH", &dir);
    });
}

/// A server also serving `big`.
fn server_with_big_model() -> Server {
    model_module_on_path();
    let port = free_port();
    let probe = Connection::builder(&format!("tcp://127.0.0.1:{port}"));
    Server::start_with(port, &["--model", "big=rust_recovery_models:Big"], probe)
}

fn small_client(server: &Server, id: &str) -> ConnectionBuilder {
    Connection::builder(&server.endpoint)
        .client_id(id)
        .limits(Limits {
            max_message_bytes: CLIENT_MAX_MESSAGE_BYTES,
            ..Limits::default()
        })
}

#[test]
fn a_reply_over_the_limit_costs_one_request_and_the_next_send_resets_the_socket() {
    let server = server_with_big_model();
    let conn = small_client(&server, "rust-small").connect().unwrap();
    let x = [0.0f32];
    let obs = Observation::new().tensor("x", &x, &[1]);
    let noop = conn.model("noop").unwrap();
    assert!(noop.request(&obs, WAIT).unwrap().is_ok());
    assert_eq!(conn.stats().socket_resets, 0);
    // libzmq drops the connection on the oversized reply and never reconnects by itself.
    let err = conn
        .model("big")
        .unwrap()
        .request(&obs, Duration::from_millis(1000))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let after = noop.request(&obs, WAIT).unwrap();
    assert!(after.is_ok());
    assert_eq!(conn.stats().socket_resets, 1);
    // A healthy connection is not reset again.
    assert!(noop.request(&obs, WAIT).unwrap().is_ok());
    assert_eq!(conn.stats().socket_resets, 1);
    drop(server);
}

#[test]
fn a_server_restart_is_not_a_lost_connection() {
    model_module_on_path();
    let port = free_port();
    let endpoint = format!("tcp://127.0.0.1:{port}");
    let server = Server::start_on(port);
    let conn = Connection::builder(&endpoint)
        .client_id("rust-restart")
        .reconnect_ivl_ms(20)
        .reconnect_ivl_max_ms(80)
        .connect()
        .unwrap();
    let noop = conn.model("noop").unwrap();
    let obs = Observation::new();
    assert!(noop.request(&obs, WAIT).unwrap().is_ok());
    server.stop();
    let server = Server::start_on(port);
    // libzmq reconnects by itself after a network error: no reset.
    assert!(noop.request(&obs, WAIT).unwrap().is_ok());
    assert_eq!(conn.stats().socket_resets, 0);
    drop(server);
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "current_thread")]
async fn the_async_api_recovers_the_same_way() {
    let server = server_with_big_model();
    let conn = small_client(&server, "rust-small-aio")
        .connect_async()
        .unwrap();
    let x = [0.0f32];
    let obs = Observation::new().tensor("x", &x, &[1]);
    let noop = conn.model("noop").unwrap();
    assert!(noop.request(&obs, WAIT).await.unwrap().is_ok());
    let err = conn
        .model("big")
        .unwrap()
        .request(&obs, Duration::from_millis(1000))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // Waits on the new socket's descriptor: the reply arrives well within WAIT.
    let after = noop.request(&obs, WAIT).await.unwrap();
    assert!(after.is_ok());
    assert_eq!(conn.stats().socket_resets, 1);
    drop(server);
}
