//! `sample-device`: the reference device as a process (see `sample_device::cli`).

fn main() -> std::process::ExitCode {
    sample_device::cli::main_with_args(std::env::args())
}
