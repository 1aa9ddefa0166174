//! The binary's error type: a message and the exit code its kind maps to.

use std::fmt;

/// An error to print once, in `main`, with its exit code.
#[derive(Debug)]
pub struct CliError {
    code: i32,
    message: String,
    broken_pipe: bool,
}

impl CliError {
    /// Bad input: usage, a config, snapshot or XML file (exit 2).
    pub fn input(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
            broken_pipe: false,
        }
    }
    /// Something failed at run time (exit 1).
    pub fn runtime(message: impl Into<String>) -> CliError {
        CliError {
            code: 1,
            message: message.into(),
            broken_pipe: false,
        }
    }
    /// The exit code for this error.
    pub fn exit_code(&self) -> i32 {
        self.code
    }
    /// True when output went to a closed pipe (`kvmnet show | head`): not an error.
    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError {
            code: 1,
            broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
            message: e.to_string(),
        }
    }
}

impl From<kvmnet_linux::Error> for CliError {
    fn from(e: kvmnet_linux::Error) -> Self {
        match e {
            kvmnet_linux::Error::NoSuchNetns(_) => CliError::input(e.to_string()),
            other => CliError::runtime(other.to_string()),
        }
    }
}
