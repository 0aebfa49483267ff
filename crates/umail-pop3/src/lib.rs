//! umail-pop3
