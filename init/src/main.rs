//! `lamina-init`: PID 1 of the lamina appliance; everything lives in the library.

fn main() {
    init::main_pid1()
}
