use varvedb::Event;

#[derive(Event)]
#[event(name = "noted", version = 1)]
struct NotedV1 {
    text: String,
}

#[derive(Event)]
#[event(name = "noted", version = 2, upcast = NotedV1)]
struct Noted<T> {
    text: String,
    extra: T,
}

fn main() {}
