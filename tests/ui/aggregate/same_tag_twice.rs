// Two event types with the same default tag (their type name) in one aggregate: the log
// could not tell them apart.
mod accounts {
    #[derive(varvedb::Event)]
    pub struct Opened {
        pub id: u64,
    }
}
mod users {
    #[derive(varvedb::Event)]
    pub struct Opened {
        pub id: u64,
    }
}

#[derive(Default)]
struct Both;

#[varvedb::aggregate]
impl Both {
    fn account(&mut self, _e: &accounts::ArchivedOpened) {}
    fn user(&mut self, _e: &users::ArchivedOpened) {}
}

fn main() {
    let _ = <Both as varvedb::Aggregate>::KIND;
}
