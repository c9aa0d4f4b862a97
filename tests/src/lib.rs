//! End-to-end tests live in `tests/`; shared support is the `skiff-test-support` crate.
