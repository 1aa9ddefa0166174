//! Findings: what doctor reports. Codes are stable, kebab-case public interface.

use kvmnet_model::plan::PlanStep;
use serde::Serialize;

/// How bad a finding is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// Which layer of the walk a finding belongs to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Host,
    Virtual,
    Guest,
}

impl Layer {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Host => "host",
            Layer::Virtual => "virtual",
            Layer::Guest => "guest",
        }
    }
}

/// How to fix a finding: commands for the admin, and the plan steps `--fix` can apply.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize)]
pub struct Fix {
    pub commands: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlanStep>,
}

/// One finding.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Finding {
    pub code: String,
    pub severity: Severity,
    pub layer: Layer,
    /// What it concerns: VM, vNIC, interface, network or rule names.
    pub subject: Vec<String>,
    pub summary: String,
    pub evidence: Vec<String>,
    pub impact: String,
    pub fix: Fix,
    /// The root-cause finding this one is a consequence of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// The VMs whose network this finding breaks (or concerns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub affects: Vec<String>,
}

impl Finding {
    /// A new finding with the mandatory parts.
    pub fn new(
        code: &str,
        severity: Severity,
        layer: Layer,
        summary: impl Into<String>,
    ) -> Finding {
        Finding {
            code: code.to_string(),
            severity,
            layer,
            subject: vec![],
            summary: summary.into(),
            evidence: vec![],
            impact: String::new(),
            fix: Fix::default(),
            caused_by: None,
            affects: vec![],
        }
    }
    /// Adds subjects.
    pub fn subject<S: Into<String>>(mut self, s: impl IntoIterator<Item = S>) -> Finding {
        self.subject.extend(s.into_iter().map(Into::into));
        self
    }
    /// Adds evidence lines.
    pub fn evidence<S: Into<String>>(mut self, e: impl IntoIterator<Item = S>) -> Finding {
        self.evidence.extend(e.into_iter().map(Into::into));
        self
    }
    /// Sets the impact.
    pub fn impact(mut self, i: impl Into<String>) -> Finding {
        self.impact = i.into();
        self
    }
    /// Adds fix commands.
    pub fn commands<S: Into<String>>(mut self, c: impl IntoIterator<Item = S>) -> Finding {
        self.fix.commands.extend(c.into_iter().map(Into::into));
        self
    }
    /// Adds plan steps `--fix` can apply.
    pub fn steps(mut self, s: impl IntoIterator<Item = PlanStep>) -> Finding {
        self.fix.steps.extend(s);
        self
    }
    /// Adds affected VMs.
    pub fn affects<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Finding {
        for x in v {
            let x = x.into();
            if !self.affects.contains(&x) {
                self.affects.push(x);
            }
        }
        self
    }
    /// True for a root-cause error (counted in the exit code).
    pub fn is_root_error(&self) -> bool {
        self.severity == Severity::Error && self.caused_by.is_none()
    }
}
