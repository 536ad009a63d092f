// Every mistake is reported at once, not one per build.
#[derive(varvedb::Event)]
#[event(version = 0, colour = "red")]
struct OrderPlaced {
    #[rkyv(with = Skip)]
    amount: u64,
}

fn main() {}
