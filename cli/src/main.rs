//! mt-move: see README "Moving tenants" and `mt-move --help`.
fn main() {
    std::process::exit(multitenancy_move::main_with(std::env::args()));
}
