//! The `shop` monolith: placeholder until the service crates expose their servers.
fn main() {
    eprintln!("shop: not built yet");
    std::process::exit(2);
}
