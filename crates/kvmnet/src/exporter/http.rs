//! A small HTTP/1.1 server for the exporter: GET and HEAD, keep-alive, optional TLS and basic
//! authentication. Each connection has its own thread; their number is bounded.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::webconfig::WebConfig;

/// At most this many connections are served at once; more are closed right away.
const MAX_CONNECTIONS: usize = 128;

/// A response.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Arc<Vec<u8>>,
}

/// What the server asks of the application.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, path: &str, accept: &str) -> Response;
}

struct Conn {
    web: Arc<WebConfig>,
    /// Authorization headers already checked against their bcrypt hash.
    verified: Arc<Mutex<HashSet<String>>>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Conn {
    fn authorized(&self, header: Option<&str>) -> bool {
        if self.web.users.is_empty() {
            return true;
        }
        let Some(h) = header else { return false };
        if self.verified.lock().is_ok_and(|v| v.contains(h)) {
            return true;
        }
        let Some(cred) = h
            .strip_prefix("Basic ")
            .map(|c| kvmnet_linux::agent::b64decode(c.trim()))
        else {
            return false;
        };
        let cred = String::from_utf8_lossy(&cred).into_owned();
        let Some((user, pass)) = cred.split_once(':') else {
            return false;
        };
        let ok = self
            .web
            .users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(pass, hash).unwrap_or(false));
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                if v.len() > 64 {
                    v.clear();
                }
                v.insert(h.to_string());
            }
        }
        ok
    }

    fn serve<S: Read + Write>(&self, stream: S, handler: &dyn Handler) {
        let mut r = BufReader::new(stream);
        loop {
            let mut head = String::new();
            let mut line = String::new();
            // the request line and headers, at most 16 KiB
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(_) => return,
                }
                if line == "\r\n" || line == "\n" {
                    break;
                }
                head.push_str(&line);
                if head.len() > 16 * 1024 {
                    return;
                }
            }
            let mut lines = head.lines();
            let request = lines.next().unwrap_or("");
            let mut parts = request.split_whitespace();
            let (method, target, version) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or("/"),
                parts.next().unwrap_or("HTTP/1.0"),
            );
            let mut accept = "";
            let mut auth = None;
            let mut close = version == "HTTP/1.0";
            for h in lines {
                let Some((k, v)) = h.split_once(':') else {
                    continue;
                };
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "accept" => accept = v,
                    "authorization" => auth = Some(v),
                    "connection" => {
                        if v.eq_ignore_ascii_case("close") {
                            close = true;
                        } else if v.eq_ignore_ascii_case("keep-alive") {
                            close = false;
                        }
                    }
                    _ => {}
                }
            }
            let path = target.split('?').next().unwrap_or("/");
            let resp = if !self.authorized(auth) {
                Response {
                    status: 401,
                    content_type: "text/plain; charset=utf-8",
                    body: Arc::new(b"Unauthorized\n".to_vec()),
                }
            } else if method != "GET" && method != "HEAD" {
                Response {
                    status: 405,
                    content_type: "text/plain; charset=utf-8",
                    body: Arc::new(b"only GET and HEAD\n".to_vec()),
                }
            } else {
                handler.handle(path, accept)
            };
            let mut out = format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
                resp.status,
                reason(resp.status),
                resp.content_type,
                resp.body.len()
            );
            if resp.status == 401 {
                out.push_str("WWW-Authenticate: Basic realm=\"kvmnet\"\r\n");
            }
            for (k, v) in &self.web.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str(if close {
                "Connection: close\r\n\r\n"
            } else {
                "Connection: keep-alive\r\n\r\n"
            });
            let w = r.get_mut();
            if w.write_all(out.as_bytes()).is_err() {
                return;
            }
            if method != "HEAD" && w.write_all(&resp.body).is_err() {
                return;
            }
            if w.flush().is_err() || close {
                return;
            }
        }
    }
}

/// Serves `handler` on `listener` until the process ends.
pub fn serve(listener: TcpListener, web: WebConfig, handler: Arc<dyn Handler>) -> ! {
    let web = Arc::new(web);
    let verified = Arc::new(Mutex::new(HashSet::new()));
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            drop(stream);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (web, verified, handler, active) = (
            web.clone(),
            verified.clone(),
            handler.clone(),
            active.clone(),
        );
        std::thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
            let _ = stream.set_nodelay(true);
            let conn = Conn {
                web: web.clone(),
                verified,
            };
            match &web.tls {
                Some(cfg) => {
                    if let Ok(sc) = rustls::ServerConnection::new(cfg.clone()) {
                        let tls = rustls::StreamOwned::new(sc, stream);
                        conn.serve(tls, handler.as_ref());
                    }
                }
                None => conn.serve(stream, handler.as_ref()),
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Binds the listening socket (a clear error when the address is taken).
pub fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))
}
