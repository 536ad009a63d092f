// Every item shape the derives accept: named, tuple and unit structs, enums, generics,
// lifetimes-free nested data, visibility, and `crate = ..`.
mod domain {
    #[derive(varvedb::EventData, Debug, Clone, PartialEq)]
    pub struct Money(pub u64, pub String);

    #[derive(varvedb::EventData, Debug, Clone, PartialEq)]
    pub enum Status {
        Open,
        Closed { reason: Option<String> },
    }

    #[derive(varvedb::Event, Debug)]
    pub struct Tuple(pub u32, pub Money);

    #[derive(varvedb::Event, Debug)]
    pub struct Unit;

    /// A default on a generic parameter.
    #[derive(varvedb::EventData, Debug)]
    pub struct WithDefault<T = u32> {
        pub value: T,
    }

    #[derive(varvedb::Event, Debug)]
    #[event(name = "pair", version = 7)]
    pub struct Pair<A, B> {
        pub a: A,
        pub b: Vec<B>,
        pub status: Status,
        pub with_default: WithDefault,
    }
}

mod renamed {
    pub use varvedb as vdb;
}

#[derive(varvedb::Event)]
#[event(crate = renamed::vdb)]
struct ViaPath {
    n: u8,
}

#[derive(Default)]
struct All;

#[varvedb::aggregate(name = "all")]
impl All {
    fn tuple(&mut self, e: &domain::ArchivedTuple) {
        let _: u32 = e.0.to_native();
        let _: &str = e.1 .1.as_str();
    }
    fn unit(&mut self, _e: &domain::ArchivedUnit) {}
    fn pair(&mut self, e: &domain::ArchivedPair<u16, String>) {
        let _ = matches!(e.status, domain::ArchivedStatus::Closed { .. });
    }
    fn via_path(&mut self, e: &ArchivedViaPath) {
        let _: u8 = e.n;
    }
}

fn main() {
    use varvedb::{Aggregate, Event};
    assert_eq!(<domain::Pair<u16, String> as Event>::VERSION, 7);
    assert_eq!(All::EVENTS.len(), 4);
    assert_eq!(All::KIND, "all");
}
