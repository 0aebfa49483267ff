//! umail-imap
