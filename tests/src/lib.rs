//! Helpers live in tests/tests/common.
