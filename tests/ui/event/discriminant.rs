#[derive(varvedb::Event)]
enum Light {
    On = 1,
    Off = 2,
}

fn main() {}
