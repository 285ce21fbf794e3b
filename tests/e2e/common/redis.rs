//! Redis servers for the tests: one standalone server and one three-master cluster per test
//! process, on free ports, with `appendonly yes` and `appendfsync always` (what the store
//! requires), started on first use and killed when the process ends. Each test gets its own
//! key prefix on them. Fails (never skips) when `redis-server` cannot be started.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `redis://…` of the standalone server, with a fresh prefix.
pub fn standalone_url() -> String {
    static PORT: OnceLock<u16> = OnceLock::new();
    let port = *PORT.get_or_init(|| start_servers(1, DURABLE, false)[0]);
    format!("redis://127.0.0.1:{port}/?prefix={}", fresh_prefix())
}

/// `redis+cluster://…` of the cluster's three masters, with a fresh prefix.
pub fn cluster_url() -> String {
    static PORTS: OnceLock<Vec<u16>> = OnceLock::new();
    let ports = PORTS.get_or_init(|| {
        let ports = start_servers(3, DURABLE, true);
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli is required for the Redis Cluster tests (apt-get install redis-server)");
        assert!(created.success(), "redis-cli --cluster create failed");
        for port in &ports {
            wait_for(*port, "CLUSTER INFO", "cluster_state:ok");
        }
        ports
    });
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis+cluster://{}/?prefix={}", nodes.join(","), fresh_prefix())
}

/// What the store requires of a server by default.
pub const DURABLE: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];

/// A standalone server of its own, started with `persistence` (for tests of the settings).
pub fn server_with(persistence: &[&str]) -> String {
    let port = start_servers(1, persistence, false)[0];
    format!("redis://127.0.0.1:{port}/?prefix={}", fresh_prefix())
}

fn fresh_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Starts `n` servers and returns their ports once each answers.
fn start_servers(n: usize, persistence: &[&str], cluster: bool) -> Vec<u16> {
    let dir = tempfile::tempdir().unwrap().keep();
    let ports: Vec<u16> = (0..n).map(|_| free_port(cluster)).collect();
    for port in &ports {
        spawn_server(&dir, *port, persistence, cluster);
    }
    for port in &ports {
        wait_for(*port, "PING", "PONG");
    }
    ports
}

/// A port free now (and, for a cluster node, its bus port 10000 above).
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !cluster || (port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()) {
            return port;
        }
    }
}

/// Starts one server from a thread that lives as long as the process, so the server (told to
/// die with the thread that started it) dies with the test process, however that ends.
fn spawn_server(dir: &Path, port: u16, persistence: &[&str], cluster: bool) {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(persistence)
        .args(["--appendfilename", &format!("aof-{port}.aof"), "--appenddirname", &format!("aof-{port}"), "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if cluster {
        command.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
        command.args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
    }
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let (started, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let child = command.spawn();
        let ok = child.is_ok();
        started.send(child.map(|_| ()).map_err(|e| e.to_string())).unwrap();
        if ok {
            loop {
                std::thread::park();
            }
        }
    });
    if let Err(e) = result.recv().unwrap() {
        panic!("redis-server is required for the Redis tests and could not be started: {e} (apt-get install redis-server)");
    }
}

/// Sends `command` until the answer contains `expect` (at most 20 s).
fn wait_for(port: u16, command: &str, expect: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)) {
            conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut answer = [0u8; 4096];
            if conn.write_all(format!("{command}\r\n").as_bytes()).is_ok() {
                if let Ok(n) = conn.read(&mut answer) {
                    if String::from_utf8_lossy(&answer[..n]).contains(expect) {
                        return;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "redis on port {port} did not answer {command} with {expect}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
