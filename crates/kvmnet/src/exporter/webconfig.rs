//! The exporter's `--web-config` file, in the Prometheus exporter-toolkit format: TLS
//! (`tls_server_config`), basic authentication with bcrypt hashes (`basic_auth_users`) and
//! extra response headers (`http_server_config.headers`). Errors name the file, line and
//! column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tls_server_config: Option<TlsDef>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    http_server_config: Option<HttpDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsDef {
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    client_auth_type: Option<Spanned<String>>,
    #[serde(default)]
    client_ca_file: Option<Spanned<String>>,
    #[serde(default)]
    min_version: Option<Spanned<String>>,
    #[serde(default)]
    max_version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDef {
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    http2: Option<bool>,
}

/// A loaded web configuration.
#[derive(Clone, Default)]
pub struct WebConfig {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// user -> bcrypt hash.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn at(path: &Path, text: &str, line: u64, col: u64, msg: &str) -> String {
    if line == 0 {
        return format!("{}: {msg}", path.display());
    }
    let src = text.lines().nth(line as usize - 1).unwrap_or("");
    let pad = " ".repeat(line.to_string().len());
    format!(
        "{}:{line}:{col}: {msg}\n{pad} |\n{line} | {src}\n{pad} | {}^",
        path.display(),
        " ".repeat(col.saturating_sub(1) as usize)
    )
}

fn span_err<T>(path: &Path, text: &str, s: &Spanned<T>, msg: &str) -> String {
    at(path, text, s.referenced.line(), s.referenced.column(), msg)
}

impl WebConfig {
    /// Reads and checks a web configuration file.
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let opts = serde_saphyr::options! { with_snippet: false };
        let f: File = if text.trim().is_empty() {
            File {
                tls_server_config: None,
                basic_auth_users: BTreeMap::new(),
                http_server_config: None,
            }
        } else {
            serde_saphyr::from_str_with_options(&text, opts).map_err(|e| {
                let (l, c) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                let m = e.to_string();
                let m = m.lines().next().unwrap_or("").to_string();
                let m = match m.rfind(" at line ") {
                    Some(i) => m[..i].to_string(),
                    None => m,
                };
                at(path, &text, l, c, &m)
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| -> PathBuf {
            let pb = PathBuf::from(p);
            if pb.is_absolute() {
                pb
            } else {
                base.join(pb)
            }
        };
        let mut cfg = WebConfig::default();
        for (user, hash) in &f.basic_auth_users {
            if hash.value.parse::<bcrypt::HashParts>().is_err() {
                return Err(span_err(
                    path,
                    &text,
                    hash,
                    &format!("the password of `{user}` is not a bcrypt hash (htpasswd -nBC 10 {user} makes one)"),
                ));
            }
            cfg.users.insert(user.clone(), hash.value.clone());
        }
        if let Some(h) = &f.http_server_config {
            cfg.headers = h.headers.clone().into_iter().collect();
            let _ = h.http2;
        }
        if let Some(t) = &f.tls_server_config {
            if let Some(c) = &t.client_auth_type {
                if c.value != "NoClientCert" {
                    return Err(span_err(path, &text, c, "client certificates are not supported: use NoClientCert or basic_auth_users"));
                }
            }
            if let Some(c) = &t.client_ca_file {
                return Err(span_err(
                    path,
                    &text,
                    c,
                    "client certificates are not supported",
                ));
            }
            for v in [&t.min_version, &t.max_version].into_iter().flatten() {
                if !matches!(v.value.as_str(), "TLS12" | "TLS13") {
                    return Err(span_err(path, &text, v, "TLS versions are TLS12 or TLS13"));
                }
            }
            let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) else {
                return Err(at(
                    path,
                    &text,
                    1,
                    1,
                    "tls_server_config needs both cert_file and key_file",
                ));
            };
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let cp = resolve(&cert.value);
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cp)
                .map_err(|e| span_err(path, &text, cert, &format!("{}: {e}", cp.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| span_err(path, &text, cert, &format!("{}: {e}", cp.display())))?;
            if certs.is_empty() {
                return Err(span_err(
                    path,
                    &text,
                    cert,
                    &format!("{}: no certificate in it", cp.display()),
                ));
            }
            let kp = resolve(&key.value);
            let pk = PrivateKeyDer::from_pem_file(&kp)
                .map_err(|e| span_err(path, &text, key, &format!("{}: {e}", kp.display())))?;
            let versions: Vec<&'static rustls::SupportedProtocolVersion> = match (
                t.min_version.as_ref().map(|v| v.value.as_str()),
                t.max_version.as_ref().map(|v| v.value.as_str()),
            ) {
                (Some("TLS13"), _) => vec![&rustls::version::TLS13],
                (_, Some("TLS12")) => vec![&rustls::version::TLS12],
                _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
            };
            let sc = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&versions)
            .map_err(|e| at(path, &text, 1, 1, &format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, pk)
            .map_err(|e| {
                span_err(
                    path,
                    &text,
                    key,
                    &format!("the key does not fit the certificate: {e}"),
                )
            })?;
            cfg.tls = Some(Arc::new(sc));
        }
        Ok(cfg)
    }
}
