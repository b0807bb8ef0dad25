//! An emulator of the Kubernetes API for the end-to-end tests.
