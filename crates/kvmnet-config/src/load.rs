//! Reading desired state from a YAML file or a directory of them, with errors that name the
//! file, line and column and show the line with a caret.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, Spanned};

use crate::schema::File;

/// One YAML source.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// A place in a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Index into [`Config::sources`].
    pub src: usize,
    pub line: u64,
    pub column: u64,
}

/// The merged desired state of one or more files; each item remembers its file.
#[derive(Debug, Default)]
pub struct Config {
    pub sources: Vec<Source>,
    /// (source index, definition), in file order.
    pub files: Vec<(usize, File)>,
}

/// A configuration error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// The offending line of the file, when known.
    pub source_line: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.path, self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.column, self.message
        )?;
        if let Some(l) = &self.source_line {
            let n = self.line.to_string();
            let pad = " ".repeat(n.len());
            let caret_at: String = l
                .chars()
                .take(self.column.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n{pad} |\n{n} | {l}\n{pad} | {caret_at}^")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path`: one YAML file, or every `*.yaml`/`*.yml` file of a directory in name
    /// order.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let plain = |m: String| ConfigError {
            path: path.display().to_string(),
            line: 0,
            column: 0,
            message: m,
            source_line: None,
        };
        let meta = std::fs::metadata(path).map_err(|e| plain(format!("cannot read: {e}")))?;
        let mut files: Vec<PathBuf> = if meta.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| plain(format!("cannot read the directory: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(plain("no *.yaml or *.yml files in this directory".into()));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut cfg = Config::default();
        for p in files.drain(..) {
            let text = std::fs::read_to_string(&p).map_err(|e| ConfigError {
                path: p.display().to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
                source_line: None,
            })?;
            cfg.add_source(p, text)?;
        }
        Ok(cfg)
    }

    /// Parses one source's text (used by [`Config::load`] and by tests).
    pub fn add_source(&mut self, path: PathBuf, text: String) -> Result<(), ConfigError> {
        let idx = self.sources.len();
        let parsed = if text.trim().is_empty() {
            Ok(File::default())
        } else {
            let opts = serde_saphyr::options! { with_snippet: false };
            serde_saphyr::from_str_with_options::<File>(&text, opts)
        };
        self.sources.push(Source { path, text });
        match parsed {
            Ok(f) => {
                self.files.push((idx, f));
                Ok(())
            }
            Err(e) => {
                let loc = e.location();
                let (line, column) = loc.map(|l| (l.line(), l.column())).unwrap_or((0, 0));
                Err(self.error_at(
                    Pos {
                        src: idx,
                        line,
                        column,
                    },
                    clean_message(&e.to_string()),
                ))
            }
        }
    }

    /// An error at `pos`.
    pub fn error_at(&self, pos: Pos, message: impl Into<String>) -> ConfigError {
        let src = self.sources.get(pos.src);
        ConfigError {
            path: src
                .map(|s| s.path.display().to_string())
                .unwrap_or_default(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            source_line: src.and_then(|s| {
                (pos.line > 0)
                    .then(|| s.text.lines().nth(pos.line as usize - 1).map(String::from))
                    .flatten()
            }),
        }
    }

    /// An error at a spanned value of source `src`.
    pub fn error<T>(&self, src: usize, at: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.error_at(pos(src, &at.referenced), message)
    }
}

/// The position of a location in source `src`.
pub fn pos(src: usize, l: &Location) -> Pos {
    Pos {
        src,
        line: l.line(),
        column: l.column(),
    }
}

/// serde-saphyr's message without its own position suffix (we print ours first).
fn clean_message(m: &str) -> String {
    let m = m.lines().next().unwrap_or(m);
    let m = m.strip_prefix("error: ").unwrap_or(m);
    // "line 3 column 5: unknown field ..." -> "unknown field ..."
    let m = match m.find(": ") {
        Some(i) if m.starts_with("line ") => &m[i + 2..],
        _ => m,
    };
    // "... at line 3, column 11" -> "..."
    let m = match m.rfind(" at line ") {
        Some(i) if m[i..].contains(", column ") => &m[..i],
        _ => m,
    };
    m.trim().to_string()
}
