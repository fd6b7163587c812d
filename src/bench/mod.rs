pub mod http;
pub mod smpp;
