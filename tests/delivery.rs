//! End-to-end outbound delivery tests (being written).
