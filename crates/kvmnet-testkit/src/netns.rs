//! One network namespace owned by a test, removed on drop.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command; fails with its stderr when it exits non-zero.
pub fn run(args: &[&str]) -> Result<String> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("cannot run {prog}"))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A uniquely named namespace (`kvmnet-t<pid>-<n>-<role>`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A fresh prefix unique to this process and call.
    pub fn unique_prefix() -> String {
        format!(
            "kvmnet-t{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Creates `<prefix>-<role>` with its loopback up.
    pub fn create(prefix: &str, role: &str) -> Result<Netns> {
        let name = format!("{prefix}-{role}");
        run(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name under /run/netns.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec NS <args>`.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec(&["sh", "-c", script])
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Writes the resolver configuration `ip netns exec` (and kvmnet) use for this namespace:
    /// /etc/netns/NAME/resolv.conf, removed when the namespace is dropped.
    pub fn set_resolv(&self, content: &str) -> Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/resolv.conf"), content)?;
        Ok(())
    }

    /// Loads an nft script inside the namespace.
    pub fn nft(&self, script: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(script.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("nft failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// A TCP server a test started inside a namespace; stopped by its PID on drop.
#[derive(Debug)]
pub struct TcpServer {
    child: std::process::Child,
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Netns {
    /// Starts a TCP server accepting (and closing) connections on `addr:port`; returns when
    /// it listens.
    pub fn tcp_server(&self, addr: &str, port: u16) -> Result<TcpServer> {
        let code = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET6 if ':' in '{addr}' else socket.AF_INET)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{addr}',{port}))\ns.listen(64)\n\
             print('ready',flush=True)\nwhile True:\n c,_=s.accept()\n c.close()\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "/usr/bin/python3", "-c", &code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cannot start python3")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            use std::io::BufRead;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let server = TcpServer { child };
        if line.trim() != "ready" {
            bail!("tcp server on {addr}:{port} did not start");
        }
        Ok(server)
    }

    /// True when an ICMP echo to `dst` of `size` total bytes (DF set) gets a reply.
    pub fn ping(&self, dst: &str, size: Option<u32>) -> bool {
        let mut args: Vec<String> = vec![
            "ping".into(),
            "-c1".into(),
            "-W".into(),
            "0.6".into(),
            "-n".into(),
            "-q".into(),
        ];
        if let Some(sz) = size {
            args.extend([
                "-M".into(),
                "do".into(),
                "-s".into(),
                sz.saturating_sub(28).to_string(),
            ]);
        }
        args.push(dst.to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.exec(&refs).is_ok()
    }

    /// True when a TCP connection to `dst:port` is established within a second.
    pub fn tcp_connects(&self, dst: &str, port: u16) -> bool {
        self.exec(&[
            "timeout",
            "1",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{dst}/{port}"),
        ])
        .is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
        // kvmnet's runtime files for this namespace (journals of applies and fixes made in it)
        let run = std::env::var_os("KVMNET_RUN_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/run/kvmnet"));
        let _ = std::fs::remove_dir_all(run.join(format!("ns-{}", self.name)));
        // Processes still inside would keep the namespace alive; tests stop theirs by PID first.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
