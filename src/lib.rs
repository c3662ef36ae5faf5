//! Helpers for the end-to-end tests in tests/: locating the built binaries,
//! temporary run directories, and process checks.
