//! The real Python server, started by the tests on a free port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use inferential::{Connection, ConnectionBuilder, Observation};

/// The Python interpreter of the project's venv (INFERENTIAL_PYTHON overrides it).
pub fn python() -> PathBuf {
    match std::env::var_os("INFERENTIAL_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server process; killed when dropped, and by its watchdog shell when the test
/// process dies (its stdin pipe closes), so no server outlives the tests.
pub struct Server {
    pub endpoint: String,
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
}

pub const MODELS: &[&str] = &[
    "echo=inferential.models.testing:Echo",
    "noop=inferential.models.testing:NoOp",
    "failing=inferential.models.testing:Failing",
];

impl Server {
    pub fn start() -> Server {
        Server::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Server {
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let probe = Connection::builder(&endpoint);
        Server::start_with(port, &[], probe)
    }

    /// A server with more `serve` arguments (e.g. `--config FILE`), ready once `probe`
    /// (the options a client of that server needs, e.g. its CURVE keys) gets an answer.
    pub fn start_with(port: u16, extra: &[&str], probe: ConnectionBuilder) -> Server {
        let endpoint = format!("tcp://127.0.0.1:{port}");
        let mut cmd = vec![
            python().display().to_string(),
            "-m".into(),
            "inferential.cli".into(),
            "serve".into(),
            "--bind".into(),
            endpoint.clone(),
            "--log-level".into(),
            "WARNING".into(),
        ];
        for m in MODELS {
            cmd.push("--model".into());
            cmd.push((*m).into());
        }
        cmd.extend(extra.iter().map(|a| (*a).to_owned()));
        let quoted: Vec<String> = cmd.iter().map(|a| format!("'{a}'")).collect();
        // exec'd children keep the pid; the watchdog kills the server on stdin EOF.
        let script = format!(
            "{} & pid=$!; trap 'kill $pid 2>/dev/null' EXIT; while read -r _; do :; done; kill $pid; wait $pid",
            quoted.join(" ")
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the Python server");
        let stdin = child.stdin.take().expect("stdin");
        let server = Server {
            endpoint,
            port,
            child,
            stdin: Some(stdin),
        };
        server.wait_ready(probe);
        server
    }

    fn wait_ready(&self, probe: ConnectionBuilder) {
        let conn = probe
            .client_id("readiness")
            .reconnect_ivl_ms(20)
            .reconnect_ivl_max_ms(0)
            .send_timeout_ms(100)
            .connect()
            .unwrap();
        let model = conn.model("noop").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if model
                .request(&Observation::new(), Duration::from_millis(500))
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the server at {} did not answer within 60 s", self.endpoint);
    }

    /// Stops the server and waits for the process to end.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Closing stdin ends the watchdog loop, which kills the server and waits for it.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
