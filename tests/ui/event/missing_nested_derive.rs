// A field whose type has no `#[derive(EventData)]`.
struct Address {
    street: String,
}

#[derive(varvedb::Event)]
struct Moved {
    to: Address,
}

fn main() {}
