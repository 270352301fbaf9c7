//! The `daybreak` command: everything it does is [`daybreak::cli`]'s.

fn main() -> std::process::ExitCode {
    daybreak::cli::main()
}
