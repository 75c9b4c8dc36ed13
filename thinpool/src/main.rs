//! The `thinpool` command line.

fn main() {
    eprintln!("thinpool: the command line is not built yet");
    std::process::exit(1);
}
