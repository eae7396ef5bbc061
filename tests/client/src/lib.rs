//! Helpers for the end-to-end tests: connecting to the server the test script started.
