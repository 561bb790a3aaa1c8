//! The real binary running `run`, for tests of signals and crashes.

use super::*;

/// The real binary running `run` with JSON logs, for tests of signals and crashes.
pub struct BinaryWorker {
    pub child: std::process::Child,
    pub addr: String,
    log: Option<std::thread::JoinHandle<Vec<String>>>,
    so_far: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl BinaryWorker {
    /// Starts the binary and waits until `/readyz` answers 200.
    pub async fn start(config: &std::path::Path) -> Self {
        Self::start_within(config, Duration::from_secs(15)).await
    }

    /// [`BinaryWorker::start`], ready within `ready` (thousands of channels
    /// on a cluster take longer to subscribe).
    pub async fn start_within(config: &std::path::Path, ready: Duration) -> Self {
        Self::spawn("run", "http", "/readyz", config, ready).await
    }

    /// Starts `console` and waits until its `/healthz` answers 200.
    pub async fn console(config: &std::path::Path) -> Self {
        Self::spawn(
            "console",
            "addr",
            "/healthz",
            config,
            Duration::from_secs(15),
        )
        .await
    }

    /// Starts `command` with JSON logs, reads its address from the log
    /// field `addr_field`, and waits until `ready` answers 200 there. The
    /// process is ours from its start: a wait that fails kills it (it
    /// once outlived its test and declared 10,000 queues into the next).
    async fn spawn(
        command: &str,
        addr_field: &str,
        ready: &str,
        config: &std::path::Path,
        within: Duration,
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_octopods-worker"))
            .args(["--log-format", "json", command, "--config"])
            .arg(config)
            // The config names its broker; the suite's `AMQP_URL` would
            // replace it (the cluster tests' replicas onto the single node).
            .env_remove("AMQP_URL")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the binary");
        // The process logs its HTTP address; read it, and keep the log.
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let so_far = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let shared = so_far.clone();
        let field = addr_field.to_owned();
        let log = std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let parsed: Option<Value> = serde_json::from_str(&line).ok();
                if let Some(addr) = parsed.as_ref().and_then(|v| v["fields"][&field].as_str()) {
                    drop(tx.send(addr.to_owned()));
                }
                if let Ok(mut s) = shared.lock() {
                    s.push(line.clone());
                }
                log.push(line);
            }
            log
        });
        let mut worker = Self {
            child,
            addr: String::new(),
            log: Some(log),
            so_far,
        };
        worker.addr = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the process logs its HTTP address");
        let url = format!("http://{}{ready}", worker.addr);
        eventually(within, "the binary to be ready", || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        worker
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A field of the first JSON log line that has it, while the process runs.
    pub fn field(&self, name: &str) -> Option<String> {
        let lines = self.so_far.lock().map(|l| l.clone()).unwrap_or_default();
        lines.iter().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["fields"][name].as_str().map(str::to_owned)
        })
    }

    /// The last `n` log lines, while the process runs.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.so_far.lock().map(|l| l.clone()).unwrap_or_default();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The log lines written so far (call after the process exited).
    pub fn log(&mut self) -> Vec<String> {
        self.log
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for BinaryWorker {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// A command's standard error, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A command's standard output, as text.
pub fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The standard output of a command that must have succeeded (else its
/// standard error fails the test).
pub fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o)
}
