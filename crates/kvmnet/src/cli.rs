//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kvmnet",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KVMNET_GIT_REV"), ")"),
    about = "See, diagnose, trace and configure virtual-machine networking on KVM hosts",
    long_about = "kvmnet reads a KVM host's network (links, bridges, taps, VMs, addresses, routes, \
neighbours, FDB, sysctls, nftables, qdiscs, libvirt networks and domains) straight from the \
kernel, shows it, and explains why a VM has no network.",
    after_help = "Examples:\n  kvmnet show                      the VM view and every section of this host\n  kvmnet show --netns hv1 vms      one section, for a network namespace\n  kvmnet snapshot -o host.json     save the whole state (add --redact for a ticket)\n  kvmnet show --from host.json     read a snapshot instead of the live host"
)]
pub struct Cli {
    /// Colour output: auto (only on a terminal, never with NO_COLOR), always or never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the host's network: VMs first, then links, addresses, routes and more.
    #[command(
        after_help = "Sections: vms, networks, links, addrs, routes, rules, neigh, fdb, \
sysctl, nft, qdisc, ovs, sockets, warnings.\n\nExamples:\n  kvmnet show\n  kvmnet show vms links\n  \
kvmnet show --json\n  kvmnet show -o yaml --netns hv1\n  kvmnet show routes --from host.json"
    )]
    Show(ShowArgs),
    /// Save the whole host state to a JSON snapshot file.
    #[command(
        after_help = "Examples:\n  kvmnet snapshot -o host.json\n  kvmnet snapshot --redact -o ticket.json   \
MACs hashed, public addresses replaced\n  kvmnet snapshot --netns hv1 -o -        write to stdout"
    )]
    Snapshot(SnapshotArgs),
    /// Simulate one packet through the host and name what decides its fate (sends nothing).
    #[command(
        after_help = "Endpoints: vm:NAME (a VM; vm:NAME:N for its Nth vNIC), host, or an IP address.\n\n\
Exit codes: 0 delivered (and the reply came back), 3 dropped or undecidable, 2 bad input.\n\n\
Examples:\n  kvmnet trace --from vm:web1 --to 203.0.113.1\n  kvmnet trace --from vm:web1 --to vm:db1 --proto tcp --dport 5432\n  \
kvmnet trace --from 198.51.100.7 --to 198.51.100.2 --proto tcp --dport 8080   (a port forward)\n  \
kvmnet trace --from vm:web1 --to 203.0.113.1 --size 1500                    (path MTU, DF set)\n  \
kvmnet trace --from-snapshot host.json --from vm:web1 --to 203.0.113.1 --json"
    )]
    Trace(TraceArgs),
    /// Find why a VM has no network: walk host, virtual network and guest layers, name the
    /// broken hop with its evidence and the fix.
    #[command(
        after_help = "Exit codes: 0 no error finding, 3 at least one root-cause error, 1 runtime failure, 2 bad input.\n\n\
Examples:\n  kvmnet doctor                          every VM on this host\n  kvmnet doctor web1 db1                 just these VMs\n  \
kvmnet doctor --target 203.0.113.1      test reachability of this outside address\n  kvmnet doctor --netns hv1 --json\n  \
kvmnet doctor --from host.json          diagnose a snapshot (a support ticket)"
    )]
    Doctor(DoctorArgs),
    /// Show the steps that would bring the host to a desired state (changes nothing).
    #[command(
        after_help = "Exit codes: 0 no change needed (or changes, without --detailed-exitcode), 3 changes \
pending with --detailed-exitcode, 2 bad configuration.\n\nExamples:\n  kvmnet plan -f net.yaml\n  \
kvmnet plan -f /etc/kvmnet/ --detailed-exitcode      a directory of *.yaml files\n  kvmnet plan -f net.yaml --netns hv1 --json"
    )]
    Plan(PlanArgs),
    /// Bring the host to a desired state: journaled, verified, rolled back on any failure.
    #[command(
        after_help = "Every step's inverse is written to a journal under /run/kvmnet before the step runs; \
the result is verified by collecting the host again; on any failure everything is undone (exit 4). \
An apply interrupted by a crash is undone by the next apply or rollback.\n\n\
Exit codes: 0 applied (or nothing to do), 2 bad configuration or conflict with the host, 4 failed and rolled back.\n\n\
Examples:\n  kvmnet apply -f net.yaml\n  kvmnet apply -f net.yaml --confirm-timeout 120   keep only if `kvmnet confirm` runs in time\n  \
kvmnet apply -f net.yaml --netns hv1"
    )]
    Apply(ApplyArgs),
    /// Keep the last apply made with --confirm-timeout.
    #[command(after_help = "Examples:\n  kvmnet confirm\n  kvmnet confirm --netns hv1")]
    Confirm(NetnsArgs),
    /// Undo the last apply (and any apply a crash interrupted).
    #[command(after_help = "Examples:\n  kvmnet rollback\n  kvmnet rollback --netns hv1")]
    Rollback(NetnsArgs),
    /// Write the host's bridges and VM attachments as a desired-state file.
    #[command(
        after_help = "Planning the imported file right away shows no change.\n\nExamples:\n  \
kvmnet import > net.yaml\n  kvmnet import --netns hv1 -o net.yaml\n  kvmnet import --from host.json"
    )]
    Import(ImportArgs),
    /// Export a network of a desired-state file in another tool's format.
    #[command(
        after_help = "Examples:\n  kvmnet export libvirt lan -f net.yaml > lan.xml\n  virsh net-define lan.xml"
    )]
    Export(ExportArgs),
    /// Serve Prometheus metrics: per-VM traffic, links, conntrack and doctor's findings.
    #[command(
        after_help = "Scrapes are served from the last collection and never wait for one. vNIC counters are \
from the guest's point of view. Listens on loopback unless told otherwise; --web-config takes the \
Prometheus exporter-toolkit format (TLS, basic auth with bcrypt hashes).\n\nExamples:\n  \
kvmnet exporter\n  kvmnet exporter --listen 0.0.0.0:9847 --web-config /etc/kvmnet/web.yml\n  \
kvmnet exporter --interval 30s --probe-interval 5m --target 203.0.113.1"
    )]
    Exporter(ExporterArgs),
    /// A guided tour: build a throwaway KVM host in namespaces, break it, diagnose, trace and
    /// fix it, then remove it.
    #[command(
        after_help = "Runs as root; everything lives in network namespaces named kvmnet-demo-<pid>-* \
that are removed at the end, also on Ctrl-C. Faults: ip-forward-disabled, nat-masquerade-missing, \
tap-not-in-bridge, tap-down, bridge-down.\n\nExamples:\n  sudo kvmnet demo\n  \
sudo kvmnet demo --fault nat-masquerade-missing"
    )]
    Demo(DemoArgs),
    /// Draw the host: VMs, their devices, switches, routing and NAT, uplinks; faulty hops in
    /// red with their finding code.
    #[command(
        after_help = "Examples:\n  kvmnet topo > host.svg\n  kvmnet topo -o dot | dot -Tpng > host.png\n  \
kvmnet topo --from host.json --target 203.0.113.1 > ticket.svg"
    )]
    Topo(TopoArgs),
    /// Measure the network between the host and a VM, or two VMs: TCP throughput, UDP packet
    /// rate, round-trip time; then tuning advice.
    #[command(
        after_help = "Built in: no iperf3 needed. Namespace guests and the host take part directly; QEMU and \
libvirt guests through their guest agent (one TCP stream with the guest's nc).\n\nExamples:\n  \
kvmnet bench --from vm:web1 --to vm:db1\n  kvmnet bench --from host --to vm:web1 --duration 20s --streams 8\n  \
kvmnet bench --netns hv1 --from vm:web1 --to host --json"
    )]
    Bench(BenchArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  kvmnet completions bash > /usr/share/bash-completion/completions/kvmnet\n  \
kvmnet completions zsh > /usr/local/share/zsh/site-functions/_kvmnet\n  kvmnet completions fish > ~/.config/fish/completions/kvmnet.fish"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    #[command(
        after_help = "Examples:\n  kvmnet man > /usr/local/share/man/man1/kvmnet.1 && man kvmnet"
    )]
    Man,
    /// (internal) rolls back an unconfirmed apply when its time is up.
    #[command(hide = true, name = "confirm-watchdog")]
    ConfirmWatchdog(WatchdogArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The desired state: a YAML file or a directory of them.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Plan for this network namespace (a name under /run/netns) instead of our own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Exit 3 when there are changes to apply.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Plan even a change that would cut the SSH session kvmnet runs in.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The desired state: a YAML file or a directory of them.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Apply to this network namespace (a name under /run/netns) instead of our own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Roll back by itself unless `kvmnet confirm` runs within this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub confirm_timeout: Option<u64>,
    /// Apply even a change that would cut the SSH session kvmnet runs in.
    #[arg(long)]
    pub force: bool,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NetnsArgs {
    /// Act on this network namespace (a name under /run/netns) instead of our own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The format: libvirt (a network definition for `virsh net-define`).
    #[arg(value_parser = ["libvirt"])]
    pub format: String,
    /// The network to export.
    pub network: String,
    /// The desired state holding the network.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct TopoArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TopoFormat::Svg)]
    pub output: TopoFormat,
    /// The outside address doctor tests to mark faulty hops (default: the default gateway).
    #[arg(long, value_name = "IP")]
    pub target: Option<std::net::IpAddr>,
    /// Draw without running doctor (no fault marks).
    #[arg(long)]
    pub no_doctor: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopoFormat {
    Svg,
    Dot,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Where the traffic starts: host or vm:NAME.
    #[arg(long)]
    pub from: String,
    /// Where it goes: host or vm:NAME.
    #[arg(long)]
    pub to: String,
    /// How long the throughput test runs (the packet-rate test a third of it).
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Parallel TCP streams.
    #[arg(long, default_value_t = 4)]
    pub streams: usize,
    /// The host is this network namespace.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The fault to inject (default: one at random).
    #[arg(long, value_name = "CODE")]
    pub fault: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExporterArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:9847")]
    pub listen: String,
    /// How often to collect the host (15s, 1m, 500ms).
    #[arg(long, default_value = "15s")]
    pub interval: String,
    /// Collect this network namespace instead of our own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// TLS and basic authentication (Prometheus exporter-toolkit format).
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Also run doctor's active probes this often (off by default).
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<String>,
    /// The outside address doctor and its probes test (default: the default gateway).
    #[arg(long, value_name = "IP")]
    pub target: Option<std::net::IpAddr>,
    /// Export no findings (no doctor run).
    #[arg(long)]
    pub no_doctor: bool,
}

#[derive(Debug, Args)]
pub struct WatchdogArgs {
    #[arg(long)]
    pub netns: Option<String>,
    #[arg(long)]
    pub seconds: u64,
    #[arg(long)]
    pub token: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// VMs to examine (default: all).
    pub vms: Vec<String>,
    /// Examine every VM (the default when no VM is named).
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub source: SourceArgs,
    /// The outside address to test reachability against (default: the host's default gateway;
    /// kvmnet never tests an outside address you did not name).
    #[arg(long, value_name = "IP")]
    pub target: Option<std::net::IpAddr>,
    /// Also test a TCP connection to this port on the target.
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Run active probes too (ARP and ping to the gateway, ping and TCP to the target, path
    /// MTU, duplicate-address detection), from the host and inside each guest.
    #[arg(long, conflicts_with = "from")]
    pub probe: bool,
    /// JSON output: {findings, verdicts}.
    #[arg(long)]
    pub json: bool,
    /// Apply the safe fixes (sysctls, link up, re-attach a port, MTU, masquerade in kvmnet's own
    /// nftables table) after showing them: journaled, verified, rolled back on failure.
    #[arg(long, conflicts_with_all = ["from", "json"])]
    pub fix: bool,
    /// With --fix: do not ask for confirmation.
    #[arg(long, requires = "fix")]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Where the packet starts: vm:NAME[:N], host, or an IP address.
    #[arg(
        long,
        value_name = "ENDPOINT",
        required_unless_present = "explain_unsupported"
    )]
    pub from: Option<String>,
    /// Where it goes: an IP address, vm:NAME[:N], or host.
    #[arg(
        long,
        value_name = "ENDPOINT",
        required_unless_present = "explain_unsupported"
    )]
    pub to: Option<String>,
    /// Evaluate against this ruleset instead of the host's (nft script, nft JSON, or a list of
    /// nft commands; repeat to load several in order). It is loaded by the kernel in a private
    /// throwaway namespace: the host's ruleset is not touched.
    #[arg(long, value_name = "FILE")]
    pub ruleset: Vec<PathBuf>,
    /// List the expressions of the ruleset kvmnet cannot evaluate exactly, and exit.
    #[arg(long)]
    pub explain_unsupported: bool,
    /// Protocol.
    #[arg(long, value_enum, default_value_t = Proto::Icmp)]
    pub proto: Proto,
    /// Destination port (tcp/udp).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub dport: u16,
    /// Source port (tcp/udp).
    #[arg(long, value_name = "N")]
    pub sport: Option<u16>,
    /// Total IP packet size in bytes (default: a small packet).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(28..=65535))]
    pub size: Option<u32>,
    /// Clear the don't-fragment bit (default: set, as path MTU discovery does).
    #[arg(long)]
    pub no_df: bool,
    /// Read this network namespace instead of our own.
    #[arg(long, value_name = "NAME", conflicts_with = "from_snapshot")]
    pub netns: Option<String>,
    /// Read a snapshot file instead of the live host.
    #[arg(long, value_name = "FILE")]
    pub from_snapshot: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
}

/// Where the state comes from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Read this network namespace (a name under /run/netns) instead of our own.
    #[arg(long, value_name = "NAME", conflicts_with = "from")]
    pub netns: Option<String>,
    /// Read a snapshot file instead of the live host.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Shorthand for `-o json`.
    #[arg(long)]
    pub json: bool,
    /// Include what is usually hidden (loopback, local FDB entries, local routing table).
    #[arg(long)]
    pub all: bool,
    /// Sections to show (default: all).
    #[arg(value_enum)]
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Vms,
    Networks,
    Links,
    Addrs,
    Routes,
    Rules,
    Neigh,
    Fdb,
    Sysctl,
    Nft,
    Qdisc,
    Ovs,
    Sockets,
    Warnings,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Read this network namespace instead of our own.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Output file (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Hash MAC addresses and replace public IP addresses and the hostname consistently.
    #[arg(long)]
    pub redact: bool,
}
