pub mod smpp;
