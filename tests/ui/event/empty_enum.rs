#[derive(varvedb::Event)]
enum Never {}

fn main() {}
