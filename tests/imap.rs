//! End-to-end IMAP tests (being written).
