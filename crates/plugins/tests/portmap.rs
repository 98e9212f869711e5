mod common;
testkit::main!();
