//! `skiff-agent`: the node agent binary.

fn main() -> std::process::ExitCode {
    skiff_agent::entry::main()
}
