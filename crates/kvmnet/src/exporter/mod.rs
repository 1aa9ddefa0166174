//! `kvmnet exporter`: a Prometheus exporter. A collector thread reads the host every
//! `--interval`, runs doctor on it (and its probes every `--probe-interval`, when asked), and
//! renders the metrics once; scrapes are served from that rendering and never wait for a
//! collection. Read-only: nothing on the host is changed.

mod http;
pub mod metrics;
pub mod webconfig;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kvmnet_doctor::{diagnose, Options};

use crate::cli::ExporterArgs;
use crate::error::CliError;
use http::{Handler, Response};
use metrics::Meta;

/// A rendering of the last collection, as served.
struct Rendered {
    prom: Arc<Vec<u8>>,
    om: Arc<Vec<u8>>,
}

struct App {
    current: RwLock<Arc<Rendered>>,
}

const INDEX: &str = "<!doctype html><html><head><title>kvmnet exporter</title></head><body>\
<h1>kvmnet exporter</h1><p>Virtual-machine networking of this host, as Prometheus metrics.</p>\
<ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li></ul>\
</body></html>\n";

impl Handler for App {
    fn handle(&self, path: &str, accept: &str) -> Response {
        match path {
            "/metrics" => {
                let cur = self
                    .current
                    .read()
                    .map(|g| g.clone())
                    .unwrap_or_else(|p| p.into_inner().clone());
                if accept.contains("application/openmetrics-text") {
                    Response {
                        status: 200,
                        content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body: cur.om.clone(),
                    }
                } else {
                    Response {
                        status: 200,
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        body: cur.prom.clone(),
                    }
                }
            }
            "/healthz" => Response {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: Arc::new(b"ok\n".to_vec()),
            },
            "/" => Response {
                status: 200,
                content_type: "text/html; charset=utf-8",
                body: Arc::new(INDEX.as_bytes().to_vec()),
            },
            _ => Response {
                status: 404,
                content_type: "text/plain; charset=utf-8",
                body: Arc::new(b"not found: try /metrics\n".to_vec()),
            },
        }
    }
}

/// `15s`, `2m`, `500ms`, `1h`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, mult_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (t, 1000)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 15s, 2m, 500ms)"))?;
    let d = Duration::from_millis(n.saturating_mul(mult_ms));
    if d < Duration::from_millis(100) {
        return Err(format!("`{s}` is too short (at least 100ms)"));
    }
    Ok(d)
}

/// Runs the exporter until the process is stopped.
pub fn run(a: ExporterArgs) -> Result<i32, CliError> {
    let interval =
        parse_duration(&a.interval).map_err(|e| CliError::input(format!("--interval: {e}")))?;
    let probe_interval = a
        .probe_interval
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| CliError::input(format!("--probe-interval: {e}")))?;
    let web = match &a.web_config {
        Some(p) => webconfig::WebConfig::load(p).map_err(CliError::input)?,
        None => webconfig::WebConfig::default(),
    };
    let addr: std::net::SocketAddr = a
        .listen
        .parse()
        .map_err(|_| CliError::input(format!("--listen: `{}` is not an address:port", a.listen)))?;
    if !addr.ip().is_loopback() && web.users.is_empty() {
        eprintln!(
            "kvmnet exporter: warning: listening on {addr} without authentication (see --web-config)"
        );
    }
    let listener = http::bind(&a.listen).map_err(CliError::runtime)?;
    let (prom, om) = metrics::render(None, None, &Meta::default());
    let app = Arc::new(App {
        current: RwLock::new(Arc::new(Rendered {
            prom: Arc::new(prom.into_bytes()),
            om: Arc::new(om.into_bytes()),
        })),
    });
    let collector = app.clone();
    let netns = a.netns.clone();
    let (target, doctor) = (a.target, !a.no_doctor);
    std::thread::spawn(move || {
        let mut meta = Meta::default();
        let mut last_probe: Option<Instant> = None;
        let mut probes = vec![];
        loop {
            let t0 = Instant::now();
            meta.collections += 1;
            let (state, report) = match crate::source::collect_live(netns.as_deref()) {
                Ok(state) => {
                    meta.last_error = None;
                    let report = doctor.then(|| {
                        if let Some(pi) = probe_interval {
                            if last_probe.is_none_or(|t| t.elapsed() >= pi) {
                                probes = crate::cmd::probe_for_exporter(&state, target);
                                last_probe = Some(Instant::now());
                            }
                        }
                        diagnose(
                            &state,
                            &Options {
                                target,
                                probes: probes.clone(),
                                ..Default::default()
                            },
                        )
                    });
                    meta.last_success_unix = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    (Some(state), report)
                }
                Err(e) => {
                    meta.collection_errors += 1;
                    meta.last_error = Some(e.to_string());
                    (None, None)
                }
            };
            meta.last_duration_s = t0.elapsed().as_secs_f64();
            let (prom, om) = metrics::render(state.as_ref(), report.as_ref(), &meta);
            drop(state);
            drop(report);
            let fresh = Arc::new(Rendered {
                prom: Arc::new(prom.into_bytes()),
                om: Arc::new(om.into_bytes()),
            });
            match collector.current.write() {
                Ok(mut g) => *g = fresh,
                Err(p) => *p.into_inner() = fresh,
            }
            // the collection's memory is garbage now: give it back between collections
            kvmnet_linux::release_free_memory();
            std::thread::sleep(interval.saturating_sub(t0.elapsed()));
        }
    });
    eprintln!(
        "kvmnet exporter: serving {}://{addr}/metrics (collecting every {:?})",
        if web.tls.is_some() { "https" } else { "http" },
        interval
    );
    http::serve(listener, web, app)
}
