//! `pier-bench`: load generator (see the benchmark issue).

fn main() {}
