//! Loading a ruleset file the way the kernel would run it: the file is applied with `nft` inside
//! a private network namespace that exists only on one thread for the duration of the load,
//! then read back over netlink. The kernel is the compiler, so what kvmnet evaluates is exactly
//! what the kernel would run; the host's own ruleset is never touched.
//!
//! Accepts nft scripts, nft JSON (`nft -j list ruleset` output), and lists of `nft ...`
//! commands (as libvirt's test data records them).

use std::io::Write;
use std::path::Path;

use kvmnet_model::NftRuleset;
use rustix::thread::{unshare_unsafe, UnshareFlags};

use crate::Error;

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesetFormat {
    Script,
    Json,
    Commands,
}

/// Guesses a file's format from its first token.
pub fn detect(text: &str) -> RulesetFormat {
    let t = text.trim_start();
    if t.starts_with('{') {
        RulesetFormat::Json
    } else if t.starts_with("nft ") || t.starts_with("nft\\") || t.starts_with("nft \\") {
        RulesetFormat::Commands
    } else {
        RulesetFormat::Script
    }
}

/// Turns a list of `nft [options] COMMAND ...` invocations (with `\` line continuations) into
/// an nft script; `list` commands are dropped.
pub fn commands_to_script(text: &str) -> String {
    let joined = text.replace("\\\n", " ");
    let mut out = String::new();
    for cmd in joined
        .split("nft ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let words: Vec<&str> = cmd
            .split_whitespace()
            .skip_while(|w| w.starts_with('-'))
            .collect();
        if words.first().is_none_or(|w| *w == "list") {
            continue;
        }
        // a recorded fragment may insert into chains created elsewhere: declare them (`add` is
        // a no-op for what exists)
        if words.len() >= 5 && matches!(words[0], "add" | "insert") && words[1] == "rule" {
            out.push_str(&format!("add table {} {}\n", words[2], words[3]));
            out.push_str(&format!(
                "add chain {} {} {}\n",
                words[2], words[3], words[4]
            ));
        }
        let line = words.join(" ").replace('\'', "");
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn apply(script: &str, json: bool) -> Result<(), String> {
    let mut cmd = std::process::Command::new("nft");
    if json {
        cmd.arg("-j");
    }
    let mut child = cmd
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        // nft repeats every error with the offending line and a caret: the first one says it
        let err = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = err.lines().take(2).collect();
        let more = err.lines().filter(|l| l.contains("Error:")).count();
        Err(format!(
            "{}{}",
            first.join(": "),
            if more > 1 {
                format!(" (and {} more errors)", more - 1)
            } else {
                String::new()
            }
        ))
    }
}

/// Why a ruleset file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    #[error("{file}: nft refused it: {reason}")]
    Refused { file: String, reason: String },
    #[error("cannot create a private namespace for loading: {0}")]
    Namespace(std::io::Error),
    #[error(transparent)]
    Read2(#[from] Error),
    #[error("{file}: line {line}: {msg}")]
    Parse {
        file: String,
        line: usize,
        msg: String,
    },
}

/// Reads ruleset files with kvmnet's own nft reader (no kernel, no privileges): nft JSON,
/// nft scripts and recorded command lists, in order, into one ruleset.
pub fn parse_ruleset_files(paths: &[&Path]) -> Result<NftRuleset, LoadError> {
    let mut rs = NftRuleset::default();
    for p in paths {
        let file = p.display().to_string();
        let text = std::fs::read_to_string(p).map_err(|e| LoadError::Read(file.clone(), e))?;
        match detect(&text) {
            RulesetFormat::Json => {
                kvmnet_model::nft_json::load_json(&text, &mut rs).map_err(|e| match e {
                    kvmnet_model::nft_json::JsonRulesetError::Syntax { line, column, msg } => {
                        LoadError::Parse {
                            file,
                            line,
                            msg: format!("column {column}: {msg}"),
                        }
                    }
                    kvmnet_model::nft_json::JsonRulesetError::Structure(msg) => {
                        LoadError::Parse { file, line: 0, msg }
                    }
                })?
            }
            f => {
                let script = if f == RulesetFormat::Commands {
                    commands_to_script(&text)
                } else {
                    text
                };
                kvmnet_model::nft_script::load_script(&script, &mut rs).map_err(|e| {
                    LoadError::Parse {
                        file,
                        line: e.line,
                        msg: e.msg,
                    }
                })?
            }
        }
    }
    Ok(rs)
}

/// How a ruleset was loaded.
#[derive(Debug)]
pub struct Loaded {
    pub ruleset: NftRuleset,
    /// Set when the kernel could not load it (a feature it lacks, syntax newer than this nft,
    /// no privileges for a private namespace) and kvmnet's own reader did: the kernel's reason.
    pub kernel_refused: Option<String>,
}

/// Loads through the kernel when it can (exactly what the kernel would run), else with
/// kvmnet's own reader; fails only when both fail.
pub fn load_or_parse_ruleset_files(paths: &[&Path]) -> Result<Loaded, LoadError> {
    match load_ruleset_files(paths) {
        Ok(ruleset) => Ok(Loaded {
            ruleset,
            kernel_refused: None,
        }),
        Err(e @ (LoadError::Refused { .. } | LoadError::Namespace(_))) => {
            match parse_ruleset_files(paths) {
                Ok(ruleset) => Ok(Loaded {
                    ruleset,
                    kernel_refused: Some(e.to_string()),
                }),
                Err(LoadError::Parse { file, line, msg }) => Err(LoadError::Parse {
                    file,
                    line,
                    msg: format!("{msg} (and the kernel refused it too: {e})"),
                }),
                Err(other) => Err(other),
            }
        }
        Err(e) => Err(e),
    }
}

/// Loads ruleset files (in order, into one private namespace) and reads them back.
pub fn load_ruleset_files(paths: &[&Path]) -> Result<NftRuleset, LoadError> {
    let mut inputs = vec![];
    for p in paths {
        let text =
            std::fs::read_to_string(p).map_err(|e| LoadError::Read(p.display().to_string(), e))?;
        inputs.push((p.display().to_string(), text));
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<NftRuleset, LoadError> {
            // SAFETY: only CLONE_NEWNET is unshared, on a thread of our own: the file-table
            // hazard `unshare_unsafe` guards against (CLONE_FILES) does not apply.
            unsafe { unshare_unsafe(UnshareFlags::NEWNET) }
                .map_err(|e| LoadError::Namespace(e.into()))?;
            for (file, text) in &inputs {
                let (script, json) = match detect(text) {
                    RulesetFormat::Json => (text.clone(), true),
                    RulesetFormat::Commands => (commands_to_script(text), false),
                    RulesetFormat::Script => (text.clone(), false),
                };
                apply(&script, json).map_err(|reason| LoadError::Refused {
                    file: file.clone(),
                    reason,
                })?;
            }
            Ok(super::dump_ruleset()?)
        })
        .join()
        .unwrap_or(Err(LoadError::Read2(Error::Thread)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lists() {
        let t = "nft \\\n-ae insert \\\nrule \\\nip \\\nlibvirt_network \\\nLIBVIRT_INP \\\niifname \\\nvirbr0 \\\naccept\nnft \\\nlist \\\ntable \\\nip \\\nx\nnft add chain ip t c '{ type filter hook forward priority 0; policy accept; }'\n";
        assert_eq!(detect(t), RulesetFormat::Commands);
        assert_eq!(
            commands_to_script(t),
            "add table ip libvirt_network\nadd chain ip libvirt_network LIBVIRT_INP\n\
             insert rule ip libvirt_network LIBVIRT_INP iifname virbr0 accept\n\
             add chain ip t c { type filter hook forward priority 0; policy accept; }\n"
        );
        assert_eq!(detect("{\"nftables\": []}"), RulesetFormat::Json);
        assert_eq!(detect("table inet x {}"), RulesetFormat::Script);
    }
}
