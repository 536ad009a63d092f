//! Starts `nats-server -js` for an example when `NATS_URL` is not set: on a free port of
//! 127.0.0.1, its store in a temporary directory, stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` this example started, stopped when dropped; its store directory is
/// removed after it.
pub struct LocalServer(Child, #[allow(dead_code, reason = "held for its drop")] tempfile::TempDir);

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server and waits until it accepts connections; returns its URL.
pub fn start_server() -> Result<(String, LocalServer), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start nats-server ({e}): install it (apt-get install nats-server) or set NATS_URL"
            )
        })?;
    let server = LocalServer(child, dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nats-server did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((format!("nats://127.0.0.1:{port}"), server))
}
