//! nf_tables over netlink: dumps every table, chain, rule, set (with elements), object and
//! flowtable of the calling thread's namespace straight from the kernel, keeping rules as the
//! register-machine expressions the kernel runs. This is both lossless (foreign tables included)
//! and far cheaper than `nft -j list ruleset`, which formats JSON in user space.

mod attr;
mod decode;
pub mod load;

pub use attr::{Attr, AttrIter};
pub use decode::dump_ruleset;
pub use load::{
    load_or_parse_ruleset_files, load_ruleset_files, parse_ruleset_files, LoadError, Loaded,
};
