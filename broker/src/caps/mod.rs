//! The built-in capabilities.

mod clock;
mod fs;
mod fs_object;
mod http;
mod kv;
mod kv_session;
mod kv_store;
mod random;
mod secret;

pub use clock::Clock;
pub use fs::Fs;
pub use http::Http;
pub use kv::Kv;
pub use kv_store::KvLimits;
pub use random::Random;
pub use secret::{SecretStore, Secrets};
