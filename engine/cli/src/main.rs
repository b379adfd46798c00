fn main() {
    std::process::exit(bitnet_cli::main());
}
