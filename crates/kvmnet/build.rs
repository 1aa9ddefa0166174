//! Puts the git revision into `kvmnet --version` (or "no git" when built outside a checkout).

fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let text = match rev {
        Some(r) if dirty => format!("{r}-dirty"),
        Some(r) => r,
        None => "no git".to_string(),
    };
    println!("cargo:rustc-env=KVMNET_GIT_REV={text}");
    // rebuild when the checked-out commit moves
    for p in ["../../.git/HEAD", "../../.git/index"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
