//! Prints the session function library, for operators who load it
//! themselves and run the store in `LibraryMode::Verify` (a Redis user that
//! may not load functions):
//!
//! ```text
//! cargo run --example print_library | redis-cli -x FUNCTION LOAD REPLACE
//! cargo run --example print_library -- --name     # just the library's name
//! ```
//!
//! The source's first line (`#!lua name=trs_...`) names the library; the
//! name carries a hash of the source, so each version of the crate has its
//! own and they never replace each other.

use std::io::Write as _;
use std::process::ExitCode;

use tower_redis_sessions::store::{library_name, library_source};

fn main() -> ExitCode {
    let text = match std::env::args().nth(1).as_deref() {
        None => library_source().to_owned(),
        Some("--name") => format!("{}\n", library_name()),
        Some(other) => {
            eprintln!(
                "print_library: unknown argument {other:?}\n\
                 usage: print_library           prints the library source (for FUNCTION LOAD)\n\
                 \x20      print_library --name    prints the library name"
            );
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("print_library: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
