fn main() {
    std::process::exit(bitnet::cli::main());
}
