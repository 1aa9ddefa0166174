//! Network namespaces: listing the named ones (/run/netns), running a closure inside one on a
//! dedicated thread, and identifying namespaces by inode so processes and peers can be matched.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::Error;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The path of a named namespace (an absolute path is used as given).
pub fn netns_path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_RUN_DIR).join(name)
    }
}

/// Names of the namespaces under /run/netns, sorted.
pub fn list_netns() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The (device, inode) identity of a namespace: the named one, or the caller's own.
pub fn netns_id(name: Option<&str>) -> Result<(u64, u64), Error> {
    let path = match name {
        Some(n) => netns_path(n),
        None => PathBuf::from("/proc/thread-self/ns/net"),
    };
    let md = std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchNetns(name.unwrap_or("self").to_string()),
        _ => Error::Setns(name.unwrap_or("self").to_string(), e),
    })?;
    Ok((md.dev(), md.ino()))
}

/// The network namespace inode of a process, if readable.
pub fn pid_netns_ino(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Opens a namespace file, with a clear error when it does not exist.
pub fn open_netns(name: &str) -> Result<File, Error> {
    File::open(netns_path(name)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchNetns(name.to_string()),
        _ => Error::Setns(name.to_string(), e),
    })
}

/// Runs `f` on a fresh thread that has entered namespace `name` (or stays in the caller's
/// namespace when `None`). The caller's thread never changes namespace.
pub fn run_in_netns<T, F>(name: Option<&str>, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = match name {
        Some(n) => Some(open_netns(n)?),
        None => None,
    };
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T, Error> {
            if let (Some(file), Some(n)) = (file, name) {
                move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| Error::Setns(n.to_string(), e.into()))?;
            }
            Ok(f())
        });
        handle.join().map_err(|_| Error::Thread)?
    })
}
