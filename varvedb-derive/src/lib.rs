//! Derive macros for varvedb. The typed layer (`#[derive(Event)]`, `#[aggregate]`) lands here.
