#[derive(varvedb::EventData)]
#[event(name = "address")]
struct Address {
    street: String,
}

fn main() {}
