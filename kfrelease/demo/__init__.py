"""The demo: data, model projects and the end-to-end flow that `make demo` runs."""
